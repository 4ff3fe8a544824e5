"""The authors' clocks (docs/algorithms.md §4–7) and the SAC baseline the paper compares against: each test fails on the
clock fastrsm had before (α every 250 *policy* updates, the lr decay over gradient updates, DPMD's statistics on policy
steps only, unscaled cosine β, SAC with a policy delay and α₀ = 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.diffusion import make_betas
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer

S, A = 4, 2


def agent(algo: str, preset: str = "paper", **kw):
    torch.manual_seed(0)
    cfg = make_config(preset, {"algo": algo, "hidden": 16, "layers": 2, "particles": 3, "diffusion_steps": 3,
                               "reverse_samples": 4, "batch_size": 8, "device": "cpu", **kw})
    return make_agent(algo, S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


def replay(batch: int = 8) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(64, S, A, "cpu", batch)
    rb.add(rng.standard_normal((64, S)), rng.uniform(-1, 1, (64, A)), 50 + 10 * rng.standard_normal(64),
           rng.standard_normal((64, S)), rng.random(64) < 0.05)
    return rb


def alpha_steps(a, updates: int) -> int:
    n, pu = 0, 0
    for u in range(updates):
        parts = a.parts_for(u)
        n += "alpha" in parts
        pu += "policy" in parts
    return n


@pytest.mark.parametrize("algo", ["dpmd", "sdac"])
def test_alpha_steps_count_gradient_updates(algo):
    a = agent(algo)
    assert (a.cfg.policy_delay, a.cfg.alpha_every) == (2, 250)
    assert alpha_steps(a, 100_000) == 400  # every 250 gradient updates; the old clock gave 200


def test_policy_lr_decay_counts_policy_optimiser_steps():
    a = agent("dpmd")
    lr = lambda: float(a.opt_pi.param_groups[0]["lr"])  # noqa: E731
    for updates, policy_steps, expect in [(50_000, 25_000, 3e-4), (100_000, 50_000, 1.65e-4),
                                          (150_000, 75_000, 3e-5), (60_000, 30_000, 3e-4 - 2.7e-4 * 0.1)]:
        a.updates, a.policy_updates = updates, policy_steps
        a.schedule()
        assert lr() == pytest.approx(expect), (updates, policy_steps)  # old clock: 3e-5 already at 75k updates


def test_dpmd_running_statistics_move_on_every_gradient_update():
    a = agent("dpmd", q_norm_rate=0.5)
    rb = replay()
    parts = a.next_parts()
    assert parts == ("critic",)  # the first update runs no policy step ...
    m = Learner(a).update(rb)
    assert a.q_stats.mean.item() != 0.0 and a.q_stats.std.item() != 1.0  # ... and still moves the statistics
    assert "q_run_mean" in m and "loss_pi" not in m


def test_dpmd_softmax_weights_are_normalised_by_the_running_statistics():
    """At MuJoCo Q scales raw Q/λ is a one-hot softmax; normalised by the running statistics it is not."""
    from fastrsm.agents.diffusion_agent import NextActions
    from fastrsm.agents.dpmd import DPMDReuse

    a = agent("dpmd", dpmd_weights="softmax", particles=8)
    B, N = 16, 8
    g = torch.Generator().manual_seed(0)
    q = 500 + 100 * torch.randn(B, N, generator=g)  # Q in the hundreds, particles tens apart
    drawn = NextActions(torch.zeros(B, A), torch.rand(B, N, A, generator=g) * 2 - 1, q)
    reuse = DPMDReuse(drawn, q[:, 0], torch.tensor(500.0), torch.tensor(100.0))
    raw = torch.softmax(q / a.alpha, -1).max(-1).values
    assert raw.mean() > 0.95  # the old weights: (almost) all on the argmax particle
    from fastrsm.replay import Batch

    s = torch.randn(B, S, generator=g)
    batch = Batch(s, torch.zeros(B, A), torch.zeros(B), s, torch.zeros(B))
    _, m = a.policy_loss(batch, reuse)
    assert 1.0 <= float(m["w_max"]) < 0.5 * N  # normalised: spread over the particles


def test_cosine_schedule_is_scaled_like_the_linear_one():
    torch.testing.assert_close(make_betas("cosine", 20, 0.8), 0.8 * make_betas("cosine", 20, 1.0))
    torch.testing.assert_close(make_betas("linear", 20, 0.8), 0.8 * make_betas("linear", 20, 1.0))


def test_sac_is_the_authors_baseline():
    a = agent("sac")
    assert a.alpha.item() == pytest.approx(math.e)  # log α₀ = 1
    assert all("policy" in a.parts_for(u) for u in range(10))  # actor, α and targets every update
    rb = replay()
    before = [p.clone() for p in a.critic_target.parameters()]
    Learner(a).update(rb)
    assert a.policy_updates == 1 and any(not torch.equal(b, p) for b, p in zip(before, a.critic_target.parameters()))
    # the earlier variant stays reachable by settings
    td3 = agent("sac", sac_policy_delay=2, sac_alpha_init=1.0)
    assert [("policy" in td3.parts_for(u)) for u in range(4)] == [False, True, False, True]
    assert td3.alpha.item() == pytest.approx(1.0)
