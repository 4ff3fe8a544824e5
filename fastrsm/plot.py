"""`fastrsm-plot`: learning curves and the paper-style table from run directories.

    fastrsm-plot runs/ [more runs or run dirs ...] [--out plot.png] [--table-format {text,markdown,csv}]

Reads only `config.json` and `eval.csv` of each run (docs/design.md "Run directory"); `summary.json` is used
for the status and as a fallback for names. The table follows docs/algorithms.md §7: per seed the best evaluation
average (max of eval.csv's return_mean), then mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cli import OneLineParser
from .utils import atomic_write_bytes

PROG = "fastrsm-plot"
TABLE_FORMATS = ("text", "markdown", "csv")
# Population std (numpy's default, ddof=0) over seeds, for both the table and the plotted bands: it is what
# most RL papers report, and it stays defined for a single seed (0 rather than NaN).
STD_DDOF = 0


class PlotError(ValueError):
    """A user-facing input mistake; the CLI prints it on one line and exits with code 2."""


@dataclass
class Run:
    """One run directory's evaluations. `steps` is sorted and unique; `return_mean[i]` belongs to `steps[i]`."""

    path: Path
    env_id: str
    algo: str
    seed: int | None
    steps: np.ndarray
    return_mean: np.ndarray
    return_std: np.ndarray
    best_return: float  # max of eval.csv's return_mean (NaN rows ignored)
    best_step: int
    status: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------- loading
def _is_run_candidate(d: Path) -> bool:
    # Either file marks a run: a directory with only one of them is a broken run, reported as such rather
    # than silently skipped.
    return (d / "config.json").is_file() or (d / "eval.csv").is_file()


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise PlotError(f"cannot list {d}: {e.strerror or e}") from None


