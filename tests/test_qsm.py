"""QSM against hand computations: the score target from the target critics' action gradient (single and per
seed), the policy loss and where its gradient goes, the bootstrap, and acting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.qsm import score_target
from fastrsm.backend import make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.diffusion import q_sample
from fastrsm.replay import Batch, ReplayBuffer

S, A = 5, 3


def _agent(seeds=None, **over):
    cfg = make_config("smoke", {"algo": "qsm", "device": "cpu", "hidden": 16, "batch_size": 8, **over})
    torch.manual_seed(0)
    return make_agent("qsm", S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"), seeds=seeds)


def test_score_target_by_hand():
    g = torch.tensor([[1.0, -2.0], [0.5, 0.5]])  # mean |g| = 1
    c = torch.tensor([0.6, 0.8])
    got = score_target(g, c, temp=0.1)
    want = -torch.tensor([[0.6, -1.2], [0.4, 0.4]]) / (0.1 * (1.0 + 1e-6))
    torch.testing.assert_close(got, want)
    # with a seed axis, each seed's gradient is normalised by its own batch: seed 1's is 4x seed 0's
    gs = torch.stack([g, 4 * g])
    got_s = score_target(gs, torch.stack([c, c]), temp=0.1, seeds=2)
    torch.testing.assert_close(got_s[0], want)
    torch.testing.assert_close(got_s[1], -torch.tensor([[0.6, -1.2], [0.4, 0.4]]) / (0.1 * (1.0 + 0.25e-6)))


def test_policy_loss_regresses_eps_onto_the_target_critics_gradient():
    agent = _agent()
    obs, act = torch.randn(6, S), torch.rand(6, A) * 2 - 1
    torch.manual_seed(4)
    loss, _ = agent.policy_loss(Batch(obs, act, torch.zeros(6), obs, torch.zeros(6)))
    torch.manual_seed(4)
    sched = agent.policy.sched
    t = torch.randint(0, sched.T, (6,))
    eps = torch.randn(6, A)
    a_t = q_sample(sched, act, t, eps).requires_grad_()
    q1, q2 = agent.critic_target(obs, a_t)
    (g,) = torch.autograd.grad(((q1 + q2) / 2).sum(), a_t)
    target = -sched.sqrt_1m_abar[t].unsqueeze(-1) * g / (0.1 * (g.abs().mean() + 1e-6))
    want = ((agent.policy.eps_net(a_t.detach(), obs, t) - target) ** 2).mean()
    torch.testing.assert_close(loss, want)


def test_policy_step_moves_the_policy_only():
    agent = _agent()
    rb = ReplayBuffer(64, S, A, "cpu", 8)
    g = np.random.default_rng(0)
    rb.add(g.normal(size=(30, S)), g.uniform(-1, 1, (30, A)), g.normal(size=30), g.normal(size=(30, S)),
           g.random(30) < 0.2, np.ones(30, bool))
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    agent.policy_step(rb.sample(), None)
    changed = {k.split(".")[0] for k, v in agent.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"policy"}
    assert all(p.grad is None or not p.grad.any() for p in agent.critic_target.parameters())


def test_bootstrap_is_one_chain_sample_at_s2_under_the_target_critics():
    agent = _agent()
    s2 = torch.randn(4, S)
    torch.manual_seed(7)
    got, _ = agent.next_action_value(s2)
    torch.manual_seed(7)
    a2 = agent.policy.sample(s2, 1).squeeze(-2)
    torch.testing.assert_close(got, agent.critic_target.min_q(s2, a2))


def test_acting_one_noisy_sample_exploring_best_of_n_evaluating():
    agent = _agent(particles=7, qsm_explore_noise=0.3)
    obs = torch.randn(5, S)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    a = agent.act(obs, explore=True, generator=gen())
    g = gen()
    x0 = agent.policy.sample(obs, 1, generator=g).squeeze(-2)
    z = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(a, (x0 + 0.3 * z).clamp(-1, 1))
    det = agent.act(obs, explore=False, generator=gen())
    cand = agent.policy.sample(obs, 7, generator=gen())
    q = agent.critic.min_q(obs.unsqueeze(1).expand(5, 7, S), cand)
    torch.testing.assert_close(det, cand[torch.arange(5), q.argmax(1)])
    assert agent.deploy_particles() == 7


@pytest.mark.parametrize("over, needle", [({"qsm_temp": 0}, "qsm-temp"),
                                          ({"qsm_explore_noise": -1}, "qsm-explore-noise")])
def test_bad_settings_are_refused(over, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("smoke", {"algo": "qsm", **over})
