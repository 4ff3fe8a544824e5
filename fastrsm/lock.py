"""One writer per run directory: a trainer holds an exclusive lock on `<dir>/.lock` for its whole life.

The lock is the OS's (flock), not the file's existence: the kernel drops it when the holding process exits,
however it exits (SIGKILL and power loss included), so no stale lock is ever left to clean up. The file only
records the holder's pid for the message a second trainer prints. Readers (fastrsm-eval, fastrsm-plot,
load_policy, fastrsm-export) take no lock: every file of a run directory is replaced atomically, so a reader
sees a whole old or a whole new version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
import weakref
from collections.abc import Sequence

from .utils import UsageError

LOCK_FILE = ".lock"
__all__ = ["LOCK_FILE", "RunDirLock", "acquire_run_dir", "check_not_in_use", "holder_pid", "wait_for_release"]

# A reader's probe (`holder_pid`) takes the lock for an instant; a trainer starting at that instant retries
# for this long before it calls the directory in use.
_GRACE_S = 0.2

_live: weakref.WeakSet[RunDirLock] = weakref.WeakSet()


class RunDirLock:
    """The exclusive lock on a run (or group) directory, held until `release()`, the end of a `with` block, the
    object's collection, or the process's exit. Locks on sub-directories taken with it (a group's seed run
    directories) are released together with it."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd
        self._children: list[RunDirLock] = []
        _live.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        for child in getattr(self, "_children", ()):
            child.release()
        self._children = []
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            # closing the last descriptor of the open file releases a flock; LOCK_UN first says so plainly
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the OS releases it anyway
            self.release()

    def __repr__(self) -> str:
        return f"RunDirLock({self.path!r}, {'held' if self.held else 'released'})"

    def _forget_in_child(self) -> None:
        # A forked child shares the lock (flock belongs to the open file, which fork duplicates): it closes its
        # copy without unlocking, so that the lock still ends with the trainer and not with a straggling child.
        fd, self._fd = self._fd, None
        self._children = []
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _after_fork_in_child() -> None:
    for lock in list(_live):
        lock._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_path(path: str) -> str:
    return os.path.join(path, LOCK_FILE)


def _in_use(path: str, pid: int | None) -> UsageError:
    who = f"pid {pid}" if pid else "pid unknown"
    return UsageError(f"run directory {path} is in use by another trainer ({who}); wait for it to finish or stop it "
                      "first")


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def acquire_run_dir(path: str, subdirs: Sequence[str] = ()) -> RunDirLock:
    """Lock `path` (created if absent) for this process, and with it each of `subdirs` (a group's seed run
    directories). Held by another process: UsageError naming the directory and the holder's pid."""
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"run directory {path} cannot be locked ({e.strerror})") from None
    deadline = time.monotonic() + _GRACE_S
    try:
        while not _try_lock(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                raise _in_use(path, _read_pid(fd))
            time.sleep(0.02)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):  # e.g. a network file system without locks
            raise UsageError(f"run directory {path} cannot be locked ({e.strerror or e})") from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the pid is for messages only; a full disk must not stop the lock itself
    lock = RunDirLock(path, fd)
    try:
        for sub in subdirs:
            lock._children.append(acquire_run_dir(sub))
    except BaseException:
        lock.release()
        raise
    return lock


def holder_pid(path: str) -> int | None:
    """The pid of the process holding `path`'s lock (0 if it holds it but has not written its pid yet), or None
    when nobody holds it. Found by trying the lock, not by trusting the file: a dead holder's pid is not
    reported."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY)
    except OSError:  # no lock file: never locked
        return None
    try:
        try:
            if _try_lock(fd, fcntl.LOCK_SH):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        except OSError:  # a file system without locks: no trainer can hold one there either
            return None
        for _ in range(10):  # the holder writes its pid just after taking the lock
            pid = _read_pid(fd)
            if pid:
                return pid
            time.sleep(0.01)
        return 0
    finally:
        os.close(fd)


def check_not_in_use(path: str) -> None:
    """UsageError (the "in use" line) if a trainer holds `path`: a cheap early check before a trainer loads or
    checks anything there; `acquire_run_dir` remains the real gate."""
    pid = holder_pid(path)
    if pid is not None:
        raise _in_use(path, pid)


def wait_for_release(path: str, timeout_s: float) -> bool:
    """Wait up to `timeout_s` seconds for `path`'s lock to be free; True if it is (it is not taken here)."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        if holder_pid(path) is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
