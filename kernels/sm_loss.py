"""Fused weighted score-matching loss (docs/algorithms.md §9.2), the core of SDAC and DPMD-softmax:

    L = mean_b Σ_k softmax_k(logits)_bk ‖ε_pred − ε^k‖²

One program per state b streams its K targets in chunks with an online logsumexp (running max m, running
Σ e^{l−m}, Σ e^{l−m}‖·‖² and, for a shared prediction, Σ e^{l−m} ε^k), so no [B, K, A] temporary is made.
The gradient w.r.t. ε_pred is computed in the same launch and saved; backward only scales it:
  shared ε_pred [B, A] (SDAC):       2(ε_pred − Σ_k w_k ε^k) / B
  per-k ε_pred [B, K, A] (DPMD-sm):  2 w_k (ε_pred,k − ε^k) / B   (a second sweep over K, once w is known)
Logits and targets are constants (no gradient), as in the losses that use it.

`reference` is `reference.weighted_sm_loss` (re-exported as `fastrsm.losses.weighted_sm_loss`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import check_triton_device
from .reference import weighted_sm_loss as reference  # noqa: F401  (the definition this kernel is held to)


@triton.jit
def _sm_loss_kernel(
    pred_ptr, tgt_ptr, logit_ptr, loss_ptr, grad_ptr,
    K, A, grad_scale,
    PER_K: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_A: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    a_idx = tl.arange(0, BLOCK_A)
    amask = a_idx < A
    kk = tl.arange(0, BLOCK_K)
    if not PER_K:
        p = tl.load(pred_ptr + b * A + a_idx, mask=amask, other=0.0).to(tl.float32)
    m = tl.full((), float("-inf"), tl.float32)
    ssum = tl.zeros((), tl.float32)
    dsum = tl.zeros((), tl.float32)
    esum = tl.zeros((BLOCK_A,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        l = tl.load(logit_ptr + b * K + k, mask=kmask, other=float("-inf")).to(tl.float32)
        offs = (b * K + k)[:, None] * A + a_idx[None, :]
        mask = kmask[:, None] & amask[None, :]
        e = tl.load(tgt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if PER_K:
            diff = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32) - e
        else:
            diff = p[None, :] - e
        d = tl.sum(diff * diff, axis=1)
        m_new = tl.maximum(m, tl.max(l, axis=0))
        # While every logit so far is -inf, shift by 0 instead: exp(-inf - -inf) would be NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp(m - m_safe)
        pk = tl.exp(l - m_safe)  # 0 on padded k
        ssum = ssum * rescale + tl.sum(pk, axis=0)
        dsum = dsum * rescale + tl.sum(pk * d, axis=0)
        if not PER_K:
            esum = esum * rescale + tl.sum(pk[:, None] * e, axis=0)
        m = m_new
    tl.store(loss_ptr + b, dsum / ssum)

    if NEED_GRAD:
        if PER_K:
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + kk
                kmask = k < K
                l = tl.load(logit_ptr + b * K + k, mask=kmask, other=float("-inf")).to(tl.float32)
                w = tl.exp(l - m_safe) / ssum
                offs = (b * K + k)[:, None] * A + a_idx[None, :]
                mask = kmask[:, None] & amask[None, :]
                e = tl.load(tgt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                pk_ = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(grad_ptr + offs, grad_scale * w[:, None] * (pk_ - e), mask=mask)
        else:
            tl.store(grad_ptr + b * A + a_idx, grad_scale * (p - esum / ssum), mask=amask)


def _launch(eps_pred: torch.Tensor, eps_targets: torch.Tensor, logits: torch.Tensor, need_grad: bool,
            block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (loss: 0-d float32, grad w.r.t. eps_pred in float32 with eps_pred's shape, or None).

    With a leading seed axis (eps_targets [S, B, K, A], logits [S, B, K], eps_pred [S, B, (K,) A]) the S·B rows
    run in one launch (a row is a program; rows never interact) and the loss is each seed's own mean, [S]."""
    if eps_targets.dim() == 4:
        S, B = eps_targets.shape[:2]
        if logits.shape[:2] != (S, B) or eps_pred.shape[:2] != (S, B):
            raise ValueError(f"with a seed axis every argument must lead with [{S}, {B}], got "
                             f"{tuple(eps_pred.shape)}, {tuple(eps_targets.shape)}, {tuple(logits.shape)}")
        loss, grad = _launch_rows(eps_pred.flatten(0, 1), eps_targets.flatten(0, 1), logits.flatten(0, 1),
                                  need_grad, block_k, rows_per_seed=B)
        return loss, None if grad is None else grad.view(eps_pred.shape)
    return _launch_rows(eps_pred, eps_targets, logits, need_grad, block_k)


