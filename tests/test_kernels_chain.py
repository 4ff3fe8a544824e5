"""kernels/chain.py against fastrsm.diffusion.reverse_chain (the reference), under the Triton interpreter on CPU
or natively on CUDA; `-m gpu` adds the paper's shapes and the tf32/bf16 modes."""

import pytest
import torch

pytest.importorskip("triton")

from fastrsm.kernels.chain import chain_noise, fused_chain, reference  # noqa: E402

from fastrsm.diffusion import DiffusionPolicy  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI cores; the interpreter is single-threaded anyway
    yield
    torch.set_num_threads(n)


def make_policy(S, A, H, layers, T, schedule="linear", seed=0, device=DEV):
    torch.manual_seed(seed)
    pol = DiffusionPolicy(S, A, hidden=H, layers=layers, T=T, schedule=schedule).to(device)
    with torch.no_grad():  # biases away from 0 so that every term of the first layer matters
        for p in pol.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pol


def run_both(pol, B, N, seed=1, **kw):
    g = torch.Generator(device=pol.sched.betas.device).manual_seed(seed)
    s = torch.randn(B, pol.obs_dim, device=DEV, generator=g)
    x_T, noise = pol.draw_chain_inputs(B * N, DEV, g)
    with torch.no_grad():
        ref = reference(pol.eps_net, pol.sched, s, x_T, noise)
    out = fused_chain(pol.eps_net, pol.sched, s, x_T, noise, **kw)
    return out, ref


# (S, A, H, layers, T, B, N): odd action sizes, one row, one step, N = 1 and 33, no hidden H×H layer, H = 16 and
# 48 (multiples of 16 but not of 32), and the real MuJoCo sizes (Ant 27/8, Humanoid 376/17).
SHAPES = [
    (3, 1, 32, 1, 3, 1, 1),
    (2, 1, 16, 1, 1, 1, 1),
    (5, 3, 32, 3, 4, 2, 33),
    (11, 17, 64, 2, 3, 3, 5),
    (4, 2, 48, 2, 3, 2, 4),
    (27, 8, 64, 3, 3, 2, 3),
    (376, 17, 32, 2, 2, 2, 2),
]


@pytest.mark.parametrize("S,A,H,layers,T,B,N", SHAPES)
def test_chain_matches_reference(S, A, H, layers, T, B, N):
    pol = make_policy(S, A, H, layers, T)
    out, ref = run_both(pol, B, N)
    assert out.shape == ref.shape == (B * N, A) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("schedule", ["cosine", "vp", "geometric"])
