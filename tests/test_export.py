"""fastrsm.export: a run's policy compiled into one AOTInductor file acts exactly as `load_policy` does (same
seed, same actions: the package draws from torch's generator), for any batch up to its max, in the env's
bounds; bad files and bad input get one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastrsm
from fastrsm.backend import compiler_available
from fastrsm.export import main as export_main
from fastrsm.train import main as train_main
from fastrsm.utils import UsageError

pytestmark = pytest.mark.skipif(not compiler_available(), reason="AOTInductor needs a C++ compiler")

TINY = ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--quiet", "--total-steps", "300",
        "--warmup-steps", "100", "--eval-every", "300", "--eval-episodes", "1", "--batch-size", "32",
        "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100", "--reverse-samples", "4"]


@pytest.fixture(scope="module", params=["dpmd", "sac", "td3", "qsm", "dpmd2", "dipo", "ppo", "dppo"])
def exported(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    run = d / "run"
    assert train_main([*TINY, "--algo", request.param, "--run-dir", str(run)]) == 0
    out = d / "deploy" / "policy.pt2"  # the CLI makes the folder
    assert export_main([str(run), str(out), "--max-batch", "8"]) == 0
    return request.param, run, out


def test_exported_policy_acts_as_load_policy(exported):
    algo, run, out = exported
    pol = fastrsm.load_exported(str(out), seed=7)
    assert (pol.obs_dim, pol.act_dim, pol.algo, pol.env_id) == (3, 1, algo, "Pendulum-v1")
    assert pol.particles == (None if algo in ("sac", "td3", "ppo", "dppo") else 4) and pol.max_batch == 8
    obs = np.random.default_rng(0).standard_normal((5, 3))
    ref = fastrsm.load_policy(str(run), seed=7)
    for batch in (obs, obs[:1], obs[0]):  # a batch, one row, one observation
        a = pol.act(batch)
        assert a.dtype == np.float32 and a.shape == np.asarray(ref.act(batch)).shape  # ref moves its stream too
    pol, ref = fastrsm.load_exported(str(out), seed=7), fastrsm.load_policy(str(run), seed=7)
    for _ in range(2):  # the same stream call after call
        a, b = pol.act(obs), ref.act(obs)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert np.all(np.abs(a) <= 2.0)  # Pendulum's torque bounds
    if algo == "dpmd":  # a diffusion policy samples: the stream moves between calls, another seed differs
        assert not np.array_equal(pol.act(obs), pol.act(obs))
        assert not np.array_equal(fastrsm.load_exported(str(out), seed=8).act(obs),
                                  fastrsm.load_exported(str(out), seed=7).act(obs))
    torch.manual_seed(1)
    before = torch.get_rng_state()
    pol.act(obs)
    assert torch.equal(before, torch.get_rng_state())  # the caller's RNG is untouched
    t = pol.act_tensor(torch.as_tensor(obs[:2], dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1)
    with pytest.raises(ValueError, match="B <= 8"):
        pol.act(np.zeros((9, 3)))
    with pytest.raises(ValueError, match=r"\[3\]"):
        pol.act(np.zeros(4))


def test_bad_files_and_runs(tmp_path, exported):
    _, run, _ = exported
    with pytest.raises(UsageError, match="no exported policy"):
        fastrsm.load_exported(str(tmp_path / "missing.pt2"))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a package")
    with pytest.raises(UsageError, match="not a loadable exported policy"):
        fastrsm.load_exported(str(junk))
    assert export_main([str(tmp_path / "nope"), str(tmp_path / "p.pt2")]) == 2
    assert not (tmp_path / "p.pt2").exists()
    assert export_main([str(run), str(tmp_path / "p.pt2"), "--max-batch", "1"]) == 2
