"""The run directory (docs/design.md, "Run directory"): config.json, train.csv, eval.csv, summary.json,
checkpoints/{latest,previous,best}.pt and TensorBoard events (and `.lock`, fastrsm.lock's). Every file is written
whole and atomically (temp file + rename), so a crash at any moment leaves the previous complete version;
checkpoints/previous.pt, the checkpoint before latest.pt, is the fallback should latest.pt be lost or damaged.
The CSV rows also live in the checkpoint, so a resumed run rewrites exactly the rows up to the step it resumes
from. Checkpoints hold tensors and plain data only and are loaded that way (`weights_only`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct

from .utils import UsageError, atomic_torch_save, atomic_write_json, atomic_write_text

# train.csv starts with those of these columns that the run logs (an algorithm without a temperature has no alpha
# column); every other metric an agent returns follows, in order of first appearance (a new metric needs no change
# here: it appears in train.csv and TensorBoard as soon as an agent logs it).
TRAIN_FIRST_COLUMNS = ["step", "updates", "alpha", "loss_q", "q_mean", "loss_pi", "loss_alpha", "episode_return",
                       "steps_per_s", "wall_time"]
EVAL_COLUMNS = ["step", "return_mean", "return_std", "episodes"]


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("fastrsm", "torch", "triton", "numpy", "gymnasium", "mujoco", "envpool", "nvtx"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def source_commit() -> str | None:
    """The git commit fastrsm runs from, with "+dirty" when its tracked files differ from it; None outside a git
    checkout (an installed wheel). A result names its commit, so every run records it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        if head.returncode or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=10, cwd=here)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    return f"cpu:{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def train_columns(rows: list[dict]) -> list[str]:
    logged = {k for r in rows for k in r}
    cols = [c for c in TRAIN_FIRST_COLUMNS if c in logged or c in ("step", "updates")]
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in columns})
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.10g}" if math.isfinite(v) else str(v)
    return v


