"""What the run diagnostics (policy-spread, episode-stats, action-gap) share: the run-directory
arguments, the walk over every seed of every run, the one-line exit on bad input and the JSON file.

A run is a `--seeds` group dir or a single run dir; its seeds come from `fastrsm.group.seed_dirs` (group.json's
order), so every diagnostic reads a group the same way fastrsm-eval does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..group import seed_dirs
from ..utils import UsageError, atomic_write_json


def add_run_args(p: argparse.ArgumentParser, *, checkpoint: str, seed: int, seed_help: str) -> None:
    """The arguments every diagnostic takes: the runs, which checkpoint, the env/draw seed and a JSON copy."""
    p.add_argument("runs", nargs="+", type=Path, help="run dirs (a --seeds group dir or a single run dir)")
    p.add_argument("--checkpoint", default=checkpoint, choices=("latest", "best"))
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--json", type=Path, help="also write the results here")


def each_seed(runs: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(run, seed dir) for every seed of every run, in the order given; a path that is no run dir is a UsageError."""
    for run in runs:
        if not run.is_dir():
            raise UsageError(f"{run} is not a run directory")
        for sd in seed_dirs(str(run)):
            yield run, Path(sd)


def fmt(x: float | None, spec: str = ".2f") -> str:
    """A number for a table cell, "n/a" where the env has no such quantity."""
    return "n/a" if x is None else format(x, spec)


def write_json(path: Path | None, rows: list[dict]) -> None:
    """The rows to `--json PATH` when given (written atomically, as the trainer writes its files)."""
    if path is not None:
        atomic_write_json(str(path), rows)


def run_main(prog: str, body: Callable[[], None]) -> int:
    """Runs a diagnostic on one torch thread; bad input (a missing run, a run without the checkpoint asked for)
    ends it with one line on stderr and exit status 2, not a traceback."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        body()
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(n)
    return 0

