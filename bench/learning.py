"""The learning campaign of bench/LEARNING.md: DPMD, SDAC and SAC (and DACER/DACER2 on InvertedDoublePendulum with
--with-dacer) on the paper's InvertedDoublePendulum-v4 and Hopper-v4, 4 seeds each, `--preset small`.

    python bench/learning.py                      # run (or continue) the whole campaign, then write the report
    python bench/learning.py --report-only        # the report from whatever has run so far
    python bench/learning.py --tiny --out /tmp/x  # a few hundred steps of everything, end to end (the test)
    python bench/learning.py --algos dpmd --tasks Hopper-v4 --seeds 0,1 --steps 60000 \
        --set explore_std=0.25 --out runs/hopper-bisect/noise0.25   # a variant: its own folder, same machinery

The campaign is a recipe of fastrsm-sweep: its trials run on the sweep's machinery (fastrsm/sweep.py: a local Ray
with `--jobs` CPUs, one trainer process per trial, one torch thread each; state in OUT/sweep.json, each trainer's
output in OUT/.sweep/<run dir>/train.log). Each (task, algo) is one `fastrsm-train --seeds 0,1,2,3` process; an
algorithm without the multi-seed path (DACER, DACER2) runs one `fastrsm-train --seed K` process per seed (run dir
TASK__ALGO__seedK). The campaign survives being stopped at any point: a finished run (summary.json status
"finished" or "diverged") is skipped, an unfinished one continues with `fastrsm-train --resume` from its latest
checkpoint (the trainer truncates eval.csv/train.csv to that checkpoint, so no evaluation row is lost or written
twice), a missing one starts; a trainer that dies is retried from its checkpoint (twice). An explicit `--steps`
extends: an existing run, finished or not, resumes to that budget (`--set total_steps=...` on the resume; without
`--steps` a resumed run keeps its own). SIGINT/SIGTERM reach the trainers, which checkpoint and stop.

After training, each seed's best checkpoint is evaluated again through the public `fastrsm.evaluate_policy`, once
with the run's best-of-N and once with N = 1 (the diffusion policy acting alone), on the same evaluation episodes;
the results are cached per checkpoint in `SEED_DIR/reeval_n{N}.json` (`reeval_nNone.json` for the algorithms
without N). The report (OUT/report.md, OUT/curves.png) has the paper-style table (best evaluation per seed,
mean ± std over seeds; final evaluation), the two re-evaluations, wall time and env-steps/s per group.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fastrsm import sweep as sw
from fastrsm.cli import OneLineParser, parse_set, run_main
from fastrsm.group import is_group_dir, seed_dir
from fastrsm.seeds import parse_seeds
from fastrsm.utils import UsageError, atomic_write_text

PROG = "learning.py"
# The fresh-seed protocol: a recipe is chosen on the tuning seeds and judged on fresh ones it was never tuned on;
# the report labels every figure with the seeds it comes from. Every result before 2026-12-04 is a tuning-seed one.
TUNING_SEEDS = (0, 1, 2, 3)
FRESH_SEEDS = (4, 5, 6, 7)
SEEDS = TUNING_SEEDS
PRESET = "small"
# Budgets: IDP is solved (≈ 9.3k) by SAC at UTD 1 within a few 10k steps; Hopper's budget is what the 2-core CPU
# affords (a DPMD group of 4 seeds runs ≈ 10 env steps/s there; bench/LEARNING.md has the measured figures).
TASKS: dict[str, dict[str, int]] = {
    "InvertedDoublePendulum-v4": dict(total_steps=30_000, eval_every=2_500),
    "Hopper-v4": dict(total_steps=100_000, eval_every=5_000),
    "Walker2d-v4": dict(total_steps=100_000, eval_every=5_000),
    "HalfCheetah-v4": dict(total_steps=100_000, eval_every=5_000),
}
ALGOS = ("dpmd", "sdac", "sac")
DACER_ALGOS = ("dacer", "dacer2")  # on InvertedDoublePendulum only (--with-dacer)
BEST_OF_N_ALGOS = ("dpmd", "dpmd2", "sdac")  # act with the best of N chain samples; the others act with one action
TINY = dict(total_steps=300, warmup_steps=150, eval_every=150, checkpoint_every=150, eval_episodes=2, log_every=150,
            buffer_size=1000)
TINY_REEVAL_EPISODES = 2


def seed_label(seeds: list[int]) -> str:
    """Which side of the fresh-seed protocol a group's seeds are on: `tuning` (recipes were chosen on them),
    `fresh` (never used to choose anything) or `mixed`."""
    if all(s in TUNING_SEEDS for s in seeds):
        return "tuning"
    if not any(s in TUNING_SEEDS for s in seeds):
        return "fresh"
    return "mixed"


def make_trials(algos: list[str], tasks: list[str], with_dacer: bool, tiny: bool, steps: int | None = None,
                seeds: list[int] | None = None, overrides: dict[str, str] | None = None) -> list[sw.Trial]:
    """The campaign's trials: per task and algorithm one `--seeds` group in OUT/TASK__ALGO, or, for an algorithm
    without the multi-seed path, one run per seed in OUT/TASK__ALGO__seedK."""
    from fastrsm.agents import AGENTS

    trials = []
    seeds = list(seeds or (SEEDS[:2] if tiny else SEEDS))
    for env in tasks:
        for algo in [*algos, *(DACER_ALGOS if with_dacer and env.startswith("InvertedDouble") else ())]:
            settings = {**TASKS[env], **(TINY if tiny else {}), **({"total_steps": steps} if steps else {}),
                        **(overrides or {})}
            grouped = getattr(AGENTS.get(algo), "supports_seeds", True)  # an unknown algo: check_trials says so
            for part in [seeds] if grouped else [[s] for s in seeds]:
                name = f"{env}__{algo}" if grouped else f"{env}__{algo}__seed{part[0]}"
                trials.append(sw.Trial(env, algo, part, name, PRESET, settings, extend=bool(steps)))
    return trials


# ------------------------------------------------------------------------------------------------ re-evaluation
def reevaluate(seed_dir: Path, particles: int | None, episodes: int | None) -> dict[str, Any] | None:
    """The best checkpoint evaluated again through `fastrsm.evaluate_policy` (which loads it with
    `fastrsm.load_policy`); cached next to it, per checkpoint file and N, so a report does not load it again.
    Without the checkpoint (a folder written by --keep) the cached result, or None."""
    from fastrsm import evaluate_policy
    from fastrsm.utils import atomic_write_json

    saved = json.loads((seed_dir / "config.json").read_text())["config"]
    n = (particles or saved["particles"]) if saved["algo"] in BEST_OF_N_ALGOS else None
    cache = seed_dir / f"reeval_n{n}.json"
    best = seed_dir / "checkpoints" / "best.pt"
    if not best.is_file():  # a kept copy of the results (--keep): the cache is all there is
        return json.loads(cache.read_text()) if cache.is_file() else None
    stamp = best.stat().st_mtime_ns
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("checkpoint_mtime_ns") == stamp and (episodes is None or old.get("episodes") == episodes):
            return old
    r = evaluate_policy(str(seed_dir), "best", episodes, particles, seed=12345, device="cpu")
    out = {"particles": r["particles"], "episodes": r["episodes"], "return_mean": r["return_mean"],
           "return_std": r["return_std"], "checkpoint_mtime_ns": stamp}
    atomic_write_json(str(cache), out)
    return out


# -------------------------------------------------------------------------------------------------------- keep
# What a report is made of, without the checkpoints and replay buffers (megabytes per seed): small enough to commit,
# so that the figures of a campaign outlive the machine it ran on. `--report-only --out DIR` reads such a copy.
KEPT_GROUP_FILES = ("group.json", "summary.json")
KEPT_SEED_FILES = ("config.json", "summary.json", "eval.csv", "train.csv")


def seed_dirs_of(t: sw.Trial, out: Path) -> list[Path]:
    """The trial's seeds' run dirs: a group's seed_K dirs (the trial's seeds), or the run dir of a single run."""
    run = out / t.run_dir
    return [Path(seed_dir(str(run), s)) for s in t.seeds] if is_group_dir(str(run)) else [run]


def keep_results(trials: list[sw.Trial], out: Path, dest: Path) -> int:
    """Copies the campaign's settings, report and every run's results (not its checkpoints) to `dest`, keeping
    the campaign's layout; returns the number of files copied."""
    copied = 0

    def put(src: Path, rel: Path) -> None:
        nonlocal copied
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            copied += 1

    for name in ("campaign.json", "report.md"):
        put(out / name, Path(name))
    for t in trials:
        if is_group_dir(str(out / t.run_dir)):
            for name in KEPT_GROUP_FILES:
                put(out / t.run_dir / name, Path(t.run_dir) / name)
        for d in seed_dirs_of(t, out):
            for f in [*(d / n for n in KEPT_SEED_FILES), *sorted(d.glob("reeval_n*.json"))]:
                put(f, d.relative_to(out) / f.name)
    return copied


