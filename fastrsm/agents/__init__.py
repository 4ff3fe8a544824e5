"""One small file per algorithm; `make_agent` picks one by name. `AGENTS` is the one list of algorithms."""

from __future__ import annotations

import torch

from ..backend import Ops
from ..settings import Config, ConfigError, register_settings
from .base import Agent, Parts
from .dacer import DACER
from .dacer2 import DACER2
from .dipo import DIPO
from .dpmd import DPMD
from .dpmd2 import DPMD2
from .dppo import DPPO
from .onpolicy_base import OnPolicyAgent
from .ppo import PPO
from .qsm import QSM
from .qvpo import QVPO
from .sac import SAC
from .sdac import SDAC
from .td3 import TD3

# off-policy agents (fastrsm.agents.base.Agent) and on-policy ones (OnPolicyAgent; their `on_policy` picks the loop)
AGENTS: dict[str, type[Agent] | type[OnPolicyAgent]] = {
    cls.algo: cls for cls in (DPMD, SDAC, SAC, DACER, DACER2, TD3, QSM, QVPO, DPMD2, DIPO, PPO, DPPO)}
for _cls in AGENTS.values():  # each algorithm's own settings become part of Config
    register_settings(_cls.Settings, _cls.algo)


def check_algo(algo: str, seeds: int | None = None) -> None:
    if algo not in AGENTS:
        raise ConfigError(f"unknown algo {algo!r}; choose one of {', '.join(AGENTS)} (fastrsm-train --help says "
                          "what each is and where it comes from)")
    if seeds is not None and not AGENTS[algo].supports_seeds:
        multi = ", ".join(a for a, cls in AGENTS.items() if cls.supports_seeds)
        raise ConfigError(f"--algo {algo} has no multi-seed path yet (--seeds works with {multi}); run its seeds "
                          "as separate processes (fastrsm-sweep --seeds-per-process 1)")


def make_agent(algo: str, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
               seeds: int | None = None) -> Agent | OnPolicyAgent:
    """The agent of `algo`, computing its hot paths with `ops` (fastrsm.backend.make_ops); `seeds=S`: S independent
    agents as one, every input and output with a leading seed axis (fastrsm.seeds)."""
    check_algo(algo, seeds)
    if seeds is None:
        return AGENTS[algo](obs_dim, act_dim, cfg, device, ops)
    return AGENTS[algo](obs_dim, act_dim, cfg, device, ops, seeds=seeds)


__all__ = ["AGENTS", "Agent", "DACER", "DACER2", "DIPO", "DPMD", "DPMD2", "DPPO", "OnPolicyAgent", "PPO", "Parts",
           "QSM", "QVPO", "SAC", "SDAC", "TD3", "check_algo", "make_agent"]
