"""DACER and DACER2 (docs/algorithms.md §10): the DSAC-T critic loss, the Q-gradient-field loss, the gradient through
the chain, the GMM entropy estimate, the schedule, and resume/determinism of both algorithms."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.dacer2 import q_field_loss, q_field_target, temporal_weight
from fastrsm.backend import make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.gmm import fit_gmm, gmm_entropy, mixture_entropy_bound
from fastrsm.losses import dsac_critic_loss, dsac_std_ema, dsac_targets
from fastrsm.nets import DistributionalTwinQ
from fastrsm.replay import Batch
from fastrsm.train import main

# ---------------------------------------------------------------- DSAC-T critic


def test_dsac_targets_pick_the_smaller_mean_member():
    r, term = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    nm = torch.tensor([[5.0, 3.0], [4.0, 6.0]])  # state 0: member 1 smaller; state 1: member 0 smaller
    ns = torch.tensor([[0.5, 0.2], [1.0, 2.0]])
    z = torch.tensor([5.0, -1.0])  # clipped to 3 for state 0
    y, y_s = dsac_targets(r, term, nm, ns, z, gamma=0.9, reward_scale=0.5)
    assert torch.allclose(y, torch.tensor([0.5 + 0.9 * 4.0, 1.0]))
    assert torch.allclose(y_s, torch.tensor([0.5 + 0.9 * (4.0 + 1.0 * 3.0), 1.0]))


def test_dsac_std_ema_first_batch_sets_then_lerps():
    m = torch.full((2,), -1.0)
    dsac_std_ema(m, torch.tensor([[1.0, 3.0], [2.0, 2.0]]), 0.1)
    assert torch.allclose(m, torch.tensor([2.0, 2.0]))
    dsac_std_ema(m, torch.tensor([[4.0, 4.0], [0.0, 0.0]]), 0.1)
    assert torch.allclose(m, torch.tensor([0.1 * 4 + 0.9 * 2, 0.9 * 2]))


def test_dsac_loss_and_gradient_match_a_hand_computation():
    eps, bound = 0.1, 3.0
    mean = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    std = torch.tensor([[0.5, 1.0], [2.0, 0.3]], requires_grad=True)
    y, y_s = torch.tensor([1.5, 1.0]), torch.tensor([4.0, -2.0])
    m = torch.tensor([0.4, 1.0])
    loss = dsac_critic_loss(mean, std, y, y_s, m, eps, bound)
    loss.backward()
    total = 0.0
    gm, gs = [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]
    for i in range(2):
        acc = 0.0
        k = m[i].item() ** 2 + eps
        for b in range(2):
            mu, sd, yy, ys = mean[i, b].item(), std[i, b].item(), y[b].item(), y_s[b].item()
            yb = mu + min(max(ys - mu, -bound * m[i].item()), bound * m[i].item())
            acc += mu * (yy - mu) / (sd**2 + eps) + sd * ((mu - yb) ** 2 - sd**2) / (sd**3 + eps)
            gm[i][b] = -k / 2 * (yy - mu) / (sd**2 + eps)
            gs[i][b] = -k / 2 * ((mu - yb) ** 2 - sd**2) / (sd**3 + eps)
        total += -k * acc / 2
    assert loss.item() == pytest.approx(total, rel=1e-6)
    assert torch.allclose(mean.grad, torch.tensor(gm), rtol=1e-5)
    assert torch.allclose(std.grad, torch.tensor(gs), rtol=1e-5)
    # the bound bit: member 0, state 0 has y_s − μ = 3 > 3·0.4, so y_b = μ + 1.2
    assert gs[0][0] == pytest.approx(-(0.16 + 0.1) / 2 * (1.2**2 - 0.25) / (0.125 + 0.1))


def test_distributional_twin_q_shapes_and_positive_std():
    q = DistributionalTwinQ(3, 2, hidden=8, layers=2)
    mean, std = q(torch.randn(5, 3), torch.randn(5, 2))
    assert mean.shape == std.shape == (2, 5) and (std > 0).all()
    s, a = torch.zeros(5, 3), torch.zeros(5, 2)
    assert torch.equal(q.min_q(s, a), q(s, a)[0].min(0)[0])


@pytest.mark.parametrize("activation", ["mish", "relu"])
def test_distributional_twin_q_is_the_ensemble_mlp_with_the_critic_settings(activation):
    # the critic_activation / critic_layers settings reach DACER's critic (it once hard-coded Mish)
    torch.manual_seed(0)
    q = DistributionalTwinQ(3, 2, hidden=8, layers=3, activation=activation)
    assert len(q.linears) == 4
    s, a = torch.randn(7, 3), torch.randn(7, 2)
    act = {"mish": torch.nn.functional.mish, "relu": torch.relu}[activation]
    for m in range(2):
        h = torch.cat([s, a], -1)
        for i, lin in enumerate(q.linears):
            h = h @ lin.weight[m] + lin.bias[m]
            h = act(h) if i < 3 else h
        mean, std = q(s, a)
        assert torch.allclose(mean[m], h[:, 0], atol=1e-6)
        assert torch.allclose(std[m], torch.nn.functional.softplus(h[:, 1]), atol=1e-6)


# ---------------------------------------------------------------- DACER2's Q-gradient field


def test_q_field_loss_matches_a_hand_computation():
    g = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    t = torch.tensor([1, 5])
    w = temporal_weight(t, 0.4, -1.8)
    assert torch.allclose(w, torch.tensor([math.exp(-1.4), math.exp(0.2)]))
    tgt = q_field_target(g, w, "descent")
    assert torch.allclose(tgt, torch.tensor([[-0.6 * math.exp(-1.4), -0.8 * math.exp(-1.4)], [0.0, math.exp(0.2)]]))
    assert torch.allclose(q_field_target(g, w, "ascent"), -tgt)
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    loss = q_field_loss(pred, tgt)
    hand = ((0.6**2 + 0.8**2) * math.exp(-2.8) + (1.0 + (1 - math.exp(0.2)) ** 2)) / 2
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    loss.backward()
    assert torch.allclose(pred.grad, (pred.detach() - tgt))  # d/dp mean_b ‖p − t‖² = 2(p − t)/B, B = 2


def test_descent_sign_moves_a_chain_step_up_q():
    """With ε* = −w·ĝ, one reverse step from a_t moves along +∇Q (ε enters the mean with a minus sign)."""
    cfg = make_config("smoke", {"algo": "dacer2", "device": "cpu"})
    agent = make_agent("dacer2", 3, 2, cfg, torch.device("cpu"), make_ops("torch", "cpu"))
    sched = agent.policy.sched
    g = torch.tensor([[1.0, 0.0]])
    eps_star = q_field_target(g, torch.ones(1), "descent")
    from fastrsm.kernels.reference import reverse_step
    a = torch.zeros(1, 2)
    moved = reverse_step(sched, 2, a, eps_star, None) - reverse_step(sched, 2, a, torch.zeros(1, 2), None)
    assert moved[0, 0] > 0 and moved[0, 1] == 0


# ---------------------------------------------------------------- the agents


def _agent(algo: str, **over):
    cfg = make_config("smoke", {"algo": algo, "device": "cpu", "hidden": 16, "batch_size": 8, **over})
    return make_agent(algo, 4, 2, cfg, torch.device("cpu"), make_ops("torch", "cpu"))


def _batch(B: int = 8) -> Batch:
    g = torch.Generator().manual_seed(3)
    return Batch(torch.randn(B, 4, generator=g), torch.rand(B, 2, generator=g) * 2 - 1, torch.randn(B, generator=g),
                 torch.randn(B, 4, generator=g), torch.zeros(B))


@pytest.mark.parametrize("algo", ["dacer", "dacer2"])
def test_policy_gradient_reaches_the_first_reverse_step(algo, monkeypatch):
    """A parameter used only at the first reverse step (x_T -> x_{T-1}, index T − 1) gets a gradient: an offset
    added to ε̂ at that step alone, so its gradient must travel back through every later step and the clip."""
    import fastrsm.diffusion as diffusion

    torch.manual_seed(0)
    agent = _agent(algo)
    first = torch.zeros(agent.act_dim, requires_grad=True)  # added to ε̂ at the first reverse step only
    T = agent.policy.T
    orig = diffusion.reverse_step
    calls = []

    def reverse_step(sched, i, x, eps_hat, noise):  # the chain's posterior step, as sample_chain calls it
        calls.append(i)
        return orig(sched, i, x, eps_hat + first if i == T - 1 else eps_hat, noise)

    monkeypatch.setattr(diffusion, "reverse_step", reverse_step)
    torch.manual_seed(1)
    if algo == "dacer2":
        agent.cfg.dacer2_eta = 0.0  # the chain's own path, not the regression at step T
    loss, _ = agent.policy_loss(_batch().obs)
    loss.backward()
    assert calls == list(reversed(range(T)))
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_dacer_schedule_counts_from_update_zero():
    agent = _agent("dacer", dacer_alpha_every=6)
    assert [agent.parts_for(u) for u in range(7)] == [
        ("critic", "policy", "alpha"), ("critic",), ("critic", "policy"), ("critic",), ("critic", "policy"),
        ("critic",), ("critic", "policy", "alpha")]
    assert agent.reachable_parts() == [("critic", "policy", "alpha"), ("critic",), ("critic", "policy")]


def test_dacer_alpha_step_moves_log_alpha_against_the_entropy_gap():
    torch.manual_seed(0)
    agent = _agent("dacer", dacer_entropy_samples=32, dacer_gmm_iters=20)
    before = agent.log_alpha.item()
    m = agent.update_step(_batch(), ("critic", "alpha"))
    h = m["entropy"].item()
    assert math.isfinite(h) and agent.entropy.item() == h
    # loss −log α·(−H + H_target): Adam's first step moves log α by lr·sign(H_target − H)... upwards if H < target
    assert (agent.log_alpha.item() - before) * (agent.target_entropy - h) > 0


@pytest.mark.parametrize("algo", ["dacer", "dacer2"])
def test_update_changes_critic_policy_and_keeps_eval_deterministic_free_of_noise(algo):
    torch.manual_seed(0)
    agent = _agent(algo)
    p0 = [p.detach().clone() for p in agent.policy.parameters()]
    m = agent.update_step(_batch(), ("critic", "policy"))
    assert all(math.isfinite(v.item()) for v in m.values())
    assert any(not torch.equal(a, b) for a, b in zip(p0, agent.policy.parameters()))
    assert agent.q_std_ema.min() > 0
    obs = torch.randn(5, 4)
    torch.manual_seed(7)
    a = agent.act(obs, explore=False)
    torch.manual_seed(7)
    x_T, noise = torch.randn(5, 2), torch.randn(agent.policy.T, 5, 2)  # x_T ~ N(0, I), as DACER's p_sample
    from fastrsm.diffusion import reverse_chain
    assert torch.allclose(a, reverse_chain(agent.policy.eps_net, agent.policy.sched, obs, x_T, noise))


def test_bad_dacer_settings_are_config_errors():
    for over in ({"dacer_entropy": "scipy"}, {"dacer2_sign": "up"}, {"dacer2_grad_at": "x"},
                 {"dacer_alpha_every": 0}, {"dsac_std_rate": 2.0}):
        with pytest.raises(ConfigError):
            make_config("smoke", over)


def test_presets_carry_dacer_numbers():
    c = make_config("dacer")
    assert (c.algo, c.diffusion_steps, c.schedule, c.num_envs, c.utd, c.lr_q, c.lr_policy, c.lr_policy_end,
            c.lr_dacer_alpha, c.dacer_alpha_init, c.warmup_steps) == (
        "dacer", 20, "vp", 20, 0.05, 1e-4, 1e-4, 1e-4, 0.03, 3.0, 30_000)
    c2 = make_config("dacer2")
    assert (c2.algo, c2.diffusion_steps) == ("dacer2", 5)
    # `small` keeps their α₀, the VP schedule (and DACER2's T 5)
    for algo, T in (("dacer", 10), ("dacer2", 5)):
        s = make_config("small", {"algo": algo})
        assert (s.dacer_alpha_init, s.schedule, s.diffusion_steps) == (3.0, "vp", T)


# ---------------------------------------------------------------- the GMM entropy estimate


def _known_mixture(B: int, n: int, seed: int = 0):
    """Three well-separated 2-D Gaussians, weights (0.5, 0.3, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
    covs = torch.stack([torch.tensor([[1.0, 0.3], [0.3, 0.5]]), torch.tensor([[0.4, 0.0], [0.0, 0.4]]),
                        torch.tensor([[2.0, -0.5], [-0.5, 1.0]])]).to(torch.float64)
    comp = torch.multinomial(w, B * n, replacement=True, generator=g)
    L = torch.linalg.cholesky(covs)
    z = torch.randn(B * n, 2, generator=g, dtype=torch.float64)
    x = means[comp] + (L[comp] @ z.unsqueeze(-1)).squeeze(-1)
    return x.reshape(B, n, 2), w, means, covs


def test_gmm_entropy_of_a_known_mixture():
    """The fitted estimate is within 0.1 nats of the closed form for the true parameters (n = 2000 samples per
    state), which for well-separated components equals the mixture's entropy: a Monte-Carlo estimate of
    −E log p(x) agrees with it to 0.02 nats."""
    x, w, means, covs = _known_mixture(4, 2000)
    closed = mixture_entropy_bound(w.unsqueeze(0), covs.unsqueeze(0)).item()
    est = gmm_entropy(x, components=3, iters=100).item()
    assert est == pytest.approx(closed, abs=0.1)
    flat = x.reshape(-1, 2)
    dens = sum(w[k] * torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(flat).exp() for k in range(3))
    mc = -dens.log().mean().item()
    assert mc == pytest.approx(closed, abs=0.02)
    wf, mf, _ = fit_gmm(x[:1], 3)
    assert sorted(wf[0].tolist()) == pytest.approx([0.2, 0.3, 0.5], abs=0.03)


def test_gmm_entropy_agrees_with_scikit_learn():
    """Same samples, both estimators: policy-like actions (a chain's samples, clipped to the box) of 32 states.
    The batch means agree within 0.05 nats (measured: see the printed figures; they differ only by EM's local
    optima and init), and the torch fit is much faster."""
    pytest.importorskip("sklearn")
    from fastrsm.gmm import sklearn_gmm_entropy
    torch.manual_seed(0)
    agent = _agent("dacer", hidden=32)
    obs = torch.randn(32, 4)
    acts = agent.sample(obs.repeat_interleave(200, 0)).reshape(32, 200, 2)
    t0 = time.perf_counter()
    h_torch = gmm_entropy(acts, 3, 100).item()
    t1 = time.perf_counter()
    h_sk = sklearn_gmm_entropy(acts, 3).item()
    t2 = time.perf_counter()
    print(f"GMM entropy: torch {h_torch:.4f} in {t1 - t0:.3f}s, sklearn {h_sk:.4f} in {t2 - t1:.3f}s")
    assert h_torch == pytest.approx(h_sk, abs=0.05)


# ---------------------------------------------------------------- resume and determinism (as tests/test_resume.py)

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "2",
        "--batch-size", "32",
        "--diffusion-steps", "3", "--hidden", "16", "--log-every", "50", "--nan-check-every", "25",
        "--dacer-alpha-every", "40", "--dacer-entropy-samples", "16", "--dacer-gmm-iters", "10"]


