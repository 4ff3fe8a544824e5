"""The chain settings of the triton backend, as the agents reach them (Ops.sample): `chain_noise` 'kernel'
(x_T and the step noise drawn in-kernel with Philox) and `chain_precision`, under the Triton interpreter on CPU."""

from __future__ import annotations

import pytest
import torch

from fastrsm.backend import BackendError, make_ops
from fastrsm.diffusion import DiffusionPolicy, reverse_chain

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def pol():
    torch.manual_seed(0)
    return DiffusionPolicy(obs_dim=4, act_dim=3, hidden=16, layers=2, T=3).to(DEV)


def test_torch_noise_is_the_same_stream_on_every_backend(pol):
    pytest.importorskip("triton")
    s = torch.randn(5, 4, device=DEV)
    out = []
    for backend in ("torch", "triton"):
        ops = make_ops(backend, DEV, chain_noise="torch")
        torch.manual_seed(7)
        with torch.no_grad():
            out.append(ops.sample(pol.eps_net, pol.sched, s, 2))
    assert out[0].shape == (5, 2, 3)
    torch.testing.assert_close(out[1], out[0], atol=2e-5, rtol=1e-4)


def test_kernel_noise_reproduces_for_a_seed_and_is_the_reference_on_its_draws(pol):
    pytest.importorskip("triton")
    from fastrsm.kernels import chain_noise

    ops = make_ops("triton", DEV, chain_noise="kernel")
    assert ops.chain_noise == "kernel"
    s = torch.randn(6, 4, device=DEV)
    draws = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        with torch.no_grad():
            draws.append(ops.sample(pol.eps_net, pol.sched, s, 4))
    assert draws[0].shape == (6, 4, 3) and draws[0].abs().max() <= 1
    assert torch.equal(draws[0], draws[1])  # same seed, same actions, bit for bit
    assert not torch.equal(draws[0], draws[2])
    # The Philox seed is one draw of torch's generator; materialised, its stream gives the reference chain.
    torch.manual_seed(11)
    seed_t = torch.randint(0, 2**31 - 1, (1,), device=DEV, dtype=torch.int64)
    x_T, noise = chain_noise(seed_t, pol.T, 6 * 4, 3, DEV)
    with torch.no_grad():
        ref = reverse_chain(pol.eps_net, pol.sched, s, x_T, noise).reshape(6, 4, 3)
    torch.testing.assert_close(draws[0], ref, atol=2e-5, rtol=1e-4)


def test_kernel_noise_moments():
    """x_T ~ 0.5·N(0, I) and the step noise ~ N(0, I), as the torch path draws them."""
    pytest.importorskip("triton")
    from fastrsm.kernels import chain_noise

    torch.manual_seed(3)
    seed_t = torch.randint(0, 2**31 - 1, (1,), device=DEV, dtype=torch.int64)
    x_T, noise = chain_noise(seed_t, 4, 1024, 4, DEV)  # 16k step draws, 4k for x_T
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1.0) < 0.03
    assert abs(x_T.mean().item()) < 0.03 and abs(x_T.std().item() - 0.5) < 0.02
    # independent across steps and rows: neighbouring draws are uncorrelated
    flat = noise.flatten()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(corr) < 0.03


def test_chain_settings_need_the_triton_backend():
    with pytest.raises(BackendError, match="need the triton backend"):
        make_ops("torch", "cpu", chain_noise="kernel")
    with pytest.raises(BackendError, match="need the triton backend"):
        make_ops("compile", "cpu", chain_precision="tf32")
    with pytest.raises(BackendError, match="unknown chain-noise"):
        make_ops("torch", "cpu", chain_noise="numpy")
    if not torch.cuda.is_available():
        pytest.importorskip("triton")
        with pytest.raises(BackendError, match="bf16 with the triton backend needs CUDA"):
            make_ops("triton", "cpu", chain_precision="bf16")


def test_bf16_chain_is_refused_on_a_cpu_without_bf16(monkeypatch):
    import fastrsm.backend as backend

    monkeypatch.setattr(backend, "cpu_has_bf16", lambda: False)
    with pytest.raises(BackendError, match="needs a CPU with bf16 matmul support"):
        make_ops("torch", "cpu", chain_precision="bf16")
    make_ops("torch", "cpu")  # fp32 stays available


def _bf16_ops():
    from fastrsm.backend import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 matmul")
    return make_ops("torch", "cpu", chain_precision="bf16"), make_ops("torch", "cpu")


