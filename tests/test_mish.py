"""fastrsm.nets.mish: the one-exp Mish used on a CPU for large tensors equals F.mish, forward and backward, on odd
shapes and at the extremes; the dispatch keeps F.mish where it is faster; networks built with it are unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastrsm import nets


@pytest.mark.parametrize("shape", [(7,), (3, 131), (129, 5, 33), (nets.FAST_MISH_MIN_NUMEL + 17,)])
def test_exp_mish_equals_f_mish_forward_and_backward(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 6.0
    x.view(-1)[:6] = torch.tensor([-100.0, -30.0, -1e-4, 0.0, 25.0, 90.0])  # both tails, zero, past the clamp
    upstream = torch.randn(shape, generator=g)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = nets.exp_mish(a), F.mish(b)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    ya.backward(upstream)
    yb.backward(upstream)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(a.grad).all()
    with torch.no_grad():  # the in-place no-grad path, which must not touch its input
        before = x.clone()
        torch.testing.assert_close(nets.exp_mish(x), F.mish(x), rtol=1e-5, atol=1e-6)
        assert torch.equal(x, before)


def test_exp_mish_gradcheck_in_double():
    x = (torch.randn(4, 9, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(nets.exp_mish, (x,))


def test_exp_mish_refuses_double_backward_instead_of_a_wrong_answer():
    x = torch.randn(5, requires_grad=True)
    (g,) = torch.autograd.grad(nets.exp_mish(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_dispatch_by_size(monkeypatch):
    calls = []
    monkeypatch.setattr(nets, "exp_mish", lambda x: calls.append(x.numel()) or F.mish(x))
    nets.mish(torch.randn(8, 64))
    nets.mish(torch.randn(nets.FAST_MISH_MIN_NUMEL))
    assert calls == [nets.FAST_MISH_MIN_NUMEL]


def test_mlp_with_fast_mish_keeps_nn_mish_state_dict_and_output():
    torch.manual_seed(0)
    net = nets.mlp(11, 64, 2, 3)
    ref = torch.nn.Sequential(*[torch.nn.Mish() if isinstance(m, nets.Mish) else m for m in net])
    assert net.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(nets.FAST_MISH_MIN_NUMEL // 64 + 5, 11, requires_grad=True)  # hidden layers take the fast path
    torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-6)
    (ga,) = torch.autograd.grad(net(x).square().sum(), x)
    (gb,) = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_compiled_mish_is_the_formula_and_equals_f_mish(monkeypatch):
    traced = []
    formula = nets._exp_mish_traceable
    monkeypatch.setattr(nets, "_exp_mish_traceable", lambda x: traced.append(1) or formula(x))
    torch._dynamo.reset()
    x = torch.randn(37, 19) * 6
    x.view(-1)[:4] = torch.tensor([-100.0, 0.0, 25.0, 90.0])
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = torch.compile(nets.mish, fullgraph=True, dynamic=False)(a)  # one graph: no break for the dispatch
    yb = F.mish(b)
    assert traced, "torch.compile traced F.mish, not the formula"
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