def test_chain_schedules(schedule):
    pol = make_policy(6, 3, 32, 2, 5, schedule=schedule)
    out, ref = run_both(pol, 2, 3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_chain_hidden_256():
    pol = make_policy(17, 6, 256, 3, 2)
    out, ref = run_both(pol, 1, 16)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_chain_block_sizes_do_not_change_result():
    pol = make_policy(5, 3, 64, 2, 3)
    base, ref = run_both(pol, 3, 22)  # 66 rows: a partial last block for every BLOCK_M
    for block_m, block_h in [(16, 16), (32, 64), (64, 32)]:
        out, _ = run_both(pol, 3, 22, block_m=block_m, block_h=block_h)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out, base, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------ in-kernel Philox noise


def test_philox_chain_equals_reference_on_materialised_noise():
    """The draws made in-kernel are exactly those of chain_noise: the chain is the reference on them."""
    pol = make_policy(5, 3, 32, 2, 4)
    B, N = 2, 5
    s = torch.randn(B, 5, device=DEV)
    x_T, noise = chain_noise(1234, pol.T, B * N, 3, DEV)
    with torch.no_grad():
        ref = reference(pol.eps_net, pol.sched, s, x_T, noise)
    both = fused_chain(pol.eps_net, pol.sched, s, None, None, seed=1234, particles=N, block_m=16)
    given_x = fused_chain(pol.eps_net, pol.sched, s, x_T, None, seed=1234)
    torch.testing.assert_close(both, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(given_x, ref, atol=2e-5, rtol=1e-4)


def test_philox_reproducible_and_seed_dependent():
    pol = make_policy(4, 2, 32, 1, 3)
    s = torch.randn(3, 4, device=DEV)
    x_T = 0.5 * torch.randn(12, 2, device=DEV)
    run = lambda seed, **kw: fused_chain(pol.eps_net, pol.sched, s, x_T, seed=seed, **kw)
    a = run(7)
    assert torch.equal(a, run(7))
    assert torch.equal(a, run(torch.tensor(7)))  # a device seed tensor draws the same stream as the int
    assert torch.equal(a, run(7, block_m=16))  # draws depend on (seed, step, row, action) only
    assert not torch.allclose(a, run(8))
    torch.manual_seed(3)
    b = run(None)
    torch.manual_seed(3)
    assert torch.equal(b, run(None))  # seed=None: reproducible under torch.manual_seed


def test_philox_noise_statistics():
    x_T, noise = chain_noise(99, 4, 512, 8, DEV)  # 16k standard normals, 4k for x_T
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.03
    assert abs(x_T.mean().item()) < 0.03 and abs(x_T.std().item() - 0.5) < 0.03
    other = chain_noise(100, 4, 512, 8, DEV)[1]
    assert abs(torch.corrcoef(torch.stack([noise.flatten(), other.flatten()]))[0, 1].item()) < 0.05
    # consecutive steps, rows and actions are uncorrelated too (no reuse of offsets)
    assert abs(torch.corrcoef(torch.stack([noise[0].flatten(), noise[1].flatten()]))[0, 1].item()) < 0.05


def test_chain_errors():
    pol = make_policy(4, 2, 40, 2, 2)  # 40 is not a multiple of 16
    s, x_T = torch.randn(2, 4, device=DEV), torch.randn(4, 2, device=DEV)
    with pytest.raises(ValueError, match="multiple of 16"):
        fused_chain(pol.eps_net, pol.sched, s, x_T, seed=0)
    pol = make_policy(4, 2, 32, 2, 2)
    with pytest.raises(ValueError, match="precision"):
        fused_chain(pol.eps_net, pol.sched, s, x_T, seed=0, precision="fp16")
    if DEV.type == "cpu":
        with pytest.raises(ValueError, match="bf16"):
            fused_chain(pol.eps_net, pol.sched, s, x_T, seed=0, precision="bf16")
    with pytest.raises(ValueError, match="multiple"):
        fused_chain(pol.eps_net, pol.sched, torch.randn(3, 4, device=DEV), x_T, seed=0)
    with pytest.raises(ValueError, match="noise"):
        fused_chain(pol.eps_net, pol.sched, s, x_T, torch.randn(2, 3, 2, device=DEV))


# ------------------------------------------------------------------ GPU: paper shapes, tf32 / bf16

PAPER = [(27, 8), (376, 17)]  # Ant, Humanoid; B·N = 256·32 rows, T = 20, H = 256, 3 layers


@pytest.fixture()
def exact_cuda_matmul():
    """The reference must run in true fp32 whatever the session's TF32 setting."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize("S,A", PAPER)
def test_chain_paper_shape_fp32_gpu(S, A, exact_cuda_matmul):
    pol = make_policy(S, A, 256, 3, 20, device="cuda")
    out, ref = run_both(pol, 256, 32)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
# Tolerances ~10x the errors of a PyTorch emulation of the same roundings (tf32: mean 1e-4, q99 1e-3; bf16: mean
# 9e-4, q99 8e-3 at Humanoid's shape).
@pytest.mark.parametrize("precision,mean_tol,q99_tol", [("tf32", 2e-3, 2e-2), ("bf16", 1e-2, 6e-2)])
@pytest.mark.parametrize("S,A", PAPER)
def test_chain_low_precision_gpu(S, A, precision, mean_tol, q99_tol, exact_cuda_matmul):
    """tf32/bf16 matmul operands: errors compound over 20 steps, so hold the distribution of the error, not its max."""
    pol = make_policy(S, A, 256, 3, 20, device="cuda")
    out, ref = run_both(pol, 256, 32, precision=precision)
    err = (out - ref).abs().flatten()
    assert err.mean().item() < mean_tol
    assert torch.quantile(err[:1_000_000], 0.99).item() < q99_tol


@pytest.mark.gpu
def test_chain_philox_gpu_statistics_and_replay(exact_cuda_matmul):
    pol = make_policy(27, 8, 256, 3, 20, device="cuda")
    s = torch.randn(64, 27, device="cuda")
    seed = torch.tensor([5], device="cuda")
    x_T, noise = chain_noise(seed, 20, 64 * 32, 8, "cuda")
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    out = fused_chain(pol.eps_net, pol.sched, s, None, None, seed=seed, particles=32)
    with torch.no_grad():
        ref = reference(pol.eps_net, pol.sched, s, x_T, noise)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_chain_cuda_graph_gpu():
    """Capturable: no host sync inside; a device seed advanced in place gives fresh noise on each replay."""
    pol = make_policy(27, 8, 256, 3, 20, device="cuda")
    s = torch.randn(16, 27, device="cuda")
    seed = torch.tensor([11], device="cuda")
    fused_chain(pol.eps_net, pol.sched, s, None, None, seed=seed, particles=32)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_chain(pol.eps_net, pol.sched, s, None, None, seed=seed, particles=32)
    graph.replay()
    first = out.clone()
    torch.testing.assert_close(first, fused_chain(pol.eps_net, pol.sched, s, None, None, seed=11, particles=32))
    seed += 1
    graph.replay()
    assert not torch.allclose(first, out)


# ------------------------------------------------------------------ compiles for real GPUs, without one

_AOT = r"""
import sys
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton.backends.nvidia  # noqa: F401  (bundles ptxas)
except Exception as e:  # pragma: no cover - another triton layout
    print("SKIP", repr(e)); sys.exit(0)
from fastrsm.kernels.best_of_n import _best_of_n_kernel
from fastrsm.kernels.chain import _chain_kernel, _chain_noise_kernel
from fastrsm.kernels.sm_loss import _sm_loss_kernel

P = "*fp32"
def build(fn, types, consts, arch, num_warps=4, num_stages=1):
    sig = {n: ("constexpr" if n in consts else types[n]) for n in fn.arg_names}
    try:
        src = ASTSource(fn, sig, constexprs=consts)
        target = GPUTarget("cuda", arch, 32)
    except TypeError as e:  # pragma: no cover - another ASTSource signature
        print("SKIP", repr(e)); sys.exit(0)
    k = triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))
    assert k.asm["cubin"], fn.__name__