class RunLog:
    def __init__(self, path: str):
        self.path = path
        self.ckpt_dir = os.path.join(path, "checkpoints")
        self.train_rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self._tb = None

    # ---- creation
    def create(self, config: dict, device: torch.device, argv: list[str] | None, env: dict | None = None) -> None:
        """`env`: the task's shapes and action bounds (what a deployed policy needs without making the env)."""
        os.makedirs(self.ckpt_dir, exist_ok=True)
        atomic_write_json(os.path.join(self.path, "config.json"), {
            "config": config,
            "env": env,
            "versions": package_versions(),
            "commit": source_commit(),
            "device": device_description(device),
            "argv": list(sys.argv if argv is None else argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def tensorboard(self, purge_step: int | None = None):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                return None
            self._tb = SummaryWriter(os.path.join(self.path, "tb"), purge_step=purge_step)
        return self._tb

    # ---- logs
    def log_train(self, row: dict) -> None:
        self.train_rows.append(row)
        self.write_train_csv()
        tb = self.tensorboard()
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v == v:
                    tb.add_scalar(f"train/{k}", v, row["step"])

    def log_eval(self, step: int, returns: list[float]) -> dict:
        t = torch.tensor(returns, dtype=torch.float64)
        row = {"step": step, "return_mean": float(t.mean()), "return_std": float(t.std(unbiased=False)),
               "episodes": len(returns)}
        self.eval_rows.append(row)
        self.write_eval_csv()
        tb = self.tensorboard()
        if tb is not None:
            tb.add_scalar("eval/return_mean", row["return_mean"], step)
            tb.flush()
        return row

    def write_train_csv(self) -> None:
        text = _csv_text(train_columns(self.train_rows), self.train_rows)
        atomic_write_text(os.path.join(self.path, "train.csv"), text)

    def write_eval_csv(self) -> None:
        atomic_write_text(os.path.join(self.path, "eval.csv"), _csv_text(EVAL_COLUMNS, self.eval_rows))

    def best_eval(self) -> dict | None:
        return max(self.eval_rows, key=lambda r: r["return_mean"]) if self.eval_rows else None

    def write_summary(self, cfg: Any, env_steps: int, wall_time: float, steps_per_s: float, status: str,
                      message: str = "", extra: dict | None = None) -> dict:
        best = self.best_eval()
        final = self.eval_rows[-1] if self.eval_rows else None
        summary = {
            "env_id": cfg.env_id, "algo": cfg.algo, "seed": cfg.seed,
            "best_return": best["return_mean"] if best else None, "best_step": best["step"] if best else None,
            "final_return": final["return_mean"] if final else None, "final_step": final["step"] if final else None,
            "wall_time_s": round(wall_time, 3), "steps_per_s": round(steps_per_s, 3), "env_steps": env_steps,
            "status": status,
        }
        summary.update(extra or {})
        if message:
            summary["message"] = message
        atomic_write_json(os.path.join(self.path, "summary.json"), summary)
        return summary

    # ---- checkpoints
    def save_checkpoint(self, state: dict, name: str = "latest") -> str:
        """Write checkpoints/<name>.pt; the former `latest` is kept as checkpoints/previous.pt, the fallback of
        `load_resume_checkpoint` should the newest be lost or damaged."""
        path = os.path.join(self.ckpt_dir, f"{name}.pt")
        atomic_torch_save(state, path, previous=os.path.join(self.ckpt_dir, "previous.pt") if name == "latest"
                          else None)
        return path

    def rows_state(self) -> dict:
        return {"train": list(self.train_rows), "eval": list(self.eval_rows)}

    def restore_rows(self, rows: dict) -> None:
        self.train_rows, self.eval_rows = list(rows["train"]), list(rows["eval"])
        self.write_train_csv()
        self.write_eval_csv()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class UnsafeCheckpoint(UsageError):
    """A checkpoint holding pickled Python objects (code would run to rebuild them): refused, not loaded."""


# Checkpoints written before the RNG states were plain data hold NumPy arrays; rebuilding an array of a plain
# dtype runs no code of the file's choosing (its elements go through the same restricted unpickler).
_NUMPY_ARRAYS: list[Any] = [(_reconstruct, "numpy._core.multiarray._reconstruct"),
                            (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                            type(np.dtype(np.uint32))]


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """Load a checkpoint written by `RunLog.save_checkpoint`, on the CPU (restoring copies into the agent's
    and the replay's device tensors). Only tensors and plain data are accepted (`weights_only`): a file with
    other pickled objects raises UnsafeCheckpoint, without running any of it. With `mmap`, the tensors are
    mapped from the file rather than read into memory (see `load_resume_checkpoint`). A missing or unreadable
    file is a UsageError with one line."""
    if not os.path.exists(path):
        raise UsageError(f"no checkpoint at {path}: nothing to resume")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafeCheckpoint(f"checkpoint {path} was refused: it holds pickled Python objects, which would run "
                                   f"code to load ({_unsafe_reason(e)}); only tensors and plain data are "
                                   "accepted") from None
        raise UsageError(f"checkpoint {path} is unreadable or corrupt ({_reason(e)})") from None
    except Exception as e:  # corrupt or foreign file: a one-line message, not a traceback
        raise UsageError(f"checkpoint {path} is unreadable or corrupt ({_reason(e)})") from None
    if not isinstance(ckpt, dict) or "agent" not in ckpt:
        raise UsageError(f"checkpoint {path} is unreadable or corrupt (not a fastrsm checkpoint)")
    return ckpt


def _reason(e: BaseException) -> str:
    """An exception as a short phrase: its first sentence of its first line (torch's run on for a paragraph)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, RuntimeError) and text.startswith("mmap can only be used"):
        text = "not a torch checkpoint archive"
    text = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _unsafe_reason(e: BaseException) -> str:
    for line in str(e).splitlines():
        if "Unsupported" in line:
            return line.split("error:", 1)[-1].strip().split(" was not ")[0]
    return "objects outside the allowed types"


def load_resume_checkpoint(run_dir: str) -> tuple[dict, str | None]:
    """The checkpoint a resume of `run_dir` continues from, and a one-line note when it is not the newest:
    checkpoints/latest.pt, or, should that be missing, truncated or corrupt, checkpoints/previous.pt (the one
    before it; the CSV rows restored from it rewind the logs to its step). Neither readable: UsageError. A
    checkpoint holding pickled code is refused outright (UnsafeCheckpoint): a tampered file is no crash to
    recover from."""
    latest = os.path.join(run_dir, "checkpoints", "latest.pt")
    previous = os.path.join(run_dir, "checkpoints", "previous.pt")
    try:
        return _load_for_resume(latest), None
    except UnsafeCheckpoint as e:
        hint = "; delete it to resume from checkpoints/previous.pt" if os.path.exists(previous) else ""
        raise UnsafeCheckpoint(f"{e}{hint}") from None
    except UsageError as e:
        if not os.path.exists(previous):
            raise UsageError(f"cannot resume {run_dir}: {e}") from None
        what = "missing" if not os.path.exists(latest) else f"unreadable ({_inner(e)})"
        try:
            ckpt = _load_for_resume(previous)
        except UsageError as e2:
            raise UsageError(f"cannot resume {run_dir}: checkpoints/latest.pt is {what} and checkpoints/previous.pt "
                             f"is unreadable too ({_inner(e2)})") from None
    step = ckpt.get("loop", {}).get("env_steps", "?") if isinstance(ckpt.get("loop"), dict) else "?"
    return ckpt, f"checkpoints/latest.pt is {what}; resuming from checkpoints/previous.pt at env step {step}"


def _load_for_resume(path: str) -> dict:
    """The replay's rows stay mapped from the file, read once when the buffer is restored: no host copy of the
    replay beside the buffer. Everything else is read in, so nothing the agent keeps (its optimiser state
    could alias a loaded tensor) depends on the file, which a user might overwrite in place."""
    ckpt = load_checkpoint(path, mmap=True)
    return {k: v if k == "replay" else _in_memory(v) for k, v in ckpt.items()}


def _in_memory(tree: Any) -> Any:
    if torch.is_tensor(tree):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _in_memory(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_in_memory(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_in_memory(v) for v in tree)
    return tree


def _inner(e: UsageError) -> str:
    """The parenthesised reason of one of load_checkpoint's messages (the path is said by the caller)."""
    text = str(e)
    return text[text.find("(") + 1:text.rfind(")")] if "(" in text and text.endswith(")") else text


def read_config(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)
