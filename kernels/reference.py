"""The PyTorch definitions of what the fused kernels compute (docs/algorithms.md §9), importing nothing but torch.

They are the specification: the tests hold each kernel to its reference on odd shapes, and hold the library's
own faster PyTorch forms to them too (fastrsm.diffusion.sample_chain, the chain the torch and compile backends
run, to `reverse_chain`). The library re-exports them where they belong in the math (fastrsm.diffusion,
fastrsm.losses, fastrsm.backend)."""

from __future__ import annotations

from typing import Any

import torch

# ------------------------------------------------------------------ 1. the denoising chain (kernels/chain.py)


def reverse_step(sched: Any, i: int, x: torch.Tensor, eps_hat: torch.Tensor,
                 noise: torch.Tensor | None) -> torch.Tensor:
    """One DDPM posterior step from index i to i-1 with x̂_0 clipped to [-1, 1]. `sched` holds the per-step
    tables of fastrsm.diffusion.Schedule (sqrt_abar, sqrt_1m_abar, post_c0, post_ct, post_std)."""
    x0 = ((x - sched.sqrt_1m_abar[i] * eps_hat) / sched.sqrt_abar[i]).clamp(-1.0, 1.0)
    mean = sched.post_c0[i] * x0 + sched.post_ct[i] * x
    if i == 0 or noise is None:
        return mean
    return mean + sched.post_std[i] * noise


def reverse_chain(eps_net: Any, sched: Any, s: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor,
                  return_steps: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference reverse process. eps_net(a_t, s, t) -> ε̂; s: [B, S], x_T: [B·N, A] (row r is a particle of
    state r // N), noise: [T, B·N, A] (noise[i] is used by step i; noise[0] is unused) -> x_0 [B·N, A] in [-1, 1].
    return_steps: also each step's input, [T, B·N, A] with [i] the x that step index i denoises ([T − 1] is x_T).
    Differentiable in the network's weights, x_T and the noise wherever autograd is on."""
    x = x_T
    M = x.shape[-2]  # with a leading seed axis: s [S, B, S_dim], x_T [S, B·N, A], noise [T, S, B·N, A]
    if s.shape[-2] != M:
        if M % s.shape[-2]:
            raise ValueError(f"{M} chain rows are not a multiple of {s.shape[-2]} states")
        s = s.repeat_interleave(M // s.shape[-2], dim=-2)
    steps = []
    for i in reversed(range(sched.T)):
        steps.append(x)
        t = torch.full(x.shape[:-1], i, device=x.device, dtype=torch.long)
        x = reverse_step(sched, i, x, eps_net(x, s, t), noise[i])
    x0 = x.clamp(-1.0, 1.0)
    return (x0, torch.stack(steps[::-1])) if return_steps else x0


# ------------------------------------------------------------------ 2. the weighted score-matching loss (sm_loss.py)


def weighted_sm_loss(eps_pred: torch.Tensor, eps_targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_b Σ_k softmax_k(logits)_bk ‖ε_pred − ε^k‖² — the shared core of SDAC and DPMD-softmax.

    eps_pred: [B, A] (one prediction regressed onto K targets: SDAC) or [B, K, A] (one per particle:
    DPMD-softmax); eps_targets: [B, K, A]; logits: [B, K], given no gradient. The softmax is logsumexp-stable.
    With a leading seed axis on every argument the result is each seed's own mean, [S]."""
    if eps_pred.dim() == eps_targets.dim() - 1:
        eps_pred = eps_pred.unsqueeze(-2)
    w = torch.softmax(logits.detach().float(), dim=-1)
    return (w * ((eps_pred - eps_targets) ** 2).sum(-1)).sum(-1).mean(-1)


# ------------------------------------------------------------------ 3. best-of-N selection (best_of_n.py)


def best_of_n(q: torch.Tensor, cand: torch.Tensor, noise: torch.Tensor | None = None,
              noise_std: float | torch.Tensor = 0.0, clip: float | None = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-of-N selection (docs/algorithms.md §3, §9.3): q [B, N], cand [B, N, A] -> (action [B, A], idx [B] int64).

    idx = argmax_n q (ties: the lowest index; a NaN counts as the maximum, so the first NaN wins, as in
    torch.argmax); action = cand[idx] + noise_std·noise (if noise is given), clipped to [-clip, clip]
    (clip=None: no clipping)."""
    if q.dim() != 2 or cand.dim() != 3 or cand.shape[:2] != q.shape:
        raise ValueError(f"q must be [B, N] and cand [B, N, A]; got {tuple(q.shape)} and {tuple(cand.shape)}")
    idx = q.argmax(dim=1)
    action = cand.gather(1, idx.view(-1, 1, 1).expand(-1, 1, cand.shape[2])).squeeze(1)
    if noise is not None:
        action = action + noise_std * noise
    if clip is not None:
        action = action.clamp(-clip, clip)
    return action, idx
