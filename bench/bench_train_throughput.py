"""Training throughput on CPU: env-steps/s of fastrsm's SAC against stable-baselines3's SAC on Ant-v4,
with the same network sizes (256 x 3 for actor and both critics), batch 256 and one gradient update per env step,
plus fastrsm's DPMD and SDAC with the smoke preset. A script, not a pytest benchmark:

    python bench/bench_train_throughput.py [--steps 3000] [--warmup 1000] [--threads 1 2] [--json out.json]

Every contestant first collects `--warmup` uniform-random transitions and makes `--burn-in` ordinary training
steps, neither timed; then the `--steps` timed steps are split into `--rounds` chunks and the contestants take
turns chunk by chunk (the order rotating each round). On a shared, noisy CPU, a load spike then hits every
contestant alike, and the per-round ratio fastrsm/SB3 is reported next to the ratio of the totals.

fastrsm runs the body of `fastrsm.train.train`'s loop — the same function, `fastrsm.loop.vector_step` (EnvPool
env stepping while the agent updates, device-resident ReplayBuffer, act, update) and the periodic NaN check —
without its logging, evaluation and checkpointing, which a run pays only every few thousand steps;
`--trainer-check` also times `fastrsm.train.train` itself as a cross-check.
SB3 runs `model.learn` on gymnasium's Ant-v4, resumed once per chunk (`reset_num_timesteps=False`).

On a CPU shared with other work keep `--threads 1`: with more torch threads than idle cores, OpenMP's spinning
barriers make a step tens of times slower whenever another process takes a core (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium  # noqa: F401  (imported before the filter below: its logger installs its own filters on import)
import numpy as np
import torch

ENV_ID = "Ant-v4"
HIDDEN, LAYERS, BATCH = 256, 3, 256
BUFFER = 1_000_000  # both libraries' default replay size
MATCHED_FASTRSM, MATCHED_SB3, SB3_RELU = "fastrsm SAC (policy_delay=1)", "SB3 SAC (Mish)", "SB3 SAC (ReLU)"

# gymnasium flags the v4 MuJoCo tasks as out of date; Ant-v4 is the paper's task (docs/algorithms.md §8).
warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)


class Contestant:
    """One training setup; `advance(n)` makes n env steps (random ones while warming up)."""

    name: str = ""
    note: str = ""
    learns: bool = True

    def advance(self, n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FastrsmLoop(Contestant):
    """The training loop's body (`fastrsm.loop.vector_step`, as `fastrsm.train.train` runs it) with the periodic
    NaN check; for num_envs=1 one update per step at utd=1, the env step overlapping the update."""

    def __init__(self, name: str, overrides: dict[str, Any], preset: str, note: str, seed: int = 0):
        from fastrsm.agents import make_agent
        from fastrsm.backend import make_ops
        from fastrsm.config import make_config
        from fastrsm.envs import make_vec_env
        from fastrsm.loop import LoopState
        from fastrsm.replay import ReplayBuffer
        from fastrsm.runner import make_learner

        self.name, self.note = name, note
        self.cfg = cfg = make_config(preset, {"env_id": ENV_ID, "device": "cpu", "backend": "torch", **overrides})
        self.device = torch.device("cpu")
        torch.manual_seed(seed)
        self.envs = make_vec_env(cfg.env_id, cfg.num_envs, seed, cfg.env_backend)
        self.agent = make_agent(cfg.algo, self.envs.obs_dim, self.envs.act_dim, cfg, self.device,
                                make_ops(cfg.backend, self.device))
        # as the trainer builds it (fastrsm.learner): compiled, CUDA-graphed or eager
        self.fast = make_learner(self.agent, cfg.backend, cfg.cuda_graphs, cfg.num_envs)
        self.rb = ReplayBuffer(cfg.buffer_size, self.envs.obs_dim, self.envs.act_dim, self.device, cfg.batch_size)
        self.obs = self.envs.reset()
        self.st = LoopState()
        self.metrics: dict[str, torch.Tensor] = {}
        self.next_check = cfg.nan_check_every if cfg.nan_check_every else math.inf

    def advance(self, n: int) -> None:
        from fastrsm import loop

        for _ in range(n // self.cfg.num_envs):
            res = loop.vector_step(self.cfg, self.envs, self.fast, self.rb, self.obs, self.st, self.metrics,
                                   self.device)
            self.obs = res.next_obs
            if self.st.env_steps >= self.next_check:
                self.next_check += self.cfg.nan_check_every
                loop.check_finite(self.agent, self.metrics, self.st.env_steps)

    def close(self) -> None:
        self.envs.close()


class SB3Loop(Contestant):
    """stable-baselines3 SAC with train_freq=1, gradient_steps=1, learning_starts = warm-up."""

    def __init__(self, name: str, activation: type[torch.nn.Module], warmup: int, note: str, seed: int = 0):
        import gymnasium as gym
        from stable_baselines3 import SAC

        self.name, self.note = name, note
        self.model = SAC("MlpPolicy", gym.make(ENV_ID), learning_rate=3e-4, buffer_size=BUFFER,
                         learning_starts=warmup, batch_size=BATCH, tau=0.005, gamma=0.99, train_freq=1,
                         gradient_steps=1, policy_kwargs={"net_arch": [HIDDEN] * LAYERS, "activation_fn": activation},
                         device="cpu", seed=seed, verbose=0)
        self.started = False

    def advance(self, n: int) -> None:
        # learn() resumes where the previous call stopped: same env, buffer and step counter.
        self.model.learn(total_timesteps=n, reset_num_timesteps=not self.started, progress_bar=False)
        self.started = True

    def close(self) -> None:
        self.model.get_env().close()


class EnvOnly(Contestant):
    """Uniform-random actions, no learning: what the env side alone costs per step."""

    learns = False

    def __init__(self, name: str, make_step: Callable[[], Callable[[], None]], note: str):
        self.name, self.note = name, note
        self.step = make_step()

    def advance(self, n: int) -> None:
        for _ in range(n):
            self.step()


def envpool_stepper() -> Callable[[], None]:
    from fastrsm.envs import make_vec_env

    env = make_vec_env(ENV_ID, 1, 0, "envpool")
    env.reset()

    def step() -> None:
        env.step(np.random.uniform(-1.0, 1.0, size=(1, env.act_dim)).astype(np.float32))

    return step


def sb3_env_stepper() -> Callable[[], None]:
    # The wrapping SB3 applies to a gymnasium env it is given (Monitor inside a DummyVecEnv).
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(lambda: gym.make(ENV_ID), n_envs=1, seed=0)
    env.reset()
    space = env.action_space

    def step() -> None:
        env.step(np.stack([space.sample()]))

    return step


def sb3_available() -> str | None:
    try:
        import stable_baselines3
    except ImportError:
        return None
    return stable_baselines3.__version__


def build(args: argparse.Namespace, threads: int) -> list[Contestant]:
    sac = {"algo": "sac", "num_envs": 1, "utd": 1.0, "warmup_steps": args.warmup, "batch_size": BATCH,
           "hidden": HIDDEN, "layers": LAYERS, "buffer_size": BUFFER, "torch_threads": threads}
    out: list[Contestant] = [
        FastrsmLoop(MATCHED_FASTRSM, {**sac, "policy_delay": 1}, "paper",
                    "actor, alpha and targets every update, as SB3"),
        FastrsmLoop("fastrsm SAC (policy_delay=2)", {**sac, "policy_delay": 2}, "paper",
                    "fastrsm's default (docs/algorithms.md §7): actor/targets every 2nd update"),
    ]
    if sb3_available():
        out += [
            SB3Loop(MATCHED_SB3, torch.nn.Mish, args.warmup, "same activation as fastrsm's nets (algorithms §4)"),
            SB3Loop(SB3_RELU, torch.nn.ReLU, args.warmup, "SB3's default activation"),
        ]
    else:
        print("stable-baselines3 is not installed (pip install -e .[bench]): skipping the SB3 contestants")
    smoke = {"warmup_steps": args.warmup, "torch_threads": threads}
    out += [
        FastrsmLoop("fastrsm DPMD (smoke)", {**smoke, "algo": "dpmd"}, "smoke", "smoke preset: 64 x 2, T=5, N=8"),
        FastrsmLoop("fastrsm SDAC (smoke)", {**smoke, "algo": "sdac"}, "smoke", "smoke preset: 64 x 2, T=5, N=8, K=16"),
        EnvOnly("env only: EnvPool (fastrsm VecEnv)", envpool_stepper, "random actions, no learning"),
    ]
    if sb3_available():
        out.append(EnvOnly("env only: gymnasium (SB3 DummyVecEnv)", sb3_env_stepper, "random actions, no learning"))
    return out


@dataclass
class Timing:
    steps: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds: wall >> cpu means we were starved

    @property
    def steps_per_s(self) -> float:
        return sum(self.steps) / sum(self.wall)

    def chunk_rates(self) -> list[float]:
        return [s / w for s, w in zip(self.steps, self.wall)]


def measure(contestants: list[Contestant], threads: int, args: argparse.Namespace) -> dict[str, Timing]:
    torch.set_num_threads(threads)
    for c in contestants:  # untimed: random warm-up, then a few training steps (lazy allocations, Adam state)
        t0 = time.perf_counter()
        c.advance(args.warmup)
        if c.learns and args.burn_in:
            c.advance(args.burn_in)
        print(f"  ready: {c.name} ({time.perf_counter() - t0:.0f}s)", flush=True)
    chunk = max(1, math.ceil(args.steps / args.rounds))
    timings = {c.name: Timing() for c in contestants}
    for r in range(args.rounds):
        k = r % len(contestants)
        for c in contestants[k:] + contestants[:k]:
            torch.set_num_threads(threads)
            n = chunk if c.learns else chunk * args.env_only_factor
            w0, c0 = time.perf_counter(), time.process_time()
            c.advance(n)
            t = timings[c.name]
            t.steps.append(n)
            t.wall.append(time.perf_counter() - w0)
            t.cpu.append(time.process_time() - c0)
        print(f"  round {r + 1}/{args.rounds} steps/s: " + ", ".join(
            f"{c.name}={timings[c.name].chunk_rates()[-1]:.1f}" for c in contestants if c.learns), flush=True)
    return timings


def trainer_check(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """fastrsm.train.train itself (matched SAC), eval and checkpoints pushed out of the timed rows."""
    from fastrsm.config import make_config
    from fastrsm.train import train

    chunk = max(1, math.ceil(args.steps / args.rounds))
    cfg = make_config("paper", {"env_id": ENV_ID, "algo": "sac", "num_envs": 1, "utd": 1.0, "device": "cpu",
                                "backend": "torch", "warmup_steps": args.warmup, "batch_size": BATCH,
                                "hidden": HIDDEN, "layers": LAYERS, "policy_delay": 1, "torch_threads": threads,
                                "total_steps": args.warmup + chunk * args.rounds, "log_every": chunk,
                                "eval_every": 10**9, "eval_episodes": 1, "save_replay": False})
    with tempfile.TemporaryDirectory() as d:
        run_dir = os.path.join(d, "run")
        train(cfg, run_dir, progress=False)
        with open(os.path.join(run_dir, "train.csv"), encoding="utf-8") as f:
            # Only rows whose whole logging interval lies after the warm-up.
            rows = [r for r in csv.DictReader(f) if int(r["step"]) >= args.warmup + chunk]
    rates = [float(r["steps_per_s"]) for r in rows]
    return {"steps_per_s_rows": rates, "median": statistics.median(rates) if rates else float("nan")}


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "stable_baselines3": sb3_available() or "not installed"}
    for mod in ("envpool", "gymnasium", "mujoco"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "?"
    return {"cpu": model, "nproc": os.cpu_count(), "cuda": torch.cuda.is_available(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M"), "versions": versions}


def report(threads: int, timings: dict[str, Timing]) -> dict[str, Any]:
    refs = {"sb3_mish": timings.get(MATCHED_SB3), "sb3_relu": timings.get(SB3_RELU)}
    rows = {}
    print(f"\ntorch threads = {threads}")
    print(f"{'contestant':40s} {'steps/s':>9s} {'chunk min-max':>15s} {'CPU/wall':>9s} "
          f"{'x SB3(Mish) total/round':>24s} {'x SB3(ReLU) total/round':>24s}")
    for name, t in timings.items():
        rates = t.chunk_rates()
        row: dict[str, Any] = {"steps_per_s": t.steps_per_s, "chunk_steps_per_s": rates, "steps": sum(t.steps),
                               "seconds": sum(t.wall), "cpu_per_wall": sum(t.cpu) / sum(t.wall)}
        cells = []
        for key, ref in refs.items():
            total = per_round = float("nan")
            if ref is not None:  # the per-round median is the figure robust to load changing between rounds
                total = t.steps_per_s / ref.steps_per_s
                per_round = statistics.median(a / b for a, b in zip(rates, ref.chunk_rates()))
            row[f"ratio_vs_{key}"], row[f"median_round_ratio_vs_{key}"] = total, per_round
            cells.append(f"{total:11.2f}/{per_round:<12.2f}")
        rows[name] = row
        print(f"{name:40s} {t.steps_per_s:9.1f} {min(rates):7.1f}-{max(rates):<7.1f} {row['cpu_per_wall']:9.2f} "
              + " ".join(cells))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="timed env steps per contestant (after warm-up)")
    p.add_argument("--warmup", type=int, default=1000, help="untimed uniform-random steps before learning")
    p.add_argument("--burn-in", type=int, default=20, help="untimed training steps after the warm-up")
    p.add_argument("--rounds", type=int, default=6, help="chunks the timed steps are split into")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch CPU thread counts to measure")
    p.add_argument("--env-only-factor", type=int, default=10, help="env-only rows step this many times more")
    p.add_argument("--trainer-check", action="store_true", help="also time fastrsm.train.train (not interleaved)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < BATCH or args.rounds < 1 or min(args.threads) < 1:
        p.error(f"need --steps >= 1, --warmup >= {BATCH} (one batch), --rounds >= 1, --threads >= 1")

    info = machine()
    out: dict[str, Any] = {"machine": info, "args": vars(args), "env": ENV_ID, "results": {}}
    print(f"{info['cpu']}, {info['nproc']} CPUs, commit {info['commit']}, torch {torch.__version__}, "
          f"SB3 {info['versions']['stable_baselines3']}; load average {os.getloadavg()}")
    for threads in args.threads:
        out.setdefault("loadavg", []).append({"threads": threads, "before": os.getloadavg()})
        contestants = build(args, threads)
        try:
            timings = measure(contestants, threads, args)
        finally:
            for c in contestants:
                c.close()
        out["loadavg"][-1]["after"] = os.getloadavg()
        rows = report(threads, timings)
        result: dict[str, Any] = {"rows": rows}
        if args.trainer_check:
            result["trainer_check"] = tc = trainer_check(args, threads)
            print(f"fastrsm.train.train (policy_delay=1), alone: {tc['median']:.1f} steps/s (median of "
                  f"{len(tc['steps_per_s_rows'])} logged intervals)")
        out["results"][str(threads)] = result
        if MATCHED_SB3 in rows:
            r = rows[MATCHED_FASTRSM]
            ratio = r["median_round_ratio_vs_sb3_mish"]
            print(f"fastrsm SAC / SB3 SAC (matched) = {ratio:.2f} (per-round median; ratio of totals "
                  f"{r['ratio_vs_sb3_mish']:.2f}); target >= 2: {'met' if ratio >= 2 else 'NOT met'}")
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