def find_run_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Run directories at `path` itself, or one or two levels below it (not below a run: its checkpoints/
    and TensorBoard folders are not runs)."""
    p = Path(path)
    if not p.exists():
        raise PlotError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise PlotError(f"{p}: not a directory (give a run directory or a directory of runs)")
    if _is_run_candidate(p):
        return [p]
    found: list[Path] = []
    for child in _subdirs(p):
        if _is_run_candidate(child):
            found.append(child)
            continue
        found.extend(g for g in _subdirs(child) if _is_run_candidate(g))
    if not found:
        raise PlotError(f"{p}: no run directories (with config.json and eval.csv) here or two levels below")
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlotError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlotError(f"{path}: unreadable or corrupt ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise PlotError(f"{path}: corrupt (expected a JSON object, got {type(data).__name__})")
    return data


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_eval_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, return_mean, return_std), sorted by step; empty arrays for a header-only or empty file."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise PlotError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PlotError(f"{path}: unreadable or corrupt ({_one_line(e)})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    header = [c.strip() for c in rows[0]]
    for col in ("step", "return_mean"):
        if col not in header:
            raise PlotError(f"{path}: corrupt (no '{col}' column in header {','.join(header)!r})")
    i_step, i_mean = header.index("step"), header.index("return_mean")
    i_std = header.index("return_std") if "return_std" in header else None
    by_step: dict[int, tuple[float, float]] = {}
    for lineno, r in enumerate(rows[1:], start=2):
        try:
            step_f = float(r[i_step])
            mean = float(r[i_mean])
            std = float(r[i_std]) if i_std is not None and r[i_std].strip() else 0.0
        except (IndexError, ValueError):
            raise PlotError(f"{path}: corrupt row {lineno}: {','.join(r)!r}") from None
        if not math.isfinite(step_f) or step_f != int(step_f):
            raise PlotError(f"{path}: corrupt row {lineno}: step {r[i_step]!r} is not an integer")
        # A resumed run may evaluate the same step again: the later row wins.
        by_step[int(step_f)] = (mean, std)
    steps = np.array(sorted(by_step), dtype=np.int64)
    means = np.array([by_step[s][0] for s in steps], dtype=np.float64)
    stds = np.array([by_step[s][1] for s in steps], dtype=np.float64)
    return steps, means, stds


def _pick(key: str, *sources: dict[str, Any]) -> Any:
    for s in sources:
        if s.get(key) is not None:
            return s[key]
    return None


def load_run(run_dir: str | os.PathLike[str]) -> Run | None:
    """Load one run directory; None (with a warning) when it has no evaluations yet (no eval.csv, or one
    with a header only)."""
    d = Path(run_dir)
    cfg_file = _read_json(d / "config.json")
    # The contract nests settings under "config"; accept a flat file too.
    cfg = cfg_file.get("config", cfg_file)
    if not isinstance(cfg, dict):
        raise PlotError(f"{d / 'config.json'}: corrupt ('config' is not an object)")
    summary: dict[str, Any] = {}
    if (d / "summary.json").is_file():
        try:
            summary = _read_json(d / "summary.json")
        except PlotError as e:
            # summary.json is only a fallback here; a half-written one must not hide the curves.
            _warn(f"{e}; ignoring it")
    # Directory name `<env>__<algo>__<seed>__<time>` is the last resort for names.
    parts = d.name.split("__")
    from_name = dict(zip(("env_id", "algo", "seed"), parts)) if len(parts) >= 3 else {}
    env_id, algo = _pick("env_id", cfg, summary, from_name), _pick("algo", cfg, summary, from_name)
    if env_id is None or algo is None:
        raise PlotError(f"{d / 'config.json'}: corrupt (no env_id/algo setting)")
    seed_raw = _pick("seed", cfg, summary, from_name)
    try:
        seed = int(seed_raw) if seed_raw is not None else None
    except (TypeError, ValueError):
        seed = None

    if not (d / "eval.csv").exists():
        # The trainer writes eval.csv at its first evaluation: until then a run is young, not broken.
        _warn(f"{d}: no eval.csv yet (no evaluations); skipping this run")
        return None
    steps, means, stds = _read_eval_csv(d / "eval.csv")
    finite = np.isfinite(means)
    if not finite.any():
        why = "no evaluations yet" if len(means) == 0 else "only non-finite returns"
        _warn(f"{d}: eval.csv has {why}; skipping this run")
        return None
    i_best = int(np.argmax(np.where(finite, means, -np.inf)))
    return Run(
        path=d,
        env_id=str(env_id),
        algo=str(algo),
        seed=seed,
        steps=steps,
        return_mean=means,
        return_std=stds,
        best_return=float(means[i_best]),
        best_step=int(steps[i_best]),
        status=summary.get("status"),
        config=cfg,
    )


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Every run under `paths` (run directories or directories of runs), de-duplicated, sorted by
    (env, algo, seed). Raises PlotError on bad input; runs without evaluations are skipped with a warning."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for p in paths:
        for d in find_run_dirs(p):
            key = d.resolve()
            if key in seen:
                continue
            seen.add(key)
            run = load_run(d)
            if run is not None:
                runs.append(run)
    if not runs:
        raise PlotError("no run has any evaluation yet (eval.csv missing or empty everywhere)")
    runs.sort(key=lambda r: (r.env_id, r.algo, -1 if r.seed is None else r.seed, str(r.path)))
    groups: dict[tuple[str, str, int | None], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.env_id, r.algo, r.seed), []).append(r)
    for (env, algo, seed), rs in groups.items():
        if len(rs) > 1:
            _warn(
                f"{len(rs)} runs of {env} {algo} seed {seed} ({', '.join(str(r.path) for r in rs)}); "
                "each is counted as a seed"
            )
    for r in runs:
        if r.status not in (None, "finished"):
            _warn(f"{r.path}: status is {r.status!r}; using its evaluations so far")
    return runs


# ------------------------------------------------------------------------------------------------- aggregation
def _groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    out: dict[tuple[str, str], list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.env_id, r.algo)):
        out.setdefault((r.env_id, r.algo), []).append(r)
    return out


def paper_table(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """docs/algorithms.md §7 table, one row per (env, algo): per seed the best evaluation average, then mean ± std
    (population, ddof=0) over seeds. Keys: env, algo, n_seeds, mean, std, seeds, per_seed, per_seed_step."""
    rows = []
    for (env, algo), rs in _groups(runs).items():
        best = np.array([r.best_return for r in rs], dtype=np.float64)
        rows.append(
            {
                "env": env,
                "algo": algo,
                "n_seeds": len(rs),
                "mean": float(best.mean()),
                "std": float(best.std(ddof=STD_DDOF)),
                "seeds": [r.seed for r in rs],
                "per_seed": [float(b) for b in best],
                "per_seed_step": [r.best_step for r in rs],
            }
        )
    return rows


def mean_curve(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over seeds of return_mean.

    Seeds usually share one step grid (eval every `eval_every` steps). When they do not (a different
    eval_every, a run still going), each seed is linearly interpolated onto the union of all steps, and
    only the steps inside every seed's range are kept, so each point averages all seeds and nothing is
    extrapolated. If the seeds' ranges do not overlap at all, each step averages the seeds that cover it.
    """
    grid = np.unique(np.concatenate([r.steps for r in runs]))
    ys = []
    for r in runs:
        ok = np.isfinite(r.return_mean)
        y = (
            np.interp(grid, r.steps[ok], r.return_mean[ok], left=np.nan, right=np.nan)
            if ok.any()
            else (np.full(grid.shape, np.nan))
        )
        # np.interp fills between finite points; keep a diverged (NaN) evaluation a gap, not a bridge.
        y[np.isin(grid, r.steps[~ok])] = np.nan
        ys.append(y)
    y_all = np.stack(ys)
    everyone = np.isfinite(y_all).all(axis=0)
    if everyone.any():
        grid, y_all = grid[everyone], y_all[:, everyone]
    else:
        some = np.isfinite(y_all).any(axis=0)
        grid, y_all = grid[some], y_all[:, some]
    n = np.isfinite(y_all).sum(axis=0)
    mean = np.nansum(y_all, axis=0) / n
    std = np.sqrt(np.nansum((y_all - mean) ** 2, axis=0) / np.maximum(n - STD_DDOF, 1))
    return grid, mean, std


