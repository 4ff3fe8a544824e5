"""How spread out is a trained policy's action distribution? A diagnostic of trained runs (bench/LEARNING.md uses it).

For each seed of a run (a --seeds group dir or a single run dir) and a checkpoint ("latest" or "best"), draws
M actions per state at S states taken from the run's own replay buffer (the checkpoint's) and reports, averaged
over states and action dimensions (in the policy's [-1, 1] units):
- `spread`: the std over the M draws at one state. Diffusion policies (DPMD, SDAC, DACER*): M single chain
  samples (N = 1, no added noise), the policy alone. SAC: M draws of its tanh-Gaussian (what it explores with).
- `noise`: the std of the Gaussian a diffusion agent adds to its best-of-N pick while training (explore_std·α).
- `explore`: the std over M draws of the training-time action at one state — for DPMD/SDAC the best-of-N pick
  plus that noise (what actually reaches the environment), for SAC the same as `spread`.
- `bound`: the fraction of action coordinates at ±1 (≥ 0.99 in magnitude) among the spread draws.
- `q_between`, `q_within`: the run's critic (min of the twin Qs) at those training-time actions, split into the
  std over states of each state's mean Q and the mean over states of the std over the M actions at one state.
  DPMD's `exp` weights exp(clip((Q − m)/σ)/λ) compare Q across the batch's states: where `q_between` dwarfs
  `q_within` they mostly say which *state* is worth more, not which *action* is better at a state.

  fastrsm-diagnose policy-spread runs/learning/Hopper-v4__dpmd runs/learning/Hopper-v4__sac [--checkpoint latest]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..cli import OneLineParser
from ..policy import checkpoint_path, load_policy
from ..runlog import load_checkpoint
from .runs import add_run_args, each_seed, run_main, write_json


@torch.inference_mode()
def measure(seed_dir: Path, checkpoint: str, states: int, draws: int, seed: int) -> dict[str, float]:
    ckpt = load_checkpoint(str(seed_dir / "checkpoints" / "latest.pt"))  # the replay lives in `latest`
    obs_all = ckpt["replay"]["obs"]
    g = torch.Generator().manual_seed(seed)
    obs = obs_all[torch.randint(0, obs_all.shape[0], (states,), generator=g)].float()
    alone = load_policy(str(seed_dir), checkpoint=checkpoint, particles=1, seed=seed, backend="torch")
    agent = alone.agent
    rep = obs.repeat_interleave(draws, 0)  # [S*M, obs]
    torch.manual_seed(seed)
    if hasattr(agent, "policy_ema"):
        a = agent.act(rep, explore=False).view(states, draws, -1)  # one chain sample each (N = 1)
        full = load_policy(str(seed_dir), checkpoint=checkpoint, seed=seed, backend="torch").agent
        noise = float(full.exploration_std) if hasattr(full, "exploration_std") else float("nan")
        e = full.act(rep, explore=True).view(states, draws, -1)  # best-of-N pick + the training noise
    else:
        a = agent.act(rep, explore=True).view(states, draws, -1)
        noise, e = float("nan"), a
    q = agent.critic.min_q(rep, e.reshape(states * draws, -1)).view(states, draws)
    # The env step of the checkpoint measured: `best` records the evaluation's step, `latest` its loop state.
    step = ckpt["loop"]["env_steps"] if checkpoint == "latest" else load_checkpoint(
        checkpoint_path(str(seed_dir), checkpoint)).get("step")
    return {"step": step, "spread": a.std(1).mean().item(), "noise": noise, "explore": e.std(1).mean().item(),
            "bound": (a.abs() >= 0.99).float().mean().item(), "q_between": q.mean(1).std().item(),
            "q_within": q.std(1).mean().item()}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fastrsm-diagnose policy-spread", description=__doc__.splitlines()[0])
    add_run_args(p, checkpoint="latest", seed=0, seed_help="seed of the sampled states and draws")
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--draws", type=int, default=32)
    a = p.parse_args(argv)

    def body() -> None:
        rows = []
        print("| run | seed | env step | spread (N=1) | training noise | explore std | at bound | "
              "Q std between states | Q std within a state |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for run, sd in each_seed(a.runs):
            m = measure(sd, a.checkpoint, a.states, a.draws, a.seed)
            rows.append({"run": str(run), "seed_dir": sd.name, "checkpoint": a.checkpoint, **m})
            print(f"| {run.name} | {sd.name} | {m['step']} | {m['spread']:.3f} | {m['noise']:.3f} | "
                  f"{m['explore']:.3f} | {m['bound']:.0%} | {m['q_between']:.2f} | {m['q_within']:.3f} |", flush=True)
        write_json(a.json, rows)

    return run_main("fastrsm-diagnose policy-spread", body)


if __name__ == "__main__":
    sys.exit(main())
