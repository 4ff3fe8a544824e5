"""What a trained policy does in an episode: its return, how long it lasts, how far it goes and how fast.

A diagnostic of trained runs (bench/LEARNING.md uses it).
On Hopper-v4 the return alone does not tell a standing hopper from a hopping
one (≈ 1 per step alive: standing still for the 1 000-step limit scores ≈ 1 000, as does a lunge that covers a few
metres in 300 steps). For each seed of a run (a --seeds group dir or a single run dir) this plays `--episodes`
episodes with the run's own acting rule (`fastrsm.load_policy`: best-of-N for DPMD/SDAC, the mean for SAC) and
prints, per episode, the return, the length in steps, the distance the body moved forward (MuJoCo qpos[0]) and the
mean forward speed (distance / simulated time); the last two read "n/a" for an env without a MuJoCo body.

    fastrsm-diagnose episode-stats runs/hopper-150k/Hopper-v4__dpmd runs/hopper-150k/Hopper-v4__sac --checkpoint best
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..cli import OneLineParser
from ..policy import load_policy
from .runs import add_run_args, each_seed, fmt, run_main, write_json


def play(seed_dir: Path, checkpoint: str, episodes: int, seed: int, particles: int | None = None) -> list[dict]:
    """Play `episodes` episodes (env seeds seed, seed + 1, …) with the checkpoint's policy."""
    import gymnasium as gym

    policy = load_policy(str(seed_dir), checkpoint=checkpoint, particles=particles, seed=seed, backend="torch")
    env = gym.make(policy.env_id)
    body = getattr(env.unwrapped, "data", None)
    dt = getattr(env.unwrapped, "dt", None)
    out = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            x0 = float(body.qpos[0]) if body is not None else None
            ret, steps, done = 0.0, 0, False
            while not done:
                obs, reward, term, trunc, _ = env.step(np.asarray(policy.act(obs), dtype=np.float64).reshape(-1))
                ret, steps, done = ret + float(reward), steps + 1, term or trunc
            dist = float(body.qpos[0]) - x0 if body is not None else None
            speed = dist / (steps * dt) if dist is not None and dt else None
            out.append({"return": ret, "length": steps, "distance": dist, "speed": speed})
    finally:
        env.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fastrsm-diagnose episode-stats", description=__doc__.splitlines()[0])
    add_run_args(p, checkpoint="best", seed=100, seed_help="env seed of the first episode")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--particles", type=int, default=None, help="best-of-N (default: the run's; 1 = the policy alone)")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be >= 1")

    def body() -> None:
        rows = []
        print("| run | seed | episode | return | length | distance (m) | speed (m/s) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for run, sd in each_seed(a.runs):
            for i, e in enumerate(play(sd, a.checkpoint, a.episodes, a.seed, a.particles)):
                rows.append({"run": str(run), "seed_dir": sd.name, "checkpoint": a.checkpoint, "episode": i, **e})
                print(f"| {run.name} | {sd.name} | {i} | {e['return']:.0f} | {e['length']} | "
                      f"{fmt(e['distance'])} | {fmt(e['speed'])} |", flush=True)
        write_json(a.json, rows)

    return run_main("fastrsm-diagnose episode-stats", body)


if __name__ == "__main__":
    sys.exit(main())
