"""TD3 against hand computations: the target policy smoothing, the bootstrap, the actor loss over both critics
and its gradient (into the actor only), the delayed schedule with its target updates, and acting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.td3 import smoothed_target_action
from fastrsm.backend import make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer

S, A = 5, 3


def _agent(**over):
    cfg = make_config("smoke", {"algo": "td3", "device": "cpu", "hidden": 16, "batch_size": 8, **over})
    torch.manual_seed(0)
    return make_agent("td3", S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


def _replay(n: int = 40) -> ReplayBuffer:
    rb = ReplayBuffer(64, S, A, "cpu", 8)
    g = np.random.default_rng(0)
    rb.add(g.normal(size=(n, S)), g.uniform(-1, 1, (n, A)), g.normal(size=n), g.normal(size=(n, S)),
           g.random(n) < 0.2, np.ones(n, bool))
    return rb


def test_target_smoothing_clips_the_noise_then_the_action():
    a = torch.tensor([[0.0, 0.9, -0.95], [0.5, -0.2, 1.0]])
    z = torch.tensor([[1.0, 1.0, -4.0], [-10.0, 0.5, 2.0]])
    got = smoothed_target_action(a, z, sigma=0.2, clip=0.5)
    # σ·z = [0.2, 0.2, -0.8 -> -0.5], [-2 -> -0.5, 0.1, 0.4]; then a + noise clipped to [-1, 1]
    want = torch.tensor([[0.2, 1.0, -1.0], [0.0, -0.1, 1.0]])
    torch.testing.assert_close(got, want)


def test_bootstrap_is_the_smaller_target_critic_at_the_smoothed_target_action():
    agent = _agent()
    s2 = torch.randn(6, S)
    torch.manual_seed(3)
    got, _ = agent.next_action_value(s2)
    torch.manual_seed(3)
    a_t = agent.actor_target(s2)
    z = torch.randn_like(a_t)
    a2 = (a_t + (0.2 * z).clamp(-0.5, 0.5)).clamp(-1, 1)
    q1, q2 = agent.critic_target(s2, a2)
    torch.testing.assert_close(got, torch.minimum(q1, q2))


def test_actor_loss_is_minus_the_mean_of_both_critics_and_moves_only_the_actor():
    agent = _agent()
    batch = _replay().sample()
    critic_before = [p.clone() for p in agent.critic.parameters()]
    actor_before = [p.clone() for p in agent.actor.parameters()]
    with torch.no_grad():
        q = agent.critic(batch.obs, agent.actor(batch.obs))
        want = -(q[0].mean() + q[1].mean()) / 2
    m = agent.policy_step(batch, None)
    torch.testing.assert_close(m["loss_pi"], want)
    assert all(torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))


def test_actor_gradient_is_the_chain_rule_through_the_mean_of_both_critics():
    agent = _agent()
    obs = torch.randn(4, S)
    p = next(agent.actor.parameters())
    loss = -agent.critic(obs, agent.actor(obs)).mean()
    (g_loss,) = torch.autograd.grad(loss, p)
    a_leaf = agent.actor(obs).detach().requires_grad_()
    (dq_da,) = torch.autograd.grad(-agent.critic(obs, a_leaf).mean(), a_leaf)
    (g_chain,) = torch.autograd.grad(agent.actor(obs), p, grad_outputs=dq_da)
    torch.testing.assert_close(g_loss, g_chain)


def test_actor_and_targets_move_every_second_update_from_update_0():
    agent = _agent()
    rb = _replay()
    learner = Learner(agent)
    seen = []
    for _ in range(5):
        actor_t = [p.clone() for p in agent.actor_target.parameters()]
        critic_t = [p.clone() for p in agent.critic_target.parameters()]
        parts = agent.next_parts()
        learner.update(rb)
        moved_a = any(not torch.equal(a, b) for a, b in zip(actor_t, agent.actor_target.parameters()))
        moved_c = any(not torch.equal(a, b) for a, b in zip(critic_t, agent.critic_target.parameters()))
        assert moved_a == moved_c == ("policy" in parts)
        seen.append(parts)
    assert seen == [("critic", "policy"), ("critic",)] * 2 + [("critic", "policy")]
    assert (agent.updates, agent.policy_updates) == (5, 3)
    assert agent.logged() == {}  # no temperature to log


def test_acting_adds_clipped_noise_only_when_exploring():
    agent = _agent(td3_explore_noise=0.5)
    obs = torch.randn(64, S)
    det = agent.act(obs, explore=False)
    torch.testing.assert_close(det, agent.actor(obs).detach())
    g = torch.Generator().manual_seed(1)
    noisy = agent.act(obs, explore=True, generator=g)
    z = torch.randn(det.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noisy, (det + 0.5 * z).clamp(-1, 1))
    assert noisy.abs().max() <= 1 and not torch.equal(noisy, det)


@pytest.mark.parametrize("over, needle", [({"td3_noise_clip": -1}, "td3-noise-clip"),
                                          ({"td3_policy_delay": 0}, "td3-policy-delay"),
                                          ({"td3_actor_activation": "tanh"}, "td3-actor-activation")])
def test_bad_settings_are_refused(over, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("smoke", {"algo": "td3", **over})
