"""Command-line plumbing shared by every entry point: the one-line-error parser, `--set KEY=VALUE`, the exit
codes, and the preparation of a training run — every check a user's input gets, in one place, before a single
file is written (tests/test_train_cli.py drives it with a table of bad inputs).

Exit codes: 0 finished; 2 bad input (nothing written); 3 diverged (NaN/inf; the last good checkpoint kept);
4 out of disk space while writing (the previous files kept; `--resume` continues once space is freed);
130 / 143 stopped by SIGINT / SIGTERM (a checkpoint saved)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .agents import AGENTS, check_algo
from .backend import BackendError, check_chain_options, resolve_backend
from .config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    field_help,
    field_names,
    load_config_file,
    make_config,
    unused_settings,
)
from .envs import EnvIdError, env_dims
from .lock import LOCK_FILE, RunDirLock, acquire_run_dir, check_not_in_use
from .runlog import load_resume_checkpoint, read_config
from .utils import UsageError, resolve_device

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_SIGINT, EXIT_SIGTERM = 0, 2, 3, 4, 130, 143

# What a user's mistake raises anywhere below an entry point: printed as one line, exit code 2.
USER_ERRORS = (ConfigError, UsageError, EnvIdError, BackendError, ValueError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items -> {KEY: VALUE} (values are coerced and validated by fastrsm.config)."""
    out: dict[str, str] = {}
    for kv in items:
        if "=" not in kv:
            raise ConfigError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run an entry point's `body`, turning a user's mistake into one line and exit code 2."""
    try:
        return body()
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return int(e.code or 0)


# --------------------------------------------------------------------------------------------- fastrsm-train

EXPLICIT = {"env": "env_id", "algo": "algo", "seed": "seed", "total_steps": "total_steps",
            "num_envs": "num_envs", "device": "device", "backend": "backend"}


def build_train_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="fastrsm-train", description="Train DPMD / SDAC / SAC online on a gymnasium task.")
    p.add_argument("--env", default=None, help="environment id, e.g. Ant-v4, HalfCheetah-v5, Pendulum-v1 "
                                               "(default Ant-v4)")
    p.add_argument("--algo", default=None, help="(default dpmd) " + "; ".join(f"{a}: {cls.about}"
                                                                             for a, cls in AGENTS.items()))
    p.add_argument("--seed", default=None, help="random seed (default 0)")
    p.add_argument("--seeds", default=None, metavar="LIST", help="train several independent seeds in one process, "
                   "e.g. 0-4 or 0,3,7 (one run directory per seed under a group directory; not with --seed)")
    p.add_argument("--total-steps", default=None, help="environment steps (default: the preset's)")
    p.add_argument("--num-envs", default=None, help="vectorised environments")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--backend", default=None, help="hot-path implementation: auto, torch, compile or triton")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default paper): paper (the "
                   "authors' relax code, docs/algorithms.md §7), small (MuJoCo on a CPU: 128x2 nets, T=10, N=16), "
                   "smoke (tiny, CPU-friendly), flowrl (the authors' later FlowRL library's settings)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<env>__<algo>__<seed>__<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--config", default=None, metavar="FILE", help="JSON file of settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any setting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("every other setting (fastrsm/config.py and each algorithm's own, in its agent file); "
                             "the paper preset's value is shown")
    paper, notes = make_config("paper"), field_help()
    for name in field_names():
        if name in EXPLICIT.values():
            continue
        note = f"{notes[name]} " if name in notes else ""
        g.add_argument("--" + name.replace("_", "-"), dest="cfg_" + name, default=None, metavar="V",
                       help=f"{note}(paper: {getattr(paper, name)})")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.config:
        out.update(load_config_file(args.config))
    for flag, name in EXPLICIT.items():
        v = getattr(args, flag)
        if v is not None:
            out[name] = v
    for name in field_names():
        v = getattr(args, "cfg_" + name, None)
        if v is not None:
            out[name] = v
    out.update(parse_set(args.set))
    return out


def default_run_dir(cfg: Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{cfg.env_id}__{cfg.algo}__{cfg.seed}__{stamp}")


def check_new_run_dir(run_dir: str) -> None:
    """A new run needs an empty or absent directory whose nearest existing ancestor is a writable directory."""
    if os.path.exists(run_dir):
        if not os.path.isdir(run_dir):
            raise UsageError(f"run directory {run_dir} exists and is not a directory")
        if [f for f in os.listdir(run_dir) if f != LOCK_FILE]:  # a lock alone: a trainer died before writing
            raise UsageError(f"run directory {run_dir} exists and is not empty; use --resume {run_dir} to "
                             f"continue it, or choose another --run-dir")
        probe = run_dir
    else:
        probe = os.path.dirname(os.path.abspath(run_dir))
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"run directory {run_dir} cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"run directory {run_dir} cannot be created: {probe} is not writable")
    if os.path.realpath(probe).startswith(("/proc", "/sys")):
        raise UsageError(f"run directory {run_dir} cannot be created under {probe} (a kernel file system)")


def replay_bytes(cfg: Config, obs_dim: int, act_dim: int) -> int:
    """The replay buffer's storage: obs, next_obs, action, reward, terminated as float32 rows."""
    return cfg.buffer_size * (2 * obs_dim + act_dim + 2) * 4


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_replay_fits(cfg: Config, obs_dim: int, act_dim: int, device: torch.device, seeds: int = 1) -> None:
    """`seeds` seeds in one process hold `seeds` buffers: S × the single-seed bytes."""
    need, free = seeds * replay_bytes(cfg, obs_dim, act_dim), available_memory(device)
    if free is not None and need > free:
        per = f" for {seeds} seeds" if seeds > 1 else ""
        raise UsageError(f"the replay buffer{per} needs {need / 2**30:.1f} GiB ({cfg.buffer_size} transitions of "
                         f"{cfg.env_id} per seed) but {device.type} has {free / 2**30:.1f} GiB available; lower "
                         f"--buffer-size (at most about {int(cfg.buffer_size * free / need):d} here)")
    # Host memory a checkpoint still needs. A CUDA run's checkpoint copies the replay's rows to the host: torch.save
    # copies one field at a time, a seed group's replay copies one seed's rows at once, so one seed's whole replay,
    # once, bounds both (the file is written as it streams; a resume maps it rather than reading it in). A CPU run's
    # checkpoint streams the buffer's own memory into the file: nothing beyond the buffer counted above.
    if device.type == "cuda" and cfg.save_replay:
        need, free = replay_bytes(cfg, obs_dim, act_dim), available_memory(torch.device("cpu"))
        if free is not None and need > free:
            raise UsageError(f"a checkpoint copies the replay buffer to host memory ({need / 2**30:.1f} GiB per seed) "
                             f"but the host has {free / 2**30:.1f} GiB available; lower --buffer-size (at most about "
                             f"{int(cfg.buffer_size * free / need):d} here) or --set save_replay=false")


