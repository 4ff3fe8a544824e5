"""The evaluation protocol (SPEC §7) and `fastrsm-eval RUN_DIR`.

Evaluation runs `episodes` whole episodes on env instances separate from training (their own seed), with
the deterministic policy: best-of-N from the EMA diffusion policy without added noise, or SAC's tanh(mean)."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from .cli import OneLineParser, run_main
from .config import Config, field_names, make_config
from .envs import evaluate_episodes, make_vec_env
from .policy import load_policy
from .runlog import read_config
from .utils import UsageError, atomic_write_json


def evaluate_agent(agent, cfg: Config, episodes: int, seed: int, device: torch.device) -> list[float]:
    env = make_vec_env(cfg.env_id, episodes, seed, cfg.env_backend)
    try:
        def policy(obs: np.ndarray) -> np.ndarray:
            return agent.act(torch.as_tensor(obs, device=device), explore=False).cpu().numpy()

        return [float(r) for r in evaluate_episodes(env, policy, episodes)]
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    return run_main("fastrsm-eval", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    p = OneLineParser(prog="fastrsm-eval", description="Re-evaluate a saved checkpoint of a run.")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a path to a .pt file")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's eval-episodes)")
    p.add_argument("--particles", type=int, default=None,
                   help="best-of-N candidates (default: the run's); 1 evaluates the diffusion policy alone")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    policy = load_policy(args.run_dir, args.checkpoint, args.device, args.particles, seed=args.seed)
    cfg = make_config("paper", {k: v for k, v in read_config(args.run_dir)["config"].items() if k in field_names()})
    episodes = args.episodes if args.episodes is not None else cfg.eval_episodes
    if episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {episodes}")
    env = make_vec_env(cfg.env_id, episodes, args.seed, cfg.env_backend)
    try:
        returns = evaluate_episodes(
            env, lambda obs: policy.act_unit(torch.as_tensor(obs, device=policy.device)).cpu().numpy(), episodes)
    finally:
        env.close()
    path = args.checkpoint
    if path in ("best", "latest"):
        path = os.path.join(args.run_dir, "checkpoints", f"{path}.pt")
    out = {"checkpoint": os.path.abspath(path), "episodes": episodes, "seed": args.seed,
           "particles": policy.particles, "return_mean": float(np.mean(returns)),
           "return_std": float(np.std(returns)), "returns": [float(r) for r in returns]}
    atomic_write_json(os.path.join(args.run_dir, "reeval.json"), out)
    print(f"{cfg.env_id} {cfg.algo}: return {out['return_mean']:.1f} ± {out['return_std']:.1f} "
          f"over {episodes} episodes ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