def _launch_rows(eps_pred: torch.Tensor, eps_targets: torch.Tensor, logits: torch.Tensor, need_grad: bool,
                 block_k: int | None = None, rows_per_seed: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if eps_targets.dim() != 3:
        raise ValueError(f"eps_targets must be [B, K, A], got {tuple(eps_targets.shape)}")
    B, K, A = eps_targets.shape
    if tuple(logits.shape) != (B, K):
        raise ValueError(f"logits must be [{B}, {K}], got {tuple(logits.shape)}")
    if eps_pred.dim() == 2 or (eps_pred.dim() == 3 and eps_pred.shape[1] == 1 and K != 1):
        per_k = False
        if eps_pred.shape[0] != B or eps_pred.shape[-1] != A:
            raise ValueError(f"eps_pred must be [{B}, {A}] or [{B}, {K}, {A}], got {tuple(eps_pred.shape)}")
    elif tuple(eps_pred.shape) == (B, K, A):
        per_k = True
    else:
        raise ValueError(f"eps_pred must be [{B}, {A}] or [{B}, {K}, {A}], got {tuple(eps_pred.shape)}")
    check_triton_device(eps_pred.device)
    pred = eps_pred.detach().contiguous()
    tgt = eps_targets.detach().contiguous()
    lg = logits.detach().contiguous()
    row_loss = torch.empty(B, device=pred.device, dtype=torch.float32)
    grad = torch.empty(pred.shape, device=pred.device, dtype=torch.float32) if need_grad else None
    n = B if rows_per_seed is None else rows_per_seed  # the rows one mean runs over: a seed's batch

    def mean(rows: torch.Tensor) -> torch.Tensor:
        return rows.mean() if rows_per_seed is None else rows.view(-1, n).mean(-1)

    if B == 0:
        return mean(row_loss), grad
    BLOCK_A = triton.next_power_of_2(A)
    if block_k is None:
        # Keep a [BLOCK_K, BLOCK_A] tile at <= 4096 elements (~32 fp32 registers a thread at 4 warps).
        block_k = max(1, min(triton.next_power_of_2(K), 4096 // BLOCK_A, 128))
    _sm_loss_kernel[(B,)](
        pred, tgt, lg, row_loss, grad if grad is not None else row_loss,
        K, A, 2.0 / n,
        PER_K=per_k, NEED_GRAD=need_grad, BLOCK_K=block_k, BLOCK_A=BLOCK_A,
        num_warps=4 if block_k * BLOCK_A >= 1024 else 1,
    )
    return mean(row_loss), grad


class FusedWeightedSMLoss(torch.autograd.Function):
    """Loss and gradient in one forward launch; backward = saved gradient × grad_output."""

    @staticmethod
    def forward(ctx, eps_pred: torch.Tensor, eps_targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        loss, grad = _launch(eps_pred, eps_targets, logits, need_grad=ctx.needs_input_grad[0])
        ctx.pred_dtype = eps_pred.dtype
        ctx.save_for_backward(grad if grad is not None else loss)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (grad,) = ctx.saved_tensors
        if grad_output.dim():  # per-seed losses [S]: seed s's rows scale by its own grad_output
            grad_output = grad_output.reshape(*grad_output.shape, *([1] * (grad.dim() - grad_output.dim())))
        return (grad * grad_output).to(ctx.pred_dtype), None, None


def fused_weighted_sm_loss(eps_pred: torch.Tensor, eps_targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_b Σ_k softmax_k(logits)_bk ‖ε_pred − ε^k‖², as `weighted_sm_loss`; differentiable in eps_pred only.

    eps_pred: [B, A] (shared: SDAC) or [B, K, A] (per particle: DPMD-softmax); eps_targets: [B, K, A];
    logits: [B, K]. Returns a 0-d float32 tensor; with a leading seed axis on every argument, [S] (each seed's
    own mean)."""
    return FusedWeightedSMLoss.apply(eps_pred, eps_targets, logits)
