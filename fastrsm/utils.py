"""Small shared helpers: device choice, seeding, atomic file writes."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
import tempfile
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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see the old or the new file,
    never half of one, whatever moment a crash comes."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix="-" + os.path.basename(path))
    except OSError as e:
        _raise_if_disk_full(e, path, len(data))
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data, path)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            _raise_if_disk_full(e, path, len(data))
        raise


def _write_all(f: Any, data: bytes, path: str) -> None:
    """The one place file bytes are written (tests replace it to simulate a full disk while writing `path`)."""
    f.write(data)


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


def atomic_torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
