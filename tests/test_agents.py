"""Agents on CPU: an update runs and changes what it should; the Triton backend (under the interpreter here)
gives the same update as the PyTorch reference backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer

S, A = 5, 3


def _setup(algo: str, backend: str, **over):
    cfg = make_config("smoke", {"algo": algo, "hidden": 16, "particles": 5, "diffusion_steps": 3,
                                "reverse_samples": 7, "batch_size": 9, "policy_delay": 1, "alpha_every": 1, **over})
    dev = torch.device("cpu")
    torch.manual_seed(0)
    agent = make_agent(algo, S, A, cfg, dev, make_ops(backend, dev))
    rb = ReplayBuffer(64, S, A, dev, cfg.batch_size)
    rng = np.random.default_rng(0)
    n = 40
    rb.add(rng.normal(size=(n, S)), rng.uniform(-1, 1, (n, A)), rng.normal(size=n), rng.normal(size=(n, S)),
           rng.random(n) < 0.1, np.ones(n, bool))
    return agent, rb


@pytest.mark.parametrize("algo", ["dpmd", "sdac", "sac", "td3", "qsm", "qvpo", "dpmd2", "dipo"])
def test_update_moves_every_network(algo):
    agent, rb = _setup(algo, "torch")
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    m = {}
    for _ in range(2):
        m.update(Learner(agent).update(rb))
    after = agent.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    policy = "actor." if algo in ("sac", "td3") else "policy."
    assert any(k.startswith("critic.") for k in changed)
    assert any(k.startswith("critic_target.") for k in changed)
    assert any(k.startswith(policy) for k in changed)
    assert "log_alpha" in changed or not hasattr(agent, "log_alpha")  # TD3 has no temperature
    assert all(torch.isfinite(v).all() for v in m.values())
    assert {"loss_q", "loss_pi"} <= m.keys()
    a = agent.act(torch.randn(4, S))
    assert a.shape == (4, A) and a.abs().max() <= 1


@pytest.mark.parametrize("algo, over", [("dpmd", {}), ("dpmd", {"dpmd_weights": "softmax"}), ("sdac", {})])
def test_triton_backend_update_matches_torch(algo, over):
    ref, rb_ref = _setup(algo, "torch", **over)
    tri, rb_tri = _setup(algo, "triton", **over)
    torch.manual_seed(1)
    for _ in range(2):
        Learner(ref).update(rb_ref)
    torch.manual_seed(1)
    for _ in range(2):
        Learner(tri).update(rb_tri)
    for (k, v), (_, w) in zip(ref.state_dict().items(), tri.state_dict().items()):
        torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-5, msg=k)
    torch.manual_seed(2)
    a_ref = ref.act(torch.randn(3, S))
    torch.manual_seed(2)
    a_tri = tri.act(torch.randn(3, S))
    torch.testing.assert_close(a_tri, a_ref, rtol=1e-4, atol=1e-5)


def test_dpmd_particle_noise_weighs_the_noisy_particles_under_the_updated_critic():
    agent, rb = _setup("dpmd", "torch", dpmd_weights="advantage", dpmd_particle_noise=True, explore_std=0.3)
    batch = rb.sample()
    torch.manual_seed(3)
    _, bare = agent.next_action_value(batch.next_obs)  # the bootstrap's draw, replayed with the same RNG below
    torch.manual_seed(3)
    _, reuse = agent.critic_step(batch)
    noisy = reuse.drawn.particles
    assert noisy.shape == bare.particles.shape and noisy.abs().max() <= 1
    # the noise is 0.3·α per coordinate: the candidates moved by about that, not by zero
    moved = (noisy - bare.particles).std().item()
    assert 0.5 * 0.3 * agent.alpha.item() < moved < 1.5 * 0.3 * agent.alpha.item()
    obs = batch.next_obs.unsqueeze(-2).expand(*noisy.shape[:-1], batch.next_obs.shape[-1])
    torch.testing.assert_close(reuse.drawn.q_particles, agent.critic.min_q(obs, noisy))
    loss, _ = agent.policy_loss(batch, reuse)
    assert torch.isfinite(loss)


def test_dpmd_particle_noise_needs_per_state_weights():
    with pytest.raises(ValueError, match="dpmd-particle-noise"):
        make_config("smoke", {"algo": "dpmd", "dpmd_particle_noise": True})
