"""fastrsm.backend: which implementation each name picks, and that every backend available here computes the
references' numbers for a tiny policy."""

import os
import subprocess
import sys

import pytest
import torch

from fastrsm.backend import BackendError, Ops, best_of_n_reference, make_ops, resolve_backend
from fastrsm.diffusion import DiffusionPolicy
from fastrsm.losses import weighted_sm_loss

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")




def available_backends() -> list[str]:
    names = ["torch", "compile"]
    try:
        resolve_backend("triton", DEV)
        names.append("triton")
    except BackendError:
        pass
    return names


def test_auto_resolves_by_device(monkeypatch):
    """'auto' depends on the machine only: compiled on a CPU with a C++ compiler, eager torch on CUDA (the Triton
    kernels and CUDA graphs are opt-in there until the GPU suite has passed on a GPU)."""
    import fastrsm.backend as backend

    monkeypatch.setattr(backend, "compiler_available", lambda: True)
    assert resolve_backend("auto", "cpu") == "compile"
    assert resolve_backend("auto", "cuda") == "torch"  # only the device type is read, no GPU needed
    monkeypatch.setattr(backend, "compiler_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "torch"


def test_named_backends_and_errors(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("compile", "cpu") == "compile"
    with pytest.raises(BackendError, match="unknown backend 'jax'"):
        resolve_backend("jax", "cpu")
    assert issubclass(BackendError, ValueError)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="needs a CUDA device"):
        resolve_backend("triton", "cpu")
    with pytest.raises(BackendError, match="TRITON_INTERPRET"):
        make_ops("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert resolve_backend("triton", "cpu") == "triton"


def test_library_works_without_triton():
    """Triton is imported only when chosen: with it unimportable, 'auto' falls back and 'torch' runs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from fastrsm.backend import make_ops, resolve_backend\n"
        "assert resolve_backend('auto', 'cuda') == 'torch'\n"
        "ops = make_ops('torch', 'cpu')\n"
        "a, i = ops.best_of_n(torch.randn(2, 3), torch.randn(2, 3, 1), None, 0.0)\n"
        "assert 'triton' not in sys.modules or sys.modules['triton'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    pol = DiffusionPolicy(obs_dim=5, act_dim=3, hidden=32, layers=2, T=3).to(DEV)
    g = torch.Generator(device=DEV).manual_seed(1)
    s = torch.randn(4, 5, device=DEV, generator=g)
    eps_pred = torch.randn(4, 3, device=DEV, generator=g)
    eps_k = torch.randn(4, 6, 3, device=DEV, generator=g)
    logits = 2 * torch.randn(4, 6, device=DEV, generator=g)
    q = torch.randn(4, 5, device=DEV, generator=g)
    q[0, 3] = q[0, 1]  # a tie
    cand = torch.rand(4, 5, 3, device=DEV, generator=g) * 2 - 1
    noise = torch.randn(4, 3, device=DEV, generator=g)
    return pol, s, eps_pred, eps_k, logits, q, cand, noise


@pytest.mark.parametrize("backend", available_backends())
def test_backends_agree_with_references(backend, tiny):
    pol, s, eps_pred, eps_k, logits, q, cand, noise = tiny
    ops = make_ops(backend, DEV)
    assert isinstance(ops, Ops) and ops.backend == backend

    # sampling with given noise: the policy's own entry point, chain swapped
    sample = lambda chain: pol.sample(s, 2, torch.Generator(device=DEV).manual_seed(5), chain=chain)
    with torch.no_grad():
        torch.testing.assert_close(sample(ops.chain), sample(None), atol=2e-5, rtol=1e-4)
        fresh = ops.chain(pol.eps_net, pol.sched, s, torch.zeros(8, 3, device=DEV))  # noise drawn by the backend
    assert fresh.shape == (8, 3) and fresh.abs().max() <= 1

    # loss and its gradient, shared and per-particle predictions
    for pred in (eps_pred, eps_k + 0.1):
        p1, p2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        loss, ref = ops.sm_loss(p1, eps_k, logits), weighted_sm_loss(p2, eps_k, logits)
        torch.testing.assert_close(loss, ref)
        loss.backward()
        ref.backward()
        torch.testing.assert_close(p1.grad, p2.grad)

    # best-of-N, with and without exploration noise
    for args in [(None, 0.0), (noise, 0.2), (noise, torch.tensor(0.2, device=DEV))]:
        a, i = ops.best_of_n(q, cand, *args)
        a_r, i_r = best_of_n_reference(q, cand, *args)
        assert torch.equal(i, i_r)
        torch.testing.assert_close(a, a_r)
    assert i[0].item() == i_r[0].item()
