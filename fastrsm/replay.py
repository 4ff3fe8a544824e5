"""Device-resident replay ring buffer.

Storage is preallocated on the training device, so a sample is a gather on the device. `sample()` has a
static output shape, draws its indices on the device from the global torch RNG and reads the fill level
from a device tensor that `add()` updates in place: nothing in it touches the host, so it can be captured
inside a CUDA graph together with the update it feeds (docs/design.md, "LeanRL").

An agent whose update rewrites stored actions (DIPO moves them along ∇_a Q) draws with `sample_rows()`: the batch
then also carries its row numbers and the replay's writable copy of the action column, which the agent writes back
into (`RowBatch.write`). The copy is made on the first such draw; the `action` column itself, which the critics
learn from, always holds the action taken.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    obs: torch.Tensor  # [B, S]
    action: torch.Tensor  # [B, A], in [-1, 1] (the policy's range, not the env's)
    reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, S]
    terminated: torch.Tensor  # [B], 1.0 where the episode terminated (truncation is not termination)


_FIELDS = Batch._fields


class RowBatch(NamedTuple):
    """A Batch (the same five fields, so that code reading a Batch reads it) that also says where its rows are, for
    an update that writes into the replay: `store` is the replay's writable action copy, flat ([capacity, A], or
    [S·capacity, A] for fastrsm.seeds.SeedReplay), and `rows` [(S,) B] index it."""

    obs: torch.Tensor
    action: torch.Tensor  # the action taken, as in a Batch
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    rows: torch.Tensor  # [(S,) B] row numbers into `store`
    store: torch.Tensor  # [rows in all, A] the writable copy (a view of the replay's, not a copy)

    def kept(self) -> torch.Tensor:
        """The writable copy at the batch's rows, [(S,) B, A]."""
        return self.store[self.rows]

    def write(self, values: torch.Tensor) -> None:
        """Write `values` [(S,) B, A] into the replay's copy at the batch's rows, in place (traceable, and captured
        by a CUDA graph as a device op). A row drawn twice gets the same value twice (up to rounding): both draws
        started from the same stored action and state."""
        self.store.index_copy_(0, self.rows.reshape(-1), values.reshape(-1, values.shape[-1]))


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: str | torch.device,
                 batch_size: int):
        if capacity < 1 or batch_size < 1:
            raise ValueError(f"capacity and batch_size must be positive, got {capacity} and {batch_size}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.obs = torch.zeros(capacity, obs_dim, **f32)
        self.action = torch.zeros(capacity, act_dim, **f32)
        self.reward = torch.zeros(capacity, **f32)
        self.next_obs = torch.zeros(capacity, obs_dim, **f32)
        self.terminated = torch.zeros(capacity, **f32)
        # Column layout of one packed host row: a single host-to-device copy per add().
        widths = (obs_dim, act_dim, 1, obs_dim, 1)
        self._splits = list(widths)
        self._ptr = 0  # next row to write
        self._size = 0  # host copy of the fill level, for __len__ and the empty check
        # float32 holds every integer exactly up to 2**24; beyond that draw in float64 so that
        # rand * size cannot round up past the last filled row.
        self._rand_dtype = torch.float32 if capacity <= 2**24 else torch.float64
        self._size_t = torch.zeros((), dtype=self._rand_dtype, device=self.device)
        self._last_t = torch.zeros((), dtype=torch.long, device=self.device)  # size - 1, an index clamp
        self.writable_action: torch.Tensor | None = None  # made by writable_actions(), for agents that write

    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size == self.capacity

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, valid: np.ndarray | None = None) -> int:
        """Store the rows of a vector step [E, ...] where `valid` (all rows if None); returns how many."""
        obs = np.asarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        n_rows = obs.shape[0]
        rows = slice(None) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool).reshape(-1))
        packed = np.concatenate([
            obs[rows],
            np.asarray(action, dtype=np.float32).reshape(n_rows, self.act_dim)[rows],
            np.asarray(reward, dtype=np.float32).reshape(n_rows, 1)[rows],
            np.asarray(next_obs, dtype=np.float32).reshape(n_rows, self.obs_dim)[rows],
            np.asarray(terminated, dtype=np.float32).reshape(n_rows, 1)[rows],
        ], axis=1)
        n = packed.shape[0]
        if n == 0:
            return 0
        if n > self.capacity:  # only the newest rows would survive anyway
            packed = packed[-self.capacity:]
        self._write(torch.from_numpy(packed).to(self.device, non_blocking=True))
        return n

    def _write(self, data: torch.Tensor) -> None:
        n = data.shape[0]
        parts = torch.split(data, self._splits, dim=1)
        # Contiguous slice copies, at most two when the ring wraps, rather than a scatter.
        first = min(n, self.capacity - self._ptr)
        columns = [(getattr(self, name), part) for name, part in zip(_FIELDS, parts)]
        if self.writable_action is not None:  # a new row's writable copy starts as the action taken
            columns.append((self.writable_action, parts[1]))
        for dst, part in columns:
            part = part.reshape(n, *dst.shape[1:])
            dst[self._ptr:self._ptr + first] = part[:first]
            if first < n:
                dst[: n - first] = part[first:]
        self._ptr = (self._ptr + n) % self.capacity
        self._set_size(min(self._size + n, self.capacity))

    def _set_size(self, size: int) -> None:
        self._size = size
        # In-place fills: a captured sample() keeps reading these same tensors.
        self._size_t.fill_(size)
        self._last_t.fill_(max(size - 1, 0))

    def sample(self) -> Batch:
        """`batch_size` transitions drawn uniformly, with replacement, from the filled rows."""
        idx = self._draw()
        return Batch(*(getattr(self, name)[idx] for name in _FIELDS))

    def _draw(self) -> torch.Tensor:
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer: add transitions first")
        u = torch.rand(self.batch_size, device=self.device, dtype=self._rand_dtype)
        # The clamp guards against a uniform draw that rounds to exactly 1.0.
        return torch.minimum((u * self._size_t).long(), self._last_t)

    def sample_rows(self) -> RowBatch:
        """`sample()`'s draw (the same random numbers, the same rows) with its row numbers and the writable action
        copy, for an update that writes moved actions back (`RowBatch.write`)."""
        idx = self._draw()
        return RowBatch(*(getattr(self, name)[idx] for name in _FIELDS), idx, self.writable_actions())

    def writable_actions(self) -> torch.Tensor:
        """The writable copy of the action column, [capacity, A]: made on first use from the actions stored so far
        (until then nothing has written, so they are its value); from then on add() stores each new action in it
        too and state_dict() saves it. Its storage never moves, so a captured graph may hold it."""
        if self.writable_action is None:
            self.writable_action = self.action.clone()
        return self.writable_action

    def state_dict(self) -> dict[str, Any]:
        """The filled rows only (a young buffer makes a small checkpoint), as they are: on the buffer's device
        and sharing its memory, so a checkpoint makes no copy of them on a CPU, and on CUDA torch.save copies
        one field at a time to the host. Save it before the next add()."""
        state: dict[str, Any] = {
            "capacity": self.capacity, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "ptr": self._ptr, "size": self._size,
        }
        for name in _FIELDS:
            state[name] = saved_rows(getattr(self, name), self._size)
        if self.writable_action is not None:
            state[WRITABLE] = saved_rows(self.writable_action, self._size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size, ptr = check_replay_state(state, self.capacity, self.obs_dim, self.act_dim)
        for name in _FIELDS:
            getattr(self, name)[:size] = state[name].to(self.device)
        load_writable(self, state, slice(None), size)
        self._ptr = ptr
        self._set_size(size)


WRITABLE = "writable_action"  # the state_dict key of the writable action copy, where one was made


def load_writable(rb: Any, state: dict[str, Any], where: Any, size: int) -> None:
    """Load a saved writable action copy into `rb.writable_action[where]` (a ReplayBuffer's whole column, a
    SeedReplay's seed), in place; a state saved without one (its run never wrote) gives the copy its actions."""
    saved = state.get(WRITABLE)
    if saved is None and rb.writable_action is None:
        return
    dst = rb.writable_actions()[where]
    dst[:size] = (state["action"] if saved is None else saved).to(rb.device)


def saved_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t[:n]` (t contiguous) as a tensor whose storage is those rows alone, sharing `t`'s memory: torch.save
    writes a tensor's whole storage, so the slice `t[:n]` would save every row of `t`, and `t[:n].clone()`
    would copy them."""
    t = t.detach()
    if not t.is_contiguous():
        return t[:n].clone()
    rows = t[:n]
    start = t.storage_offset() * t.element_size()
    storage = t.untyped_storage()[start:start + rows.numel() * t.element_size()]
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, rows.shape)


def check_replay_state(state: dict[str, Any], capacity: int, obs_dim: int, act_dim: int) -> tuple[int, int]:
    """Validate a saved replay state (`ReplayBuffer.state_dict`, or one seed's of fastrsm.seeds.SeedReplay)
    against a buffer's shape; returns its (size, ptr)."""
    for key, have in (("capacity", capacity), ("obs_dim", obs_dim), ("act_dim", act_dim)):
        if int(state[key]) != have:
            raise ValueError(f"replay state has {key}={state[key]}, this buffer has {have}")
    size, ptr = int(state["size"]), int(state["ptr"])
    if not (0 <= size <= capacity and 0 <= ptr < capacity):
        raise ValueError(f"replay state has an invalid size/ptr ({size}/{ptr})")
    for name in (*_FIELDS, WRITABLE) if WRITABLE in state else _FIELDS:
        if state[name].shape[0] != size:
            raise ValueError(f"replay state field {name!r} has {state[name].shape[0]} rows, expected {size}")
    return size, ptr
