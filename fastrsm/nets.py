"""Networks: the epsilon-network of the diffusion policy, twin critics, SAC's tanh-Gaussian actor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --- Mish on a CPU ---------------------------------------------------------------------------------------------
# ATen's CPU mish (x·tanh(softplus(x))) runs at ~8 ns per element on this project's AVX-512 CPU, because its tanh
# is slow there (~3.5 ns/element against ~0.9 for exp); it was half of a smoke-size DPMD update (bench/RESULTS.md).
# tanh(softplus(x)) = n / (n + 2) with n = eˣ(eˣ + 2) needs one exp: 1.3–3.6× faster forward from 8k elements and
# 1.3–2.8× forward+backward from 16k (one core, interleaved medians, bench/RESULTS.md). Below that one ATen call
# beats five; on CUDA ATen's single fused kernel wins. Inside torch.compile on a CPU the formula is traced whole.
FAST_MISH_MIN_NUMEL = 16384
_EXP_CLAMP = 20.0  # eˣ(eˣ+2) stays finite in fp32, and n/(n+2) == 1 there already; the clamp never changes a value


def _exp_mish_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = x.clamp(max=_EXP_CLAMP).exp_()
    n = (e + 2.0).mul_(e)
    return n.div_(n + 2.0), e  # tanh(softplus(x)), eˣ


class _ExpMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        t, e = _exp_mish_parts(x)
        ctx.save_for_backward(x, t, e)
        return t * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, t, e = ctx.saved_tensors
        # d/dx x·tanh(sp(x)) = tanh(sp(x)) + x·sech²(sp(x))·σ(x), with σ(x) = eˣ / (eˣ + 1)
        sig = e / (e + 1.0)  # not in place: a retained graph may run this backward again
        return (1.0 - t * t).mul_(sig).mul_(x).add_(t).mul_(grad)


def exp_mish(x: torch.Tensor) -> torch.Tensor:
    """Mish through one exp (the formula above), differentiable; equal to F.mish within float rounding."""
    if x.requires_grad and torch.is_grad_enabled():
        return _ExpMish.apply(x)
    t, _ = _exp_mish_parts(x)
    return t.mul_(x)


def _exp_mish_traceable(x: torch.Tensor) -> torch.Tensor:
    """The same formula out of place, for torch.compile: inductor fuses it (and its autograd backward) into one
    loop, 7–9× faster than its own F.mish on a CPU, whose tanh is as slow as ATen's (bench/RESULTS.md)."""
    e = x.clamp(max=_EXP_CLAMP).exp()
    n = e * (e + 2.0)
    return x * (n / (n + 2.0))


def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish, by whichever implementation is faster for this tensor (see FAST_MISH_MIN_NUMEL)."""
    if x.device.type != "cpu":
        return F.mish(x)
    if torch.compiler.is_compiling():
        return _exp_mish_traceable(x)
    return F.mish(x) if x.numel() < FAST_MISH_MIN_NUMEL else exp_mish(x)


class Mish(nn.Module):
    """nn.Mish through `mish` (same parameters: none; same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int, seeds: int | None = None,
        activation: str = "mish") -> nn.Sequential:
    """Mish (or ReLU) MLP; with `seeds`, S independent copies as SeedLinear layers (input [S, ..., in_dim])."""
    def linear(i: int, o: int) -> nn.Module:
        return nn.Linear(i, o) if seeds is None else SeedLinear(seeds, i, o)

    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [linear(d, hidden), Mish() if activation == "mish" else nn.ReLU()]
        d = hidden
    mods.append(linear(d, out_dim))
    return nn.Sequential(*mods)


class SeedLinear(nn.Module):
    """S independent nn.Linear layers (one per seed) as one batched matmul: x [S, ..., in] -> [S, ..., out].

    Weights are kept in nn.Linear's layout with a leading seed axis (weight [S, out, in], bias [S, out]), so a
    single run's parameters are exactly the slice [s] of the stacked ones (fastrsm.seeds relies on it)."""

    def __init__(self, seeds: int, in_dim: int, out_dim: int):
        super().__init__()
        self.in_features, self.out_features = in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(seeds, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(seeds, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init (kaiming_uniform with a=√5), per seed
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(x.shape[0], -1, x.shape[-1])
        out = torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))
        return out.reshape(*lead, self.out_features)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of the (float) diffusion step t: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    arg = t.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class EpsilonNet(nn.Module):
    """eps_theta(a_t, s, t): sinusoidal(t) -> Linear(2d) -> Mish -> Linear(d); concat(s, a_t, emb) -> Mish MLP.

    The first hidden layer is one Linear over concat(s, a_t, emb); `first_layer_parts` splits its weight into
    the state, action and time blocks, which is what the fused chain kernel needs (docs/algorithms.md §2, last note).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, time_dim: int = 16,
                 seeds: int | None = None):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.layers, self.time_dim = obs_dim, act_dim, hidden, layers, time_dim
        self.seeds = seeds  # None: today's single network; S: S stacked networks, every input [S, ..., dim]
        self.time_mlp = mlp(time_dim, 2 * time_dim, 1, time_dim, seeds)
        self.body = mlp(obs_dim + act_dim + time_dim, hidden, layers, act_dim, seeds)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """t: integer step index (0-based) -> [..., time_dim]."""
        return self.time_mlp(sinusoidal_embedding(t, self.time_dim))

    def forward(self, a_t: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_features(t)
        return self.body(torch.cat([s, a_t, emb], dim=-1))

    def first_layer_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_s [H,S], W_a [H,A], W_e [H,time_dim], b [H]) of the first Linear (stacked: a leading seed axis)."""
        lin: nn.Linear = self.body[0]
        S, A = self.obs_dim, self.act_dim
        return lin.weight[..., :S], lin.weight[..., S:S + A], lin.weight[..., S + A:], lin.bias

    def hidden_linears(self) -> list[nn.Linear]:
        """The Linear layers after the first one (hidden ... output), in order."""
        return [m for m in list(self.body)[1:] if isinstance(m, (nn.Linear, SeedLinear))]


