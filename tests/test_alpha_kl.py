"""alpha_mode kl for DPMD and SDAC: α steps with every policy step so that one state's weights over its candidates
sit `alpha_kl` nats from uniform, and the exploration noise is explore_std itself. Checked by hand on the entropy,
in the direction α moves from either side of the budget, in the schedule, the settings it refuses, and a resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.losses import kl_alpha_loss, logit_entropy
from fastrsm.replay import ReplayBuffer
from fastrsm.train import main

S, A = 5, 2


def _agent(algo: str, **over):
    extra = {"dpmd_weights": "softmax"} if algo == "dpmd" else {}
    cfg = make_config("smoke", {"algo": algo, "device": "cpu", "hidden": 16, "particles": 4, "diffusion_steps": 3,
                                "reverse_samples": 8, "batch_size": 16, "policy_delay": 1, "alpha_mode": "kl",
                                **extra, **over})
    torch.manual_seed(0)
    return make_agent(algo, S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


def _replay() -> ReplayBuffer:
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(128, S, A, "cpu", 16)
    rb.add(rng.standard_normal((64, S)), rng.uniform(-1, 1, (64, A)), 10 * rng.standard_normal(64),
           rng.standard_normal((64, S)), rng.random(64) < 0.1)
    return rb


def test_logit_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0], [1.0, 1.0, -60.0, -60.0]])
    torch.testing.assert_close(logit_entropy(logits), torch.tensor([math.log(4), 0.0, math.log(2)]),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("algo", ["sdac", "dpmd"])
@pytest.mark.parametrize("alpha_init, falls", [(1e4, True), (1e-5, False)])
def test_alpha_moves_toward_the_budget(algo, alpha_init, falls):
    """α huge: weights uniform, H = log K > log K − κ, so α falls; α tiny: one candidate takes all, H ≈ 0, so α
    rises. The step is Adam's: log α moves by about lr_alpha either way."""
    agent = _agent(algo, alpha_init=alpha_init, alpha_kl=0.5, lr_alpha=0.01)
    rb = _replay()
    before = float(agent.log_alpha.detach())
    out = agent.update_step(rb.sample(), ("critic", "policy"))
    after = float(agent.log_alpha.detach())
    assert (after < before) if falls else (after > before)
    assert abs(after - before) == pytest.approx(0.01, rel=0.05)
    assert "loss_alpha" in out and "w_entropy" in out and "_w_entropy" not in out


def test_the_loss_is_the_budget_gap_times_alpha():
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    h = torch.tensor([math.log(8), math.log(8) - 1.0])  # mean log 8 − 0.5
    loss = kl_alpha_loss(log_alpha, h, 0.5, 8)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)  # on the budget: no pull
    loss = kl_alpha_loss(log_alpha, h, 0.2, 8)  # budget smaller than the KL: α should rise, d/dlogα < 0
    loss.backward()
    torch.testing.assert_close(log_alpha.grad, torch.tensor(2.0 * (0.2 - 0.5)))


@pytest.mark.parametrize("algo", ["sdac", "dpmd"])
def test_no_alpha_part_and_noise_is_explore_std(algo):
    agent = _agent(algo, alpha_init=7.0, explore_std=0.15, policy_delay=2, alpha_every=3)
    assert all("alpha" not in p for p in agent.reachable_parts())
    assert agent.parts_for(0) == ("critic",) and agent.parts_for(1) == ("critic", "policy")
    assert agent.exploration_std == 0.15  # not 0.15 · α
    noise = _agent(algo, alpha_mode="noise", alpha_init=7.0, explore_std=0.15)
    assert float(noise.exploration_std) == pytest.approx(0.15 * 7.0)


@pytest.mark.parametrize("over, needle", [
    ({"algo": "sdac", "alpha_mode": "entropy"}, "unknown alpha-mode"),
    ({"algo": "sdac", "alpha_mode": "kl", "alpha_kl": 0.0}, "alpha-kl must be a positive number"),
    ({"algo": "dpmd", "alpha_mode": "kl", "dpmd_weights": "exp"}, "needs dpmd-weights softmax"),
    ({"algo": "dpmd", "alpha_mode": "kl", "dpmd_weights": "advantage"}, "needs dpmd-weights softmax"),
])
def test_refused_in_one_line(over, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("smoke", over)


def test_resume_is_exact_with_the_kl_temperature(tmp_path):
    tiny = ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--quiet", "--algo", "sdac",
            "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "1",
            "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16",
            "--reverse-samples", "4", "--log-every", "50", "--set", "alpha_mode=kl"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*tiny, "--total-steps", "600", "--run-dir", str(straight)]) == 0
    assert main([*tiny, "--total-steps", "300", "--run-dir", str(split)]) == 0
    assert main(["--resume", str(split), "--total-steps", "600", "--quiet"]) == 0
    assert (straight / "eval.csv").read_text() == (split / "eval.csv").read_text()
    a = torch.load(straight / "checkpoints" / "latest.pt", weights_only=False)["agent"]["modules"]
    b = torch.load(split / "checkpoints" / "latest.pt", weights_only=False)["agent"]["modules"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((straight / "config.json").read_text())["config"]["alpha_mode"] == "kl"
    header = (straight / "train.csv").read_text().splitlines()[0].split(",")
    assert "w_entropy" in header and "loss_alpha" in header


@pytest.mark.parametrize("algo", ["sdac", "dpmd"])
def test_emulated_cuda_graphs_match_eager(algo):
    """α's step inside the policy part (and its floor, an in-place clamp) replays under the emulated capture as
    eager runs it: the same α, parameters and metrics after updates of both shapes."""
    from fastrsm.graphs import GraphedLearner
    from fastrsm.learner import Learner
    from fastrsm.utils import seed_everything

    def agent():
        seed_everything(0)
        return _agent(algo, policy_delay=2, alpha_init=3.0, lr_alpha=0.05)

    plain, graphed = agent(), agent()
    rb, rb_fast = _replay(), _replay()
    fast = GraphedLearner(graphed, 3, emulate=True)
    metrics = []
    for learner, replay in ((Learner(plain), rb), (fast, rb_fast)):
        torch.manual_seed(1)
        metrics.append([{k: float(v) for k, v in learner.update(replay).items()} for _ in range(6)])
    assert metrics[0] == metrics[1]
    assert sorted(fast._updates) == [("critic",), ("critic", "policy")] and fast.captures == 2
    for (k, a), b in zip(plain.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=k)
    assert float(plain.log_alpha.detach()) != math.log(3.0)  # α did move