# ------------------------------------------------------------------------------------------------------ output
def _seed_label(seed: int | None) -> str:
    return "?" if seed is None else str(seed)


def format_table(rows: Sequence[dict[str, Any]], fmt: str = "text") -> str:
    """The paper table as text (aligned columns), GitHub markdown, or CSV (full precision)."""
    if fmt == "csv":
        lines = ["env,algo,n_seeds,mean,std,seeds,per_seed"]
        for r in rows:
            seeds = ";".join(_seed_label(s) for s in r["seeds"])
            per = ";".join(repr(v) for v in r["per_seed"])
            lines.append(f"{r['env']},{r['algo']},{r['n_seeds']},{r['mean']!r},{r['std']!r},{seeds},{per}")
        return "\n".join(lines) + "\n"
    header = ["env", "algo", "seeds", "best return (mean ± std)", "per seed (seed: best)"]
    body = [
        [
            r["env"],
            r["algo"],
            str(r["n_seeds"]),
            f"{r['mean']:.1f} ± {r['std']:.1f}",
            ", ".join(f"{_seed_label(s)}: {v:.1f}" for s, v in zip(r["seeds"], r["per_seed"])),
        ]
        for r in rows
    ]
    caption = "best evaluation return per seed (max of return_mean over evaluations); mean ± std over seeds"
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines) + f"\n\n{caption}\n"
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r}; choose from {', '.join(TABLE_FORMATS)}")
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt_line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    lines = [caption, fmt_line(header), fmt_line(["-" * w for w in widths])]
    lines += [fmt_line(b) for b in body]
    return "\n".join(lines) + "\n"


def _check_out(out: Path) -> None:
    # Fail before any plotting work, with a message about the path the user typed.
    parent = out.parent
    if out.is_dir():
        raise PlotError(f"--out {out}: is a directory")
    if not parent.is_dir():
        raise PlotError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PlotError(f"--out {out}: directory {parent} is not writable")


def save_plot(runs: Sequence[Run], out: str | os.PathLike[str]) -> Path:
    """Evaluation return vs env steps, one panel per env, one line (mean ± std over seeds) per algo."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no GUI, safe in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    _check_out(out)
    groups = _groups(runs)
    envs = sorted({env for env, _ in groups})
    algos = sorted({algo for _, algo in groups})
    colors = {a: f"C{i % 10}" for i, a in enumerate(algos)}  # one colour per algo across all panels
    ncols = min(3, len(envs))
    nrows = math.ceil(len(envs) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, env in zip(axes.flat, envs):
        for algo in algos:
            rs = groups.get((env, algo))
            if not rs:
                continue
            x, mean, std = mean_curve(rs)
            ax.plot(x, mean, color=colors[algo], label=f"{algo} (n={len(rs)})", marker="o" if len(x) == 1 else None)
            if len(rs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=colors[algo], alpha=0.2, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    for ax in list(axes.flat)[len(envs) :]:
        ax.set_visible(False)

    # Atomic (utils.atomic_write_bytes): a reader, or a crash, never sees a half-written PNG.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    try:
        atomic_write_bytes(str(out), buf.getvalue())
    except OSError as e:
        raise PlotError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return out


# --------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Plot evaluation return vs env steps (mean ± std over seeds) and print the paper-style "
        "table: per seed the best evaluation average, then mean ± std (ddof=0) over seeds.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_DIR",
        help="a run directory, or a directory holding run directories (searched two levels deep)",
    )
    p.add_argument("--out", default="plot.png", help="PNG file to write (default: plot.png)")
    p.add_argument("--table-format", choices=TABLE_FORMATS, default="text", help="table style (default: text)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`fastrsm-plot` entry point; returns the exit code (2 on bad input, with one line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    try:
        _check_out(Path(args.out))
        runs = load_runs(args.paths)
        out = save_plot(runs, args.out)
    except PlotError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    sys.stdout.write(format_table(paper_table(runs), args.table_format))
    print(f"{PROG}: wrote {out} ({len(runs)} runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
