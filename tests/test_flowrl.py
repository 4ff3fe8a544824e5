"""The `flowrl` preset (the authors' later FlowRL library, docs/algorithms.md §11) and the settings that express it: a
fixed temperature, one chain sample to explore and to bootstrap, SDAC's replay anchor and truncated reverse samples,
ReLU critics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.diffusion import Schedule
from fastrsm.learner import Learner
from fastrsm.losses import sdac_reverse_samples, sdac_reverse_samples_truncated
from fastrsm.replay import ReplayBuffer

S, A = 4, 2


def test_flowrl_preset_per_algorithm():
    d, s = make_config("flowrl", {"algo": "dpmd"}), make_config("flowrl", {"algo": "sdac"})
    assert (d.alpha_init, d.layers, d.learn_alpha, d.train_particles, d.particles) == (0.1, 2, False, 1, 10)
    assert (s.alpha_init, s.layers, s.reverse_samples, s.sdac_anchor, s.sdac_reverse) == (0.05, 3, 500, "replay",
                                                                                           "truncnorm")
    assert (d.num_envs, d.utd, d.warmup_steps, d.critic_layers, d.critic_activation) == (1, 1.0, 5000, 2, "relu")
    assert make_config("flowrl", {"algo": "sdac", "alpha_init": 0.2}).alpha_init == 0.2  # the user has the last word
    assert make_config("paper", {"algo": "sdac"}).sdac_anchor == "policy"


def test_truncated_reverse_samples_stay_in_the_box_and_invert_the_noising():
    torch.manual_seed(0)
    sched = Schedule.build("cosine", 10, 1.0)
    a_t = torch.tensor([[0.9, -0.2], [2.5, 0.0]])
    t = torch.tensor([3, 6])
    a0, eps = sdac_reverse_samples_truncated(sched, a_t, t, 20_000)
    assert a0.shape == (2, 20_000, 2) and a0.abs().max() <= 1.0
    c0, c1 = sched.sqrt_abar[t].view(2, 1, 1), sched.sqrt_1m_abar[t].view(2, 1, 1)
    torch.testing.assert_close(c0 * a0 + c1 * eps, a_t.unsqueeze(1).expand_as(a0), atol=1e-4, rtol=1e-4)
    # the same law as rejection sampling from the untruncated φ_{0|t}: compare the moments per dimension
    mu, sd = a_t / sched.sqrt_abar[t].view(2, 1), (sched.sqrt_1m_abar[t] / sched.sqrt_abar[t]).view(2, 1)
    for b in range(2):
        for j in range(2):
            z = mu[b, j] + sd[b, 0] * torch.randn(2_000_000)
            ref = z[z.abs() <= 1]
            assert ref.numel() > 20_000
            assert abs(a0[b, :, j].mean() - ref.mean()) < 0.02 and abs(a0[b, :, j].std() - ref.std()) < 0.02
    # clipping instead piles mass on the faces
    clipped, _ = sdac_reverse_samples(sched, a_t, t, 20_000)
    assert (clipped.abs() == 1).float().mean() > 0.1 and (a0.abs() == 1).float().mean() < 0.01


def _agent(algo: str, **kw):
    cfg = make_config("flowrl", {"algo": algo, "device": "cpu", "hidden": 16, "particles": 5, "diffusion_steps": 3,
                                 "reverse_samples": 8, "batch_size": 8, **kw})
    torch.manual_seed(0)
    return make_agent(algo, S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


@pytest.mark.parametrize("algo", ["dpmd", "sdac"])
def test_flowrl_agents_update_with_a_fixed_temperature(algo):
    agent = _agent(algo)
    assert all("alpha" not in agent.parts_for(u) for u in range(1000))
    assert agent.critic.act is torch.nn.functional.relu and len(agent.critic.linears) == 3  # 2 hidden + out
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(64, S, A, "cpu", 8)
    rb.add(rng.standard_normal((32, S)), rng.uniform(-1, 1, (32, A)), rng.standard_normal(32),
           rng.standard_normal((32, S)), rng.random(32) < 0.1)
    alpha0 = agent.alpha.item()
    before = [p.clone() for p in agent.policy.parameters()]
    for _ in range(3):
        m = Learner(agent).update(rb)
    assert agent.alpha.item() == alpha0 and "loss_alpha" not in m and "loss_pi" in m
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.policy.parameters()))


def test_training_and_target_particles(monkeypatch):
    agent = _agent("dpmd")
    calls = []
    real = agent.ops
    original = real.sample

    class Spy:
        def __getattr__(self, k):
            return getattr(real, k)

        def sample(self, eps_net, sched, s, particles, **kw):
            calls.append(particles)
            return original(eps_net, sched, s, particles, **kw)

    agent.ops = Spy()
    obs = torch.randn(3, S)
    agent.act(obs, explore=True)
    agent.act(obs, explore=False)
    agent.next_action_value(obs)
    assert calls == [1, 5, 1]  # explore: one chain sample; evaluate: best of N; bootstrap: target_particles


def test_sdac_replay_anchor_noises_the_replay_action():
    agent = _agent("sdac")
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(64, S, A, "cpu", 8)
    rb.add(rng.standard_normal((32, S)), rng.uniform(-1, 1, (32, A)), rng.standard_normal(32),
           rng.standard_normal((32, S)), rng.random(32) < 0.1)
    batch = rb.sample()
    seen = {}
    eps_net = agent.policy.eps_net
    original = eps_net.forward

    def spy(a_t, s, t):
        seen["s"] = s
        return original(a_t, s, t)

    eps_net.forward = spy
    _, drawn = agent.critic_step(batch)
    agent.policy_loss(batch, drawn)
    assert torch.equal(seen["s"], batch.obs)  # the replay state s, not s'
