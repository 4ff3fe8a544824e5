"""The body of the training loop, written once: `fastrsm-train`, `fastrsm-bench` and the throughput benchmark
all run `vector_step`, so the benchmarks time exactly what training runs.

One vector step: act (uniform random during the warm-up) → `step_async` (EnvPool steps in its own threads) →
the updates this step earns at the update-to-data ratio `utd` → `step_wait` → replay add. The updates of a step
sample the replay as it was before that step, which is what lets them overlap the env step."""

from __future__ import annotations

import math
import signal
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import Config
from .envs import StepResult, VecEnv
from .profiling import nvtx_range


def env_seed(cfg: Config, segment: int) -> int:
    return cfg.seed * 1_000_003 + segment


def eval_seed(cfg: Config, index: int) -> int:
    return cfg.seed * 1_000_003 + 500_000 + index


class StopSignals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step and exits cleanly."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Diverged(RuntimeError):
    """A NaN or inf in a loss, a Q value or a parameter."""


@dataclass
class LoopState:
    """Host-side counters, saved in every checkpoint."""

    env_steps: int = 0
    update_credit: float = 0.0
    segment: int = 0  # index of the env segment (envs are re-created at each checkpoint boundary)
    evals_done: int = 0
    best_return: float = -math.inf
    wall_time: float = 0.0


def announce_compile(fast: Any, said: bool) -> bool:
    """Print the torch.compile start-up once it is known (a compiled agent's `compile_seconds`); returns whether
    it has been said, for the caller to pass back next time."""
    if said or not getattr(fast, "compile_seconds", 0.0) > 0:
        return said
    print(f"fastrsm-train: torch.compile took {fast.compile_seconds:.1f}s at start-up (act and update compiled once; "
          "inductor's cache makes a resume faster)", file=sys.stderr)
    return True


def vector_step(cfg: Config, envs: VecEnv, agent: Any, replay: Any, obs: np.ndarray, st: LoopState,
                metrics: dict[str, torch.Tensor], device: torch.device) -> StepResult:
    """One step of the `num_envs` envs with its updates; returns the env's result (its `next_obs` is the next
    `obs`). `agent` offers `act(obs, explore)` and `update(replay)` (fastrsm.learner);
    `metrics` receives the last update's metrics (device tensors, read at log intervals)."""
    E = cfg.num_envs
    with nvtx_range("act"):
        if st.env_steps < cfg.warmup_steps:
            # envs.num_envs: E, or S × E for S seeds in one process (fastrsm.group); the updates stay E's
            action = np.random.uniform(-1.0, 1.0, size=(envs.num_envs, envs.act_dim)).astype(np.float32)
        else:
            action = agent.act(torch.as_tensor(obs, device=device), explore=True).cpu().numpy()
    with nvtx_range("env_send"):
        envs.step_async(action)
    if st.env_steps + E >= cfg.warmup_steps and len(replay) >= cfg.batch_size:
        st.update_credit += E * cfg.utd
        while st.update_credit >= 1.0:
            with nvtx_range("update"):
                metrics.update(agent.update(replay))  # sample + update; one graph on CUDA
            st.update_credit -= 1.0
    with nvtx_range("env_recv"):
        res = envs.step_wait()
    replay.add(obs, action, res.reward, res.next_obs, res.terminated, res.valid)
    st.env_steps += E
    return res


def check_finite(agent: Any, metrics: dict[str, torch.Tensor], step: int) -> None:
    """One host sync at an interval: every logged loss/Q value and every parameter must be finite."""
    vals = [v for v in metrics.values() if torch.is_tensor(v)]
    ok = torch.isfinite(torch.stack([v.float().reshape(()) for v in vals])).all() if vals else torch.tensor(True)
    if bool(ok) and bool(agent.parameters_finite()):
        return
    for k, v in metrics.items():
        if torch.is_tensor(v) and not torch.isfinite(v).all():
            raise Diverged(f"non-finite {k} ({float(v):g}) at env step {step}")
    for name, p in agent.named_parameters():
        if not torch.isfinite(p).all():
            raise Diverged(f"non-finite parameter {name} at env step {step}")
    raise Diverged(f"non-finite value at env step {step}")