# What `--resume` may change: how long the run goes on, how often it reports, where and how fast it computes.
# Everything else defines the experiment (networks, algorithm, seeds, env, learning settings) and is refused.
RESUMABLE = ("total_steps", "eval_every", "eval_episodes", "log_every", "checkpoint_every", "nan_check_every",
             "stop_return", "device", "backend", "torch_threads")


@dataclass
class TrainPlan:
    """A validated training run: nothing has been written yet."""

    cfg: Config
    run_dir: str  # the run directory, or the group directory of a --seeds group
    progress: bool
    seeds: list[int] | None = None  # --seeds: a group of seeds in one process; None: a single run
    ckpts: list[dict] | None = None  # resuming: one loaded checkpoint per seed (already checked)
    changed: dict[str, tuple[Any, Any]] | None = None  # resuming: settings changed, old and new value
    unused: list[str] | None = None  # settings given that are another algorithm's (recorded, not read)
    lock: RunDirLock | None = None  # the run directory's writer lock, held until the run ends


def _resume_checkpoint(run_dir: str) -> dict:
    """A run directory's checkpoint to resume from (one line of error when there is none): latest.pt, or
    previous.pt with a line on stderr saying so when latest.pt is lost or damaged."""
    ckpt, note = load_resume_checkpoint(run_dir)
    if note:
        print(f"fastrsm-train: {run_dir}: {note}", file=sys.stderr)
    return ckpt


def _resumed_config(where: str, saved: dict[str, Any], overrides: dict[str, Any]) -> tuple[Config, dict]:
    """The config a resumed run continues with: the one its checkpoint was trained with, and of the user's
    settings only those in RESUMABLE. Returns it and the settings it changes ({name: (old, new)})."""
    saved = {k: v for k, v in saved.items() if k in field_names()}
    saved.setdefault("checkpoint_every", saved.get("eval_every", Config().checkpoint_every))  # older runs
    base = apply_overrides(Config(), saved)
    asked = apply_overrides(dataclasses.replace(base), overrides)
    changed = {k: (getattr(base, k), getattr(asked, k)) for k in field_names() if getattr(base, k) != getattr(asked, k)}
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        k = refused[0]
        others = f" (and {', '.join(r.replace('_', '-') for r in refused[1:])})" if refused[1:] else ""
        raise UsageError(f"--resume {where}: {k.replace('_', '-')}{others} cannot change on resume (the run was "
                         f"trained with {changed[k][0]!r}, asked {changed[k][1]!r}); a resumed run may change only "
                         f"{', '.join(r.replace('_', '-') for r in RESUMABLE)} — start a new run for another setting")
    return asked.validate(), changed


