"""`fastrsm-sweep`: a grid of (env, algo) × seeds on Ray (docs/design.md "Sweeps").

    fastrsm-sweep --envs Hopper-v4,Walker2d-v4 --algos dpmd,sdac,sac --seeds 0-4 --out sweeps/NAME
                  [--preset P] [--set KEY=VALUE ...] [--total-steps N] [--seeds-per-process K]
                  [--cpus-per-trial C] [--gpus-per-trial F] [--address ADDR] [--max-retries R]

The only module of fastrsm that imports Ray (lazily, inside `main`). Ray schedules; the trials themselves are
ordinary `fastrsm-train` processes, so a trial's state is its run directory and nothing else:

- a trial is one (env, algo) and a tuple of seeds: one seed -> one run directory `OUT/<env>__<algo>__<seed>`;
  K seeds (`--seeds-per-process K`, the multi-seed path of `fastrsm-train --seeds`) -> one group directory;
- each attempt is a Ray task that runs `fastrsm-train` as a child process (a crash of the trainer, or of the
  Ray worker, is then a failed attempt, not a dead driver); a retry continues from the trial's latest
  checkpoint with `--resume`; exit code 3 (diverged) is a result and is never retried;
- `OUT/sweep.json` (written atomically on every state change) holds the grid and each trial's status; running
  the same command again skips finished trials and resumes the others;
- before an attempt uses a run dir that a trainer of an earlier attempt still holds (its worker or driver died and
  it is saving a checkpoint on the way out), the sweep waits for it, a bounded time, then stops it.

The running part (`run_sweep` on a `Plan` of `Trial`s) is also the runner of other recipes: bench/learning.py's
learning campaign builds its own trials (per-task settings, its own run dir names) and runs them here.

`OUT` must be on a file system every node sees (the driver reads the run directories for progress and the
final table).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .cli import EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_OK, EXIT_SIGINT, EXIT_USAGE, OneLineParser, parse_set, run_main
from .config import make_config
from .group import is_group_dir, seed_dirs
from .seeds import parse_seeds  # the one --seeds grammar, shared with fastrsm-train
from .sweep_task import run_attempt
from .utils import UsageError, atomic_write_json, atomic_write_text

PROG = "fastrsm-sweep"
STATE_FILE = "sweep.json"
SWEEP_VERSION = 1
INSTALL_HINT = ("Ray is not installed; fastrsm-sweep needs it: pip install 'fastrsm[sweep]' "
                "(or pip install 'ray[default]')")
# Trial states. `retried`: an attempt failed and another one is queued (from the latest checkpoint).
STATES = ("pending", "running", "finished", "failed", "retried", "diverged")
DONE = ("finished", "diverged")  # what a trainer's summary.json may say of a run that needs no more training
# Exit codes of fastrsm-train that another attempt cannot change: bad input, divergence, a full disk.
NOT_RETRIED = (EXIT_USAGE, EXIT_DIVERGED, EXIT_NO_SPACE)
# Settings every trial sets itself: a --set of these would silently fight the grid.
GRID_KEYS = ("env_id", "algo", "seed")
# A trainer stopped by SIGTERM saves its checkpoint (and replay buffer) before it lets go of its run dir; an
# attempt waits this long for an earlier one's trainer, then stops it: SIGTERM, and SIGKILL after the grace.
HOLDER_WAIT_S = 120.0
HOLDER_GRACE_S = 30.0


# ------------------------------------------------------------------------------------------------- the grid
def parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise UsageError(f"--{what} {text!r}: expected a comma-separated list with no empty items")
    if len(set(items)) != len(items):
        raise UsageError(f"--{what} {text!r}: an item is listed twice")
    return items


@dataclass
class Trial:
    """One schedulable unit: an (env, algo) and the seeds one process trains, with the settings of its new run.
    `run_dir` is relative to the sweep's directory."""

    env: str
    algo: str
    seeds: list[int]
    run_dir: str
    preset: str = "paper"
    settings: dict[str, Any] = field(default_factory=dict)  # `--set`s of a new run, total_steps among them
    extend: bool = False  # a finished run that went less far than settings["total_steps"] resumes to it
    status: str = "pending"
    attempts: int = 0  # attempts started (1 + retries once it has run)
    exit_code: int | None = None
    message: str = ""
    node: str = ""
    seconds: float = 0.0  # wall time of all attempts
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished attempt

    @property
    def label(self) -> str:
        seeds = f"seed {self.seeds[0]}" if len(self.seeds) == 1 else f"seeds {','.join(map(str, self.seeds))}"
        return f"{self.env} {self.algo} {seeds}"


