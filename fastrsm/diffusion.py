"""The diffusion policy (SPEC §2): noise schedules, forward noising, the DDPM reverse chain.

Steps are indexed 0..T-1 in code: index i is the paper's t = i + 1, so `abar[i]` is ᾱ_{i+1}.
`reverse_chain` (defined beside the fused kernel in kernels/reference.py, re-exported here) is the plain
PyTorch definition of the chain; faster backends (kernels/chain.py, CUDA graphs) are held to it by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .kernels.reference import reverse_chain, reverse_step
from .nets import EpsilonNet, mish, sinusoidal_embedding

SCHEDULES = ("linear", "cosine", "vp", "geometric")

__all__ = ["SCHEDULES", "Schedule", "DiffusionPolicy", "factored_chain", "make_betas", "q_sample", "reverse_chain",
           "reverse_step"]


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
    """π_θ(a|s) as a T-step DDPM over actions in [-1, 1]^A, with ε-prediction."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, time_dim: int = 16,
                 T: int = 20, schedule: str = "linear", beta_scale: float = 0.8, seeds: int | None = None):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.eps_net = EpsilonNet(obs_dim, act_dim, hidden, layers, time_dim, seeds)
        self.schedule_kind, self.beta_scale = schedule, beta_scale
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

    def draw_chain_inputs(self, rows: int, device: torch.device, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_T ~ 0.5·N(0, I) and the per-step noise, both drawn up front so every backend sees the same."""
        x_T = 0.5 * torch.randn(rows, self.act_dim, device=device, generator=generator)
        noise = torch.randn(self.T, rows, self.act_dim, device=device, generator=generator)
        return x_T, noise

    def sample(self, s: torch.Tensor, particles: int = 1, generator: torch.Generator | None = None,
               chain=None) -> torch.Tensor:
        """N particles per state as one batched chain: s [B, S] -> actions [B, N, A] in [-1, 1].

        `chain` is the implementation of the reverse process (defaults to the PyTorch reference); it is called
        as chain(eps_net, sched, s, x_T, noise)."""
        B = s.shape[0]
        x_T, noise = self.draw_chain_inputs(B * particles, s.device, generator)
        x0 = (chain or reverse_chain)(self.eps_net, self.sched, s, x_T, noise)
        return x0.reshape(B, particles, self.act_dim)


def factored_chain(eps_net: nn.Module, sched: Schedule, s: torch.Tensor, x_T: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """`reverse_chain` for an EpsilonNet with the step-invariant work hoisted out of the loop (the same
    factoring as the fused Triton chain): the first layer's state part W_s·s + b once per state, not once per
    particle and step; the time embedding (sinusoid and its MLP) and W_e·emb_t once per step, not once per row;
    no concatenation. Each step then runs W_a·a_t, the hidden layers and the posterior update. Equal to
    `reverse_chain` up to float reassociation (tests/test_factored_chain.py); differentiable like it. Any other
    network falls back to `reverse_chain`."""
    if not isinstance(eps_net, EpsilonNet):
        return reverse_chain(eps_net, sched, s, x_T, noise)
    W_s, W_a, W_e, b = eps_net.first_layer_parts()
    B, M, A, T = s.shape[-2], x_T.shape[-2], x_T.shape[-1], sched.T
    if M % B:
        raise ValueError(f"{M} chain rows are not a multiple of {B} states")
    lead = s.shape[:-2]  # () or (seeds,)
    N = M // B
    steps = torch.arange(T, device=x_T.device)
    emb = sinusoidal_time(steps, eps_net.time_dim, lead)  # [T, td] or [S, T, td]
    e = torch.matmul(eps_net.time_mlp(emb), W_e.transpose(-1, -2))  # [(S,) T, H]
    s_proj = (torch.matmul(s, W_s.transpose(-1, -2)) + b.unsqueeze(-2)).unsqueeze(-2)  # [(S,) B, 1, H]
    W_aT = W_a.transpose(-1, -2)
    hidden = eps_net.hidden_linears()
    x = x_T
    for i in reversed(range(T)):
        e_i = e[..., i, :].unsqueeze(-2).unsqueeze(-2)  # [(S,) 1, 1, H]
        h = torch.matmul(x, W_aT).reshape(*lead, B, N, -1) + s_proj + e_i
        for lin in hidden:
            h = lin(mish(h))
        x = reverse_step(sched, i, x, h.reshape(*lead, M, A), noise[i])
    return x.clamp(-1.0, 1.0)


def sinusoidal_time(steps: torch.Tensor, dim: int, lead: tuple[int, ...] = ()) -> torch.Tensor:
    """The sinusoidal embedding of step indices, with the leading seed axes a stacked time MLP expects."""
    emb = sinusoidal_embedding(steps, dim)
    return emb.expand(*lead, *emb.shape) if lead else emb
