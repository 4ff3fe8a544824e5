"""A group of seeds trained in one process (`fastrsm-train --seeds 0-4`): its directory layout, its vector env and
its summary. The loop is fastrsm.runner's, the one a single run uses.

The S agents are one agent built with `seeds=S` (fastrsm.seeds): stacked weights, batched matmuls, per-seed α,
statistics and losses. The envs are S × num_envs sub-envs stepped as one vector env (`SeedEnvs`): seed s's block
is made exactly as a single run with seed s makes its envs. The replay is one device tensor per field,
[S, capacity, ...] (fastrsm.seeds.SeedReplay). NaNs cannot cross seeds (every op is per seed).

Output: GROUP_DIR/group.json (the seeds and the shared config), GROUP_DIR/summary.json (every seed's status and
best return, their mean ± std), and one ordinary run directory per seed, GROUP_DIR/seed_<s>/ (config.json with
its own seed, train.csv, eval.csv, summary.json, checkpoints/ in a single run's format), which fastrsm-eval and
fastrsm-plot read as any other run. `--resume GROUP_DIR` resumes all seeds."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch

from .config import Config
from .envs import StepResult, VecEnv
from .utils import DiskFullError, atomic_write_json

GROUP_FILE = "group.json"


def seed_dir(group_dir: str, seed: int) -> str:
    return os.path.join(group_dir, f"seed_{seed}")


def is_group_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, GROUP_FILE))


def group_seeds(group_dir: str) -> list[int]:
    """The seeds a group's group.json lists, in its order; ValueError if it is missing or unreadable."""
    try:
        with open(os.path.join(group_dir, GROUP_FILE), encoding="utf-8") as f:
            seeds = json.load(f)["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{group_dir}: no readable {GROUP_FILE} ({e})") from None
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{group_dir}: {GROUP_FILE} has no list of integer seeds")
    return seeds


def seed_dirs(path: str) -> list[str]:
    """A run's per-seed run directories: a group's seed_* directories in group.json's order, or [path] itself
    for a single-seed run. The one place that knows the layout, for fastrsm-eval, the sweep and bench scripts."""
    if not is_group_dir(path):
        return [path]
    return [seed_dir(path, s) for s in group_seeds(path)]


class SeedEnvs:
    """S VecEnvs (one per seed, each made as its single run makes it) stepped as one of S × E sub-envs, rows
    seed-major. With EnvPool every block steps in its own threads between step_async and step_wait."""

    def __init__(self, blocks: list[VecEnv]):
        self.blocks = blocks
        self.obs_dim, self.act_dim = blocks[0].obs_dim, blocks[0].act_dim
        self.max_episode_steps = blocks[0].max_episode_steps
        self.num_envs = sum(b.num_envs for b in blocks)
        self._cuts = np.cumsum([b.num_envs for b in blocks])[:-1]

    def reset(self) -> np.ndarray:
        return np.concatenate([b.reset() for b in self.blocks])

    def step_async(self, action: np.ndarray) -> None:
        for b, a in zip(self.blocks, np.split(action, self._cuts)):
            b.step_async(a)

    def step_wait(self) -> StepResult:
        rs = [b.step_wait() for b in self.blocks]
        return StepResult(*(np.concatenate([getattr(r, f.name) for r in rs])
                            for f in dataclasses.fields(StepResult)))

    def step(self, action: np.ndarray) -> StepResult:
        self.step_async(action)
        return self.step_wait()

    def close(self) -> None:
        for b in self.blocks:
            b.close()


def finite_seeds(agent: Any, metrics: dict[str, torch.Tensor]) -> list[bool]:
    """Per seed: are all its logged losses / Q values and all its parameters finite (one host sync)."""
    S = agent.seeds or 1  # a single run is the group of one seed
    oks = [torch.isfinite(v.float().reshape(S, -1)).all(-1) for v in metrics.values() if torch.is_tensor(v)]
    oks += [torch.isfinite(p.reshape(S, -1)).all(-1) for p in agent.parameters()]
    return torch.stack(oks).all(0).tolist()


def write_group_summary(group_dir: str, cfg: Config, seeds: list[int], summaries: list[dict], status: str,
                         wall: float, env_steps: int, extra: dict[str, Any] | None = None) -> None:
    bests = [s["best_return"] for s in summaries if s.get("best_return") is not None]
    out: dict[str, Any] = {
        "env_id": cfg.env_id, "algo": cfg.algo, "seeds": seeds, "status": status, "env_steps_per_seed": env_steps,
        "wall_time_s": round(wall, 3), "aggregate_steps_per_s": round(len(seeds) * env_steps / max(wall, 1e-9), 3),
        "best_return_mean": float(np.mean(bests)) if bests else None,
        "best_return_std": float(np.std(bests)) if bests else None,  # ddof 0, as fastrsm-plot's table
        "runs": [{"seed": sd, "dir": f"seed_{sd}", "status": s.get("status"), "best_return": s.get("best_return"),
                  "final_return": s.get("final_return")} for sd, s in zip(seeds, summaries)],
        **(extra or {}),
    }
    try:
        atomic_write_json(os.path.join(group_dir, "summary.json"), out)
    except DiskFullError:
        pass
