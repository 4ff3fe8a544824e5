"""One small file per algorithm; `make_agent` picks one by name. `AGENTS` is the one list of algorithms."""

from __future__ import annotations

import torch

from ..backend import Ops
from ..config import Config, ConfigError
from .base import Agent, Parts
from .dpmd import DPMD
from .sac import SAC
from .sdac import SDAC

AGENTS: dict[str, type[Agent]] = {cls.algo: cls for cls in (DPMD, SDAC, SAC)}


def check_algo(algo: str) -> None:
    if algo not in AGENTS:
        raise ConfigError(f"unknown algo {algo!r}; choose one of {', '.join(AGENTS)}")


def make_agent(algo: str, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
               seeds: int | None = None) -> Agent:
    """The agent of `algo`, computing its hot paths with `ops` (fastrsm.backend.make_ops); `seeds=S`: S independent
    agents as one, every input and output with a leading seed axis (fastrsm.seeds)."""
    check_algo(algo)
    if seeds is None:
        return AGENTS[algo](obs_dim, act_dim, cfg, device, ops)
    return AGENTS[algo](obs_dim, act_dim, cfg, device, ops, seeds=seeds)


__all__ = ["AGENTS", "Agent", "DPMD", "Parts", "SAC", "SDAC", "check_algo", "make_agent"]
