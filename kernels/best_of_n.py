"""Fused best-of-N selection (docs/algorithms.md §3, §9.3): argmax of Q over the N candidates of each state, the
gathered action, the optional exploration noise and the clip, in one launch (one program per state).

Ties go to the lowest index. NaN: a NaN Q counts as larger than every number (as in torch.argmax), so a row
with NaNs selects its first NaN; a row of -inf selects index 0. `reference` is the PyTorch definition,
`reference.best_of_n` (plain PyTorch, importable without triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import check_triton_device
from .reference import best_of_n as reference  # noqa: F401  (the definition this kernel is held to)


@triton.jit
def _best_of_n_kernel(
    q_ptr, cand_ptr, noise_ptr, std_ptr, std_val, clip, out_ptr, idx_ptr,
    N, A,
    HAS_NOISE: tl.constexpr, STD_FROM_PTR: tl.constexpr, DO_CLIP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    neg_inf = float("-inf")
    best_v = tl.full((), neg_inf, q_ptr.dtype.element_ty)
    best_i = tl.full((), 0, tl.int32) + N  # N = "none yet"
    nan_i = tl.full((), 0, tl.int32) + N
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs
        nmask = n < N
        q = tl.load(q_ptr + b * N + n, mask=nmask, other=neg_inf)  # native dtype: no ties made by casting
        isnan = (q != q) & nmask
        nan_i = tl.minimum(nan_i, tl.min(tl.where(isnan, n, N), axis=0))
        qv = tl.where(isnan, neg_inf, q)
        cmax = tl.max(qv, axis=0)
        cidx = tl.min(tl.where((qv == cmax) & nmask & ~isnan, n, N), axis=0)
        # Strictly greater keeps the earlier chunk's index on ties; the first non-NaN chunk always counts.
        take = (cmax > best_v) | ((best_i == N) & (cidx < N))
        best_i = tl.where(take, cidx, best_i)
        best_v = tl.where(take, cmax, best_v)
    idx = tl.where(nan_i < N, nan_i, best_i)
    tl.store(idx_ptr + b, idx.to(tl.int64))

    a_idx = tl.arange(0, BLOCK_A)
    amask = a_idx < A
    a = tl.load(cand_ptr + (b * N + idx) * A + a_idx, mask=amask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        if STD_FROM_PTR:
            std = tl.load(std_ptr).to(tl.float32)
        else:
            std = std_val
        a = a + std * tl.load(noise_ptr + b * A + a_idx, mask=amask, other=0.0).to(tl.float32)
    if DO_CLIP:
        a = tl.minimum(tl.maximum(a, -clip), clip)
    tl.store(out_ptr + b * A + a_idx, a.to(out_ptr.dtype.element_ty), mask=amask)


def fused_best_of_n(q: torch.Tensor, cand: torch.Tensor, noise: torch.Tensor | None = None,
                    noise_std: float | torch.Tensor = 0.0, clip: float | None = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, N], cand [B, N, A], noise [B, A] or None -> (action [B, A] in cand's dtype, idx [B] int64).

    action = clip(cand[b, idx_b] + noise_std·noise_b, -clip, clip); noise_std may be a float or a 0-d/1-element
    tensor (read on the device: no host sync, CUDA-graph friendly); clip=None skips the clip. No autograd."""
    if q.dim() != 2 or cand.dim() != 3 or cand.shape[:2] != q.shape:
        raise ValueError(f"q must be [B, N] and cand [B, N, A]; got {tuple(q.shape)} and {tuple(cand.shape)}")
    B, N, A = cand.shape
    if N == 0:
        raise ValueError("best-of-N needs at least one candidate")
    if noise is not None and tuple(noise.shape) != (B, A):
        raise ValueError(f"noise must be [{B}, {A}], got {tuple(noise.shape)}")
    check_triton_device(cand.device)
    out = torch.empty(B, A, device=cand.device, dtype=cand.dtype)
    idx = torch.empty(B, device=cand.device, dtype=torch.int64)
    if B == 0:
        return out, idx
    q, cand = q.detach().contiguous(), cand.detach().contiguous()
    std_from_ptr = isinstance(noise_std, torch.Tensor)
    if std_from_ptr:
        if noise_std.numel() != 1:
            raise ValueError("noise_std must be a float or a tensor with one element")
        std_t, std_val = noise_std.detach().to(cand.device, torch.float32).reshape(1), 0.0
    else:
        std_t, std_val = out, float(noise_std)
    BLOCK_N = min(triton.next_power_of_2(N), 1024)
    BLOCK_A = triton.next_power_of_2(A)
    _best_of_n_kernel[(B,)](
        q, cand, noise.detach().contiguous() if noise is not None else out, std_t, std_val,
        float(clip) if clip is not None else 0.0, out, idx,
        N, A,
        HAS_NOISE=noise is not None, STD_FROM_PTR=std_from_ptr, DO_CLIP=clip is not None,
        BLOCK_N=BLOCK_N, BLOCK_A=BLOCK_A, num_warps=1 if BLOCK_N <= 128 else 4,
    )
    return out, idx
