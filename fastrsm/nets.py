"""Networks: the epsilon-network of the diffusion policy, twin critics, SAC's tanh-Gaussian actor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.Mish()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of the (float) diffusion step t: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    arg = t.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class EpsilonNet(nn.Module):
    """eps_theta(a_t, s, t): sinusoidal(t) -> Linear(2d) -> Mish -> Linear(d); concat(s, a_t, emb) -> Mish MLP.

    The first hidden layer is one Linear over concat(s, a_t, emb); `first_layer_parts` splits its weight into
    the state, action and time blocks, which is what the fused chain kernel needs (SPEC §2, last note).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, time_dim: int = 16):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.layers, self.time_dim = obs_dim, act_dim, hidden, layers, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), nn.Mish(), nn.Linear(2 * time_dim, time_dim))
        self.body = mlp(obs_dim + act_dim + time_dim, hidden, layers, act_dim)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """t: integer step index (0-based) -> [..., time_dim]."""
        return self.time_mlp(sinusoidal_embedding(t, self.time_dim))

    def forward(self, a_t: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_features(t)
        return self.body(torch.cat([s, a_t, emb], dim=-1))

    def first_layer_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_s [H,S], W_a [H,A], W_e [H,time_dim], b [H]) of the first Linear."""
        lin: nn.Linear = self.body[0]
        S, A = self.obs_dim, self.act_dim
        return lin.weight[:, :S], lin.weight[:, S:S + A], lin.weight[:, S + A:], lin.bias

    def hidden_linears(self) -> list[nn.Linear]:
        """The Linear layers after the first one (hidden ... output), in order."""
        return [m for m in list(self.body)[1:] if isinstance(m, nn.Linear)]


class EnsembleLinear(nn.Module):
    """E independent Linear layers applied as one batched matmul (the twin critics in one launch)."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, M, in]
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Two Q networks Q_i(s, a) (MLP with Mish, or ReLU as FlowRL's), evaluated together; returns [2, ...]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, ensemble: int = 2,
                 activation: str = "mish"):
        super().__init__()
        self.ensemble = ensemble
        self.act = {"mish": F.mish, "relu": F.relu}[activation]
        dims = [obs_dim + act_dim] + [hidden] * layers + [1]
        self.linears = nn.ModuleList(EnsembleLinear(ensemble, a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([s, a], dim=-1)
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).expand(self.ensemble, -1, -1)
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = self.act(h)
        return h.reshape(self.ensemble, *lead)

    def min_q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self(s, a).min(dim=0).values


class GaussianActor(nn.Module):
    """SAC's tanh-squashed Gaussian policy on [-1, 1]^A."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.net = mlp(obs_dim, hidden, layers, 2 * act_dim)

    def forward(self, s: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(s).chunk(2, dim=-1)
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        if deterministic:
            return torch.tanh(mean), torch.zeros(s.shape[:-1], device=s.device)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        # log N(u; mean, std) - sum log(1 - tanh(u)^2), the latter in a numerically stable form
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp


class DistributionalTwinQ(nn.Module):
    """DSAC-T's twin distributional critics (used by DACER): each member outputs the mean μ and the std σ of the
    return, σ = softplus(raw) (DACER code, relax/network/blocks.py `DistributionalQNet2`); both [2, ...].

    `min_q` is the smaller *mean*, so code written for TwinQ (acting, the policy loss) reads it the same way."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, ensemble: int = 2):
        super().__init__()
        self.ensemble = ensemble
        dims = [obs_dim + act_dim] + [hidden] * layers + [2]
        self.linears = nn.ModuleList(EnsembleLinear(ensemble, a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, a], dim=-1)
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).expand(self.ensemble, -1, -1)
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = F.mish(h)
        h = h.reshape(self.ensemble, *lead, 2)
        return h[..., 0], F.softplus(h[..., 1])

    def min_q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self(s, a)[0].min(dim=0).values
