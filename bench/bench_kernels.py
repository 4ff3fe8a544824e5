"""Micro-benchmarks of the fused kernels (docs/algorithms.md §9) against their eager PyTorch references and
torch.compile of the same, at the paper's shapes: B·N = 256·32 chain rows, T = 20, H = 256 (3 layers), K = 64, A = 8
(Ant) and 17 (Humanoid). CUDA only:

    pytest bench/bench_kernels.py --benchmark-only --benchmark-group-by=group

Every timed call ends with torch.cuda.synchronize(), so a figure is the latency of one call. Figures go into
bench/RESULTS.md with the device name, date and commit (docs/design.md).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="kernel benchmarks need CUDA: run `pytest bench/ --benchmark-only` on a GPU")

B, N, T, H, LAYERS, K = 256, 32, 20, 256, 3, 64
TASKS = {"ant": (27, 8), "humanoid": (376, 17)}  # (obs_dim, act_dim)


def timed(benchmark, fn, warmup: int = 3):
    """Benchmark fn() with a device sync per call; warm-up calls first (Triton JIT, torch.compile)."""

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    for _ in range(warmup):
        run()
    return benchmark(run)


def compiled(fn, mode: str | None = None):
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(fn, mode=mode, dynamic=False)


# ------------------------------------------------------------------ denoising chain


@pytest.fixture(scope="module", params=list(TASKS))
def chain_inputs(request):
    from fastrsm.diffusion import DiffusionPolicy

    S, A = TASKS[request.param]
    torch.manual_seed(0)
    pol = DiffusionPolicy(S, A, hidden=H, layers=LAYERS, T=T).cuda().eval()
    s = torch.randn(B, S, device="cuda")
    x_T, noise = pol.draw_chain_inputs(B * N, torch.device("cuda"))
    return request.param, pol, s, x_T, noise


def _chain_impl(name: str):
    from fastrsm.diffusion import reverse_chain

    if name == "eager":
        return reverse_chain
    if name == "compile":
        return compiled(reverse_chain)
    if name == "compile-cudagraphs":
        return compiled(reverse_chain, "reduce-overhead")
    pytest.importorskip("triton")
    from fastrsm.kernels.chain import fused_chain

    precision = name.split("-")[1]
    return lambda *args: fused_chain(*args, precision=precision)


@pytest.mark.parametrize("impl", ["eager", "compile", "compile-cudagraphs", "triton-fp32", "triton-tf32",
                                  "triton-bf16"])
def test_chain(benchmark, chain_inputs, impl):
    task, pol, s, x_T, noise = chain_inputs
    fn = _chain_impl(impl)
    benchmark.group = f"chain {task} rows={B * N} T={T} H={H}"
    with torch.no_grad():
        timed(benchmark, lambda: fn(pol.eps_net, pol.sched, s, x_T, noise))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("block_m,num_warps,num_stages", [(16, 4, 1), (32, 4, 1), (32, 4, 2), (32, 8, 2),
                                                          (64, 8, 1), (64, 8, 2)])
def test_chain_triton_configs(benchmark, chain_inputs, precision, block_m, num_warps, num_stages):
    """Launch-config sweep, to re-tune fastrsm.kernels.chain._launch_config on a new GPU."""
    pytest.importorskip("triton")
    from fastrsm.kernels.chain import fused_chain

    task, pol, s, x_T, noise = chain_inputs
    benchmark.group = f"chain configs {task} {precision}"
    with torch.no_grad():
        timed(benchmark, lambda: fused_chain(pol.eps_net, pol.sched, s, x_T, noise, precision=precision,
                                             block_m=block_m, num_warps=num_warps, num_stages=num_stages))


# ------------------------------------------------------------------ weighted score-matching loss


def _impl(name: str, reference, kernel_module: str, kernel_name: str):
    """eager -> the reference; compile -> torch.compile of it; triton -> the fused kernel."""
    if name == "eager":
        return reference
    if name == "compile":
        return compiled(reference)
    pytest.importorskip("triton")
    import importlib

    return getattr(importlib.import_module(kernel_module), kernel_name)


def _sm_impl(name: str):
    from fastrsm.losses import weighted_sm_loss

    return _impl(name, weighted_sm_loss, "fastrsm.kernels.sm_loss", "fused_weighted_sm_loss")


@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("per_k", [False, True], ids=["sdac", "dpmd-softmax"])
@pytest.mark.parametrize("A", [8, 17])
def test_sm_loss_fwd_bwd(benchmark, impl, per_k, A):
    torch.manual_seed(0)
    pred = torch.randn(*((B, K, A) if per_k else (B, A)), device="cuda", requires_grad=True)
    tgt = torch.randn(B, K, A, device="cuda")
    logits = torch.randn(B, K, device="cuda")
    fn = _sm_impl(impl)

    def step():
        pred.grad = None
        fn(pred, tgt, logits).backward()

    benchmark.group = f"sm_loss fwd+bwd {'per-k' if per_k else 'shared'} B={B} K={K} A={A}"
    timed(benchmark, step)


# ------------------------------------------------------------------ best-of-N


def _bon_impl(name: str):
    from fastrsm.backend import best_of_n_reference

    return _impl(name, best_of_n_reference, "fastrsm.kernels.best_of_n", "fused_best_of_n")


@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("A", [8, 17])
def test_best_of_n(benchmark, impl, A):
    torch.manual_seed(0)
    q = torch.randn(B, N, device="cuda")
    cand = torch.rand(B, N, A, device="cuda") * 2 - 1
    noise = torch.randn(B, A, device="cuda")
    std = torch.tensor(0.5, device="cuda")
    fn = _bon_impl(impl)
    benchmark.group = f"best_of_n B={B} N={N} A={A}"
    timed(benchmark, lambda: fn(q, cand, noise, std))
