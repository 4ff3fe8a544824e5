"""The factored reverse chain (fastrsm.diffusion.factored_chain), which the torch and compile backends run, equals
the reference chain on odd shapes — forward and backward, one network and a stacked (multi-seed) one."""

from __future__ import annotations

import pytest
import torch

from fastrsm.diffusion import DiffusionPolicy, factored_chain, reverse_chain


@pytest.mark.parametrize("B,N,S,A,H,layers,T,schedule", [(3, 5, 7, 2, 24, 2, 4, "linear"),
                                                          (1, 8, 11, 3, 64, 3, 5, "vp"),
                                                          (5, 1, 4, 6, 16, 1, 1, "cosine")])
@pytest.mark.parametrize("seeds", [None, 3])
def test_factored_chain_matches_reference_forward_and_backward(B, N, S, A, H, layers, T, schedule, seeds):
    torch.manual_seed(0)
    pol = DiffusionPolicy(S, A, H, layers, 16, T, schedule, seeds=seeds)
    lead = () if seeds is None else (seeds,)
    s = torch.randn(*lead, B, S)
    x_T = 0.5 * torch.randn(*lead, B * N, A)
    noise = torch.randn(T, *lead, B * N, A)
    outs, grads = [], []
    for chain in (reverse_chain, factored_chain):
        pol.zero_grad()
        x0 = chain(pol.eps_net, pol.sched, s, x_T, noise)
        (x0 * torch.linspace(-1, 1, x0.numel()).reshape(x0.shape)).sum().backward()
        outs.append(x0.detach())
        grads.append([p.grad.clone() for p in pol.parameters()])
    assert outs[0].shape == outs[1].shape == (*lead, B * N, A)
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-5)
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, atol=5e-5, rtol=1e-4)


def test_factored_chain_falls_back_for_another_network():
    calls = []

    class Net(torch.nn.Module):
        def forward(self, a, s, t):
            calls.append(t.shape)
            return torch.zeros_like(a)

    pol = DiffusionPolicy(3, 2, 8, 2, 16, 3)
    out = factored_chain(Net(), pol.sched, torch.randn(2, 3), torch.randn(4, 2), torch.randn(3, 4, 2))
    assert out.shape == (4, 2) and len(calls) == 3