@pytest.mark.parametrize("seeds", [None, 2])
def test_bf16_chain_against_fp32_on_the_same_draws(seeds):
    """The same x_T and step noise through the chain with bf16 matmul operands and with fp32: per action
    dimension the sampled actions' mean and spread agree within 2e-3 (actions in [-1, 1]; 4096 samples, T = 10,
    H = 64 x 3), and no single action moves by more than 0.02: bf16 rounds the operands (8 bits of mantissa),
    not the chain's state (measured: mean and spread within 1e-4, largest move 0.002)."""
    from fastrsm.diffusion import DiffusionPolicy

    bf16, fp32 = _bf16_ops()
    torch.manual_seed(0)
    pol = DiffusionPolicy(6, 3, hidden=64, layers=3, time_dim=16, T=10, seeds=seeds)
    lead = () if seeds is None else (seeds,)
    s = torch.randn(*lead, 128, 6)
    with torch.no_grad():
        a16 = bf16.sample(pol.eps_net, pol.sched, s, 32, generator=torch.Generator().manual_seed(4))
        a32 = fp32.sample(pol.eps_net, pol.sched, s, 32, generator=torch.Generator().manual_seed(4))
        # a chain too small for bf16 to pay (one observation's candidates) stays fp32: the same numbers
        one16 = bf16.sample(pol.eps_net, pol.sched, s[..., :1, :], 32, generator=torch.Generator().manual_seed(5))
        one32 = fp32.sample(pol.eps_net, pol.sched, s[..., :1, :], 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one16, one32)
    assert a16.dtype == torch.float32 and a16.shape == a32.shape == (*lead, 128, 32, 3)
    assert not torch.equal(a16, a32)  # it did run in another precision
    flat16, flat32 = a16.reshape(-1, 3), a32.reshape(-1, 3)
    assert (flat16.mean(0) - flat32.mean(0)).abs().max() < 2e-3
    assert (flat16.std(0) - flat32.std(0)).abs().max() < 2e-3
    assert (a16 - a32).abs().max() < 0.02


def test_bf16_chain_keeps_fp32_where_a_gradient_flows():
    """DACER differentiates through the chain: with autograd on, the bf16 setting changes nothing."""
    from fastrsm.diffusion import DiffusionPolicy, sample_chain

    bf16, fp32 = _bf16_ops()
    torch.manual_seed(1)
    pol = DiffusionPolicy(4, 2, hidden=32, layers=2, time_dim=8, T=4)
    s, x_T, noise = torch.randn(5, 4), torch.randn(5000, 2), torch.randn(4, 5000, 2)  # 1000 rows per state
    got = bf16.chain(pol.eps_net, pol.sched, s, x_T, noise)  # no autograd: bf16
    want = fp32.chain(pol.eps_net, pol.sched, s, x_T, noise)
    assert not torch.equal(got, want)
    from functools import partial

    from fastrsm.diffusion import run_chain

    g16 = sample_chain(pol.eps_net, pol.sched, s, x_T, noise, grad=True, run=partial(run_chain, precision="bf16"))
    g32 = sample_chain(pol.eps_net, pol.sched, s, x_T, noise, grad=True)
    assert g16.requires_grad and torch.equal(g16, g32)


@pytest.mark.parametrize("chain_noise", ["torch", "kernel"])
def test_triton_sample_draws_from_an_explicit_generator(pol, chain_noise):
    """Ops.sample(..., generator=g) draws what the global generator seeded alike draws (the Philox seed included),
    and leaves the global generator alone."""
    pytest.importorskip("triton")
    ops = make_ops("triton", DEV, chain_noise=chain_noise)
    s = torch.randn(3, 4, device=DEV)
    torch.manual_seed(5)
    want = ops.sample(pol.eps_net, pol.sched, s, 2)
    state = torch.get_rng_state()
    got = ops.sample(pol.eps_net, pol.sched, s, 2, generator=torch.Generator(device=DEV).manual_seed(5))
    assert torch.equal(got, want)
    assert torch.equal(torch.get_rng_state(), state)


def test_kernel_noise_with_another_x_T_scale_draws_x_T_with_torch(pol):
    """The kernel draws x_T ~ 0.5·N(0, I); a sampler asking for N(0, I) (DACER's) gets x_T from torch, then the
    step noise from the kernel's Philox stream (its seed drawn after x_T)."""
    pytest.importorskip("triton")
    from fastrsm.kernels import chain_noise

    ops = make_ops("triton", DEV, chain_noise="kernel")
    s = torch.randn(3, 4, device=DEV)
    torch.manual_seed(8)
    with torch.no_grad():
        got = ops.sample(pol.eps_net, pol.sched, s, 2, x_T_scale=1.0)
    torch.manual_seed(8)
    x_T = torch.randn(6, 3, device=DEV)
    seed_t = torch.randint(0, 2**31 - 1, (1,), device=DEV, dtype=torch.int64)
    _, noise = chain_noise(seed_t, pol.T, 6, 3, DEV)
    with torch.no_grad():
        ref = reverse_chain(pol.eps_net, pol.sched, s, x_T, noise).reshape(3, 2, 3)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
