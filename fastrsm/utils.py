"""Small shared helpers: device choice, seeding, atomic file writes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")


class UsageError(ValueError):
    """Bad user input: printed as one line, exit code 2."""


class DiskFullError(OSError):
    """No space left while writing `path` (the previous version of the file is intact)."""

    def __init__(self, path: str, needed: int, free: int | None):
        self.path, self.needed, self.free = path, needed, free
        left = "unknown" if free is None else f"{free} bytes"
        super().__init__(errno.ENOSPC, f"no space left on device writing {path} ({needed} bytes needed, {left} "
                                       "free)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available on this machine (use --device cpu)")
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain lists, so that a checkpoint loads with
    `torch.load(weights_only=True)` (a NumPy array or a tuple-of-tuples would need unpickling code)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(k) for k in internal], gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s result (or the tuple / NumPy-array form older checkpoints hold)."""
    py, npy = state["python"], state["numpy"]
    random.setstate((int(py[0]), tuple(int(k) for k in py[1]), py[2]))
    if isinstance(npy, dict):
        keys = np.asarray(npy["keys"].numpy() if torch.is_tensor(npy["keys"]) else npy["keys"], dtype=np.uint32)
        npy = (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see the old or the new file,
    never half of one, whatever moment a crash comes."""
    _atomic_write(path, lambda f: _write_all(f, data, path), len(data))


def _atomic_write(path: str, write: Callable[[Any], None], needed: int, previous: str | None = None) -> None:
    """`write(f)` fills a temp file next to `path`, which is fsynced and renamed over `path`. With `previous`,
    the file `path` held until now is kept there (see `atomic_torch_save`)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix="-" + os.path.basename(path))
    except OSError as e:
        _raise_if_disk_full(e, path, needed)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and os.path.exists(path):
            _keep_as(path, previous)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            _raise_if_disk_full(e, path, needed)
        raise


def _keep_as(path: str, previous: str) -> None:
    """Make `previous` the file now at `path`, atomically. A hard link keeps `path` in place too, so no instant
    is without it; where links are not supported the rename leaves `path` missing until the caller's own rename
    (a reader then falls back to `previous`, which is complete)."""
    link = previous + ".tmp-link"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, previous)
        return
    try:
        os.replace(link, previous)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link)
        raise


def _write_all(f: Any, data: bytes | memoryview, path: str) -> None:
    """The one place file bytes are written (tests replace it to simulate a full disk while writing `path`).
    A torch checkpoint arrives in many pieces, all through here, all into the same `f`."""
    f.write(data)


class _Stream:
    """What torch.save writes into: every piece goes through `_write_all` to the temp file, so a checkpoint is
    never held in memory whole (torch hands over each tensor's bytes as a view, without copying them)."""

    def __init__(self, f: Any, path: str):
        self.f, self.path = f, path
        self.error: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None:  # torch.save writes on after a failed piece (its zip trailer)
            raise self.error
        try:
            _write_all(self.f, data, self.path)
        except OSError as e:
            self.error = e
            raise
        return memoryview(data).nbytes

    def flush(self) -> None:
        self.f.flush()


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages in a nested dict/list/tuple: about the size of its torch.save file (each
    storage is counted once; torch.save writes a view's whole storage)."""
    seen: dict[int, int] = {}

    def walk(o: Any) -> None:
        if torch.is_tensor(o):
            st = o.untyped_storage()
            seen[st.data_ptr() if st.nbytes() else id(st)] = st.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return sum(seen.values())


def _raise_if_disk_full(e: OSError, path: str, needed: int) -> None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, DiskFullError):
        try:
            free: int | None = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        except OSError:
            free = None
        raise DiskFullError(path, needed, free) from e


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str, previous: str | None = None) -> None:
    """torch.save `obj` to `path` atomically (temp file, fsync, rename), streamed straight into the file: the
    only host copies are those torch.save makes of device tensors, one storage at a time. With `previous`, the
    former `path` is kept as `previous` (atomically too), so a crash at any moment leaves a complete file in at
    least one of the two. A full disk raises DiskFullError with both files intact."""
    def write(f: Any) -> None:
        stream = _Stream(f, path)
        try:
            torch.save(obj, stream)
        except RuntimeError:
            # the writer's own error on the way out hides the OSError (ENOSPC) that stopped it
            if stream.error is not None:
                raise stream.error from None
            raise

    _atomic_write(path, write, tensor_bytes(obj), previous)
