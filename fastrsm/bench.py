"""`fastrsm-bench`: end-to-end speed of one configuration under each backend, same machine, one run.

Backends: `torch` (eager PyTorch), `compile` (torch.compile of the whole act and of each update, as training
runs it), `graphs` (PyTorch ops, act and update captured as CUDA graphs) and `triton` (the fused Triton kernels
inside CUDA graphs). For each:

- update latency: N updates on a replay buffer filled with random transitions of the task's shapes (no env
  needed; an update's cost does not depend on the values), timed with CUDA events on CUDA;
- act latency: one best-of-N action for `num_envs` states, including the copy back to the host that training
  does every step;
- env steps/s: the training loop's own body (`fastrsm.loop.vector_step`, exactly what `fastrsm-train` runs:
  the env step overlapping the updates), after the replay fill, so every step learns;
- peak GPU memory (torch.cuda.max_memory_allocated, the replay buffer included; its size is reported apart).

Every backend starts from the same seed and does the same warm-up (compilation and graph capture happen there,
outside the timings). The table goes to stdout; `--json PATH` saves it with the device, versions and config.
On CPU only `torch` and `compile` run (the others read "n/a (needs CUDA)"); `--preset smoke` is quick there.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from . import loop
from .agents import AGENTS, check_algo, make_agent
from .backend import BackendError, make_ops
from .cli import OneLineParser, parse_set, run_main
from .compiled import CompiledLearner
from .config import Config, make_config
from .envs import check_env_id, env_dims, make_vec_env
from .graphs import GraphedLearner
from .loop import LoopState
from .replay import ReplayBuffer
from .utils import UsageError, atomic_write_json, resolve_device, seed_everything

BENCH_BACKENDS = ("torch", "compile", "graphs", "triton")
# backend name -> (ops of fastrsm.backend, CUDA graphs on)
_IMPL = {"torch": ("torch", False), "compile": ("compile", False), "graphs": ("torch", True),
         "triton": ("triton", True)}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU), so a host timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_random(rb: ReplayBuffer, rows: int, seed: int) -> None:
    """`rows` random transitions (obs ~ N(0, 1), actions ~ U[-1, 1], 1% terminal), added in chunks."""
    rng = np.random.default_rng(seed)
    S, A = rb.obs_dim, rb.act_dim
    for start in range(0, rows, 65_536):
        n = min(65_536, rows - start)
        rb.add(rng.standard_normal((n, S), dtype=np.float32), rng.uniform(-1, 1, (n, A)).astype(np.float32),
               rng.standard_normal(n, dtype=np.float32), rng.standard_normal((n, S), dtype=np.float32),
               rng.random(n) < 0.01)


def time_updates(fast: GraphedLearner, rb: ReplayBuffer, n: int, device: torch.device) -> float:
    """Mean milliseconds per update over `n` back-to-back updates (the host runs ahead as in training)."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fast.update(rb)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    for _ in range(n):
        fast.update(rb)
    return (time.perf_counter() - t0) * 1e3 / n


