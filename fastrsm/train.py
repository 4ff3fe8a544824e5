"""`fastrsm-train`: parse and validate (fastrsm.cli), then train (fastrsm.runner: the one loop, for a single run
and for a group of seeds). Exit codes are fastrsm.cli's (0, 2, 3, 4, 130, 143)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .cli import prepare_train, run_main
from .config import Config
from .runner import run


def train(cfg: Config, run_dir: str, progress: bool = True, argv: list[str] | None = None) -> int:
    """Train a new single run of `cfg` in `run_dir` (the library call behind `fastrsm-train`); returns the exit
    code."""
    return run(cfg, run_dir, argv=argv, progress=progress)


def main(argv: list[str] | None = None, wrap_replay: Callable[[Any], Any] | None = None) -> int:
    plan = None

    def prepare() -> int:
        nonlocal plan
        plan = prepare_train(argv)
        return 0

    code = run_main("fastrsm-train", prepare)
    if plan is None:
        return code
    try:
        return run(plan.cfg, plan.run_dir, seeds=plan.seeds, ckpts=plan.ckpts,
                   argv=sys.argv if argv is None else ["fastrsm-train", *argv], progress=plan.progress,
                   changed=plan.changed, wrap_replay=wrap_replay, unused=plan.unused)
    finally:
        if plan.lock is not None:
            plan.lock.release()


if __name__ == "__main__":
    sys.exit(main())