def make_trials(envs: Sequence[str], algos: Sequence[str], seeds: Sequence[int], per_process: int,
                preset: str = "paper", settings: dict[str, Any] | None = None) -> list[Trial]:
    trials = []
    for env in envs:
        for algo in algos:
            for i in range(0, len(seeds), per_process):
                group = list(seeds[i:i + per_process])
                tail = str(group[0]) if len(group) == 1 else "seeds" + "-".join(map(str, group))
                trials.append(Trial(env, algo, group, f"{env}__{algo}__{tail}", preset, dict(settings or {})))
    return trials


def check_trials(trials: Sequence[Trial]) -> None:
    """Every check a trial's run gets before Ray starts or a file is written, so that no trial fails on its input
    later: each (env, algo, seeds per process) and its settings as its trainer would take them (the algorithm's
    multi-seed path included), and each env made once, as fastrsm-train's own check makes it."""
    from .agents import check_algo
    from .envs import env_dims

    envs = {}
    for t in trials:
        for k in GRID_KEYS:
            if k in t.settings:
                raise UsageError(f"--set {k}=...: each trial sets {k} itself (from --envs, --algos, --seeds)")
        check_algo(t.algo, len(t.seeds) if len(t.seeds) > 1 else None)
        envs[t.env] = make_config(t.preset, {**t.settings, "env_id": t.env, "algo": t.algo, "seed": t.seeds[0]}) \
            .env_backend
    for env, backend in envs.items():
        env_dims(env, backend)  # unknown ids (with the closest ones named) and spaces fastrsm cannot train on


def train_command(trial: Trial, out: str, resume: bool) -> list[str]:
    """The fastrsm-train command line of one attempt. A resumed attempt reads its settings from the run dir."""
    run_dir = os.path.join(out, trial.run_dir)
    cmd = [sys.executable, "-m", "fastrsm.train", "--quiet"]
    if resume:
        further = ["--set", f"total_steps={trial.settings['total_steps']}"] if trial.extend else []
        return [*cmd, "--resume", run_dir, *further]
    seeds = ["--seed", str(trial.seeds[0])] if len(trial.seeds) == 1 else ["--seeds", ",".join(map(str, trial.seeds))]
    sets = [a for k, v in trial.settings.items() for a in ("--set", f"{k}={v}")]
    return [*cmd, "--env", trial.env, "--algo", trial.algo, *seeds, "--preset", trial.preset, "--run-dir", run_dir,
            *sets]