# ------------------------------------------------------------------------------------------------------ report
def _duration(seconds: float | None) -> str:
    if not seconds:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def _fmt(xs: list[float]) -> str:
    return f"{np.mean(xs):.0f} ± {np.std(xs):.0f}" if xs else "–"


def per_seed_tables(runs: list[Any]) -> str:
    """Per task: every seed's evaluation at every evaluation step (one row per algorithm and seed), then the
    mean ± std over seeds at each step, for the steps every seed of that algorithm has reached."""
    out = []
    for env in dict.fromkeys(r.env_id for r in runs):
        rs = [r for r in runs if r.env_id == env]
        steps = sorted({int(x) for r in rs for x in r.steps})
        head = " | ".join(f"{x / 1000:g}k" for x in steps)
        lines = [f"**{env}**, evaluation return per seed:", "",
                 f"| algo | seed | {head} |", "|---|---|" + "---:|" * len(steps)]
        means = []
        for algo in dict.fromkeys(r.algo for r in rs):
            group = sorted((r for r in rs if r.algo == algo), key=lambda r: r.seed if r.seed is not None else -1)
            at = [{int(x): float(v) for x, v in zip(r.steps, r.return_mean)} for r in group]  # step -> return
            for r, ret in zip(group, at):
                lines.append(f"| {algo} | {r.seed} | " + " | ".join(f"{ret[x]:.0f}" if x in ret else ""
                                                                      for x in steps) + " |")
            common = [x for x in steps if all(x in ret for ret in at)]
            cells = [f"{x / 1000:g}k {_fmt([ret[x] for ret in at])}" for x in common]
            means.append(f"- {algo} mean ± std over {len(group)} seeds: " + ", ".join(cells))
        out.append("\n".join(lines + [""] + means))
    return "\n\n".join(out)


