"""The run directory (DESIGN.md "Run directory"): config.json, train.csv, eval.csv, summary.json,
checkpoints/{latest,best}.pt and TensorBoard events. Every file is written whole and atomically (temp file +
rename), so a crash at any moment leaves the previous complete version; the CSV rows also live in the
checkpoint, so a resumed run rewrites exactly the rows up to the step it resumes from."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import time
from typing import Any

import torch

from .utils import UsageError, atomic_torch_save, atomic_write_json, atomic_write_text

# train.csv starts with these columns; every other metric an agent returns follows, in order of first appearance
# (a new metric needs no change here: it appears in train.csv and TensorBoard as soon as an agent logs it).
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


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    return f"cpu:{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def train_columns(rows: list[dict]) -> list[str]:
    cols = list(TRAIN_FIRST_COLUMNS)
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
        path = os.path.join(self.ckpt_dir, f"{name}.pt")
        atomic_torch_save(state, path)
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


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint written by `RunLog.save_checkpoint`, on the CPU (restoring copies into the agent's
    and the replay's device tensors); a missing or unreadable file is a UsageError with one line."""
    if not os.path.exists(path):
        raise UsageError(f"no checkpoint at {path}: nothing to resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "agent" not in ckpt:
            raise ValueError("not a fastrsm checkpoint")
        return ckpt
    except Exception as e:  # corrupt or foreign file: a one-line message, not a traceback
        raise UsageError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e})") from None


def read_config(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)
