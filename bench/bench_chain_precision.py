"""fp32 against bf16 sampling chains on a CPU (`--chain-precision bf16`), side by side in one process.

    python bench/bench_chain_precision.py [--algo dpmd] [--sizes smoke,small,paper] [--rounds 5] [--json out.json]

For each preset size (its networks, chain length and particle counts, Hopper-v4's dimensions) two agents with the
same weights, one per precision, are timed in turn, the order swapping every round, one torch thread:
- `act`: one observation, best-of-N acting (the loop's act on one env);
- `bootstrap`: the best-of-N chain over a batch's next states (what a DPMD update's critic target draws);
- `update`: one whole gradient update (the chain is most of it at DPMD's sizes).
Reported: medians over rounds (ms) and bf16's speed-up (fp32 time / bf16 time). The eager (torch) backend; the
compile backend keeps the same chain (bench/RESULTS.md says which was measured)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from fastrsm.agents import make_agent
from fastrsm.backend import cpu_has_bf16, make_ops
from fastrsm.bench import fill_random
from fastrsm.config import make_config
from fastrsm.replay import ReplayBuffer
from fastrsm.utils import seed_everything

OBS, ACT = 11, 3  # Hopper-v4


def _agents(algo: str, preset: str, backend: str) -> dict[str, object]:
    out = {}
    for prec in ("fp32", "bf16"):
        cfg = make_config(preset, {"algo": algo, "env_id": "Hopper-v4", "device": "cpu", "chain_precision": prec,
                                   "backend": backend})
        seed_everything(0)
        out[prec] = make_agent(algo, OBS, ACT, cfg, torch.device("cpu"), make_ops(backend, "cpu", prec))
    return out


def _time(fn, agent, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(agent)
    return (time.perf_counter() - t0) * 1e3 / reps


def _jobs(rb: ReplayBuffer, obs1: torch.Tensor, next_obs: torch.Tensor, parts: tuple) -> dict[str, tuple]:
    return {
        "act": (lambda a: a.act(obs1, True), 20),
        "bootstrap": (lambda a: a.next_action_value(next_obs), 3),
        "update": (lambda a: a.update_step(rb.sample(), parts), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default="dpmd")
    p.add_argument("--sizes", default="smoke,small,paper")
    p.add_argument("--backend", default="torch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not cpu_has_bf16():
        print("this CPU has no native bf16 matmul: nothing to compare", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for preset in args.sizes.split(","):
        agents = _agents(args.algo, preset, args.backend)
        cfg = agents["fp32"].cfg
        rb = ReplayBuffer(4 * cfg.batch_size, OBS, ACT, "cpu", cfg.batch_size)
        fill_random(rb, 4 * cfg.batch_size, 0)
        obs1 = torch.randn(1, OBS)
        next_obs = rb.sample().next_obs
        jobs = _jobs(rb, obs1, next_obs, agents["fp32"].reachable_parts()[-1])
        times = {(j, prec): [] for j in jobs for prec in agents}
        for a in agents.values():  # first-call allocations
            for fn, _ in jobs.values():
                fn(a)
        for r in range(args.rounds):
            order = ["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]
            for j, (fn, reps) in jobs.items():
                for prec in order:
                    times[(j, prec)].append(_time(fn, agents[prec], reps))
        for j in jobs:
            f32, b16 = statistics.median(times[(j, "fp32")]), statistics.median(times[(j, "bf16")])
            rows.append({"preset": preset, "what": j, "fp32_ms": f32, "bf16_ms": b16, "speedup": f32 / b16,
                         "hidden": cfg.hidden, "layers": cfg.layers, "T": cfg.diffusion_steps,
                         "particles": cfg.particles, "target_particles": cfg.target_particles or cfg.particles,
                         "batch": cfg.batch_size})
            print(f"{preset:6} {j:9} fp32 {f32:8.3f} ms  bf16 {b16:8.3f} ms  x{f32 / b16:.2f}", flush=True)
    meta = {"algo": args.algo, "backend": args.backend, "rounds": args.rounds, "commit": commit,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": 1,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
