"""The on-policy loop (fastrsm.onpolicy) inside fastrsm.runner: exact resume at a rollout boundary, determinism,
the run directory every tool reads (fastrsm-eval, fastrsm-plot), the gymnasium fallback, and --backend compile."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fastrsm.evaluate import main as eval_main
from fastrsm.plot import main as plot_main
from fastrsm.train import main

# rollouts of 2 x 50 = 100 env steps; checkpoints (and the env cuts) every 150 steps land at rollout boundaries 200,
# 300, 500, 600 in an uninterrupted 600-step run and in 300 + a resume to 600 alike. anneal-lr off: a run asked for
# 300 steps anneals over 300, so only a schedule that does not depend on the budget can match an unbroken run.
TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet", "--num-envs", "2",
        "--rollout-steps", "50", "--num-minibatches", "4", "--update-epochs", "2", "--eval-every", "150",
        "--checkpoint-every", "150", "--eval-episodes", "2", "--log-every", "100", "--hidden", "16",
        "--diffusion-steps", "3", "--set", "anneal_lr=false"]


def _params(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(run_dir, "checkpoints", "latest.pt"), weights_only=False)["agent"]["modules"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", ["ppo", "dppo"])
def test_resume_at_a_rollout_boundary_is_exact(tmp_path, algo):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*TINY, "--algo", algo, "--total-steps", "600", "--run-dir", str(straight)]) == 0
    assert main([*TINY, "--algo", algo, "--total-steps", "300", "--run-dir", str(split)]) == 0
    assert json.loads((split / "summary.json").read_text())["env_steps"] == 300
    assert main(["--resume", str(split), "--total-steps", "600", "--quiet"]) == 0
    assert (straight / "eval.csv").read_text() == (split / "eval.csv").read_text()
    assert len((split / "eval.csv").read_text().splitlines()) == 1 + 4
    a, b = _params(straight), _params(split)
    assert _same(a, b)
    assert "obs_norm.mean" in a and float(a["obs_norm.count"]) > 500  # the statistics are part of the state


def test_same_seed_same_run_other_seed_differs(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert main([*TINY, "--algo", "ppo", "--total-steps", "200", "--seed", str(seed),
                     "--run-dir", str(tmp_path / name)]) == 0
    assert _same(_params(tmp_path / "a"), _params(tmp_path / "b"))
    assert not _same(_params(tmp_path / "a"), _params(tmp_path / "c"))


def test_the_run_directory_serves_eval_and_plot(tmp_path):
    run = tmp_path / "run"
    assert main([*TINY, "--algo", "dppo", "--total-steps", "300", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["algo"] == "dppo" and summary["env_steps"] == 300
    header = (run / "train.csv").read_text().splitlines()[0].split(",")
    assert {"step", "updates", "loss_pi", "loss_v", "approx_kl", "episode_return"} <= set(header)
    assert eval_main([str(run), "--episodes", "2", "--device", "cpu"]) == 0
    assert json.loads((run / "reeval.json").read_text())["algo"] == "dppo"
    assert plot_main([str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_gymnasium_fallback_runs_the_same_loop(tmp_path):
    run = tmp_path / "gym"
    assert main([*TINY, "--algo", "ppo", "--total-steps", "200", "--env-backend", "gymnasium",
                 "--run-dir", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 200


@pytest.mark.slow
def test_backend_compile_runs_and_its_minibatch_step_matches_eager(tmp_path):
    """A whole run under --backend compile (its act draws from inductor's generator, so its trajectory is its own),
    and the compiled minibatch step (both gradient steps, fused Adam traced into the graph) against the eager one
    on the same agent and minibatches: equal up to floating-point reassociation."""
    from fastrsm.agents import make_agent
    from fastrsm.backend import make_ops
    from fastrsm.config import make_config
    from fastrsm.onpolicy import OnPolicyLearner, synthetic_rollout

    run = tmp_path / "compiled"
    assert main([*TINY, "--algo", "ppo", "--total-steps", "200", "--backend", "compile", "--run-dir", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["backend"] == "compile"

    cfg = make_config("smoke", {"algo": "ppo", "device": "cpu", "num_envs": 2, "rollout_steps": 16,
                                "num_minibatches": 2, "hidden": 16})
    agents = {}
    for backend in ("torch", "compile"):
        torch.manual_seed(0)
        agents[backend] = make_agent("ppo", 4, 1, cfg, torch.device("cpu"), make_ops(backend, "cpu"))
    torch.manual_seed(1)
    flat = agents["torch"].flat_rollout(synthetic_rollout(agents["torch"], 16, 2))
    learner = OnPolicyLearner(agents["compile"], "compile")
    for idx in torch.randperm(32).view(4, 8):
        mb = {k: v[idx] for k, v in flat.items()}
        eager, compiled = agents["torch"].minibatch_step(mb), learner.step(mb)
        assert torch.allclose(eager["loss_pi"], compiled["loss_pi"], atol=1e-5)
    for (k, a), b in zip(agents["torch"].state_dict().items(), agents["compile"].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