def prepare_train(argv: Sequence[str] | None) -> TrainPlan:
    """Parse and validate everything before a single file is written."""
    args = build_train_parser().parse_args(argv)
    overrides = _overrides(args)
    if args.resume and args.preset is not None:
        raise UsageError("--preset with --resume: a run resumes with the settings it was trained with")
    if args.seeds is not None or (args.resume and os.path.isfile(os.path.join(args.resume, "group.json"))):
        return _prepare_group(args, overrides)
    if args.resume:
        run_dir = args.resume
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            raise UsageError(f"--resume {run_dir}: not a run directory (no config.json)")
        if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(run_dir):
            raise UsageError("--run-dir and --resume name different directories")
        check_not_in_use(run_dir)
        ckpt = _resume_checkpoint(run_dir)
        cfg, changed = _resumed_config(run_dir, ckpt.get("config") or read_config(run_dir)["config"], overrides)
        ckpts: list[dict] | None = [ckpt]
    else:
        ckpts, changed = None, None
        cfg = make_config(args.preset or "paper", overrides)
        run_dir = args.run_dir or default_run_dir(cfg)
        check_not_in_use(run_dir)  # a live trainer's directory is "in use", not merely "not empty"
        check_new_run_dir(run_dir)
    check_run(cfg)
    return TrainPlan(cfg, run_dir, not args.quiet, ckpts=ckpts, changed=changed, lock=acquire_run_dir(run_dir),
                     unused=None if args.resume else _unused(cfg, overrides))


def _prepare_group(args: argparse.Namespace, overrides: dict[str, Any]) -> TrainPlan:
    """`--seeds LIST` (a new group) or `--resume GROUP_DIR`; validated before anything is written."""
    from .seeds import parse_seeds

    if args.seeds is not None and args.seed is not None:
        raise UsageError("--seeds and --seed both given: --seeds LIST trains several seeds, --seed N one")
    ckpts, changed = None, None
    if args.resume:
        if args.seeds is not None:
            raise UsageError("--seeds with --resume: a group resumes with the seeds it was started with")
        try:
            with open(os.path.join(args.resume, "group.json"), encoding="utf-8") as f:
                seeds = list(json.load(f)["seeds"])
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--resume {args.resume}: group.json is unreadable ({e})") from None
        check_not_in_use(args.resume)
        for s in seeds:
            path = os.path.join(args.resume, f"seed_{s}", "checkpoints", "latest.pt")
            if not os.path.isfile(path) and not os.path.isfile(os.path.join(os.path.dirname(path), "previous.pt")):
                raise UsageError(f"--resume {args.resume}: seed {s} has no checkpoint ({path})")
        ckpts = [_resume_checkpoint(os.path.join(args.resume, f"seed_{s}")) for s in seeds]
        ref = max(ckpts, key=lambda c: c["loop"]["env_steps"])  # a live seed (a frozen one stopped earlier)
        cfg, changed = _resumed_config(args.resume, {**ref["config"], "seed": seeds[0]}, overrides)
        group_dir = args.resume
    else:
        seeds = parse_seeds(args.seeds)
        cfg = make_config(args.preset or "paper", {**overrides, "seed": seeds[0]})
        spec = args.seeds.replace(",", "_").replace(" ", "")
        group_dir = args.run_dir or os.path.join("runs", f"{cfg.env_id}__{cfg.algo}__seeds{spec}__"
                                                          f"{time.strftime('%Y%m%d-%H%M%S')}")
        check_not_in_use(group_dir)
        check_new_run_dir(group_dir)
    check_run(cfg, seeds=len(seeds))
    # the seeds' run directories too: `--resume GROUP/seed_<s>` alone must not write beside the group
    lock = acquire_run_dir(group_dir, [os.path.join(group_dir, f"seed_{s}") for s in seeds])
    return TrainPlan(cfg, group_dir, not args.quiet, seeds=seeds, ckpts=ckpts, changed=changed, lock=lock,
                     unused=None if args.resume else _unused(cfg, overrides))


def _unused(cfg: Config, overrides: dict[str, Any]) -> list[str]:
    """The given settings `cfg.algo` does not read, with one line saying so."""
    unused = unused_settings(cfg.algo, overrides)
    if unused:
        names = ", ".join(n.replace("_", "-") for n in unused)
        print(f"fastrsm-train: note: {cfg.algo} does not use {names} (another algorithm's; recorded in config.json "
              "as unused_settings)", file=sys.stderr)
    return unused


def check_run(cfg: Config, seeds: int = 1) -> tuple[int, int]:
    """What a valid config still may not do here: the env (made once, its spaces checked), the device, the
    backend and chain settings, the replay's memory. Returns the env's (obs_dim, act_dim)."""
    check_algo(cfg.algo, seeds if seeds > 1 else None)
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    check_chain_options(backend, device, cfg.chain_noise, cfg.chain_precision)
    obs_dim, act_dim = env_dims(cfg.env_id, cfg.env_backend)  # raises EnvIdError on an unknown id or bad spaces
    if not AGENTS[cfg.algo].on_policy:  # an on-policy run keeps no replay
        check_replay_fits(cfg, obs_dim, act_dim, device, seeds)
    return obs_dim, act_dim
