"""Fused denoising chain (docs/algorithms.md §9.1): the whole T-step DDPM reverse process of an `EpsilonNet` in one
launch.

Each program owns BLOCK_M chain rows and walks i = T-1 .. 0 in-kernel. Per step it runs the ε-network
(first layer = s_proj[row // N] + tbias[i] + x·W_aᵀ, Mish, the hidden Linear+Mish layers, the output Linear)
and the posterior update with x̂_0 clipped to [-1, 1]. The state projection s·W_sᵀ + b and the time biases
W_e·emb(t) are computed once per call in PyTorch (docs/algorithms.md §2, last note): they are the only parts of the
first layer that do not depend on x.

Hidden activations go through a small per-program scratch buffer in global memory (it stays in L1/L2): a
[BLOCK_M, H] register tile cannot be sliced along H for the next layer's K-loop, and a full H×H weight tile
does not fit in registers. Two buffers ping-pong between layers, separated by barriers.

`reference` is `reference.reverse_chain` (re-exported as `fastrsm.diffusion.reverse_chain`): the definition
this kernel is held to. `eps_net` is duck-typed: any module with `first_layer_parts()`, `time_features(t)`,
`hidden_linears()`, `body`, `act_dim` and `hidden`, as `fastrsm.nets.EpsilonNet` has.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

from ._utils import check_triton_device
from .reference import reverse_chain as reference  # noqa: F401  (the definition this kernel is held to)

PRECISIONS = ("fp32", "tf32", "bf16")
# What tl.dot gets: exact fp32 products, tf32 tensor cores, or bf16 operands; always fp32 accumulation.
_DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "tf32"}  # bf16 operands ignore the fp32 setting

# Philox offsets are int32: one per (step, row, action) plus one block for x_T.
_MAX_OFFSET = 2**31 - 1


@triton.jit
def _mish(x):
    # x·tanh(softplus(x)) = x·n/(n+2) with n = e^x(e^x+2): one exp, no tanh (absent from older tl), and
    # accurate for very negative x where log(1+e^x) would round to 0. Above 20, mish(x) = x in fp32.
    u = tl.exp(tl.minimum(x, 20.0))
    n = u * (u + 2.0)
    return tl.where(x > 20.0, x, x * n / (n + 2.0))


@triton.jit
def _chain_kernel(
    x_ptr, out_ptr, noise_ptr, seed_ptr, seed,
    sproj_ptr, tbias_ptr, wa_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
    c1_ptr, c0_ptr, pc0_ptr, pct_ptr, pstd_ptr,
    scratch_ptr,
    M, N_PART, A, T,
    S_X, S_NOISE_STEP, S_SP, S_TB, S_WA, S_WH, S_BH, S_WO, S_BO, S_RNG,  # seed-axis strides (grid axis 1)
    H: tl.constexpr, A_PAD: tl.constexpr, NUM_HIDDEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_NOISE: tl.constexpr, HAS_XT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,  # else the int `seed`; read on the device so a CUDA graph can advance it
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    # seed axis: program_id(1) picks seed sid's rows, weights and Philox offsets (all 0 for one network)
    sid = tl.program_id(1)
    sid64 = sid.to(tl.int64)
    x_ptr += sid64 * S_X
    out_ptr += sid64 * S_X
    noise_ptr += sid64 * S_X
    sproj_ptr += sid64 * S_SP
    tbias_ptr += sid64 * S_TB
    wa_ptr += sid64 * S_WA
    wh_ptr += sid64 * S_WH
    bh_ptr += sid64 * S_BH
    wo_ptr += sid64 * S_WO
    bo_ptr += sid64 * S_BO
    rng0 = sid * S_RNG
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    state = rows // N_PART
    a_idx = tl.arange(0, A_PAD)
    amask = a_idx < A
    xmask = rmask[:, None] & amask[None, :]
    xoff = rows[:, None] * A + a_idx[None, :]
    local = tl.arange(0, BLOCK_M)
    hh = tl.arange(0, BLOCK_H)
    buf0 = scratch_ptr + (sid64 * tl.num_programs(0) + pid) * (2 * BLOCK_M * H)
    buf_stride = BLOCK_M * H

    if SEED_FROM_PTR:
        seed_val = tl.load(seed_ptr)
    else:
        seed_val = seed

    if HAS_XT:
        x = tl.load(x_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
    else:
        # x_T ~ 0.5·N(0, I) from the offset block after the T noise blocks.
        x = 0.5 * tl.randn(seed_val, rng0 + T * M * A + xoff)
        x = tl.where(xmask, x, 0.0)

    for step in range(T):
        i = T - 1 - step
        # ---- first layer: the only one that sees x; state and time parts are precomputed biases
        for n0 in range(0, H, BLOCK_H):
            cols = n0 + hh
            pre = tl.load(sproj_ptr + state[:, None] * H + cols[None, :], mask=rmask[:, None], other=0.0)
            pre += tl.load(tbias_ptr + i * H + cols)[None, :]
            wa = tl.load(wa_ptr + a_idx[:, None] * H + cols[None, :])
            pre = tl.dot(x.to(wa.dtype), wa, pre, input_precision=DOT_PRECISION)
            tl.store(buf0 + local[:, None] * H + cols[None, :], _mish(pre))
        tl.debug_barrier()
        # ---- hidden H×H layers, ping-pong between the two scratch buffers
        for l in range(NUM_HIDDEN):
            src = buf0 + (l % 2) * buf_stride
            dst = buf0 + ((l + 1) % 2) * buf_stride
            for n0 in range(0, H, BLOCK_H):
                cols = n0 + hh
                acc = tl.zeros((BLOCK_M, BLOCK_H), tl.float32)
                acc += tl.load(bh_ptr + l * H + cols)[None, :]
                for k0 in range(0, H, BLOCK_H):
                    ks = k0 + hh
                    a = tl.load(src + local[:, None] * H + ks[None, :])
                    w = tl.load(wh_ptr + l * H * H + ks[:, None] * H + cols[None, :])
                    acc = tl.dot(a.to(w.dtype), w, acc, input_precision=DOT_PRECISION)
                tl.store(dst + local[:, None] * H + cols[None, :], _mish(acc))
            tl.debug_barrier()
        # ---- output layer -> ε̂ [BLOCK_M, A_PAD] (padded columns have zero weights and bias)
        src = buf0 + (NUM_HIDDEN % 2) * buf_stride
        eps = tl.zeros((BLOCK_M, A_PAD), tl.float32)
        eps += tl.load(bo_ptr + a_idx)[None, :]
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + hh
            a = tl.load(src + local[:, None] * H + ks[None, :])
            w = tl.load(wo_ptr + ks[:, None] * A_PAD + a_idx[None, :])
            eps = tl.dot(a.to(w.dtype), w, eps, input_precision=DOT_PRECISION)
        tl.debug_barrier()  # the next step's first layer overwrites the buffer just read
        # ---- DDPM posterior step i -> i-1 (as fastrsm.diffusion.reverse_step)
        c1 = tl.load(c1_ptr + i)
        c0 = tl.load(c0_ptr + i)
        x0 = (x - c1 * eps) / c0
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
        mean = tl.load(pc0_ptr + i) * x0 + tl.load(pct_ptr + i) * x
        if HAS_NOISE:
            z = tl.load(noise_ptr + i.to(tl.int64) * S_NOISE_STEP + xoff, mask=xmask, other=0.0)
            z = z.to(tl.float32)
        else:
            z = tl.randn(seed_val, rng0 + i * M * A + xoff)
        x = tl.where(i > 0, mean + tl.load(pstd_ptr + i) * z, mean)  # no noise at the last step
        x = tl.where(xmask, x, 0.0)

    x = tl.minimum(tl.maximum(x, -1.0), 1.0)
    tl.store(out_ptr + xoff, x, mask=xmask)


def _block_h(H: int) -> int:
    if H % 16:
        raise ValueError(f"the fused chain needs a hidden width that is a multiple of 16, got {H}")
    return 32 if H % 32 == 0 else 16


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_config(M: int, precision: str, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, num_warps, num_stages). Chosen from ptxas register reports for sm_80/sm_90 at H=256 (A_PAD 16
    and 32): a [32, 32] tile per dot keeps fp32 and tf32 under ~170 registers with little or no spilling;
    software pipelining (stages=2) is kept for the tensor-core dots. Not yet timed on a GPU: re-tune with the
    config sweep of bench/bench_kernels.py and the block_m/num_warps/num_stages overrides."""
    if device.type != "cuda":
        return 64, 4, 1  # interpreter: fewer, larger programs run faster
    block_m = 32 if triton.cdiv(M, 32) >= _num_sms(device) else 16  # small batches: more programs
    return block_m, 4, 1 if precision == "fp32" else 2