class EnsembleLinear(nn.Module):
    """E independent Linear layers applied as one batched matmul (the twin critics in one launch).

    With `seeds`, S × E of them: weight [S, E, in, out] (a single run's weight is the slice [s]), applied as one
    baddbmm over the S·E members; x is then [S·E, M, in]."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int, seeds: int | None = None):
        super().__init__()
        lead = (ensemble,) if seeds is None else (seeds, ensemble)
        self.weight = nn.Parameter(torch.empty(*lead, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(*lead, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, M, in] (seeds: [S·E, M, in])
        if self.weight.dim() == 3:
            return torch.baddbmm(self.bias, x, self.weight)
        w, b = self.weight, self.bias
        return torch.baddbmm(b.reshape(-1, *b.shape[2:]), x, w.reshape(-1, *w.shape[2:]))


class TwinQ(nn.Module):
    """Two Q networks Q_i(s, a) (MLP with Mish, or ReLU as FlowRL's), evaluated together; returns [2, ...].

    With `seeds`, S independent pairs (the ensemble axis becomes S × 2): s, a are [S, ..., dim] and the result
    is [2, S, ...], so that the ensemble stays the leading axis (min_q, critic_loss) for either layout."""

    outputs = 1  # per member; DistributionalTwinQ has 2 (mean, raw std)

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, ensemble: int = 2,
                 seeds: int | None = None, activation: str = "mish"):
        super().__init__()
        self.ensemble, self.seeds = ensemble, seeds
        self.act = {"mish": mish, "relu": F.relu}[activation]
        dims = [obs_dim + act_dim] + [hidden] * layers + [self.outputs]
        self.linears = nn.ModuleList(EnsembleLinear(ensemble, a, b, seeds) for a, b in zip(dims[:-1], dims[1:]))

    def members(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Every member's outputs, [E, ..., outputs] (seeds: [E, S, ..., outputs]): the one ensemble MLP."""
        x = torch.cat([s, a], dim=-1)
        E = self.ensemble
        if self.seeds is None:
            lead = x.shape[:-1]
            h = x.reshape(1, -1, x.shape[-1]).expand(E, -1, -1)
        else:  # [S, ..., in] -> [S·E, M, in], member-major within each seed (EnsembleLinear's layout)
            S, lead = x.shape[0], x.shape[1:-1]
            h = x.reshape(S, 1, -1, x.shape[-1]).expand(S, E, -1, -1).reshape(S * E, -1, x.shape[-1])
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = self.act(h)
        if self.seeds is None:
            return h.reshape(E, *lead, self.outputs)
        return h.reshape(S, E, *lead, self.outputs).transpose(0, 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.members(s, a).squeeze(-1)

    def min_q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self(s, a).min(dim=0).values


class GaussianActor(nn.Module):
    """SAC's tanh-squashed Gaussian policy on [-1, 1]^A."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, seeds: int | None = None):
        super().__init__()
        self.net = mlp(obs_dim, hidden, layers, 2 * act_dim, seeds)  # seeds: S stacked actors, s [S, ..., obs]

    def forward(self, s: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(s).chunk(2, dim=-1)
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        if deterministic:
            return torch.tanh(mean), torch.zeros(s.shape[:-1], device=s.device)
        std = log_std.exp()
        z = torch.randn_like(mean) if generator is None else torch.randn(mean.shape, generator=generator,
                                                                         device=mean.device, dtype=mean.dtype)
        u = mean + std * z
        a = torch.tanh(u)
        # log N(u; mean, std) - sum log(1 - tanh(u)^2), the latter in a numerically stable form
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp


class DeterministicActor(nn.Module):
    """TD3's policy: a = tanh(MLP(s)) on [-1, 1]^A."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, seeds: int | None = None,
                 activation: str = "relu"):
        super().__init__()
        self.net = mlp(obs_dim, hidden, layers, act_dim, seeds, activation)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(s))


class DistributionalTwinQ(TwinQ):
    """DSAC-T's twin distributional critics (used by DACER): each member outputs the mean μ and the std σ of the
    return, σ = softplus(raw) (DACER code, relax/network/blocks.py `DistributionalQNet2`); both [2, ...]. The same
    ensemble MLP as TwinQ (activation and depth from the same settings), with two outputs per member.

    `min_q` is the smaller *mean*, so code written for TwinQ (acting, the policy loss) reads it the same way."""

    outputs = 2

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        h = self.members(s, a)
        return h[..., 0], F.softplus(h[..., 1])

    def min_q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self(s, a)[0].min(dim=0).values
