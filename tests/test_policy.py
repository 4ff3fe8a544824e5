"""fastrsm.load_policy: a trained policy to deploy (NumPy in, env-bounded actions out), for every algorithm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastrsm
from fastrsm.train import main as train_main
from fastrsm.utils import UsageError

TINY = ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--quiet", "--total-steps", "300",
        "--warmup-steps", "100", "--eval-every", "300", "--eval-episodes", "1", "--batch-size", "32",
        "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100", "--reverse-samples", "4"]


@pytest.fixture(scope="module", params=["dpmd", "sdac", "sac"])
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "run"
    assert train_main([*TINY, "--algo", request.param, "--run-dir", str(d)]) == 0
    return request.param, d


def test_shapes_bounds_and_tensor_path(run):
    algo, d = run
    pol = fastrsm.load_policy(str(d))
    assert (pol.obs_dim, pol.act_dim, pol.algo) == (3, 1, algo)
    assert pol.particles == (None if algo == "sac" else 4)
    obs = np.random.default_rng(0).standard_normal((6, 3))
    a = pol.act(obs)
    assert a.shape == (6, 1) and a.dtype == np.float32
    assert np.all(a >= -2.0) and np.all(a <= 2.0)  # Pendulum's torque bounds, not [-1, 1]
    assert pol.act(obs[0]).shape == (1,)
    # the bounds are an affine map of the policy's [-1, 1] actions
    unit = fastrsm.load_policy(str(d)).act_unit(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(a, -2.0 + (unit + 1.0) * 2.0, rtol=1e-6, atol=1e-6)
    t = pol.act_tensor(torch.as_tensor(obs[:2], dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1)
    with pytest.raises(ValueError, match=r"\[3\]"):
        pol.act(np.zeros(5))


def test_same_seed_same_actions_and_global_rng_untouched(run):
    algo, d = run
    obs = np.random.default_rng(1).standard_normal((4, 3))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a1 = [fastrsm.load_policy(str(d), seed=7).act(obs) for _ in range(1)][0]
    p = fastrsm.load_policy(str(d), seed=7)
    a2 = p.act(obs)
    assert torch.equal(before, torch.get_rng_state())
    np.testing.assert_array_equal(a1, a2)
    if algo != "sac":  # a diffusion policy samples: another seed gives other actions
        assert not np.array_equal(a1, fastrsm.load_policy(str(d), seed=8).act(obs))
        assert not np.array_equal(a2, p.act(obs))  # the stream moves on between calls


def test_particles_and_checkpoints(run):
    algo, d = run
    if algo == "sac":
        return
    alone = fastrsm.load_policy(str(d), checkpoint="latest", particles=1)
    assert alone.particles == 1 and alone.agent.cfg.particles == 1
    assert alone.act(np.zeros(3)).shape == (1,)


def test_bad_paths_and_corrupt_checkpoints(tmp_path, run):
    _, d = run
    with pytest.raises(UsageError, match="not a run directory"):
        fastrsm.load_policy(str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="no checkpoint"):
        fastrsm.load_policy(str(d), checkpoint=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UsageError, match="corrupt"):
        fastrsm.load_policy(str(d), checkpoint=str(bad))
    with pytest.raises(UsageError, match="particles"):
        fastrsm.load_policy(str(d), particles=0)


def test_runs_without_env_bounds_in_config_still_load(tmp_path, run):
    """Runs written before config.json carried the bounds: the env is made once to read them."""
    import shutil

    _, d = run
    old = tmp_path / "old"
    shutil.copytree(d, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg.pop("env", None)
    (old / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(fastrsm.load_policy(str(old), seed=3).act(np.ones(3)),
                                  fastrsm.load_policy(str(d), seed=3).act(np.ones(3)))


def test_compiled_policy_acts_as_the_eager_one(run):
    # backend="compile": the whole act as one compiled function (CompiledLearner); with inductor drawing from
    # torch's own random stream (fallback_random) it returns the eager policy's actions for the same seed
    import torch._inductor.config as inductor

    from fastrsm.compiled import CompiledLearner

    algo, d = run
    obs = np.random.default_rng(2).standard_normal((3, 3))
    eager = fastrsm.load_policy(str(d), seed=5).act(obs)
    with inductor.patch(fallback_random=True):
        pol = fastrsm.load_policy(str(d), seed=5, backend="compile")
        assert isinstance(pol.learner, CompiledLearner)
        np.testing.assert_allclose(pol.act(obs), eager, rtol=1e-5, atol=1e-5)
