"""Running observation and reward normalisation of the on-policy agents, as gymnasium's NormalizeObservation and
NormalizeReward wrappers (which CleanRL's ppo_continuous_action.py wraps every env in) compute them, but kept
inside the agent: the statistics are buffers of the agent's state, so a checkpoint carries them and
`load_policy` / `fastrsm-export` act on normalised observations with no wrapper around the env.

Both keep a running mean and variance merged batch by batch (Chan et al.'s parallel algorithm), in float64, from a
count of 1e-4 (the wrappers' epsilon)."""

from __future__ import annotations

import torch
from torch import nn

CLIP = 10.0  # both wrappers' clip of the normalised value (CleanRL applies ±10 after each)


class RunningMeanStd(nn.Module):
    """Mean and variance of every sample seen so far, per feature."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch x [B, *shape] into the statistics."""
        x = x.to(torch.float64).reshape(-1, *self.mean.shape)
        n = x.shape[0]
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        delta = b_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObsNormalizer(RunningMeanStd):
    """clip((x − mean) / √(var + 1e-8), ±10); `enabled` False: x unchanged (the statistics are still kept, unused)."""

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__((dim,))
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        z = (x - self.mean.to(x.dtype)) / (self.var.to(x.dtype) + 1e-8).sqrt()
        return z.clamp(-CLIP, CLIP)


class RewardScaler(nn.Module):
    """r / √(var(G) + 1e-8), clipped to ±10, where G is each env's discounted running return G ← γ·G·(1 − done) + r
    and var(G) its running variance: NormalizeReward's scale (the mean is not subtracted)."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool = True):
        super().__init__()
        self.gamma, self.enabled = gamma, enabled
        self.stats = RunningMeanStd(())
        self.register_buffer("ret", torch.zeros(num_envs, dtype=torch.float64))
        self.register_buffer("done", torch.zeros(num_envs, dtype=torch.bool))

    @torch.no_grad()
    def forward(self, reward: torch.Tensor, done: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Scale one vector step's rewards [E]; `done` ends an env's return after this step; rows with `valid`
        False (auto-reset steps, reward 0) neither update the statistics nor change the return."""
        if not self.enabled:
            return reward
        r = reward.to(torch.float64)
        ret = torch.where(valid, self.ret * self.gamma * (~self.done) + r, self.ret)
        self.ret.copy_(ret)
        self.done.copy_(torch.where(valid, done, self.done))
        if bool(valid.any()):
            self.stats.update(ret[valid])
        scaled = r / (self.stats.var + 1e-8).sqrt()
        return scaled.clamp(-CLIP, CLIP).to(reward.dtype)
