"""fastrsm.diffusion.sample_chain, the library's one reverse chain (the torch and compile backends, DACER's policy
gradient, DACER2's on-chain steps), against the reference chain of kernels/reference.py on odd shapes: forward,
backward and the intermediate steps, one network and a stacked (multi-seed) one; and what it draws."""

from __future__ import annotations

import pytest
import torch

from fastrsm.backend import make_ops
from fastrsm.diffusion import DiffusionPolicy, draw_chain_inputs, reverse_chain, sample_chain


@pytest.mark.parametrize("B,N,S,A,H,layers,T,schedule", [(3, 5, 7, 2, 24, 2, 4, "linear"),
                                                          (1, 8, 11, 3, 64, 3, 5, "vp"),
                                                          (5, 1, 4, 6, 16, 1, 1, "cosine")])
@pytest.mark.parametrize("seeds", [None, 3])
def test_sample_chain_matches_reference_forward_backward_and_steps(B, N, S, A, H, layers, T, schedule, seeds):
    torch.manual_seed(0)
    pol = DiffusionPolicy(S, A, H, layers, 16, T, schedule, seeds=seeds)
    lead = () if seeds is None else (seeds,)
    s = torch.randn(*lead, B, S)
    x_T = 0.5 * torch.randn(*lead, B * N, A)
    noise = torch.randn(T, *lead, B * N, A)
    outs, steps, grads = [], [], []
    for chain in (reverse_chain, lambda *a, **k: sample_chain(*a, **k, grad=True)):
        pol.zero_grad()
        x0, xs = chain(pol.eps_net, pol.sched, s, x_T, noise, return_steps=True)
        # the steps carry the graph too: DACER2 reads them, and a loss may reach the chain through them
        (x0 * torch.linspace(-1, 1, x0.numel()).reshape(x0.shape)).sum().add(xs[0].sum()).backward()
        outs.append(x0.detach())
        steps.append(xs.detach())
        grads.append([p.grad.clone() for p in pol.parameters()])
    assert outs[0].shape == outs[1].shape == (*lead, B * N, A)
    assert steps[1].shape == (T, *lead, B * N, A) and torch.equal(steps[1][T - 1], x_T)
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(steps[1], steps[0], atol=2e-5, rtol=1e-5)
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, atol=5e-5, rtol=1e-4)


def test_grad_false_builds_no_graph_and_grad_true_reaches_x_T():
    torch.manual_seed(0)
    pol = DiffusionPolicy(3, 2, 16, 2, 16, 3)
    s, x_T = torch.randn(2, 3), torch.randn(2, 2, requires_grad=True)
    assert not sample_chain(pol.eps_net, pol.sched, s, x_T).requires_grad
    x0 = sample_chain(pol.eps_net, pol.sched, s, x_T, grad=True)
    (g,) = torch.autograd.grad(x0.sum(), x_T)
    assert g.abs().sum() > 0
    with torch.no_grad():  # grad=True follows the caller's autograd mode, it does not force it on
        assert not sample_chain(pol.eps_net, pol.sched, s, x_T, grad=True).requires_grad