# ------------------------------------------------------------------------------------------------ the state
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sweep:
    """The sweep's state file: the grid, the command lines that ran it, and every trial."""

    def __init__(self, out: str, grid: dict[str, Any], trials: list[Trial]):
        self.out, self.grid, self.trials = out, grid, trials
        self.path = os.path.join(out, STATE_FILE)
        self.commands: list[str] = []
        self.created = _now()
        self.others: list[dict[str, Any]] = []  # trials of earlier runs that this one does not run (kept as they were)

    @classmethod
    def open(cls, out: str, grid: dict[str, Any], trials: list[Trial], adopt: bool = False) -> Sweep:
        """A new sweep, or the one already in `out` if it has the same grid (else UsageError). With `adopt`, an
        `out` that holds run dirs but no state file is taken over (a recipe whose trials change between runs)."""
        sweep = cls(out, grid, trials)
        if os.path.isfile(sweep.path):
            try:
                with open(sweep.path, encoding="utf-8") as f:
                    saved = json.load(f)
                old_grid, old_trials = saved["grid"], saved["trials"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UsageError(f"--out {out}: {STATE_FILE} is unreadable ({e}); choose another --out") from None
            if old_grid != grid:
                diff = [k for k in sorted(set(grid) | set(old_grid)) if grid.get(k) != old_grid.get(k)]
                raise UsageError(f"--out {out} holds another sweep (its {', '.join(diff)} differ); re-run that "
                                 f"sweep's command or choose another --out")
            by_dir = {t["run_dir"]: t for t in old_trials}
            for t in trials:
                old = by_dir.pop(t.run_dir, {})
                for k in ("status", "attempts", "exit_code", "message", "node", "seconds", "history"):
                    setattr(t, k, old.get(k, getattr(t, k)))
            sweep.others = list(by_dir.values())
            sweep.commands = list(saved.get("commands", []))
            sweep.created = saved.get("created", sweep.created)
        elif os.path.isdir(out) and os.listdir(out) and not adopt:
            raise UsageError(f"--out {out} exists, is not empty and holds no {STATE_FILE}; choose another --out")
        return sweep

    def save(self) -> None:
        counts = {s: sum(t.status == s for t in self.trials) for s in STATES}
        atomic_write_json(self.path, {
            "version": SWEEP_VERSION, "grid": self.grid, "created": self.created, "updated": _now(),
            "commands": self.commands, "counts": counts, "trials": [asdict(t) for t in self.trials] + self.others})


def _has_checkpoint(run_dir: str) -> bool:
    """A run dir with its latest checkpoint, or a multi-seed group (fastrsm.group) whose seeds all have theirs."""
    if os.path.isfile(os.path.join(run_dir, "checkpoints", "latest.pt")):
        return True
    if not is_group_dir(run_dir):
        return False
    try:
        dirs = seed_dirs(run_dir)
    except ValueError:  # an unreadable group.json: the run starts afresh rather than resuming a guess
        return False
    return bool(dirs) and all(os.path.isfile(os.path.join(d, "checkpoints", "latest.pt")) for d in dirs)


def done_status(trial: Trial, out: str) -> str | None:
    """What the trial's summary.json says if it needs no more training (finished or diverged), else None; a
    finished run that `extend` takes further than it went, from its checkpoint, is not done."""
    run_dir = os.path.join(out, trial.run_dir)
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        status = summary.get("status")
    except (OSError, ValueError, AttributeError):
        return None
    if status not in DONE:
        return None
    went = summary.get("env_steps_per_seed", summary.get("env_steps", 0))
    if trial.extend and status == "finished" and went < int(trial.settings["total_steps"]) and \
            _has_checkpoint(run_dir):
        return None
    return status


# ------------------------------------------------------------------------------------------------ reporting
def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _last_train_row(run_dir: str) -> dict[str, str]:
    """The last row of train.csv (cheap: reads the file's tail only)."""
    path = os.path.join(run_dir, "train.csv")
    try:
        with open(path, "rb") as f:
            header = f.readline().decode().strip().split(",")
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 8192, 0))
            last = f.read().decode(errors="replace").strip().splitlines()[-1].split(",")
    except (OSError, IndexError):
        return {}
    return dict(zip(header, last)) if len(last) == len(header) and last != header else {}