def report(trials: list[sw.Trial], out: Path, tiny: bool, png: Path) -> str:
    from fastrsm.plot import load_run, save_plot

    rows = ["| task | algo | seeds | budget (env steps) | best eval, best-of-N (mean ± std) | final eval | "
            "best ckpt re-eval, best-of-N | best ckpt re-eval, N = 1 | wall time | env-steps/s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    runs = []
    groups: dict[tuple[str, str], list[sw.Trial]] = {}
    for t in trials:  # a --seeds group is one trial; a single-seed algorithm has one trial per seed
        groups.setdefault((t.env, t.algo), []).append(t)
    for (env, algo), ts in groups.items():
        budget = ts[0].settings["total_steps"]
        seeds = sorted(s for t in ts for s in t.seeds)
        label = f"{seed_label(seeds)}: {', '.join(map(str, seeds))}"
        if not any((out / t.run_dir).exists() for t in ts):
            rows.append(f"| {env} | {algo} | 0 ({label}) | {budget} | not started | | | | | |")
            continue
        done = all(sw.done_status(t, str(out)) for t in ts)
        best, final, full, alone, steps = [], [], [], [], []
        for t in ts:
            for d in seed_dirs_of(t, out):
                r = load_run(d) if (d / "config.json").is_file() else None
                if r is None:
                    continue
                runs.append(r)
                best.append(r.best_return)
                final.append(float(r.return_mean[-1]))
                steps.append(int(r.steps[-1]))
                if done:
                    episodes = TINY_REEVAL_EPISODES if tiny else None
                    for into, n in ((full, None), *(((alone, 1),) if algo in BEST_OF_N_ALGOS else ())):
                        r_n = reevaluate(d, n, episodes)
                        if r_n is not None:
                            into.append(r_n["return_mean"])
        summaries = [json.loads((out / t.run_dir / "summary.json").read_text()) for t in ts
                     if (out / t.run_dir / "summary.json").is_file()]
        wall = sum(x.get("wall_time_s") or 0.0 for x in summaries) if done else None
        if done and not is_group_dir(str(out / ts[0].run_dir)):  # separate processes: env steps over summed walls
            sps = sum(x.get("env_steps", 0) for x in summaries) / max(wall or 0.0, 1e-9)
        else:
            sps = summaries[0].get("aggregate_steps_per_s") if done and summaries else None
        state = summaries[0].get("status", "running") if done else f"at {min(steps, default=0)} steps"
        n1 = _fmt(alone) if algo in BEST_OF_N_ALGOS else ("n/a" if algo == "sac" else "= best-of-N column")
        rows.append(f"| {env} | {algo} | {len(best)} ({label}) | {budget} ({state}) | {_fmt(best)} | {_fmt(final)} | "
                    f"{_fmt(full)} | {n1} | {_duration(wall)} | {f'{sps:.1f}' if sps else '–'} |")
    if runs:
        save_plot(runs, png)
    text = "\n".join(rows) + (
        "\n\nseeds: `tuning` seeds (0–3) are those recipes were chosen on; `fresh` seeds (4–7) were never used to "
        "choose anything, so only their figures judge a recipe. "
        "best eval: per seed the best evaluation average over the run (the paper's statistic), mean ± std over "
        "seeds (ddof 0); final eval: the last evaluation; re-eval: the best checkpoint evaluated again through "
        "fastrsm.evaluate_policy on the same episodes, with the run's best-of-N and with N = 1 (the diffusion policy "
        "alone; SAC acts with its mean, DACER and DACER2 with one chain sample, so their N = 1 is the best-of-N "
        "column); wall time: the group process (seeds in one process) or the sum of the per-seed processes "
        "(DACER, DACER2); env-steps/s: all seeds' env steps per second of that wall time.\n")
    if runs:
        text += "\n" + per_seed_tables(runs) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/learning", help="campaign folder (default: runs/learning)")
    p.add_argument("--jobs", type=int, default=2, help="trainer processes at a time (one torch thread each)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated env ids")
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated algorithms")
    p.add_argument("--with-dacer", action="store_true", help="add DACER and DACER2 on InvertedDoublePendulum")
    p.add_argument("--report-only", action="store_true", help="train nothing; write the report of what exists")
    p.add_argument("--tiny", action="store_true", help="a few hundred steps, 2 seeds: the end-to-end check")
    p.add_argument("--png", default=None, help="curves PNG (default: OUT/curves.png)")
    p.add_argument("--steps", type=int, default=None,
                   help="env steps of every task (default: each task's budget); an existing run, finished or not, "
                   "is resumed to this many")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0,1 or 0-3 (default: the tuning seeds 0,1,2,3; --tiny: "
                   "0,1)")
    p.add_argument("--fresh", action="store_true",
                   help="the fresh seeds 4,5,6,7: judge a recipe chosen on the tuning seeds (the report labels both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run on top of the preset (a variant campaign: give it its own --out)")
    p.add_argument("--doc", default=None, metavar="FILE",
                   help="also put the report into FILE between its '<!-- report -->' and '<!-- end report -->' lines")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="also copy the campaign's results without checkpoints (settings, report, eval/train CSVs, "
                   "re-evaluations) to DIR, e.g. bench/learning_runs/NAME; `--report-only --out DIR` reads it")
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(PROG, lambda: campaign(p.parse_args(argv), argv))


