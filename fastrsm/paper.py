"""`fastrsm-paper`: the paper's experiment as one command (Ma et al., "Efficient Online Reinforcement Learning for
Diffusion Policy", ICML 2025, arXiv 2502.00361; docs/algorithms.md §7, §8, §12).

Its ten MuJoCo v4 tasks, its methods, five seeds, an evaluation of 20 episodes every 25k steps (125k on Humanoid,
trained for 5M), and from the runs' own files: the paper's table (per seed the best evaluation average, mean ± std
over seeds, the best per task in bold), the curves (one panel per task), the compute table, and the two DPMD
ablations (diffusion steps 10/20/30; linear, cosine and VP schedules). The runs go through fastrsm-sweep's
machinery (fastrsm/sweep.py): Ray, local by default or a cluster with `--address`, one trainer process per trial,
retries from checkpoints, and a restarted command runs nothing twice.

    fastrsm-paper --out runs/paper                                   # all of it, at the paper's scale
    fastrsm-paper --out runs/paper-cpu --preset small --scale 0.1 --tasks Hopper-v4,Walker2d-v4 --dry-run
    fastrsm-paper --out runs/paper --report-only                     # the outputs again, from the files

`--scale F` multiplies every step count of a run (its budget, evaluation, checkpoint and log intervals, warm-up,
the policy's lr-decay window) by F, so a reduced run keeps the paper's proportions. Methods that fastrsm does not
implement yet are named in the table's caption; asked for explicitly, they are refused in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import OneLineParser, parse_set, run_main
from .runlog import source_commit
from .seeds import parse_seeds
from .utils import UsageError, atomic_write_text

PROG = "fastrsm-paper"
# task -> (env steps, evaluation interval): the paper's MuJoCo v4 set
PAPER_TASKS: dict[str, tuple[int, int]] = {
    "HalfCheetah-v4": (1_000_000, 25_000), "Reacher-v4": (1_000_000, 25_000), "Humanoid-v4": (5_000_000, 125_000),
    "Pusher-v4": (1_000_000, 25_000), "InvertedPendulum-v4": (1_000_000, 25_000), "Ant-v4": (1_000_000, 25_000),
    "Hopper-v4": (1_000_000, 25_000), "Swimmer-v4": (1_000_000, 25_000), "Walker2d-v4": (1_000_000, 25_000),
    "InvertedDoublePendulum-v4": (1_000_000, 25_000),
}
# the paper's methods, in its table's order
PAPER_METHODS = ("dpmd", "sdac", "qsm", "qvpo", "dacer", "dipo", "dppo", "ppo", "td3", "sac")
# a method whose own preset is its source's MuJoCo configuration (docs/algorithms.md §10) rather than `paper`
OWN_PRESET = {"dacer": "dacer"}
EVAL_EPISODES = 20
SEEDS = "0-4"
# step counts of a run that --scale multiplies together
SCALED = ("total_steps", "eval_every", "checkpoint_every", "log_every", "warmup_steps", "lr_decay_start",
          "lr_decay_end")
ABLATIONS = {"steps": ("diffusion_steps", (10, 20, 30)), "schedule": ("schedule", ("linear", "cosine", "vp"))}
ABLATION_ALGO = "dpmd"


def implemented() -> list[str]:
    from .agents import AGENTS

    return [m for m in PAPER_METHODS if m in AGENTS]


def scaled_settings(task: str, preset: str, algo: str, scale: float, steps: int | None) -> dict[str, Any]:
    """The `--set`s of one (task, method) run: the paper's budget and evaluation for the task, scaled."""
    from .config import make_config

    budget, every = PAPER_TASKS.get(task, (1_000_000, 25_000))
    base = make_config(preset, {"algo": algo})
    factor = (steps / budget) if steps else scale
    values = {"total_steps": budget, "eval_every": every, "checkpoint_every": every, "log_every": every // 5,
              "warmup_steps": base.warmup_steps, "lr_decay_start": base.lr_decay_start,
              "lr_decay_end": base.lr_decay_end}
    out = {k: max(int(round(v * factor)), 1) for k, v in values.items()}
    if steps:
        out["total_steps"] = steps
    # a warm-up must fit the budget and fill a batch; a tiny run still logs at most every 1 % of its steps
    out["warmup_steps"] = max(min(out["warmup_steps"], out["total_steps"] // 2), base.batch_size)
    out["log_every"] = max(out["log_every"], out["total_steps"] // 100, 1)
    out["eval_episodes"] = EVAL_EPISODES
    return out


def make_trials(tasks: Sequence[str], algos: Sequence[str], seeds: list[int], preset: str, scale: float,
                steps: int | None, per_process: int, overrides: dict[str, Any], ablations: Sequence[str],
                ablation_task: str) -> list[Any]:
    """The table's trials (run dir TASK__ALGO__seeds...) and each ablation's (ablation-NAME/TASK__dpmd__V__...)."""
    from . import sweep as sw
    from .agents import AGENTS

    trials = []
    for task in tasks:
        for algo in algos:
            p = OWN_PRESET.get(algo, preset) if preset == "paper" else preset
            k = per_process if AGENTS[algo].supports_seeds else 1
            settings = {**scaled_settings(task, p, algo, scale, steps), **overrides}
            trials += sw.make_trials([task], [algo], seeds, k, p, settings)
    for name in ablations:
        key, values = ABLATIONS[name]
        for v in values:
            settings = {**scaled_settings(ablation_task, preset, ABLATION_ALGO, scale, steps), **overrides, key: v}
            for t in sw.make_trials([ablation_task], [ABLATION_ALGO], seeds, per_process, preset, settings):
                trials.append(replace(t, run_dir=f"ablation-{name}/{t.run_dir}__{key}-{v}"))
    return trials


# ------------------------------------------------------------------------------------------------ dry run
def measured_pace(trials: Sequence[Any], updates: int = 5, progress: bool = False
                  ) -> dict[tuple[str, str, str], float]:
    """Seconds per env step of each (task, algo, preset) on this machine, one thread: a few updates of the run's
    agent on random replay rows, times updates per env step, plus the env's own step (timed on random actions)."""
    import torch

    from .agents import make_agent
    from .backend import make_ops
    from .bench import fill_random
    from .config import make_config
    from .envs import env_dims, make_vec_env
    from .replay import ReplayBuffer

    torch.set_num_threads(1)
    pace: dict[tuple[str, str, str], float] = {}
    keys = list(dict.fromkeys((t.env, t.algo, t.preset) for t in trials))
    for t in trials:
        key = (t.env, t.algo, t.preset)
        if key in pace:
            continue
        if progress:  # the paper's grid is 80 (task, method) pairs at its sizes: minutes, so say where it is
            print(f"fastrsm-paper: measuring the pace here, {len(pace) + 1}/{len(keys)}: {t.env} {t.algo} "
                  f"({t.preset})", file=sys.stderr, flush=True)
        cfg = make_config(t.preset, {**t.settings, "env_id": t.env, "algo": t.algo, "device": "cpu",
                                     "backend": "torch"})
        obs_dim, act_dim = env_dims(t.env, cfg.env_backend)
        agent = make_agent(t.algo, obs_dim, act_dim, cfg, torch.device("cpu"), make_ops("torch", "cpu"))
        if agent.on_policy:  # one update per rollout: its time spread over the rollout's env steps
            from .onpolicy import synthetic_rollout

            rollout = synthetic_rollout(agent, cfg.rollout_steps, cfg.num_envs)
            t0 = time.perf_counter()
            agent.learn(rollout)
            per_step = (time.perf_counter() - t0) / (cfg.rollout_steps * cfg.num_envs)
        else:
            rb = ReplayBuffer(4 * cfg.batch_size, obs_dim, act_dim, "cpu", cfg.batch_size)
            fill_random(rb, 4 * cfg.batch_size, 0)
            parts = agent.reachable_parts()
            agent.update_step(rb.sample(), parts[-1])  # first-call allocations
            t0 = time.perf_counter()
            for i in range(updates):
                agent.update_step(rb.sample(), parts[i % len(parts)])
            per_step = cfg.utd * (time.perf_counter() - t0) / updates
        envs = make_vec_env(t.env, 1, 0, cfg.env_backend)
        envs.reset()
        import numpy as np

        t0 = time.perf_counter()
        for _ in range(50):
            envs.step(np.random.uniform(-1, 1, (1, act_dim)))
        per_env = (time.perf_counter() - t0) / 50
        envs.close()
        pace[key] = per_step + per_env
    return pace


def plan_text(trials: Sequence[Any], pace: dict[tuple[str, str, str], float], cpus: int) -> str:
    lines = ["| run dir | seeds | env steps per seed | est. minutes (one core) |", "|---|---:|---:|---:|"]
    total_steps, total_s = 0, 0.0
    for t in trials:
        steps = int(t.settings["total_steps"])
        sec = pace[(t.env, t.algo, t.preset)] * steps * len(t.seeds)  # S seeds in one process: at most S times one
        total_steps += steps * len(t.seeds)
        total_s += sec
        lines.append(f"| {t.run_dir} | {','.join(map(str, t.seeds))} | {steps} | {sec / 60:.1f} |")
    lines.append(f"\n{len(trials)} runs, {total_steps} env steps in all; estimated {total_s / 3600:.2f} core-hours, "
                 f"{total_s / 3600 / max(cpus, 1):.2f} h on {cpus} CPU(s) at one trial per CPU. The pace is "
                 "measured here (a few eager updates on random replay rows and 50 env steps, one thread); a seed "
                 "group counts as its seeds run one after another (batched, it runs faster on a CPU with room).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ report
def _table(runs: list[Any], tasks: Sequence[str], algos: Sequence[str], missing: Sequence[str], seeds: list[int],
           budgets: dict[str, int], episodes: int) -> str:
    from .plot import paper_table

    cells = {(r["env"], r["algo"]): r for r in paper_table(runs)}
    head = "| task | " + " | ".join(algos) + " |"
    lines = [head, "|---|" + "---:|" * len(algos)]
    for task in tasks:
        row = [cells.get((task, a)) for a in algos]
        best = max((c["mean"] for c in row if c), default=None)
        out = []
        for c in row:
            if c is None:
                out.append("–")
                continue
            text = f"{c['mean']:.0f} ± {c['std']:.0f}" + ("" if c["n_seeds"] == len(seeds) else f" ({c['n_seeds']})")
            out.append(f"**{text}**" if c["mean"] == best else text)
        lines.append(f"| {task} | " + " | ".join(out) + " |")
    budget = ", ".join(f"{t} {b}" for t, b in budgets.items())
    caption = (f"Best evaluation average per seed ({episodes} episodes, deterministic policy), mean ± std over "
               f"seeds {','.join(map(str, seeds))} (ddof 0); a cell with fewer seeds gives their count in brackets; "
               f"the best per task in bold. Env steps per run: {budget}.")
    if missing:
        caption += f" Not in fastrsm yet, so not run: {', '.join(missing)}."
    return "\n".join(lines) + "\n\n" + caption + "\n"


def _compute_table(out: Path, trials: Sequence[Any]) -> str:
    """Per method: wall time per 1000 env steps of one seed and env-steps/s, from the runs' summaries."""
    rows: dict[str, list[tuple[float, int]]] = {}
    for t in trials:
        if t.run_dir.startswith("ablation-"):
            continue
        s = _read(out / t.run_dir / "summary.json")  # a single run's, or a --seeds group's
        steps = s.get("env_steps") or (s.get("env_steps_per_seed") or 0) * len(s.get("seeds") or [])
        if s.get("wall_time_s") and steps:
            rows.setdefault(t.algo, []).append((float(s["wall_time_s"]), int(steps)))
    lines = ["| method | runs | seconds per 1000 env steps (one seed) | env-steps/s |", "|---|---:|---:|---:|"]
    for algo, xs in rows.items():
        wall, steps = sum(w for w, _ in xs), sum(n for _, n in xs)
        lines.append(f"| {algo} | {len(xs)} | {1000 * wall / steps:.2f} | {steps / wall:.1f} |")
    return "\n".join(lines) + "\n\nFrom each run's summary.json (wall time of its process, every seed it trained).\n"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def report(out: Path, trials: Sequence[Any], tasks: Sequence[str], algos: Sequence[str], missing: Sequence[str],
           seeds: list[int], ablations: Sequence[str], ablation_task: str) -> str:
    from .plot import load_run, save_plot

    main_runs, ablation_runs = [], {name: [] for name in ablations}
    for t in trials:
        run_dir = out / t.run_dir
        dirs = sorted(run_dir.glob("seed_*")) if (run_dir / "group.json").is_file() else [run_dir]
        for d in dirs:
            r = load_run(d) if (d / "config.json").is_file() else None
            if r is None:
                continue
            if t.run_dir.startswith("ablation-"):
                name = t.run_dir.split("/", 1)[0].removeprefix("ablation-")
                key = ABLATIONS[name][0]
                ablation_runs[name].append(replace(r, algo=f"{ABLATION_ALGO} {key}={r.config.get(key)}"))
            else:
                main_runs.append(r)
    budgets = {t.env: int(t.settings["total_steps"]) for t in trials if not t.run_dir.startswith("ablation-")}
    episodes = next((int(t.settings["eval_episodes"]) for t in trials), EVAL_EPISODES)
    text = "# The paper's table\n\n" + _table(main_runs, tasks, algos, missing, seeds, budgets, episodes)
    text += "\n# Compute\n\n" + _compute_table(out, trials)
    if main_runs:
        save_plot(main_runs, out / "curves.png")
        text += "\nCurves: curves.png (one panel per task, mean ± std over seeds).\n"
    for name, runs in ablation_runs.items():
        if runs:
            save_plot(runs, out / f"ablation_{name}.png")
            from .plot import paper_table

            rows = sorted(paper_table(runs), key=lambda r: r["algo"])
            text += (f"\n# Ablation: {ABLATIONS[name][0]} ({ABLATION_ALGO} on {ablation_task})\n\n| variant | best "
                     "(mean ± std) | seeds |\n|---|---:|---:|\n")
            text += "".join(f"| {r['algo']} | {r['mean']:.0f} ± {r['std']:.0f} | {r['n_seeds']} |\n" for r in rows)
            text += f"\nCurves: ablation_{name}.png.\n"
    atomic_write_text(str(out / "table.md"), text)
    return text


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="The paper's experiment in one command: its tasks, methods and seeds "
                                             "on Ray, then its table, curves, compute table and ablations.")
    p.add_argument("--out", required=True, help="the experiment's folder (runs, table.md, curves.png, paper.json)")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated env ids (default: the paper's ten)")
    p.add_argument("--algos", default=None, help="comma-separated methods (default: every method of the paper "
                                                 "that fastrsm implements)")
    p.add_argument("--seeds", default=SEEDS, help=f"seeds (default {SEEDS}, the paper's five)")
    p.add_argument("--preset", default="paper", help="paper (each method's own configuration), or small/smoke for "
                                                     "a CPU")
    p.add_argument("--scale", type=float, default=1.0, help="every step count of a run times this (0 < F <= 1)")
    p.add_argument("--steps", type=int, default=None, help="env steps per run instead (others scaled alike)")
    p.add_argument("--ablations", default="", help="comma-separated: steps (T = 10/20/30), schedule (linear, "
                                                   "cosine, vp); DPMD on --ablation-task")
    p.add_argument("--ablation-task", default="Hopper-v4")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every run")
    p.add_argument("--seeds-per-process", type=int, default=1, metavar="K",
                   help="seeds one trainer process trains (K > 1: fastrsm-train --seeds, where the method has it)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the outputs from the runs' files; run nothing")
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-retries", type=int, default=2)
    p.add_argument("--report-every", type=float, default=600.0, metavar="S")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(PROG, lambda: _main(build_parser().parse_args(argv), argv))


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from . import sweep as sw
    from .agents import AGENTS

    tasks = sw.parse_list(args.tasks, "tasks")
    have = implemented()
    missing = [m for m in PAPER_METHODS if m not in AGENTS]
    if args.algos:
        algos = sw.parse_list(args.algos, "algos")
        absent = [a for a in algos if a not in AGENTS]
        if absent:
            raise UsageError(f"not an algorithm of fastrsm: {', '.join(absent)} (it has {', '.join(AGENTS)})")
        missing = [m for m in missing if m in algos]
    else:
        algos = have
    if not (0 < args.scale <= 1) or (args.steps is not None and args.steps < 1):
        raise UsageError(f"--scale must be in (0, 1] and --steps positive, got {args.scale:g} and {args.steps}")
    ablations = [a for a in sw.parse_list(args.ablations, "ablations")] if args.ablations else []
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise UsageError(f"unknown ablation {unknown[0]!r}; choose from {', '.join(ABLATIONS)}")
    if args.dry_run and args.report_only:
        raise UsageError("--dry-run and --report-only: give one")
    seeds = parse_seeds(args.seeds)
    overrides = parse_set(args.set)
    trials = make_trials(tasks, algos, seeds, args.preset, args.scale, args.steps, args.seeds_per_process,
                         overrides, ablations, args.ablation_task)
    sw.check_trials(trials)
    out = Path(args.out).resolve()
    if args.dry_run:
        print(plan_text(trials, measured_pace(trials, progress=True), args.num_cpus or os.cpu_count() or 1))
        return 0
    code = 0
    if not args.report_only:
        grid = {"command": "paper", "tasks": tasks, "algos": algos, "seeds": seeds, "preset": args.preset,
                "scale": args.scale, "steps": args.steps, "set": overrides, "ablations": ablations,
                "ablation_task": args.ablation_task, "seeds_per_process": args.seeds_per_process}
        out.mkdir(parents=True, exist_ok=True)
        record = {"commit": source_commit(), "argv": argv, "grid": grid,
                  "runs": {t.run_dir: {"env": t.env, "algo": t.algo, "seeds": t.seeds, "preset": t.preset,
                                       "settings": t.settings} for t in trials}}
        old = _read(out / "paper.json")
        if not old and any(out.iterdir()):
            raise UsageError(f"--out {args.out} exists, is not empty and holds no paper.json; choose another --out")
        if old and old.get("grid") != grid:
            raise UsageError(f"{args.out} holds another experiment ({json.dumps(old.get('grid'))}): use another --out")
        if not old:  # the first start's commit and settings; a resumed experiment keeps them
            atomic_write_text(str(out / "paper.json"), json.dumps(record, indent=1) + "\n")
        ray_args = argparse.Namespace(address=args.address, num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                                      gpus_per_trial=args.gpus_per_trial, max_retries=args.max_retries,
                                      report_every=args.report_every)
        # paper.json is the experiment's mark: the sweep's state joins it in the same folder
        code, _ = sw.run_sweep(sw.Plan(str(out), grid, trials, ray_args), " ".join([PROG, *argv]), adopt=True)
        if code >= sw.EXIT_SIGINT:
            return code
    if not out.is_dir():
        raise UsageError(f"--out {args.out}: no such experiment folder")
    text = report(out, trials, tasks, algos, missing, seeds, ablations, args.ablation_task)
    print(text)
    print(f"{PROG}: wrote {out / 'table.md'}", file=sys.stderr)
    return 1 if code else 0


__all__ = ["PAPER_METHODS", "PAPER_TASKS", "main", "make_trials", "scaled_settings"]

if __name__ == "__main__":
    raise SystemExit(main())
