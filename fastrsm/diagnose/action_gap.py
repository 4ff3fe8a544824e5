"""Along an episode: how much better an action the critic knows than the one the policy takes.

A diagnostic of trained runs (bench/LEARNING.md uses it).
When a trained hopper falls, either the policy misses actions its critic
already values more (the policy, or its sampler, is the limit), or the critic values no action much above the one
taken (the limit is what the critic has learned). For each seed of a run (a --seeds group dir or a single run dir)
this plays one episode with the run's own acting rule (`fastrsm.load_policy`) and, every `--every` steps and at
the last `--tail` steps, scores with the critic's min Q (the one the agent acts with):
- the action taken;
- the best and the spread of `--uniform` actions drawn uniformly over the action box;
- the best of `--draws` actions of the policy alone (one chain sample each for DPMD/SDAC, the Gaussian for SAC).

Per seed it prints the episode length, whether it ended by termination (a fall) or the time limit, Q(taken) at its
peak, the gap (best uniform − taken) as mean and max over the marked steps, how far the policy's best draw stays
below the best uniform action (mean; ≈ 0 when the policy covers the critic's best actions), the mean range of Q
over the box (max − min of the uniform draws), and the warning: how many steps before a fall Q(taken) drops below
80 % of its peak for good (blank without a fall; as fine as the marked steps). `--rows` also prints every marked
step, with the MuJoCo body's forward velocity qvel[0] and its qpos[1] (the torso's height for Hopper and
Walker2d) when the env has one.

    fastrsm-diagnose action-gap runs/hopper-geometric/Hopper-v4__dpmd --checkpoint latest
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..cli import OneLineParser
from ..policy import load_policy
from .runs import add_run_args, each_seed, fmt, run_main, write_json

WARN = 0.8  # Q(taken) below this fraction of its episode peak, for good, counts as the critic foreseeing the fall


@torch.inference_mode()
def score_state(agent, obs: torch.Tensor, taken: torch.Tensor, uniform: int, draws: int,
                generator: torch.Generator) -> dict[str, float]:
    """Critic scores at one state: the taken action (in [-1, 1]), `uniform` box draws, `draws` policy draws."""
    q = agent.critic.min_q
    s = obs.reshape(1, -1)
    q_taken = q(s, taken.reshape(1, -1)).item()
    u = torch.rand(uniform, taken.numel(), generator=generator) * 2 - 1
    q_u = q(s.expand(uniform, -1), u)
    rep = s.expand(draws, -1)
    if hasattr(agent, "policy_ema"):  # the diffusion policy alone: one chain sample per draw
        d = agent.policy_ema.sample(s, particles=draws, generator=generator).reshape(draws, -1)
    else:  # SAC, TD3 and the others: their exploring act, on `generator`'s stream so that rows repeat
        d = agent.act(rep, explore=True, generator=generator)
    q_d = q(rep, d.clamp(-1.0, 1.0))
    return {"q_taken": q_taken, "q_uniform_max": q_u.max().item(), "q_uniform_min": q_u.min().item(),
            "q_uniform_mean": q_u.mean().item(), "q_draws_max": q_d.max().item()}


def trace(seed_dir: Path, checkpoint: str, every: int, tail: int, uniform: int, draws: int, seed: int) -> dict:
    """One episode of the checkpoint's policy (env seed `seed`), scored at the marked steps."""
    import gymnasium as gym

    policy = load_policy(str(seed_dir), checkpoint=checkpoint, seed=seed, backend="torch")
    env = gym.make(policy.env_id)
    gen = torch.Generator().manual_seed(seed)
    body = getattr(env.unwrapped, "data", None)  # a MuJoCo body: its state along the episode, for the rows
    obs_seen, taken_seen, body_seen = [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        done, terminated = False, False
        while not done:
            o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
            a_unit = policy.act_unit(o.reshape(1, -1))[0]  # the policy's own range [-1, 1], as the critic sees it
            obs_seen.append(o)
            taken_seen.append(a_unit)
            # forward velocity qvel[0] and qpos[1] (the torso's height for Hopper and Walker2d), before the step
            body_seen.append((float(body.qvel[0]), float(body.qpos[1])) if body is not None else (None, None))
            a_env = policy.to_env(a_unit)  # as policy.act does, from the same unit-range action
            obs, _, terminated, truncated, _ = env.step(a_env.numpy().astype(np.float64))
            done = terminated or truncated
    finally:
        env.close()
    n = len(obs_seen)
    marks = sorted(set(range(0, n, every)) | set(range(max(0, n - tail), n)))
    rows = [{"step": k, "body_vx": body_seen[k][0], "body_qpos1": body_seen[k][1],
             **score_state(policy.agent, obs_seen[k], taken_seen[k], uniform, draws, gen)} for k in marks]
    q_taken = np.array([r["q_taken"] for r in rows])
    peak = float(q_taken.max())
    warning = None
    if terminated:  # from the first marked step after which Q(taken) stays below WARN × its peak, to the end
        last_high = max(r["step"] for r in rows if r["q_taken"] >= WARN * peak)
        later = [r["step"] for r in rows if r["step"] > last_high]
        warning = n - min(later) if later else 0
    gaps = np.array([r["q_uniform_max"] - r["q_taken"] for r in rows])
    ranges = np.array([r["q_uniform_max"] - r["q_uniform_min"] for r in rows])
    short = np.array([r["q_uniform_max"] - r["q_draws_max"] for r in rows])
    return {"length": n, "terminated": bool(terminated), "q_peak": peak, "gap_mean": float(gaps.mean()),
            "gap_max": float(gaps.max()), "draws_short_mean": float(short.mean()),
            "q_range_mean": float(ranges.mean()), "warning_steps": warning, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fastrsm-diagnose action-gap", description=__doc__.splitlines()[0])
    add_run_args(p, checkpoint="best", seed=100, seed_help="env seed of the episode")
    p.add_argument("--every", type=int, default=25, help="score every this many steps")
    p.add_argument("--tail", type=int, default=5, help="and the last this many steps")
    p.add_argument("--uniform", type=int, default=8192, help="uniform actions over the box per marked step")
    p.add_argument("--draws", type=int, default=1024, help="policy draws per marked step")
    p.add_argument("--rows", action="store_true", help="also print every marked step")
    a = p.parse_args(argv)
    for name in ("every", "uniform", "draws"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.tail < 0:
        p.error("--tail must be >= 0")

    def body() -> None:
        out = []
        print("| run | seed | length | ended by | Q(taken) peak | gap mean | gap max | "
              "policy's best draw short by | Q range over the box | warning (steps) |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for run, sd in each_seed(a.runs):
            r = trace(sd, a.checkpoint, a.every, a.tail, a.uniform, a.draws, a.seed)
            out.append({"run": str(run), "seed_dir": sd.name, "checkpoint": a.checkpoint, **r})
            warn = "" if r["warning_steps"] is None else str(r["warning_steps"])
            print(f"| {run.name} | {sd.name} | {r['length']} | {'fall' if r['terminated'] else 'time limit'} | "
                  f"{r['q_peak']:.1f} | {r['gap_mean']:.2f} | {r['gap_max']:.2f} | {r['draws_short_mean']:.2f} | "
                  f"{r['q_range_mean']:.2f} | {warn} |", flush=True)
            if a.rows:
                for row in r["rows"]:
                    print(f"    step {row['step']:4d}: Q(taken) {row['q_taken']:8.2f}, best uniform "
                          f"{row['q_uniform_max']:8.2f}, best policy draw {row['q_draws_max']:8.2f}, uniform mean "
                          f"{row['q_uniform_mean']:8.2f}; body vx {fmt(row['body_vx'])}, qpos[1] "
                          f"{fmt(row['body_qpos1'])}")
        write_json(a.json, out)

    return run_main("fastrsm-diagnose action-gap", body)


if __name__ == "__main__":
    sys.exit(main())