def campaign(args: argparse.Namespace, argv: list[str]) -> int:
    tasks, algos = sw.parse_list(args.tasks, "tasks"), sw.parse_list(args.algos, "algos")
    if any(t not in TASKS for t in tasks) or args.jobs < 1:
        raise UsageError(f"tasks must be among {', '.join(TASKS)} and --jobs >= 1")
    overrides = parse_set(args.set)
    out = Path(args.out)
    if args.keep and Path(args.keep).resolve() == out.resolve():
        raise UsageError("--keep must name another folder than --out")
    if args.fresh and args.seeds:
        raise UsageError("--fresh is the seeds 4,5,6,7: give it or --seeds, not both")
    seeds = list(FRESH_SEEDS) if args.fresh else (parse_seeds(args.seeds) if args.seeds else None)
    trials = make_trials(algos, tasks, args.with_dacer, args.tiny, args.steps, seeds, overrides)
    code = 0
    if not args.report_only:
        # A campaign folder holds runs of one set of `--set` settings: an unfinished run resumes with the settings
        # it began with, so starting it again with others would mix two campaigns in one table.
        grid, saved = {"preset": PRESET, "set": overrides}, out / "campaign.json"
        if saved.is_file() and json.loads(saved.read_text()) != grid:
            raise UsageError(f"{out} was started with {saved.read_text().strip()}, not --set {overrides}: use "
                             "another --out")
        sw.check_trials(trials)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(saved), json.dumps(grid, indent=1) + "\n")
        ray_args = argparse.Namespace(address=None, num_cpus=args.jobs, cpus_per_trial=1.0, gpus_per_trial=0.0,
                                      max_retries=2, report_every=600.0)
        code, _ = sw.run_sweep(sw.Plan(str(out.resolve()), grid, trials, ray_args),
                               " ".join(["python bench/learning.py", *argv]), adopt=True)
    out.mkdir(parents=True, exist_ok=True)
    text = report(trials, out, args.tiny, Path(args.png) if args.png else out / "curves.png")
    print(text)
    if args.doc:
        put_in_doc(Path(args.doc), text)
    if args.keep:
        print(f"kept {keep_results(trials, out, Path(args.keep))} files in {args.keep}")
    return 1 if code else 0


def put_in_doc(doc: Path, text: str) -> None:
    """Replace what stands between the doc's report markers with `text`, written atomically."""
    begin, end = "<!-- report -->", "<!-- end report -->"
    old = doc.read_text(encoding="utf-8")
    if old.count(begin) != 1 or old.count(end) != 1 or old.index(begin) > old.index(end):
        raise SystemExit(f"{PROG}: {doc} needs one '{begin}' line and one '{end}' line after it")
    atomic_write_text(str(doc), old[:old.index(begin) + len(begin)] + "\n" + text.strip() + "\n" + old[old.index(end):])


if __name__ == "__main__":
    sys.exit(main())