def time_act(fast: GraphedLearner, obs: torch.Tensor, n: int, device: torch.device) -> float:
    """Mean milliseconds per action for `obs`, each copied to the host (a sync, as in the training loop)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fast.act(obs, explore=True).cpu()
    return (time.perf_counter() - t0) * 1e3 / n


def env_loop(cfg: Config, steps: int, seed: int, fast: GraphedLearner | None, rb: ReplayBuffer | None,
             device: torch.device, warmup_steps: int = 5) -> float:
    """Env steps per second of the training loop's own body (`fastrsm.loop.vector_step`: act, env step sent,
    `utd` updates overlapping it, env step received, replay add), after the replay fill, so every step learns.
    With `fast=None`, uniform random actions and nothing else: the environment's own rate."""
    env = make_vec_env(cfg.env_id, cfg.num_envs, seed, cfg.env_backend)
    E = cfg.num_envs
    learn_cfg = dataclasses.replace(cfg, warmup_steps=0)  # the replay is already filled: act and learn at once
    try:
        obs = env.reset()
        st, metrics = LoopState(), {}
        rng = np.random.default_rng(seed)

        def step() -> None:
            nonlocal obs
            if fast is None:
                env.step(rng.uniform(-1, 1, (E, env.act_dim)).astype(np.float32))
                return
            obs = loop.vector_step(learn_cfg, env, fast, rb, obs, st, metrics, device).next_obs

        for _ in range(warmup_steps):
            step()
        vec_steps = max(1, steps // E)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(vec_steps):
            step()
        sync(device)
        return vec_steps * E / (time.perf_counter() - t0)
    finally:
        env.close()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _empty_row(name: str) -> dict[str, Any]:
    return {"backend": name, "update_ms": None, "updates_per_s": None, "act_ms": None, "env_steps_per_s": None,
            "peak_mem_mb": None, "graphs_captured": None}


def _error(e: Exception) -> str:
    if isinstance(e, BackendError):  # e.g. triton not installed
        return f"n/a ({e})"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {msg}"[:300]


def setup_backend(name: str, cfg: Config, obs_dim: int, act_dim: int, device: torch.device,
                  args: argparse.Namespace) -> tuple[dict[str, Any], tuple | None]:
    """Build backend `name`'s agent on a random replay and warm it up (graph capture, torch.compile, Triton
    compilation, cuBLAS set-up; none of it timed). Returns its row and (fast agent, replay, obs), or None with
    the row's status saying why there is none."""
    row = _empty_row(name)
    ops_name, graphs = _IMPL[name]
    if graphs and device.type != "cuda":
        row["status"] = "n/a (needs CUDA)"
        return row, None
    _free(device)
    try:
        seed_everything(args.seed)
        # the chain settings apply to the triton chain; the other rows run their backend's fp32/torch-noise chain
        chain = dict(chain_precision=cfg.chain_precision, chain_noise=cfg.chain_noise) if ops_name == "triton" else {}
        ops = make_ops(ops_name, device, **chain)
        agent = make_agent(cfg.algo, obs_dim, act_dim, cfg, device, ops)
        rb = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim, device, cfg.batch_size)
        fill_random(rb, min(args.fill, cfg.buffer_size), args.seed)
        # what training runs for this backend: CUDA graphs, whole-function torch.compile, or the eager agent
        fast = CompiledLearner(agent) if ops_name == "compile" else GraphedLearner(agent, cfg.num_envs, enabled=graphs)
        obs = torch.randn(cfg.num_envs, obs_dim, device=device)
        fast.capture(rb, obs)
        for _ in range(args.warmup_updates):
            fast.update(rb)
        for _ in range(3):
            fast.act(obs).cpu()
        row["graphs_captured"] = getattr(fast, "captures", 0)  # CUDA graphs only; 0 for compile/eager
        row["status"] = "ok"
        return row, (fast, rb, obs)
    except Exception as e:  # one backend failing (say, no C++ compiler for torch.compile) spares the others
        row["status"] = _error(e)
        return row, None


def measure_backend(row: dict[str, Any], contestant: tuple, cfg: Config, device: torch.device,
                    args: argparse.Namespace) -> dict[str, Any]:
    """One round of a set-up backend's timings: update and act latency, env steps/s."""
    fast, rb, obs = contestant
    fig: dict[str, Any] = {}
    try:
        fig["update_ms"] = time_updates(fast, rb, args.updates, device)
        fig["act_ms"] = time_act(fast, obs, args.act_calls, device)
        if args.env_steps > 0:
            fig["env_steps_per_s"] = env_loop(cfg, args.env_steps, args.seed, fast, rb, device)
    except Exception as e:
        row["status"] = _error(e)
    return fig