def progress_table(sweep: Sweep, out: str) -> str:
    """Per (env, algo): trials done / running / failed, and the running trials' env steps; the aggregate
    env-steps/s of the running trials (from their train.csv)."""
    rows, total_sps = [], 0.0
    groups: dict[tuple[str, str], list[Trial]] = {}
    for t in sweep.trials:
        groups.setdefault((t.env, t.algo), []).append(t)
    for (env, algo), ts in groups.items():
        steps = []
        for t in ts:
            if t.status == "running":
                row = _last_train_row(os.path.join(out, t.run_dir))
                with contextlib.suppress(KeyError, ValueError):
                    steps.append(int(float(row["step"])))
                    total_sps += float(row["steps_per_s"])
        def n(*states: str, ts: list[Trial] = ts) -> int:
            return sum(t.status in states for t in ts)

        rows.append([env, algo, f"{n('finished', 'diverged')}/{len(ts)}", str(n("running")),
                     str(n("failed")), str(n("diverged")), ",".join(map(str, steps)) or "-"])
    header = ["env", "algo", "done", "running", "failed", "diverged", "env steps (running)"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + f"\naggregate {total_sps:.0f} env-steps/s over running trials\n"


def tally(sweep: Sweep) -> str:
    c = {s: sum(t.status == s for t in sweep.trials) for s in STATES}
    return (f"{c['finished'] + c['diverged'] + c['failed']}/{len(sweep.trials)} done ({c['finished']} finished, "
            f"{c['diverged']} diverged, {c['failed']} failed), {c['running']} running, "
            f"{c['pending'] + c['retried']} waiting")


def final_table(out: str, sweep: Sweep) -> tuple[str, list[dict[str, Any]]]:
    """The paper table (fastrsm.plot: per seed the best evaluation mean, mean ± std over seeds) plus the final
    evaluation's mean ± std over seeds, as markdown; and the plot's runs (for the PNG)."""
    import numpy as np

    from .plot import STD_DDOF, load_runs, paper_table

    runs = load_runs([out])
    rows = paper_table(runs)
    finals: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        ok = np.isfinite(r.return_mean)
        if ok.any():
            finals.setdefault((r.env_id, r.algo), []).append(float(r.return_mean[ok][-1]))
    status = {}
    for t in sweep.trials:
        status.setdefault((t.env, t.algo), []).append(t.status)
    lines = ["| env | algo | seeds | best return (mean ± std) | final return (mean ± std) | trials |",
             "|---|---|---:|---:|---:|---|"]
    for row in rows:
        key = (row["env"], row["algo"])
        fin = np.array(finals.get(key, [math.nan]))
        sts = status.get(key, [])
        trials = ", ".join(f"{sts.count(s)} {s}" for s in STATES if sts.count(s))
        seeds = ",".join("?" if s is None else str(s) for s in row["seeds"])
        lines.append(f"| {row['env']} | {row['algo']} | {row['n_seeds']} ({seeds}) | {row['mean']:.1f} ± "
                     f"{row['std']:.1f} | {fin.mean():.1f} ± {fin.std(ddof=STD_DDOF):.1f} | {trials} |")
    caption = ("best: per seed the best evaluation average over the run, then mean ± std over seeds; final: the "
               "last evaluation, mean ± std over seeds (std with ddof=0)")
    return "\n".join(lines) + f"\n\n{caption}\n", rows


# ------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run a grid of fastrsm-train runs ((env, algo) × seeds) on Ray: "
                      "locally by default, on a cluster with --address.")
    p.add_argument("--envs", required=True, help="comma-separated environment ids, e.g. Hopper-v4,Walker2d-v4")
    p.add_argument("--algos", required=True, help="comma-separated algorithms, e.g. dpmd,sdac,sac")
    p.add_argument("--seeds", required=True, help="seeds: 0-4, 0,2,5 or 0-2,7")
    p.add_argument("--out", required=True, help="the sweep's directory (one run dir per trial, sweep.json, "
                                                "table.md, curves.png); on a cluster, a shared file system")
    p.add_argument("--preset", default="paper", help="settings preset of every run (paper or smoke)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every run")
    p.add_argument("--total-steps", type=int, default=None, help="environment steps per run (default: preset's)")
    p.add_argument("--seeds-per-process", type=int, default=1, metavar="K",
                   help="seeds trained by one process (K > 1: fastrsm-train --seeds, for the algorithms that have it)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C", help="Ray CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F",
                   help="Ray GPUs per trial, fractional to share one (0.25: four per GPU); 0 = train on CPU")
    p.add_argument("--address", default=None, help="join this Ray cluster (host:port, auto or ray://...); "
                                                   "default: start Ray locally in this process")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=2, metavar="R",
                   help="attempts after a trial's process dies, each from its latest checkpoint (default 2)")
    p.add_argument("--report-every", type=float, default=60.0, metavar="S",
                   help="seconds between progress tables (default 60)")
    return p


@dataclass
class Plan:
    """What run_sweep runs: trials, the grid naming them in the state file, build_parser's Ray and retry options."""

    out: str
    grid: dict[str, Any]
    trials: list[Trial]
    args: argparse.Namespace


