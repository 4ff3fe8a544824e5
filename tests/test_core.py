"""The diffusion policy and the losses of docs/algorithms.md §2–§6, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fastrsm.agents.dpmd import RunningMeanStd
from fastrsm.config import ConfigError, make_config
from fastrsm.diffusion import DiffusionPolicy, Schedule, make_betas, q_sample, reverse_chain
from fastrsm.losses import (
    alpha_loss,
    critic_loss,
    dpmd_loss,
    dpmd_weights,
    dsm_loss,
    noise_entropy,
    normalize_q,
    sac_alpha_loss,
    sdac_loss,
    sdac_reverse_samples,
    td_target,
    weighted_sm_loss,
)
from fastrsm.nets import EpsilonNet, GaussianActor, TwinQ, sinusoidal_embedding


@pytest.mark.parametrize("kind", ["linear", "cosine", "vp", "geometric"])
@pytest.mark.parametrize("T", [1, 5, 20, 100])
def test_schedule_identities(kind, T):
    s = Schedule.build(kind, T, 0.8)
    b = s.betas.double()
    assert s.T == T and ((b > 0) & (b < 1)).all()
    abar = torch.cumprod(1 - b, 0)
    torch.testing.assert_close(s.abar.double(), abar, rtol=1e-5, atol=1e-7)
    assert (abar[1:] < abar[:-1]).all()  # ᾱ strictly decreasing
    torch.testing.assert_close(s.sqrt_abar**2 + s.sqrt_1m_abar**2, torch.ones(T), rtol=1e-5, atol=1e-6)
    assert s.post_std[0] == 0  # no noise at the last reverse step
    # posterior mean is exact when x_t is built from x_0 without noise: μ̃(x_t(x0, 0), x0) interpolates
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    torch.testing.assert_close(s.post_c0.double() * 1 + s.post_ct.double() * abar.sqrt(), abar_prev.sqrt(),
                               rtol=1e-4, atol=1e-5)


def test_linear_schedule_is_the_authors_ramp():
    b = make_betas("linear", 20, 0.8)
    torch.testing.assert_close(b, 0.8 * torch.linspace(1e-4, 0.999, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic", 10)


def test_geometric_schedule_spaces_the_noise_levels_geometrically():
    s = Schedule.build("geometric", 10, 0.8)
    levels = s.sqrt_1m_abar.double()
    torch.testing.assert_close(levels[[0, -1]], torch.tensor([0.01, 0.999], dtype=torch.float64), rtol=1e-4, atol=0)
    ratios = levels[1:] / levels[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 99.9 ** (1 / 9)), rtol=1e-4, atol=0)


def test_q_sample_moments():
    torch.manual_seed(0)
    s = Schedule.build("linear", 10)
    n = 200_000
    a0 = torch.full((n, 2), 0.5)
    t = torch.full((n,), 6, dtype=torch.long)
    x = q_sample(s, a0, t, torch.randn(n, 2))
    assert abs(x.mean() - 0.5 * s.sqrt_abar[6]) < 0.01
    assert abs(x.var() - (1 - s.abar[6])) < 0.01


def test_reverse_chain_shapes_clipping_and_particles():
    torch.manual_seed(0)
    pol = DiffusionPolicy(4, 3, hidden=32, layers=2, T=6)
    with torch.no_grad():  # a wild network: the output must still be clipped to the box
        for p in pol.eps_net.parameters():
            p.mul_(20)
    s = torch.randn(5, 4)
    a = pol.sample(s, particles=7)
    assert a.shape == (5, 7, 3) and a.abs().max() <= 1.0
    # the same noise gives the same actions; row r of the chain uses state r // N
    x_T, noise = pol.draw_chain_inputs(5 * 7, s.device)
    x0 = reverse_chain(pol.eps_net, pol.sched, s, x_T, noise)
    x0_rep = reverse_chain(pol.eps_net, pol.sched, s.repeat_interleave(7, 0), x_T, noise)
    torch.testing.assert_close(x0, x0_rep)
    with pytest.raises(ValueError, match="not a multiple"):
        reverse_chain(pol.eps_net, pol.sched, s, x_T[:11], noise[:, :11])


def test_one_step_chain_by_hand():
    # T = 1: x_0 = clip((x_T − √(1−ᾱ)ε̂)/√ᾱ) then the posterior mean with ᾱ_prev = 1 is x̂_0 itself
    torch.manual_seed(0)
    net = EpsilonNet(2, 1, hidden=8, layers=1)
    s = Schedule.build("linear", 1, 0.8)
    st, x_T = torch.randn(3, 2), torch.randn(3, 1) * 0.3
    eps_hat = net(x_T, st, torch.zeros(3, dtype=torch.long))
    expect = ((x_T - s.sqrt_1m_abar[0] * eps_hat) / s.sqrt_abar[0]).clamp(-1, 1)
    got = reverse_chain(net, s, st, x_T, torch.randn(1, 3, 1))
    torch.testing.assert_close(got, expect)


def test_epsilon_net_first_layer_split():
    net = EpsilonNet(5, 3, hidden=16, layers=3, time_dim=16)
    W_s, W_a, W_e, b = net.first_layer_parts()
    assert W_s.shape == (16, 5) and W_a.shape == (16, 3) and W_e.shape == (16, 16) and b.shape == (16,)
    s, a, t = torch.randn(4, 5), torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    h = s @ W_s.T + a @ W_a.T + net.time_features(t) @ W_e.T + b
    torch.testing.assert_close(h, net.body[0](torch.cat([s, a, net.time_features(t)], -1)))
    assert len(net.hidden_linears()) == 3
    e = sinusoidal_embedding(torch.tensor([0.0, 3.0]), 16)
    assert e.shape == (2, 16) and torch.equal(e[0, 8:], torch.ones(8))


def test_twin_q_members_are_independent():
    q = TwinQ(3, 2, hidden=8, layers=2)
    s, a = torch.randn(6, 3), torch.randn(6, 2)
    out = q(s, a)
    assert out.shape == (2, 6) and not torch.allclose(out[0], out[1])
    torch.testing.assert_close(q.min_q(s, a), out.min(0).values)
    assert q(s.unsqueeze(1).expand(6, 4, 3), torch.randn(6, 4, 2)).shape == (2, 6, 4)


def test_gaussian_actor_log_prob():
    torch.manual_seed(0)
    actor = GaussianActor(3, 1, hidden=8, layers=1)
    s = torch.randn(1, 3).expand(20000, 3)
    a, logp = actor(s)
    assert a.abs().max() < 1
    # E[-log π] = entropy; check against a histogram density estimate of a 1-D action
    hist = torch.histc(a, bins=50, min=-1, max=1) / (a.numel() * (2 / 50))
    idx = ((a.squeeze(1) + 1) / 2 * 50).long().clamp(0, 49)
    dens = hist[idx]
    ok = dens > 0.05
    assert (logp[ok] - dens[ok].log()).abs().median() < 0.1


# ----------------------------------------------------------------------------------- losses by hand


def test_dsm_loss_by_hand():
    torch.manual_seed(0)
    net = EpsilonNet(2, 2, hidden=8, layers=1)
    s = Schedule.build("linear", 5)
    st, a0 = torch.randn(3, 2), torch.rand(3, 2) * 2 - 1
    t, eps = torch.tensor([0, 2, 4]), torch.randn(3, 2)
    a_t = s.sqrt_abar[t, None] * a0 + s.sqrt_1m_abar[t, None] * eps
    expect = sum(((net(a_t[i:i + 1], st[i:i + 1], t[i:i + 1]) - eps[i]) ** 2).sum() for i in range(3)) / 3
    torch.testing.assert_close(dsm_loss(net, s, st, a0, t, eps), expect)


def test_dpmd_weights_and_the_public_code_flag():
    q = torch.tensor([1.0, 4.0, 20.0])
    m, sd = torch.tensor(4.0), torch.tensor(2.0)
    w = dpmd_weights(q, 0.5, m, sd)
    # (q − m)/σ = [−1.5, 0, 8 → clipped 3]; / λ = 0.5
    torch.testing.assert_close(w, torch.exp(torch.tensor([-3.0, 0.0, 6.0])))
    # the public code's q − m/σ: [1 − 2, 4 − 2, 20 − 2 → 3]
    torch.testing.assert_close(normalize_q(q, m, sd, public_code=True), torch.tensor([-1.0, 2.0, 18.0]))
    w_pub = dpmd_weights(q, 0.5, m, sd, public_code=True)
    torch.testing.assert_close(w_pub, torch.exp(torch.tensor([-2.0, 4.0, 6.0])))
    assert not torch.allclose(w, w_pub)


def test_state_advantage_compares_actions_within_a_state():
    from fastrsm.losses import state_advantage

    q = torch.tensor([[1.0, 2.0, 3.0], [100.0, 100.5, 101.0]])
    adv = state_advantage(q)
    # both rows are the same ranking in their own state's units, whatever the state's value or spread
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]))
    torch.testing.assert_close(state_advantage(3.0 * q + 50.0), adv)
    assert torch.isfinite(state_advantage(torch.ones(2, 4))).all()  # equal Qs: zeros, not NaN


def test_dpmd_loss_by_hand():
    eps_pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    eps = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    w = torch.tensor([2.0, 0.5])
    loss = dpmd_loss(eps_pred, eps, w)
    assert loss.item() == pytest.approx((2 * 1 + 0.5 * 4) / 2)
    loss.backward()
    torch.testing.assert_close(eps_pred.grad, torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # 2 w (p − e) / B


def test_sdac_loss_by_hand_and_its_gradient():
    # one state, K = 2 targets, A = 1: logits q/λ = [0, ln 3] → weights [1/4, 3/4]
    eps_pred = torch.tensor([[0.5]], requires_grad=True)
    eps_k = torch.tensor([[[1.0], [-1.0]]])
    q = torch.tensor([[0.0, math.log(3.0)]])
    loss = sdac_loss(eps_pred, eps_k, q, 1.0)
    assert loss.item() == pytest.approx(0.25 * 0.25 + 0.75 * 2.25)
    loss.backward()
    # gradient 2(ε_θ − Σ w ε^k) = 2(0.5 − (0.25 − 0.75)) = 2
    assert eps_pred.grad.item() == pytest.approx(2.0)
    assert q.grad is None
    # shifting all logits changes nothing (logsumexp-stable), huge logits stay finite
    big = sdac_loss(eps_pred.detach(), eps_k, q + 1e4, 1.0)
    assert big.item() == pytest.approx(loss.item(), rel=1e-5)


def test_dpmd_softmax_is_k_times_softmax_weights():
    torch.manual_seed(0)
    B, K, A = 3, 4, 2
    pred, eps, q = torch.randn(B, K, A), torch.randn(B, K, A), torch.randn(B, K)
    w = K * torch.softmax(q / 0.7, -1)
    expect = (w * ((pred - eps) ** 2).sum(-1)).mean()
    torch.testing.assert_close(weighted_sm_loss(pred, eps, q / 0.7), expect)  # what DPMD-softmax calls


def test_sdac_reverse_samples_invert_the_forward_process():
    torch.manual_seed(0)
    s = Schedule.build("linear", 10)
    a0 = torch.rand(4, 3) * 1.6 - 0.8
    t = torch.tensor([0, 3, 5, 9])
    eps = torch.randn(4, 3)
    a_t = q_sample(s, a0, t, eps)
    rec, eps_k = sdac_reverse_samples(s, a_t, t, 1, eps.unsqueeze(1))
    torch.testing.assert_close(rec[:, 0], a0, rtol=1e-4, atol=1e-4)  # the noise that made a_t gives a_0 back
    many, _ = sdac_reverse_samples(s, a_t, t, 5000)
    assert many.shape == (4, 5000, 3) and many.abs().max() <= 1
    # at t = 0 (ᾱ≈1) the reverse samples hug a_t/√ᾱ
    assert (many[0] - a_t[0] / s.sqrt_abar[0]).abs().max() < 0.1


def test_critic_target_truncation_is_not_termination():
    r, nq = torch.tensor([1.0, 1.0]), torch.tensor([10.0, 10.0])
    y = td_target(r, torch.tensor([0.0, 1.0]), nq, 0.99, 0.2)
    torch.testing.assert_close(y, torch.tensor([0.2 + 9.9, 0.2]))
    qp = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert critic_loss(qp, torch.tensor([1.0, 2.0])).item() == pytest.approx(0 + (4 + 4) / 2)


def test_temperature_losses():
    la = torch.tensor(math.log(5.0), requires_grad=True)
    H = noise_entropy(la, 3, 0.1)
    assert H.item() == pytest.approx(1.5 * math.log(2 * math.pi * math.e * 0.25))
    loss = alpha_loss(la, H, -2.7)
    loss.backward()
    assert la.grad.item() == pytest.approx(H.item() + 2.7)  # entropy above target → α decreases
    la2 = torch.tensor(0.0, requires_grad=True)
    sac_alpha_loss(la2, torch.tensor([-1.0, -3.0]), -2.0).backward()
    assert la2.grad.item() == pytest.approx(-((-1 - 2) + (-3 - 2)) / 2)


def test_running_mean_std():
    rms = RunningMeanStd(0.5)
    rms.update(torch.tensor([2.0, 4.0]))
    assert rms.mean.item() == pytest.approx(1.5) and rms.std.item() == pytest.approx(0.5 + 0.5 * math.sqrt(2))


def test_config_presets_and_validation():
    paper, smoke = make_config("paper"), make_config("smoke")
    assert (paper.particles, paper.reverse_samples, paper.diffusion_steps, paper.batch_size) == (32, 64, 20, 256)
    assert (paper.num_envs, paper.utd, paper.warmup_steps, paper.alpha_init) == (5, 0.2, 30_000, 5.0)
    assert smoke.hidden < paper.hidden
    with pytest.raises(ConfigError, match="gamma"):
        make_config("paper", {"gamma": 1.5})
    with pytest.raises(ConfigError, match="did you mean"):
        make_config("paper", {"partcles": 3})