chain = dict(x_ptr=P, out_ptr=P, noise_ptr=P, seed_ptr="*i64", seed="i32", sproj_ptr=P, tbias_ptr=P, wa_ptr=P,
             wh_ptr=P, bh_ptr=P, wo_ptr=P, bo_ptr=P, c1_ptr=P, c0_ptr=P, pc0_ptr=P, pct_ptr=P, pstd_ptr=P,
             scratch_ptr=P, M="i32", N_PART="i32", A="i32", T="i32",
             **{n: "i32" for n in ("S_X", "S_NOISE_STEP", "S_SP", "S_TB", "S_WA", "S_WH", "S_BH", "S_WO", "S_BO",
                                   "S_RNG")})
for arch, prec, wdt, noise, stages in [(90, "ieee", P, False, 1), (90, "tf32", P, True, 2),
                                      (80, "tf32", "*bf16", False, 2)]:
    build(_chain_kernel, {**chain, "wa_ptr": wdt, "wh_ptr": wdt, "wo_ptr": wdt},
          dict(H=256, A_PAD=32, NUM_HIDDEN=2, BLOCK_M=32, BLOCK_H=32, HAS_NOISE=noise, HAS_XT=noise,
               SEED_FROM_PTR=not noise, DOT_PRECISION=prec), arch, num_stages=stages)
build(_chain_noise_kernel, dict(out_ptr=P, seed_ptr="*i64", seed="i32", total="i32"),
      dict(SEED_FROM_PTR=True, BLOCK=1024), 90)
for per_k in (False, True):
    build(_sm_loss_kernel, dict(pred_ptr=P, tgt_ptr=P, logit_ptr=P, loss_ptr=P, grad_ptr=P, K="i32", A="i32",
                                grad_scale="fp32"), dict(PER_K=per_k, NEED_GRAD=True, BLOCK_K=64, BLOCK_A=32), 90)
build(_best_of_n_kernel, dict(q_ptr=P, cand_ptr=P, noise_ptr=P, std_ptr=P, std_val="fp32", clip="fp32",
                              out_ptr=P, idx_ptr="*i64", N="i32", A="i32"),
      dict(HAS_NOISE=True, STD_FROM_PTR=True, DO_CLIP=True, BLOCK_N=32, BLOCK_A=32), 90, num_warps=1)
print("OK")
"""


def test_kernels_compile_for_cuda_targets():
    """Ahead-of-time compile (Triton -> PTX -> cubin with the bundled ptxas) for sm_80/sm_90 at the paper's
    H = 256: catches what the interpreter cannot (layouts, dot shapes, types) on a machine without a GPU."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence Triton 3.9's notice; fusion is its default
    out = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"this triton cannot compile ahead of time here: {out.stdout.strip()}")
    assert out.stdout.strip().endswith("OK")