def _pack_weights(eps_net: torch.nn.Module, A_PAD: int, wdtype: torch.dtype, device: torch.device, S: int = 1):
    """Transposed, padded copies of the network's weights in the layouts the kernel reads, with a leading seed
    axis of S (S stacked networks: every weight [S, ...] in nn.Linear's layout; S = 1: one ordinary network).

    Done on every call on purpose: the weights change between calls (optimiser, EMA), and a cache keyed on
    anything host-side would go stale under CUDA-graph replay. It is ~10 small copies, < 1 MB per seed."""
    acts = [type(m).__name__ for m in eps_net.body if not hasattr(m, "weight")]
    if any(a != "Mish" for a in acts):  # the kernel hard-codes Mish between the Linear layers
        raise ValueError(f"the fused chain supports Linear+Mish bodies only, got activations {acts}")
    lins = eps_net.hidden_linears()
    hidden, out = lins[:-1], lins[-1]
    H, A = eps_net.hidden, eps_net.act_dim
    _, W_a, _, _ = eps_net.first_layer_parts()
    wa = torch.zeros(S, A_PAD, H, device=device, dtype=wdtype)
    wa[:, :A] = W_a.reshape(S, H, A).transpose(1, 2)
    if hidden:
        for lin in hidden:
            if tuple(lin.weight.shape[-2:]) != (H, H):
                raise ValueError(f"the fused chain needs square hidden layers of width {H}, "
                                 f"got {tuple(lin.weight.shape)}")
        wh = torch.stack([lin.weight.reshape(S, H, H).transpose(1, 2) for lin in hidden], 1).to(wdtype).contiguous()
        bh = torch.stack([lin.bias.reshape(S, H) for lin in hidden], 1).float().contiguous()
    else:  # never read (NUM_HIDDEN = 0) but the kernel needs valid pointers
        wh = torch.zeros(S, device=device, dtype=wdtype)
        bh = torch.zeros(S, device=device)
    wo = torch.zeros(S, H, A_PAD, device=device, dtype=wdtype)
    wo[:, :, :A] = out.weight.reshape(S, A, H).transpose(1, 2)
    bo = torch.zeros(S, A_PAD, device=device)
    bo[:, :A] = out.bias.reshape(S, A)
    return wa, wh, bh, wo, bo, len(hidden)