def bench_backend(name: str, cfg: Config, obs_dim: int, act_dim: int, device: torch.device,
                  args: argparse.Namespace) -> dict[str, Any]:
    """One row of the table: every figure for backend `name` (one round), or why there is none."""
    row, contestant = setup_backend(name, cfg, obs_dim, act_dim, device, args)
    if contestant is not None:
        _fill_row(row, [measure_backend(row, contestant, cfg, device, args)])
        if device.type == "cuda":  # this backend alone is on the device (_free reset the peak before its set-up)
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _fill_row(row: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    """The row's figures: the median over rounds of each (the figures of one round when there is one)."""
    for k in ("update_ms", "act_ms", "env_steps_per_s"):
        row[k] = _median([r[k] for r in rounds if r.get(k) is not None])
    row["updates_per_s"] = 1e3 / row["update_ms"] if row["update_ms"] else None
    if len(rounds) > 1:
        row["rounds"] = rounds


def bench_interleaved(names: list[str], cfg: Config, obs_dim: int, act_dim: int, device: torch.device,
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every backend set up first, then `args.rounds` rounds in which each measures in turn: a change of load
    on a shared machine then falls on all of them alike. Each figure is its median over rounds, and each
    backend's env-steps/s against the first backend's is the median of the per-round ratios. No peak memory:
    every backend's tensors are on the device together, so no backend's own peak can be read."""
    set_up = [setup_backend(n, cfg, obs_dim, act_dim, device, args) for n in names]
    for row, _ in set_up:
        print(f"  {row['backend']}: {row['status']}", flush=True)
    rounds: list[list[dict[str, Any]]] = [[] for _ in set_up]
    for r in range(args.rounds):
        for i, (row, contestant) in enumerate(set_up):
            if contestant is not None and row["status"] == "ok":
                rounds[i].append(measure_backend(row, contestant, cfg, device, args))
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    base = rounds[0] if set_up and set_up[0][1] is not None else []
    for (row, _), rs in zip(set_up, rounds):
        _fill_row(row, rs)
        ratios = [x["env_steps_per_s"] / b["env_steps_per_s"] for x, b in zip(rs, base)
                  if x.get("env_steps_per_s") and b.get("env_steps_per_s")]
        row["env_steps_ratio"] = _median(ratios)
        rows.append(row)
    return rows


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def _versions() -> dict[str, str | None]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'backend':<10}{'update ms':>11}{'updates/s':>11}{'act ms':>9}{'env steps/s':>13}{'peak MB':>10}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<10}{_fmt(r['update_ms'], '.3f'):>11}{_fmt(r['updates_per_s'], '.1f'):>11}"
                     f"{_fmt(r['act_ms'], '.3f'):>9}{_fmt(r['env_steps_per_s'], '.1f'):>13}"
                     f"{_fmt(r['peak_mem_mb'], '.1f'):>10}  {r['status']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="fastrsm-bench",
                                description="End-to-end update latency, act latency, env steps/s and peak GPU "
                                            "memory of one configuration under each backend (torch, compile, "
                                            "graphs, triton), in one run on one machine.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="Ant-v4", help="environment id (its observation and action sizes are used)")
    p.add_argument("--algo", default="dpmd", help=", ".join(AGENTS))
    p.add_argument("--preset", default="paper", help="paper (docs/algorithms.md §7) or smoke (tiny, CPU-friendly)")
    p.add_argument("--updates", type=int, default=200, help="timed updates")
    p.add_argument("--warmup-updates", type=int, default=10, help="untimed updates first (after any capture)")
    p.add_argument("--act-calls", type=int, default=50, help="timed act calls")
    p.add_argument("--env-steps", type=int, default=2000, help="env steps of the timed training loop (0: skip)")
    p.add_argument("--num-envs", type=int, default=1, help="vectorised environments (act batch size)")
    p.add_argument("--utd", type=float, default=1.0, help="updates per env step in the training loop")
    p.add_argument("--fill", type=int, default=10_000, help="random transitions put in the replay buffer first")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backends", nargs="+", default=list(BENCH_BACKENDS),
                   help=f"any of {', '.join(BENCH_BACKENDS)} (space or comma separated)")
    p.add_argument("--rounds", type=int, default=1,
                   help="set every backend up first, then measure them in turn this many times (medians; for a "
                        "shared machine, where load changes between backends measured one after another; "
                        "no peak memory then)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config setting")
    p.add_argument("--json", default=None, metavar="PATH", help="also save the results as JSON")
    return p


def _prepare(args: argparse.Namespace) -> tuple[Config, torch.device, list[str]]:
    backends = [b.strip() for item in args.backends for b in item.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown or not backends:
        raise UsageError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(BENCH_BACKENDS)}")
    for name in ("updates", "act_calls", "num_envs", "fill", "rounds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if args.env_steps < 0 or args.warmup_updates < 0:
        raise UsageError("--env-steps and --warmup-updates must be >= 0")
    device = resolve_device(args.device)
    overrides: dict[str, Any] = {"env_id": args.env, "algo": args.algo, "num_envs": args.num_envs, "utd": args.utd,
                                 "device": device.type, "seed": args.seed}
    overrides.update(parse_set(args.set))
    cfg = make_config(args.preset, overrides)
    if args.fill < cfg.batch_size:
        raise UsageError(f"--fill must be at least the batch size ({cfg.batch_size})")
    check_algo(cfg.algo)
    check_env_id(cfg.env_id, cfg.env_backend)
    return cfg, device, backends


def main(argv: list[str] | None = None) -> int:
    return run_main("fastrsm-bench", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg, device, backends = _prepare(args)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    obs_dim, act_dim = env_dims(cfg.env_id, cfg.env_backend, args.seed)

    print(f"fastrsm-bench: {cfg.env_id} (S={obs_dim}, A={act_dim}) {cfg.algo}, preset {args.preset}: "
          f"B={cfg.batch_size} N={cfg.particles} T={cfg.diffusion_steps} H={cfg.hidden}x{cfg.layers} "
          f"K={cfg.reverse_samples}, {cfg.num_envs} env(s), utd {cfg.utd:g}; {_device_name(device)}", flush=True)
    if args.rounds > 1:
        rows = bench_interleaved(backends, cfg, obs_dim, act_dim, device, args)
    else:
        rows = []
        for name in backends:
            row = bench_backend(name, cfg, obs_dim, act_dim, device, args)
            rows.append(row)
            print(f"  {name}: {row['status']}", flush=True)
    env_rate = env_loop(cfg, args.env_steps, args.seed, None, None, device) if args.env_steps > 0 else None
    replay_mb = cfg.buffer_size * (2 * obs_dim + act_dim + 2) * 4 / 2**20
    print()
    print(format_table(rows))
    if args.rounds > 1:
        ratios = ", ".join(f"{r['backend']} {r['env_steps_ratio']:.2f}x" for r in rows[1:]
                           if r.get("env_steps_ratio") is not None)
        print(f"medians of {args.rounds} interleaved rounds; env steps/s against {rows[0]['backend']}, median of "
              f"the per-round ratios: {ratios or '-'}")
    if env_rate is not None:
        print(f"environment alone (random actions): {env_rate:.1f} env steps/s")
    if device.type == "cuda":
        print(f"peak memory includes the replay buffer: {replay_mb:.1f} MB ({cfg.buffer_size} transitions)")

    if args.json:
        out = {
            "device": _device_name(device), "device_type": device.type, "versions": _versions(),
            "commit": _git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "args": {k: v for k, v in vars(args).items() if k != "json"}, "config": cfg.to_dict(),
            "obs_dim": obs_dim, "act_dim": act_dim, "replay_mb": replay_mb,
            "env_only_steps_per_s": env_rate, "results": rows,
        }
        json.dumps(out)  # fail here, not half-way through the atomic write, if something is not serialisable
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_json(args.json, out)
        print(f"saved {args.json}")
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
