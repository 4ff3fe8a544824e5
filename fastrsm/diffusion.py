"""The diffusion policy (docs/algorithms.md §2): noise schedules, forward noising, the DDPM reverse chain.

Steps are indexed 0..T-1 in code: index i is the paper's t = i + 1, so `abar[i]` is ᾱ_{i+1}.
`sample_chain` is the library's one reverse chain: acting, bootstrap candidates, the entropy samples and DACER's
policy gradient all run it (directly, or through fastrsm.backend's Ops, which swap in the fused Triton kernel on a
GPU). `reverse_chain` (defined beside the fused kernel in kernels/reference.py, re-exported here) is the plain
PyTorch definition both are held to by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .kernels.reference import reverse_chain, reverse_step
from .nets import EpsilonNet, mish, sinusoidal_embedding

SCHEDULES = ("linear", "cosine", "vp", "geometric")
# x_T ~ X_T_SCALE·N(0, I): the DPMD/SDAC authors' prior, and what the fused kernel draws in-kernel. DACER's
# code draws N(0, I) (fastrsm.agents.dacer sets 1.0).
X_T_SCALE = 0.5

__all__ = ["SCHEDULES", "X_T_SCALE", "Schedule", "DiffusionPolicy", "draw_chain_inputs", "make_betas", "q_sample",
           "reverse_chain", "reverse_step", "run_chain", "sample_chain"]


def make_betas(kind: str, T: int, scale: float = 0.8) -> torch.Tensor:
    """β_1..β_T in float64 (the tables are built in double, then cast)."""
    if T < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {T}")
    if kind == "linear":
        # The authors' scripts: a linear ramp to ~1, scaled down by `scale` so the last step keeps some signal.
        betas = scale * torch.linspace(1e-4, 0.999, T, dtype=torch.float64) if T > 1 else \
            torch.tensor([scale * 0.999], dtype=torch.float64)
    elif kind == "cosine":  # Nichol & Dhariwal 2021
        s = 0.008
        x = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        # scaled like the linear ramp, as the authors' code does (their training script always runs `linear`)
        betas = scale * (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    elif kind == "vp":  # variance-preserving SDE discretised (Song et al.), as in Diffusion-QL
        b_min, b_max = 0.1, 10.0
        t = torch.arange(1, T + 1, dtype=torch.float64)
        betas = 1 - torch.exp(-b_min / T - 0.5 * (b_max - b_min) * (2 * t - 1) / T**2)
    elif kind == "geometric":
        # Not the paper's: the noise levels √(1 − ᾱ_t) spaced geometrically from 0.01 to 0.999 (`scale` unused).
        # With few steps the linear and cosine ramps leave a wide gap between the last noise levels (T = 10 linear:
        # 0.009, 0.30, 0.50), and the DDPM sampler, whose step noise is the posterior std given x_0, then returns
        # little more than E[a_0 | a_1]: a policy trained on targets of spread σ ≈ 0.1 samples 0.34·σ (T = 10
        # linear), 0.47·σ (T = 20 linear), 0.8·σ here (bench/diffusion_spread.py, bench/LEARNING.md).
        lo, hi = 0.01, 0.999
        sigma = torch.tensor([hi] if T == 1 else [lo * (hi / lo) ** (i / (T - 1)) for i in range(T)],
                             dtype=torch.float64)
        abar = 1 - sigma**2
        betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return betas


@dataclass
class Schedule:
    """All per-step tables of a schedule, as float32 tensors of length T on one device."""

    betas: torch.Tensor
    abar: torch.Tensor
    sqrt_abar: torch.Tensor
    sqrt_1m_abar: torch.Tensor
    post_c0: torch.Tensor  # coefficient of x̂_0 in the posterior mean μ̃_t
    post_ct: torch.Tensor  # coefficient of x_t
    post_std: torch.Tensor  # sqrt(β̃_t); 0 at the last step (index 0): no noise there

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @staticmethod
    def build(kind: str, T: int, scale: float = 0.8, device: torch.device | str = "cpu") -> Schedule:
        betas = make_betas(kind, T, scale)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        tables = dict(
            betas=betas,
            abar=abar,
            sqrt_abar=abar.sqrt(),
            sqrt_1m_abar=(1 - abar).sqrt(),
            post_c0=betas * abar_prev.sqrt() / (1 - abar),
            post_ct=(1 - abar_prev) * alphas.sqrt() / (1 - abar),
            post_std=post_var.clamp(min=0).sqrt(),
        )
        return Schedule(**{k: v.to(torch.float32).to(device) for k, v in tables.items()})

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(**{k: v.to(device) for k, v in self.__dict__.items()})


def q_sample(sched: Schedule, a0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising a_t = √ᾱ_t a_0 + √(1−ᾱ_t) ε; t: integer index tensor broadcastable to a0's rows."""
    return sched.sqrt_abar[t].unsqueeze(-1) * a0 + sched.sqrt_1m_abar[t].unsqueeze(-1) * eps