def test_draws_x_T_then_the_noise_at_the_given_scale_from_the_given_generator():
    torch.manual_seed(0)
    pol = DiffusionPolicy(3, 2, 16, 2, 16, 4)
    s = torch.randn(3, 3)
    for scale in (0.5, 1.0):
        x_T, noise = draw_chain_inputs(3 * 4, 4, 2, "cpu", x_T_scale=scale, generator=torch.Generator().manual_seed(9))
        want = sample_chain(pol.eps_net, pol.sched, s, x_T, noise)
        torch.manual_seed(9)
        got = sample_chain(pol.eps_net, pol.sched, s, particles=4, x_T_scale=scale)  # the global generator
        assert torch.equal(got, want)
        state = torch.get_rng_state()
        got = sample_chain(pol.eps_net, pol.sched, s, particles=4, x_T_scale=scale,
                           generator=torch.Generator().manual_seed(9))
        assert torch.equal(got, want)
        assert torch.equal(torch.get_rng_state(), state)  # an explicit generator leaves the global one alone
    # the scale is the prior's standard deviation
    x_T, _ = draw_chain_inputs(20_000, 1, 2, "cpu", x_T_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert abs(x_T.std().item() - 1.0) < 0.02
    x_T, _ = draw_chain_inputs(20_000, 1, 2, "cpu", generator=torch.Generator().manual_seed(1))
    assert abs(x_T.std().item() - 0.5) < 0.01


def test_policy_sample_and_ops_draw_the_policys_x_T_scale():
    torch.manual_seed(0)
    pol = DiffusionPolicy(3, 2, 16, 2, 16, 3, x_T_scale=1.0)
    s = torch.randn(2, 3)
    x_T, noise = pol.draw_chain_inputs(2 * 5, "cpu", torch.Generator().manual_seed(4))
    want = sample_chain(pol.eps_net, pol.sched, s, x_T, noise).reshape(2, 5, 2)
    got = pol.sample(s, 5, torch.Generator().manual_seed(4))
    assert torch.equal(got, want)
    ops = make_ops("torch", "cpu")
    got = ops.sample(pol.eps_net, pol.sched, s, 5, x_T_scale=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, want)
    # the reference as the step loop: the same draws, the same result up to float reassociation
    torch.testing.assert_close(pol.sample(s, 5, torch.Generator().manual_seed(4), chain=reverse_chain), want)


def test_another_network_runs_as_the_reference_calls_it():
    calls = []

    class Net(torch.nn.Module):
        def forward(self, a, s, t):
            calls.append((s.shape, t.shape, int(t[0])))
            return torch.zeros_like(a)

    pol = DiffusionPolicy(3, 2, 8, 2, 16, 3)
    s, x_T, noise = torch.randn(2, 3), torch.randn(4, 2), torch.randn(3, 4, 2)
    out = sample_chain(Net(), pol.sched, s, x_T, noise)
    assert out.shape == (4, 2) and calls == [((4, 3), (4,), i) for i in (2, 1, 0)]
    torch.testing.assert_close(out, reverse_chain(Net(), pol.sched, s, x_T, noise))
    with pytest.raises(ValueError, match="not a multiple"):
        sample_chain(pol.eps_net, pol.sched, s, x_T[:3], noise[:, :3])


@pytest.mark.parametrize("algo", ["dpmd", "sdac", "dacer", "dacer2"])
@pytest.mark.parametrize("explore", [False, True])
def test_act_draws_from_an_explicit_generator(algo, explore):
    """act(obs, explore, generator): every draw of acting (x_T, the step noise, the exploration noise) comes from
    the generator, as the global generator seeded alike would give them, and the global generator is untouched."""
    from fastrsm.agents import make_agent
    from fastrsm.config import make_config

    cfg = make_config("smoke", {"algo": algo, "device": "cpu", "hidden": 16, "particles": 3, "diffusion_steps": 3})
    torch.manual_seed(0)
    agent = make_agent(algo, 4, 2, cfg, torch.device("cpu"), make_ops("torch", "cpu"))
    assert agent.policy.x_T_scale == (1.0 if algo.startswith("dacer") else 0.5)
    obs = torch.randn(5, 4)
    torch.manual_seed(11)
    want = agent.act(obs, explore)
    after = torch.randn(3)
    torch.manual_seed(12)
    state = torch.get_rng_state()
    got = agent.act(obs, explore, generator=torch.Generator().manual_seed(11))
    assert torch.equal(got, want)
    assert torch.equal(torch.get_rng_state(), state)
    gen = torch.Generator().manual_seed(11)
    agent.act(obs, explore, generator=gen)
    assert torch.equal(torch.randn(3, generator=gen), after)  # the same number of draws, in the same order