def _params(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["agent"]["modules"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", ["dacer", "dacer2"])
def test_resume_is_exact_and_seeded(tmp_path, algo):
    straight, split, other = tmp_path / "straight", tmp_path / "split", tmp_path / "other"
    assert main([*TINY, "--algo", algo, "--total-steps", "600", "--run-dir", str(straight)]) == 0
    assert main([*TINY, "--algo", algo, "--total-steps", "300", "--run-dir", str(split)]) == 0
    assert json.loads((split / "summary.json").read_text())["env_steps"] == 300
    at_300 = _params(split)
    assert main(["--resume", str(split), "--total-steps", "600", "--quiet"]) == 0
    # two processes with one seed give the same bits (straight vs split), and so does resuming
    assert (straight / "eval.csv").read_text() == (split / "eval.csv").read_text()
    assert _same(_params(straight), _params(split))
    assert "entropy" in (straight / "train.csv").read_text().splitlines()[0]
    assert main([*TINY, "--algo", algo, "--total-steps", "300", "--seed", "1", "--run-dir", str(other)]) == 0
    assert not _same(_params(other), at_300)


@pytest.mark.parametrize("grad_at, sign", [("chain", "descent"), ("forward", "ascent")])
def test_dacer2_policy_loss_is_lq_plus_eta_lg(grad_at, sign):
    agent = _agent("dacer2", dacer2_grad_at=grad_at, dacer2_sign=sign, dacer2_eta=0.3)
    torch.manual_seed(0)
    loss, m = agent.policy_loss(_batch().obs)
    assert loss.item() == pytest.approx(m["loss_pi_q"].item() + 0.3 * m["loss_pi_g"].item(), rel=1e-6)
    assert m["loss_pi_g"].item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in agent.policy.parameters())


def test_dacer_refuses_the_multi_seed_path_in_one_line(tmp_path, capsys):
    from fastrsm.train import main

    code = main(["--env", "Pendulum-v1", "--algo", "dacer", "--preset", "smoke", "--seeds", "0,1", "--quiet",
                 "--run-dir", str(tmp_path / "g")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "no multi-seed path" in err
    assert not (tmp_path / "g").exists()