class DiffusionPolicy(nn.Module):
    """π_θ(a|s) as a T-step DDPM over actions in [-1, 1]^A, with ε-prediction, starting from
    x_T ~ x_T_scale·N(0, I)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, time_dim: int = 16,
                 T: int = 20, schedule: str = "linear", beta_scale: float = 0.8, seeds: int | None = None,
                 x_T_scale: float = X_T_SCALE):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.eps_net = EpsilonNet(obs_dim, act_dim, hidden, layers, time_dim, seeds)
        self.schedule_kind, self.beta_scale = schedule, beta_scale
        self.x_T_scale = x_T_scale  # an attribute, not a buffer: checkpoints of either scale load into the other
        self.sched = Schedule.build(schedule, T, beta_scale)
        # Registered so that .to(device) and state_dict carry them.
        for k, v in self.sched.__dict__.items():
            self.register_buffer(f"_sched_{k}", v, persistent=False)

    def _apply(self, fn, recurse=True):  # keep the Schedule view in sync with moved buffers
        out = super()._apply(fn, recurse)
        self.sched = Schedule(**{k: getattr(self, f"_sched_{k}") for k in self.sched.__dict__})
        return out

    @property
    def T(self) -> int:
        return self.sched.T

    def draw_chain_inputs(self, rows: int, device: torch.device | str, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """This policy's x_T and per-step noise for `rows` chain rows (`draw_chain_inputs` with its T, A, seed
        axis and x_T scale)."""
        return draw_chain_inputs(rows, self.T, self.act_dim, device, self.eps_net.seeds, x_T_scale=self.x_T_scale,
                                 generator=generator)

    def sample(self, s: torch.Tensor, particles: int = 1, generator: torch.Generator | None = None,
               chain: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """N particles per state, without autograd: s [B, S] -> actions [B, N, A] in [-1, 1] (a stacked policy:
        [S, B, obs_dim] -> [S, B, N, A]).

        `chain` replaces the step loop (`run_chain`): any function with `reverse_chain`'s signature, such as an
        Ops.chain or the reference itself; the draws are the same whichever runs."""
        x0 = sample_chain(self.eps_net, self.sched, s, particles=particles, x_T_scale=self.x_T_scale,
                          generator=generator, run=chain or run_chain)
        return x0.reshape(*s.shape[:-2], s.shape[-2], particles, self.act_dim)


def randn(*size: int, generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
    """torch.randn with the generator keyword only when there is one: torch.export traces randn(...,
    generator=None) through an overload that needs concrete sizes, and an exported policy has a symbolic batch."""
    return torch.randn(*size, **kw) if generator is None else torch.randn(*size, generator=generator, **kw)


def draw_chain_inputs(rows: int, T: int, A: int, device: torch.device | str, seeds: int | None = None, *,
                      x_T_scale: float = X_T_SCALE, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T ~ x_T_scale·N(0, I) [rows, A], then the per-step noise [T, rows, A], from `generator` (None: torch's
    global generator). With `seeds`: [S, rows, A] and [T, S, rows, A], drawn as [S, ...] so that seed s's slice
    has a single run's shape. Drawn up front, so every backend's chain sees the same numbers for a seed."""
    if seeds is None:
        x_T = x_T_scale * randn(rows, A, device=device, generator=generator)
        noise = randn(T, rows, A, device=device, generator=generator)
        return x_T, noise
    x_T = x_T_scale * randn(seeds, rows, A, device=device, generator=generator)
    noise = randn(seeds, T, rows, A, device=device, generator=generator).transpose(0, 1)
    return x_T, noise


