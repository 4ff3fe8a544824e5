"""The body of one fastrsm-sweep attempt, run inside a Ray task (fastrsm/sweep.py submits it).

Standard library only, on purpose: a Ray worker imports this module before its first task, and importing
torch there would add seconds to every worker's start-up. It imports neither Ray nor torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any


def _kill_with_parent() -> None:
    # Linux: the trainer gets SIGTERM (-> checkpoint, exit 143) when the Ray worker that started it dies,
    # so a killed worker never leaves an orphan writing into the run dir that its retry will use.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _write_json(path: str, obj: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def run_attempt(cmd: list[str], run_dir: str, side: str, attempt: int, threads: int, fresh: bool) -> dict[str, Any]:
    """One attempt of a trial: run `cmd` (fastrsm-train) to its end and return its exit code. `side` is the
    trial's bookkeeping folder (lock, attempt.json, train.log), outside the run dir (a new run needs an empty
    one). With `fresh` (no checkpoint to continue from) the run dir is cleared first."""
    os.makedirs(side, exist_ok=True)
    t0 = time.time()
    # The lock is held by the trainer itself (inherited fd): an attempt whose worker died keeps it until its
    # trainer has saved its checkpoint and exited, and the next attempt waits for that here.
    lock = os.open(os.path.join(side, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(os.path.join(side, "train.log"), "ab") as logf:
            logf.write(f"\n=== attempt {attempt}: {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, pass_fds=(lock,),
                                    preexec_fn=_kill_with_parent, start_new_session=True)
            _write_json(os.path.join(side, "attempt.json"),
                        {"attempt": attempt, "pid": proc.pid, "worker_pid": os.getpid(),
                         "node": socket.gethostname(), "started": time.time()})
            code = proc.wait()
    finally:
        os.close(lock)
    return {"code": code, "node": socket.gethostname(), "seconds": time.time() - t0}