def prepare(argv: Sequence[str] | None) -> Plan:
    """Every check a sweep's input gets before Ray starts or a file is written."""
    args = build_parser().parse_args(argv)
    envs, algos = parse_list(args.envs, "envs"), parse_list(args.algos, "algos")
    seeds = parse_seeds(args.seeds)
    if args.seeds_per_process < 1:
        raise UsageError(f"--seeds-per-process must be at least 1, got {args.seeds_per_process}")
    if args.total_steps is not None and args.total_steps < 1:
        raise UsageError(f"--total-steps must be positive, got {args.total_steps}")
    if args.max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, got {args.max_retries}")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    f = args.gpus_per_trial
    if not (f >= 0 and math.isfinite(f)) or (f > 1 and f != int(f)):
        raise UsageError(f"--gpus-per-trial must be 0, a fraction below 1 or a whole number, got {f:g}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UsageError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    if args.num_cpus is not None and args.address:
        raise UsageError("--num-cpus sizes the local Ray; a cluster (--address) has its own")
    overrides = parse_set(args.set)
    settings = {**overrides, **({"total_steps": args.total_steps} if args.total_steps else {})}
    trials = make_trials(envs, algos, seeds, args.seeds_per_process, args.preset, settings)
    check_trials(trials)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    grid = {"envs": envs, "algos": algos, "seeds": seeds, "seeds_per_process": args.seeds_per_process,
            "preset": args.preset, "total_steps": args.total_steps, "set": overrides}
    return Plan(out, grid, trials, args)


def _check_reachable(address: str) -> None:
    """Fail fast (a few seconds, not Ray's minute of retries) on an address nothing listens at."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"--address {address}: no Ray cluster reachable there ({e}); start one with "
                         "`ray start --head` or check the address") from None


def start_ray(ray: Any, args: argparse.Namespace) -> None:
    """Join `--address`, reuse a Ray already initialised in this process (tests), or start one locally."""
    if ray.is_initialized():
        return
    common = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                  configure_logging=True)
    if args.address:
        _check_reachable(args.address)
        try:
            ray.init(address=args.address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--address {args.address}: cannot join the Ray cluster ({' '.join(str(e).split())})") \
                from None
    else:
        # "local": never join some other Ray found on this machine by accident.
        ray.init(address="local", num_cpus=args.num_cpus, **common)


def check_resources(ray: Any, args: argparse.Namespace) -> None:
    res = ray.cluster_resources()
    if args.gpus_per_trial > 0 and res.get("GPU", 0) <= 0:
        where = "the cluster" if args.address else "this machine"
        raise UsageError(f"--gpus-per-trial {args.gpus_per_trial:g}: {where} has no GPU for Ray; use "
                         "--gpus-per-trial 0 (train on CPU)")
    if args.gpus_per_trial > res.get("GPU", 0):
        raise UsageError(f"--gpus-per-trial {args.gpus_per_trial:g} is more than the {res.get('GPU', 0):g} GPUs here")
    if args.cpus_per_trial > res.get("CPU", 0):
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g} is more than the {res.get('CPU', 0):g} CPUs "
                         "Ray has")


def _attempt(out: str, trial: Trial) -> dict[str, Any]:
    """The trial's latest attempt.json (fastrsm.sweep_task writes it once the attempt's trainer has started)."""
    try:
        with open(os.path.join(out, ".sweep", trial.run_dir, "attempt.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def release_run_dir(trial: Trial, out: str) -> None:
    """Before an attempt uses the trial's run dir: a trainer of an earlier attempt that still holds its lock (the
    worker or the driver that ran it died; it saves a checkpoint on its way out) gets HOLDER_WAIT_S to let go, then
    SIGTERM, then SIGKILL after HOLDER_GRACE_S; said in one line. A holder on another node is not signalled."""
    from .lock import holder_pid, wait_for_release

    run_dir = os.path.join(out, trial.run_dir)
    if not os.path.isdir(run_dir) or wait_for_release(run_dir, HOLDER_WAIT_S):
        return
    pid, node = holder_pid(run_dir), _attempt(out, trial).get("node") or socket.gethostname()
    if not pid:  # let go just now (None), or no pid written (0): nothing to signal
        return
    how = f"not stopped, it runs on {node}"
    if node == socket.gethostname():
        how = "stopped it with SIGTERM"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if not wait_for_release(run_dir, HOLDER_GRACE_S):
                os.kill(pid, signal.SIGKILL)
                how = f"stopped it with SIGKILL ({HOLDER_GRACE_S:g} s after SIGTERM)"
                wait_for_release(run_dir, HOLDER_GRACE_S)
    _say(f"{trial.label}: pid {pid} still held {trial.run_dir} after {HOLDER_WAIT_S:g} s: {how}")


def run_sweep(plan: Plan, command: str, adopt: bool = False) -> tuple[int, Sweep]:
    """Runs every trial not done yet (retries from checkpoints; a restarted driver resumes, runs nothing twice)
    and returns the exit code (EXIT_OK, 1 if a trial failed out of retries, 130/143 if stopped) and the state.
    `command` is recorded in the state file; `adopt`: see Sweep.open."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    args, out = plan.args, plan.out
    sweep = Sweep.open(out, plan.grid, plan.trials, adopt)  # refuses another sweep's --out before Ray starts
    start_ray(ray, args)
    check_resources(ray, args)

    os.makedirs(out, exist_ok=True)
    sweep.commands.append(command)
    side_root = os.path.join(out, ".sweep")
    task = ray.remote(run_attempt).options(num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial,
                                           max_retries=0)  # retries are ours: they resume from the checkpoint

    def set_status(t: Trial, status: str, why: str = "") -> None:
        t.status = status
        sweep.save()
        extra = f" (attempt {t.attempts})" if status == "running" else ""
        _say(f"{t.label}: {status}{extra}{': ' + why if why else ''}  [{tally(sweep)}]")

    def submit(t: Trial) -> Any:
        run_dir = os.path.join(out, t.run_dir)
        resume = _has_checkpoint(run_dir)
        cmd = train_command(t, out, resume)
        # A trial's torch threads: its settings' or (when that is 0, torch's "all cores") its Ray CPUs, so trials
        # sharing a machine do not oversubscribe it (OpenMP's spinning makes that many times slower).
        own_threads = make_config(t.preset, t.settings).torch_threads
        threads = own_threads or max(1, int(args.cpus_per_trial))
        if not resume:
            cmd += [] if "device" in t.settings else ["--device", "cuda" if args.gpus_per_trial > 0 else "cpu"]
            cmd += [] if own_threads else ["--set", f"torch_threads={threads}"]
        t.attempts += 1
        _say(f"{t.label}: attempt {t.attempts}: fastrsm-train {' '.join(cmd[3:])}")
        return task.remote(cmd, run_dir, os.path.join(side_root, t.run_dir), t.attempts, threads, not resume)

    stopped_by = [signal.SIGINT]

    def on_sigterm(signum: int, _frame: Any) -> None:  # a kill or a job scheduler's stop: the same as Ctrl-C
        stopped_by[0] = signum
        raise KeyboardInterrupt

    inflight: dict[Any, Trial] = {}
    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # Trials done in an earlier run (their summary.json says so) are skipped, whatever the state file says;
        # a trainer of the killed driver still at work finishes (or is stopped) first.
        todo = []
        for t in sweep.trials:
            release_run_dir(t, out)
            done = done_status(t, out)
            if done:
                t.status = done
                _say(f"skip {t.label}: {done}")
            else:
                t.status = "retried" if t.attempts else "pending"
                todo.append(t)
        sweep.save()
        _say(f"sweep {out}: {len(sweep.trials)} trials ({len(sweep.trials) - len(todo)} already done), Ray "
             f"{'at ' + args.address if args.address else 'local'} with {ray.cluster_resources().get('CPU', 0):g} "
             f"CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
        for t in todo:
            inflight[submit(t)] = t
        last_report = time.time()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            # An attempt is running once its trainer has started (its attempt.json names this attempt).
            for t in inflight.values():
                info = _attempt(out, t) if t.status in ("pending", "retried") else {}
                if info.get("attempt") == t.attempts:
                    t.node = info.get("node", "")
                    set_status(t, "running")
            for ref in ready:
                t = inflight.pop(ref)
                try:
                    res = ray.get(ref)
                    code, why = res["code"], ""
                    t.seconds += res["seconds"]
                except ray.exceptions.LocalRayletDiedError:
                    # Ray itself is gone here (the driver's node): no attempt can run, so stop, resumable.
                    inflight[ref] = t
                    raise KeyboardInterrupt from None
                except Exception as e:  # the Ray worker or its node died: the attempt failed, retryable
                    code, why = None, f"Ray: {' '.join(str(e).split())[:200]}"
                t.exit_code = code
                t.history.append({"attempt": t.attempts, "exit_code": code, "ended": _now(), **({"error": why}
                                                                                               if why else {})})
                if code == EXIT_OK:
                    t.message = ""
                    set_status(t, "finished")
                elif code == EXIT_DIVERGED:
                    t.message = "diverged (NaN/inf); a result, not retried"
                    set_status(t, "diverged", t.message)
                else:
                    why = why or (f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}")
                    t.message = f"{why}; log: {os.path.join(side_root, t.run_dir, 'train.log')}"
                    if code not in NOT_RETRIED and t.attempts <= args.max_retries:
                        again = "from its checkpoint" if _has_checkpoint(os.path.join(out, t.run_dir)) else \
                            "from the start"
                        set_status(t, "retried", f"{why}; again {again}")
                        release_run_dir(t, out)
                        inflight[submit(t)] = t
                    else:
                        set_status(t, "failed", t.message)
            if time.time() - last_report >= args.report_every and inflight:
                last_report = time.time()
                print(progress_table(sweep, out), end="", flush=True)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or Ray gone
        from .lock import wait_for_release

        # This node's trainers (in sessions of their own, out of the terminal's Ctrl-C) get SIGTERM, save their
        # checkpoints and exit before the driver does; the others get it when Ray ends their workers.
        for t in inflight.values():
            info = _attempt(out, t)
            if info.get("attempt") == t.attempts and info.get("node") == socket.gethostname():
                with contextlib.suppress(OSError):
                    os.kill(info["pid"], signal.SIGTERM)
        for t in inflight.values():
            t.status = "retried" if t.attempts > 1 else "pending"
            wait_for_release(os.path.join(out, t.run_dir), HOLDER_WAIT_S)
        sweep.save()
        _say(f"stopped: {tally(sweep)}; run the same command again to continue")
        ray.shutdown()
        return 128 + stopped_by[0], sweep  # 130 or 143, as fastrsm-train
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    # A diverged trial is a result; only a failed one (out of retries) makes the sweep fail.
    return (1 if any(t.status == "failed" for t in sweep.trials) else EXIT_OK), sweep


def finish(sweep: Sweep, out: str) -> int:
    """The sweep's table (table.md, printed) and curves (curves.png) of every trial's runs."""
    from .plot import PlotError, load_runs, save_plot

    _say(f"sweep done: {tally(sweep)}")
    try:
        table, _ = final_table(out, sweep)
        png = save_plot(load_runs([out]), os.path.join(out, "curves.png"))
    except PlotError as e:
        print(f"{PROG}: no table: {e}", file=sys.stderr)
        return 1
    atomic_write_text(os.path.join(out, "table.md"), table)
    print(table, end="")
    print(f"{PROG}: wrote {os.path.join(out, 'table.md')} and {png}", file=sys.stderr)
    return EXIT_OK if not any(t.status == "failed" for t in sweep.trials) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`fastrsm-sweep` entry point; returns the exit code (2, with one line, on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        plan = prepare(argv)
        code, sweep = run_sweep(plan, " ".join([PROG, *argv]))
        return code if code >= EXIT_SIGINT else finish(sweep, plan.out)

    return run_main(PROG, body)


__all__ = ["Plan", "Trial", "Sweep", "check_trials", "done_status", "make_trials", "parse_seeds", "run_sweep",
           "train_command", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