def sample_chain(eps_net: nn.Module, sched: Schedule, s: torch.Tensor, x_T: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, *, particles: int = 1, x_T_scale: float = X_T_SCALE,
                 grad: bool = False, return_steps: bool = False, generator: torch.Generator | None = None,
                 run: Callable[..., Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reverse (denoising) chain of `eps_net`: the library's one chain.

    s: [B, obs_dim] (a stacked network of S seeds: [S, B, obs_dim], and a leading S on x_T, x_0 and the steps,
    noise [T, S, B·N, A]). x_T: [B·N, A], row r a particle of state r // N; None: drawn, x_T ~ x_T_scale·N(0, I)
    with N = `particles`. noise: [T, B·N, A], noise[i] feeding step index i (noise[0] unused); None: drawn.
    Draws come from `generator` (None: torch's global generator), x_T before the noise (`draw_chain_inputs`;
    given x_T alone, the noise is drawn as one [T, *x_T.shape] block).
    Returns x_0 [B·N, A] in [-1, 1]; with `return_steps`, (x_0, steps [T, B·N, A]) where steps[i] is the x that
    step index i denoises (steps[T − 1] = x_T), as `reverse_chain`, whose result this is.

    grad=False runs without autograd (acting, bootstrap candidates, entropy samples); grad=True keeps the graph
    through every step, the noise and the clips wherever autograd is on (DACER's policy gradient). `run` is the
    step loop, `run_chain` by default (the compile backend passes a torch.compile'd `run_chain`; drawing stays
    outside it so that compiled and eager runs consume the same random numbers)."""
    if x_T is None:
        rows, A = s.shape[-2] * particles, eps_net.act_dim
        if noise is None:
            seeds = s.shape[0] if s.dim() == 3 else None
            x_T, noise = draw_chain_inputs(rows, sched.T, A, s.device, seeds, x_T_scale=x_T_scale,
                                           generator=generator)
        else:
            x_T = x_T_scale * randn(*s.shape[:-2], rows, A, device=s.device, generator=generator)
    elif noise is None:
        noise = randn(sched.T, *x_T.shape, device=x_T.device, dtype=x_T.dtype, generator=generator)
    run = run or run_chain
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        return run(eps_net, sched, s, x_T, noise, return_steps=True) if return_steps else \
            run(eps_net, sched, s, x_T, noise)


# Rows (particles × states × seeds) from which a bf16 chain pays on a CPU. Measured 2026-12-04, one thread
# (bench/bench_chain_precision.py, bench/RESULTS.md): the paper-size bootstrap (8192 rows, H = 256) ran 1.37x faster
# in bf16, the small-size one (1024 rows, H = 128) 1.06x, one-observation acting (16-32 rows) 0.6-0.9x.
BF16_MIN_ROWS = 4096


def run_chain(eps_net: nn.Module, sched: Schedule, s: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor,
              return_steps: bool = False, precision: str = "fp32") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`reverse_chain` on given inputs, in the caller's autograd mode: the step loop of `sample_chain`.

    For an EpsilonNet the step-invariant work is hoisted out of the loop (the factoring of the fused Triton
    chain): the first layer's state part W_s·s + b once per state, not once per particle and step; the time
    embedding (sinusoid and its MLP) and W_e·emb_t once per step, not once per row; no concatenation. Each step
    then runs W_a·a_t, the hidden layers and the posterior update. Equal to `reverse_chain` up to float
    reassociation, forward and backward (tests/test_factored_chain.py). Any other network is called as
    `reverse_chain` calls it, eps_net(a_t, s, t).

    precision 'bf16' (an EpsilonNet, without autograd only): the per-step matmuls take bf16 operands (on a CPU
    with AVX-512 BF16 or AMX, oneDNN accumulates in fp32); their results, the state and time parts, the Mish
    activations and the chain state x stay fp32. With autograd on (DACER's chain gradient) it runs in fp32, and so
    does a chain of fewer than BF16_MIN_ROWS rows, where the casts cost more than the bf16 matmuls save."""
    rows = x_T.numel() // max(x_T.shape[-1], 1)
    low = torch.bfloat16 if precision == "bf16" and not torch.is_grad_enabled() and rows >= BF16_MIN_ROWS else None
    eps = (_factored_eps(eps_net, sched.T, s, x_T, low) if isinstance(eps_net, EpsilonNet)
           else _plain_eps(eps_net, s, x_T))
    x, steps = x_T, []
    for i in reversed(range(sched.T)):
        steps.append(x)
        x = reverse_step(sched, i, x, eps(x, i), noise[i])
    x0 = x.clamp(-1.0, 1.0)
    return (x0, torch.stack(steps[::-1])) if return_steps else x0


def _rows_per_state(s: torch.Tensor, x_T: torch.Tensor) -> int:
    B, M = s.shape[-2], x_T.shape[-2]
    if M % B:
        raise ValueError(f"{M} chain rows are not a multiple of {B} states")
    return M // B


def _factored_eps(eps_net: EpsilonNet, T: int, s: torch.Tensor, x_T: torch.Tensor,
                  low: torch.dtype | None = None) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """ε̂(x, i) of every chain row at step index i, with the state and time parts of the first layer computed
    here, once for all steps. `low` (bf16): the dtype of the per-step matmuls' operands (weights cast once)."""
    W_s, W_a, W_e, b = eps_net.first_layer_parts()
    N, lead = _rows_per_state(s, x_T), s.shape[:-2]  # lead: () or (seeds,)
    B, M, A = s.shape[-2], x_T.shape[-2], x_T.shape[-1]
    emb = sinusoidal_embedding(torch.arange(T, device=x_T.device), eps_net.time_dim)  # [T, td]
    if lead:  # a stacked time MLP expects the seed axis in front
        emb = emb.expand(*lead, *emb.shape)
    e = torch.matmul(eps_net.time_mlp(emb), W_e.transpose(-1, -2))  # [(S,) T, H]
    s_proj = (torch.matmul(s, W_s.transpose(-1, -2)) + b.unsqueeze(-2)).unsqueeze(-2)  # [(S,) B, 1, H]
    W_aT = W_a.transpose(-1, -2)
    hidden = eps_net.hidden_linears()
    if low is not None:
        return _low_precision_eps(W_aT.to(low), [(lin.weight.transpose(-1, -2).to(low), lin.bias.unsqueeze(-2))
                                                  for lin in hidden], s_proj, e, lead, B, N, M, A)

    def eps(x: torch.Tensor, i: int) -> torch.Tensor:
        e_i = e[..., i, :].unsqueeze(-2).unsqueeze(-2)  # [(S,) 1, 1, H]
        h = torch.matmul(x, W_aT).reshape(*lead, B, N, -1) + s_proj + e_i
        for lin in hidden:
            h = lin(mish(h))
        return h.reshape(*lead, M, A)

    return eps


def _low_precision_eps(W_aT: torch.Tensor, hidden: list[tuple[torch.Tensor, torch.Tensor]], s_proj: torch.Tensor,
                       e: torch.Tensor, lead: tuple[int, ...], B: int, N: int, M: int, A: int
                       ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`_factored_eps`'s step with the matmul operands in W_aT's dtype and everything between them in fp32.
    The rows stay flat [(S,) M, H] between layers: one 2-D (or seed-batched) matmul per layer."""
    low = W_aT.dtype

    def eps(x: torch.Tensor, i: int) -> torch.Tensor:
        e_i = e[..., i, :].unsqueeze(-2).unsqueeze(-2)  # [(S,) 1, 1, H]
        h = torch.matmul(x.to(low), W_aT).float().reshape(*lead, B, N, -1) + s_proj + e_i
        h = h.reshape(*lead, M, -1)
        for wT, b in hidden:
            h = torch.matmul(mish(h).to(low), wT).float() + b
        return h

    return eps


def _plain_eps(eps_net: nn.Module, s: torch.Tensor, x_T: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    N = _rows_per_state(s, x_T)
    s_rows = s.repeat_interleave(N, dim=-2) if N > 1 else s
    return lambda x, i: eps_net(x, s_rows, torch.full(x.shape[:-1], i, device=x.device, dtype=torch.long))
