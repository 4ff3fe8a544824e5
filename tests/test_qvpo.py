"""QVPO against hand computations: the best sample and its advantage weight, the weighted denoising loss with
its random-action entropy rows, the bootstrap from the target policy and target critics, and acting."""

from __future__ import annotations

import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.qvpo import best_sample_and_weight
from fastrsm.backend import make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.diffusion import q_sample
from fastrsm.replay import Batch

S, A = 5, 2


def _agent(seeds=None, **over):
    cfg = make_config("smoke", {"algo": "qvpo", "device": "cpu", "hidden": 16, "batch_size": 8,
                                "qvpo_train_samples": 4, "qvpo_random_actions": 3, **over})
    torch.manual_seed(0)
    return make_agent("qvpo", S, A, cfg, torch.device("cpu"), make_ops("torch", "cpu"), seeds=seeds)


def test_best_sample_and_its_advantage_by_hand():
    cand = torch.tensor([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[-0.1, 0.0], [0.7, 0.8], [0.9, -0.9]]])
    q = torch.tensor([[1.0, 4.0, 1.0], [0.0, -3.0, 3.0]])
    best, w = best_sample_and_weight(cand, q)
    torch.testing.assert_close(best, torch.tensor([[0.3, 0.4], [0.9, -0.9]]))
    torch.testing.assert_close(w, torch.tensor([4.0 - 2.0, 3.0 - 0.0]))


def test_policy_loss_by_hand():
    agent = _agent(qvpo_entropy_coef=0.5)
    obs = torch.randn(3, S)
    torch.manual_seed(9)
    loss, _ = agent.policy_loss(Batch(obs, torch.zeros(3, A), torch.zeros(3), obs, torch.zeros(3)))
    torch.manual_seed(9)
    p = agent.policy
    cand = p.sample(obs, 4)  # the same draws as the loss's candidates
    q = agent.critic(obs.unsqueeze(1).expand(3, 4, S), cand).mean(0)
    best, w = best_sample_and_weight(cand, q)
    rand = torch.rand(9, A) * 2 - 1  # 3 random actions per state, uniform on the box
    states = torch.cat([obs, obs.repeat_interleave(3, 0)])
    actions = torch.cat([best, rand])
    weights = torch.cat([w, 0.5 * w.repeat_interleave(3)])
    t = torch.randint(0, p.sched.T, (12,))
    eps = torch.randn(12, A)
    err = (p.eps_net(q_sample(p.sched, actions, t, eps), states, t) - eps) ** 2
    torch.testing.assert_close(loss, (weights[:, None] * err).mean())
    assert (w >= 0).all()


def test_bootstrap_is_the_target_policys_best_under_the_target_critics():
    agent = _agent(qvpo_behavior_samples=3)
    with torch.no_grad():  # targets that differ from the online networks, so that a mix-up shows
        for prm in [*agent.policy_target.parameters(), *agent.critic_target.parameters()]:
            prm.add_(0.3 * torch.randn_like(prm))
    s2 = torch.randn(4, S)
    torch.manual_seed(2)
    got, _ = agent.next_action_value(s2)
    torch.manual_seed(2)
    cand = agent.policy_target.sample(s2, 3)
    q = agent.critic_target.min_q(s2.unsqueeze(1).expand(4, 3, S), cand)
    a2 = cand[torch.arange(4), q.argmax(1)]
    torch.testing.assert_close(got, agent.critic_target.min_q(s2, a2))


def test_acting_one_sample_exploring_best_of_n_evaluating():
    agent = _agent(particles=6)
    obs = torch.randn(5, S)
    a = agent.act(obs, explore=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, agent.policy.sample(obs, 1, generator=torch.Generator().manual_seed(1))[:, 0])
    det = agent.act(obs, explore=False, generator=torch.Generator().manual_seed(1))
    cand = agent.policy.sample(obs, 6, generator=torch.Generator().manual_seed(1))
    q = agent.critic.min_q(obs.unsqueeze(1).expand(5, 6, S), cand)
    torch.testing.assert_close(det, cand[torch.arange(5), q.argmax(1)])


@pytest.mark.parametrize("over, needle", [({"qvpo_train_samples": 0}, "qvpo-train-samples"),
                                          ({"qvpo_entropy_coef": -1}, "qvpo-entropy-coef"),
                                          ({"qvpo_random_actions": -1}, "qvpo-random-actions")])
def test_bad_settings_are_refused(over, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("smoke", {"algo": "qvpo", **over})
