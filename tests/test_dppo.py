"""DPPO (fastrsm.agents.dppo): the chain's per-step log-probabilities against a direct Gaussian computation, the
per-step clip and discount, the frozen base steps, and one learning test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.dppo import clip_schedule
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.onpolicy import synthetic_rollout
from fastrsm.train import train


def _agent(**over):
    cfg = make_config("smoke", {"algo": "dppo", "device": "cpu", "diffusion_steps": 4, "hidden": 16,
                                "num_envs": 2, "rollout_steps": 8, "num_minibatches": 2, **over})
    torch.manual_seed(0)
    return make_agent("dppo", 3, 2, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


def test_chain_shape_and_its_last_state_is_the_action():
    agent = _agent()
    a, chain = agent.policy_act(torch.randn(5, 3), explore=True)
    assert chain.shape == (5, agent.K + 1, 2) and agent.K == 4
    assert torch.equal(chain[:, -1], a) and a.abs().max() <= 1.0


def test_step_log_prob_against_torch_normal():
    """log π(x_{k+1} | x_k, s) of each fine-tuned step: the DDPM posterior mean around x̂_0 = clip((x − √(1−ᾱ)ε̂)/√ᾱ,
    ±1), std max(√β̃, floor), each element's log-density clamped to [−5, 2], averaged over the action."""
    agent = _agent(dppo_min_logprob_std=0.1)
    s = torch.randn(6, 3)
    _, chain = agent.policy_act(s, explore=True)
    got = agent.log_prob(s, chain)
    assert got.shape == (6, agent.K)
    sch = agent
    for k in range(agent.K):
        i = agent.K - 1 - k
        x = chain[:, k]
        eps = agent.eps_net(x, s, torch.full((6,), i))
        x0 = ((x - sch.sqrt_1m_abar[i] * eps) / sch.sqrt_abar[i]).clamp(-1, 1)
        mean = sch.post_c0[i] * x0 + sch.post_ct[i] * x
        std = max(float(sch.post_std[i]), 0.1)
        want = torch.distributions.Normal(mean, std).log_prob(chain[:, k + 1]).clamp(-5, 2).mean(-1)
        assert torch.allclose(got[:, k], want, atol=1e-5), k
    # the last step (index 0) has no posterior noise: its std is the floor
    assert float(sch.post_std[0]) == 0.0


def test_clip_schedule_and_denoising_discount():
    eps = clip_schedule(4, clip=0.1, base=0.001, rate=3.0)
    frac = torch.tensor([0, 1 / 3, 2 / 3, 1.0])
    want = 0.001 + 0.099 * (torch.exp(3 * frac) - 1) / (math.exp(3) - 1)
    assert torch.allclose(eps, want.float(), atol=1e-7) and math.isclose(float(eps[-1]), 0.1, rel_tol=1e-6)
    assert torch.allclose(clip_schedule(3, 0.1, 0.1, 3.0), torch.full((3,), 0.1))
    agent = _agent(dppo_gamma_denoising=0.9)
    assert torch.allclose(agent.discount, torch.tensor([0.9**3, 0.9**2, 0.9, 1.0]))


def test_minibatch_loss_by_hand():
    """The policy loss is the clipped surrogate per (row, step), the advantage discounted per step, averaged over
    steps and valid rows."""
    agent = _agent(norm_adv=False)
    s = torch.randn(4, 3)
    _, chain = agent.policy_act(s, True)
    old = agent.log_prob(s, chain).detach() + torch.tensor([0.3, -0.3, 0.0, 0.05])  # ratios away from 1
    mb = {"obs": s, "sample": chain, "old_logp": old, "adv": torch.tensor([1.0, -2.0, 0.5, 3.0]),
          "ret": torch.zeros(4), "old_v": torch.zeros(4), "mask": torch.tensor([1.0, 1.0, 1.0, 0.0])}
    with torch.no_grad():
        ratio = (agent.log_prob(s, chain) - old).exp()
        a = mb["adv"].unsqueeze(-1) * agent.discount
        per = torch.maximum(-a * ratio, -a * ratio.clamp(1 - agent.clip_k, 1 + agent.clip_k))
        want = per.mean(-1)[:3].mean()
    metrics = agent.minibatch_step(mb)
    assert torch.allclose(metrics["loss_pi"], want, atol=1e-6)


def test_frozen_base_steps_stay_and_fine_tuned_ones_learn():
    agent = _agent(dppo_ft_steps=2)
    assert agent.K == 2 and agent.eps_base is not None
    _, chain = agent.policy_act(torch.randn(3, 3), True)
    assert chain.shape == (3, 3, 2)
    base = [p.clone() for p in agent.eps_base.parameters()]
    ft = [p.clone() for p in agent.eps_net.parameters()]
    agent.learn(synthetic_rollout(agent, 8, 2))
    assert all(torch.equal(a, b) for a, b in zip(base, agent.eps_base.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ft, agent.eps_net.parameters()))
    with pytest.raises(ValueError, match="dppo-ft-steps must be in"):
        _agent(dppo_ft_steps=9)


@pytest.mark.slow
def test_dppo_reaches_900_on_inverted_pendulum(tmp_path):
    """Trained from scratch (no pre-trained policy). Smoke preset (8 EnvPool envs x 128 steps, 4 minibatches of
    whole chains, 10 epochs, T = 5 cosine, every step fine-tuned, lr 1e-3, 64x2 ε-network), seed 0, budget 80 000
    env steps. Measured 2026-12-08 (2-core CPU shared with two training jobs, 1 thread): 1000 at 49 152 env steps,
    59 s."""
    cfg = make_config("smoke", {"env_id": "InvertedPendulum-v4", "algo": "dppo", "seed": 0, "device": "cpu",
                                "total_steps": 80_000, "stop_return": 900.0})
    assert train(cfg, str(tmp_path / "dppo"), progress=False) == 0
    summary = json.loads((tmp_path / "dppo" / "summary.json").read_text())
    assert summary["best_return"] >= 900.0, summary
    assert summary["env_steps"] <= 80_000
