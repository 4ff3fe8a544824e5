"""Many seeds in one process: S independent agents computed as one.

An agent built with `seeds=S` (fastrsm.agents.make_agent) holds every parameter, optimiser moment and statistic of
S single agents stacked on a new leading axis: seed s's tensors are exactly the slice [s] of the stacked ones, in
the single agent's own layout. So a group checkpoint is the stack of S ordinary checkpoints, and each seed's run
directory can hold an ordinary checkpoint (`seed_checkpoint`) that fastrsm-eval and --resume read as any other.

This module also parses `--seeds` ("0-4", "0,3,7")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .agents.base import Agent
from .replay import WRITABLE, Batch, RowBatch, check_replay_state, load_writable, saved_rows
from .settings import ConfigError


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7' -> [0, 3, 7]; ranges and lists mix ('0-2,5'). Raises ConfigError on
    malformed input, an empty list, negative seeds or duplicates."""
    seeds: list[int] = []
    if not text.strip():
        raise ConfigError("--seeds is empty; give e.g. 0-4 or 0,3,7")
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a seed or a range lo-hi (e.g. 0-4 or 0,3,7)"
                              ) from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be >= 0")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds {text!r} names seed(s) {', '.join(map(str, dup))} more than once (listed twice)")
    return seeds


def _stack(trees: list[Any]) -> Any:
    """Stack S trees of the same structure: tensors of rank >= 1 (and per-agent scalars such as α, the running
    statistics) gain a leading seed axis; 0-d optimiser counters and non-tensors must agree and are kept once."""
    first = trees[0]
    if isinstance(first, dict):
        if any(t.keys() != first.keys() for t in trees):
            raise ValueError("the checkpoints to stack differ in structure")
        return {k: _stack([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_stack(list(x)) for x in zip(*trees))
    if torch.is_tensor(first):
        return torch.stack(trees)
    if any(t != first for t in trees):
        raise ValueError(f"the checkpoints to stack disagree on {first!r}")
    return first


def _slice(tree: Any, s: int, shared: bool = False) -> Any:
    if isinstance(tree, dict):
        # optimiser counters (`step`) and learning rates are the same for every seed: not stacked
        return {k: _slice(v, s, shared or k in ("step", "lr")) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_slice(x, s, shared) for x in tree)
    if torch.is_tensor(tree):
        return tree.clone() if shared or tree.dim() == 0 else tree[s].clone()
    return tree


def stack_checkpoints(ckpts: list[dict]) -> dict:
    """The group checkpoint of S single-agent checkpoints (the inverse of `seed_checkpoint`)."""
    out = _stack([{k: v for k, v in c.items() if k != "optimizers"} for c in ckpts])
    opts = {}
    for name in ckpts[0]["optimizers"]:
        sds = [c["optimizers"][name] for c in ckpts]
        state = {}
        for idx in sds[0]["state"]:
            per = [sd["state"][idx] for sd in sds]
            state[idx] = {k: (per[0][k].clone() if k == "step" else torch.stack([p[k] for p in per]))
                          for k in per[0]}
        groups = [{k: v for k, v in g.items()} for g in sds[0]["param_groups"]]
        opts[name] = {"state": state, "param_groups": groups}
    out["optimizers"] = opts
    return out


def align_frozen(frozen: dict, live: dict) -> dict:
    """A frozen (diverged) seed's last good agent checkpoint with the counters of a live seed's later one: its
    weights, moments and statistics are its own, its update counts, optimiser step counts and learning rates the
    live seed's (shared across a group's seeds), so that the S checkpoints stack."""

    def align(f: Any, ref: Any, key: str = "") -> Any:
        if isinstance(f, dict) and isinstance(ref, dict):
            return {k: align(f[k], ref[k], k) if k in ref else f[k] for k in f}
        if isinstance(f, (list, tuple)) and isinstance(ref, (list, tuple)) and len(f) == len(ref):
            return type(f)(align(a, b, key) for a, b in zip(f, ref))
        if torch.is_tensor(f):
            return ref.clone() if key in ("step", "lr") and torch.is_tensor(ref) else f
        return ref

    return align(frozen, live)


def seed_checkpoint(agent: Agent, s: int) -> dict:
    """Seed s of an S-seed agent as an ordinary single-agent checkpoint (what a single run would have saved)."""
    if agent.seeds is None:
        raise ValueError("seed_checkpoint needs an agent built with seeds=S")
    return _slice(agent.checkpoint(), s)


def load_seeds(agent: Agent, ckpts: list[dict], weights_only: bool = False) -> None:
    """Load S ordinary checkpoints into an S-seed agent (seed s from ckpts[s])."""
    if agent.seeds != len(ckpts):
        raise ValueError(f"{len(ckpts)} checkpoints for an agent of {agent.seeds} seeds")
    agent.restore(stack_checkpoints(ckpts), weights_only=weights_only)


class SeedReplay:
    """S replay buffers in one device tensor per field, [S, capacity, ...]: seed s writes and samples only its own
    slice, with its own fill level and write pointer (the valid rows of its envs differ from the others').

    `add` takes a vector step of S × E envs (seed s's envs are rows s·E .. s·E + E − 1); `sample` returns a
    Batch with a leading seed axis, [S, batch_size, ...], each seed's rows drawn from its own slice. Seed s's
    `state_dict(s)` is an ordinary ReplayBuffer state (fastrsm.replay), so its run directory holds what a single
    run would hold."""

    def __init__(self, seeds: int, capacity: int, obs_dim: int, act_dim: int, device: str | torch.device,
                 batch_size: int):
        if capacity < 1 or batch_size < 1 or seeds < 1:
            raise ValueError(f"seeds, capacity and batch_size must be positive, got {seeds}, {capacity}, {batch_size}")
        self.seeds, self.capacity, self.obs_dim, self.act_dim = int(seeds), int(capacity), int(obs_dim), int(act_dim)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        S, C = self.seeds, self.capacity
        self.obs = torch.zeros(S, C, obs_dim, **f32)
        self.action = torch.zeros(S, C, act_dim, **f32)
        self.reward = torch.zeros(S, C, **f32)
        self.next_obs = torch.zeros(S, C, obs_dim, **f32)
        self.terminated = torch.zeros(S, C, **f32)
        self._ptr = [0] * S
        self._size = [0] * S
        self._rand_dtype = torch.float32 if capacity <= 2**24 else torch.float64
        self._size_t = torch.zeros(S, 1, dtype=self._rand_dtype, device=self.device)
        self._last_t = torch.zeros(S, 1, dtype=torch.long, device=self.device)
        self._seed_idx = torch.arange(S, device=self.device).unsqueeze(1)
        self._seed_row0 = self._seed_idx * C  # where seed s's rows start in the flat writable copy
        self.writable_action: torch.Tensor | None = None  # [S, C, A], made by writable_actions()

    @staticmethod
    def nbytes(seeds: int, capacity: int, obs_dim: int, act_dim: int) -> int:
        return 4 * seeds * capacity * (2 * obs_dim + act_dim + 2)

    def __len__(self) -> int:
        """The smallest fill level: an update needs every seed's buffer to hold a batch."""
        return min(self._size)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, valid: np.ndarray | None = None) -> int:
        """Store a vector step of S × E envs (seed-major rows) where `valid`; returns how many rows in all."""
        S = self.seeds
        cols = [np.asarray(obs, np.float32).reshape(S, -1, self.obs_dim),
                np.asarray(action, np.float32).reshape(S, -1, self.act_dim),
                np.asarray(reward, np.float32).reshape(S, -1, 1),
                np.asarray(next_obs, np.float32).reshape(S, -1, self.obs_dim),
                np.asarray(terminated, np.float32).reshape(S, -1, 1)]
        packed = torch.from_numpy(np.concatenate(cols, axis=2)).to(self.device)
        E = packed.shape[1]
        ok = np.ones((S, E), bool) if valid is None else np.asarray(valid, bool).reshape(S, E)
        total = 0
        for s in range(S):
            rows = packed[s][torch.from_numpy(np.flatnonzero(ok[s])).to(self.device)]
            if rows.shape[0]:
                self._write(s, rows[-self.capacity:])
                total += rows.shape[0]
        return total

    def _write(self, s: int, data: torch.Tensor) -> None:
        n, C, ptr = data.shape[0], self.capacity, self._ptr[s]
        parts = torch.split(data, [self.obs_dim, self.act_dim, 1, self.obs_dim, 1], dim=1)
        first = min(n, C - ptr)
        columns = [(getattr(self, name)[s], part) for name, part in zip(Batch._fields, parts)]
        if self.writable_action is not None:  # a new row's writable copy starts as the action taken
            columns.append((self.writable_action[s], parts[1]))
        for dst, part in columns:
            part = part.reshape(n, *dst.shape[1:])
            dst[ptr:ptr + first] = part[:first]
            if first < n:
                dst[: n - first] = part[first:]
        self._ptr[s] = (ptr + n) % C
        self._set_size(s, min(self._size[s] + n, C))

    def _set_size(self, s: int, size: int) -> None:
        self._size[s] = size
        self._size_t[s] = size
        self._last_t[s] = max(size - 1, 0)

    def sample(self) -> Batch:
        """`batch_size` transitions per seed, uniformly with replacement from that seed's filled rows."""
        idx = self._draw()
        return Batch(*(getattr(self, name)[self._seed_idx, idx] for name in Batch._fields))

    def _draw(self) -> torch.Tensor:
        if min(self._size) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer: add transitions first")
        u = torch.rand(self.seeds, self.batch_size, device=self.device, dtype=self._rand_dtype)
        return torch.minimum((u * self._size_t).long(), self._last_t)

    def sample_rows(self) -> RowBatch:
        """`sample()`'s draw with its rows in the flat writable action copy [S·C, A] (seed s's row i is s·C + i),
        for an update that writes moved actions back (fastrsm.replay.RowBatch)."""
        idx = self._draw()
        store = self.writable_actions().view(-1, self.act_dim)
        return RowBatch(*(getattr(self, name)[self._seed_idx, idx] for name in Batch._fields),
                        self._seed_row0 + idx, store)

    def writable_actions(self) -> torch.Tensor:
        """The writable copy of the action column, [S, C, A] (ReplayBuffer.writable_actions, per seed)."""
        if self.writable_action is None:
            self.writable_action = self.action.clone()
        return self.writable_action

    def state_dict(self, s: int) -> dict[str, Any]:
        """Seed s's buffer as an ordinary ReplayBuffer state: its filled rows, sharing the buffer's memory (no copy;
        save it before the next `add`)."""
        size = self._size[s]
        state: dict[str, Any] = {"capacity": self.capacity, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                                 "ptr": self._ptr[s], "size": size}
        for name in Batch._fields:
            state[name] = saved_rows(getattr(self, name)[s], size)
        if self.writable_action is not None:
            state[WRITABLE] = saved_rows(self.writable_action[s], size)
        return state

    def load_state_dict(self, s: int, state: dict[str, Any]) -> None:
        size, ptr = check_replay_state(state, self.capacity, self.obs_dim, self.act_dim)
        for name in Batch._fields:
            getattr(self, name)[s, :size] = state[name].to(self.device)
        load_writable(self, state, s, size)
        self._ptr[s] = ptr
        self._set_size(s, size)