def fused_chain(eps_net: torch.nn.Module, sched: Any, s: torch.Tensor, x_T: torch.Tensor | None,
                noise: torch.Tensor | None = None, seed: int | torch.Tensor | None = None,
                precision: str = "fp32", particles: int | None = None, block_m: int | None = None,
                block_h: int | None = None, num_warps: int | None = None, num_stages: int | None = None
                ) -> torch.Tensor:
    """The reverse chain of `reverse_chain` in one kernel launch (forward only, no autograd).

    s: [B, S]; x_T: [B·N, A] (row r is a particle of state r // N), or None to draw x_T ~ 0.5·N(0, I) in-kernel
    (then N = `particles`, or noise.shape[1] // B);
    noise: [T, B·N, A] as for `reverse_chain` (noise[0] unused), or None to draw it in-kernel with Philox from
    `seed` (an int, or an int tensor with one element, read on the device so a CUDA graph can advance it; None
    draws a seed from torch's generator). The in-kernel draws depend only on (seed, step, row, action), not on
    the block size. precision: 'fp32' (exact fp32 products), 'tf32' or 'bf16' (matmul operands; accumulation
    and the chain state stay fp32). Returns x_0 [B·N, A] float32 in [-1, 1].

    A stacked network of S seeds (`eps_net.seeds` = S, every weight [S, ...]) runs as one launch with the seed as
    grid axis 1: s [S, B, S_dim], x_T [S, B·N, A], noise [T, S, B·N, A] -> x_0 [S, B·N, A]; drawn in-kernel,
    seed k's Philox offsets follow seed k − 1's, so no two seeds share a random number.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = s.device
    check_triton_device(device)
    if precision == "bf16" and device.type != "cuda":
        # The interpreter (Triton 3.9) multiplies bf16 tiles as raw integers: refuse rather than return garbage.
        raise ValueError("precision='bf16' needs CUDA; under the Triton interpreter use 'fp32'")
    T, A, H = sched.T, eps_net.act_dim, eps_net.hidden
    stacked = getattr(eps_net, "seeds", None) is not None
    S = eps_net.seeds if stacked else 1
    lead = (S,) if stacked else ()
    if s.dim() != 2 + stacked or (stacked and s.shape[0] != S):
        raise ValueError(f"s must be [{'S, ' if stacked else ''}B, obs_dim], got {tuple(s.shape)}")
    B = s.shape[-2]
    if x_T is not None:
        if x_T.dim() != 2 + stacked or x_T.shape[-1] != A or x_T.shape[:-2] != lead:
            raise ValueError(f"x_T must be [{'S, ' if stacked else ''}B·N, {A}], got {tuple(x_T.shape)}")
        M = x_T.shape[-2]
    elif noise is not None:
        M = noise.shape[-2]
    elif particles is not None:
        M = B * particles
    else:
        raise ValueError("give x_T, noise or particles to size the chain")
    if B == 0 or M % B:
        raise ValueError(f"{M} chain rows are not a multiple of {B} states")
    if noise is not None and tuple(noise.shape) != (T, *lead, M, A):
        raise ValueError(f"noise must be [T={T}, {'S, ' if stacked else ''}{M}, {A}], got {tuple(noise.shape)}")
    if S * (T + 1) * M * A > _MAX_OFFSET:
        raise ValueError(f"chain too large for int32 offsets: S·(T+1)·M·A = {S * (T + 1) * M * A}")
    out = torch.empty(*lead, M, A, device=device, dtype=torch.float32)
    if M == 0:
        return out

    A_PAD = max(16, triton.next_power_of_2(A))  # tl.dot needs every dimension >= 16
    block_h = block_h or _block_h(H)
    if H % block_h or block_h < 16 or block_h & (block_h - 1):
        raise ValueError(f"block_h={block_h} must be a power of two >= 16 dividing the hidden width {H}")
    cfg = _launch_config(M, precision, device)
    block_m, num_warps, num_stages = block_m or cfg[0], num_warps or cfg[1], num_stages or cfg[2]
    wdtype = torch.bfloat16 if precision == "bf16" else torch.float32

    with torch.no_grad():
        W_s, _, W_e, b1 = eps_net.first_layer_parts()
        if stacked:  # [S, B, H] and [S, T, H]
            s_proj = torch.baddbmm(b1.float().unsqueeze(1), s.float(), W_s.transpose(1, 2).float()).contiguous()
            temb = eps_net.time_features(torch.arange(T, device=device).expand(S, T))  # [S, T, time_dim]
            tbias = torch.bmm(temb.float(), W_e.transpose(1, 2).float()).contiguous()
        else:
            s_proj = torch.addmm(b1.float(), s.float(), W_s.t().float()).contiguous()  # [B, H]
            temb = eps_net.time_features(torch.arange(T, device=device))  # [T, time_dim]
            tbias = (temb.float() @ W_e.t().float()).contiguous()  # [T, H]
        wa, wh, bh, wo, bo, num_hidden = _pack_weights(eps_net, A_PAD, wdtype, device, S)

        seed_from_ptr, seed_arg, seed_t = False, 0, out  # defaults when nothing is drawn in-kernel
        if noise is not None:
            noise = noise.contiguous()
        if noise is None or x_T is None:
            if isinstance(seed, torch.Tensor):
                if seed.numel() != 1 or seed.dtype not in (torch.int32, torch.int64):
                    raise ValueError("a seed tensor must hold one int32/int64 element")
                seed_from_ptr, seed_t = True, seed.to(device).reshape(1)
            elif seed is None:
                # Drawn on the device from torch's generator: reproducible under torch.manual_seed, no host sync.
                seed_from_ptr = True
                seed_t = torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)
            else:
                seed_arg = int(seed)
        x_in = x_T.contiguous().float() if x_T is not None else out
        grid = (triton.cdiv(M, block_m), S)
        scratch = torch.empty(S * grid[0] * 2 * block_m * H, device=device, dtype=torch.float32)
        _chain_kernel[grid](
            x_in, out, noise if noise is not None else out, seed_t, seed_arg,
            s_proj, tbias, wa, wh, bh, wo, bo,
            sched.sqrt_1m_abar.float().contiguous(), sched.sqrt_abar.float().contiguous(),
            sched.post_c0.float().contiguous(), sched.post_ct.float().contiguous(),
            sched.post_std.float().contiguous(),
            scratch,
            M, M // B, A, T,
            M * A, S * M * A, B * H, T * H, A_PAD * H, num_hidden * H * H, num_hidden * H, H * A_PAD, A_PAD,
            (T + 1) * M * A,
            H=H, A_PAD=A_PAD, NUM_HIDDEN=num_hidden, BLOCK_M=block_m, BLOCK_H=block_h,
            HAS_NOISE=noise is not None, HAS_XT=x_T is not None, SEED_FROM_PTR=seed_from_ptr,
            DOT_PRECISION=_DOT_PRECISION[precision],
            num_warps=num_warps, num_stages=num_stages,
        )
    return out


@triton.jit
def _chain_noise_kernel(out_ptr, seed_ptr, seed, total, SEED_FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if SEED_FROM_PTR:
        seed_val = tl.load(seed_ptr)
    else:
        seed_val = seed
    tl.store(out_ptr + offs, tl.randn(seed_val, offs), mask=offs < total)


def chain_noise(seed: int | torch.Tensor, T: int, M: int, A: int, device: torch.device | str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws `fused_chain` makes in-kernel for `seed`, materialised: (x_T [M, A], noise [T, M, A]).

    fused_chain(..., x_T=None, noise=None, seed=seed) equals reverse_chain(..., *chain_noise(seed, ...)) up to
    float rounding: this is how the in-kernel Philox stream is tested, and a way to replay a fused sample."""
    device = torch.device(device)
    check_triton_device(device)
    total = (T + 1) * M * A
    if total > _MAX_OFFSET:
        raise ValueError(f"chain too large for int32 offsets: (T+1)·M·A = {total}")
    flat = torch.empty(total, device=device, dtype=torch.float32)
    from_ptr = isinstance(seed, torch.Tensor)
    seed_t = seed.to(device).reshape(1) if from_ptr else flat
    BLOCK = 1024
    _chain_noise_kernel[(triton.cdiv(total, BLOCK),)](flat, seed_t, 0 if from_ptr else int(seed), total,
                                                      SEED_FROM_PTR=from_ptr, BLOCK=BLOCK)
    noise = flat[: T * M * A].view(T, M, A)
    x_T = 0.5 * flat[T * M * A:].view(M, A)
    return x_T, noise
