"""The evaluation protocol (docs/algorithms.md §7) and `fastrsm-eval RUN_DIR`.

Evaluation runs `episodes` whole episodes on env instances separate from training (their own seed), with
the deterministic policy: best-of-N from the EMA diffusion policy without added noise, or SAC's tanh(mean)."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from .cli import OneLineParser, run_main
from .config import field_names, make_config
from .envs import evaluate_episodes, make_vec_env
from .group import is_group_dir, seed_dirs
from .policy import checkpoint_path, load_policy
from .runlog import read_config
from .utils import UsageError, atomic_write_json


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
    p.add_argument("--video", metavar="FILE", default=None,
                   help="instead of evaluating, render one episode off-screen to FILE (.gif or .mp4; .mp4 needs "
                        "pip install 'fastrsm[video]'), the return and step written on the frames")
    p.add_argument("--video-fps", type=float, default=30.0, help="frames per second of the video (default 30)")
    p.add_argument("--video-size", default="320x240", metavar="WxH", help="frame size (default 320x240)")
    p.add_argument("--max-steps", type=int, default=None, help="--video: stop the episode after this many steps")
    args = p.parse_args(argv)
    if args.video is not None:
        return _video(args)
    if is_group_dir(args.run_dir):  # a --seeds group: every seed's run directory, then mean ± std over seeds
        try:
            dirs = seed_dirs(args.run_dir)
        except ValueError as e:
            raise UsageError(str(e)) from None
        means = [_evaluate_run(d, args)["return_mean"] for d in dirs]
        print(f"group of {len(dirs)} seeds: return {np.mean(means):.1f} ± {np.std(means):.1f} over seeds")
        return 0
    _evaluate_run(args.run_dir, args)
    return 0


def evaluate_policy(run_dir: str, checkpoint: str = "best", episodes: int | None = None,
                    particles: int | None = None, seed: int = 12345, device: str = "cpu") -> dict:
    """A run's saved policy evaluated again, by the evaluation protocol, through `load_policy`.

    checkpoint: "best", "latest" or a .pt path; episodes: default the run's eval-episodes; particles: best-of-N
    candidates (default the run's; 1 = the diffusion policy alone; ignored by SAC). Returns the checkpoint's
    absolute path, episodes, seed, particles (None for SAC), return_mean/std and every episode's return; writes
    nothing. Bad input raises fastrsm.utils.UsageError."""
    policy = load_policy(run_dir, checkpoint, device, particles, seed=seed)
    cfg = make_config("paper", {k: v for k, v in read_config(run_dir)["config"].items() if k in field_names()})
    episodes = episodes if episodes is not None else cfg.eval_episodes
    if episodes <= 0:
        raise UsageError(f"episodes must be positive, got {episodes}")
    env = make_vec_env(cfg.env_id, episodes, seed, cfg.env_backend)
    try:
        with torch.inference_mode():
            returns = evaluate_episodes(
                env, lambda obs: policy.act_unit(torch.as_tensor(obs, device=policy.device)).cpu().numpy(),
                episodes)
    finally:
        env.close()
    return {"checkpoint": os.path.abspath(checkpoint_path(run_dir, checkpoint)), "env_id": cfg.env_id,
            "algo": cfg.algo, "episodes": episodes,
            "seed": seed, "particles": policy.particles, "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)), "returns": [float(r) for r in returns]}


def _video(args) -> int:
    """fastrsm-eval RUN --video FILE: one evaluation episode rendered to FILE, one printed line."""
    from .video import check_video_path, choose_gl_backend, record_episode

    if is_group_dir(args.run_dir):
        raise UsageError(f"--video renders one seed's policy: give one seed's run directory, e.g. "
                         f"{os.path.join(args.run_dir, 'seed_0')}")
    try:
        width, height = (int(v) for v in args.video_size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--video-size {args.video_size}: give it as WIDTHxHEIGHT, e.g. 320x240") from None
    if width < 16 or height < 16 or args.video_fps <= 0 or (args.max_steps is not None and args.max_steps < 1):
        raise UsageError("--video-size must be at least 16x16, --video-fps and --max-steps positive")
    check_video_path(args.video)
    backend = choose_gl_backend()  # before load_policy, which may import MuJoCo
    policy = load_policy(args.run_dir, args.checkpoint, args.device, args.particles, seed=args.seed)
    with torch.inference_mode():
        out = record_episode(policy, args.video, args.seed, args.video_fps, width, height, args.max_steps)
    print(f"{policy.env_id} {policy.algo}: return {out['return']:.1f} in {out['steps']} steps; {out['frames']} "
          f"frames at {out['fps']:.1f} fps written to {out['path']} (MUJOCO_GL={backend})")
    return 0


def _evaluate_run(run_dir: str, args) -> dict:
    """fastrsm-eval on one run directory: evaluate_policy, then RUN_DIR/reeval.json and one printed line."""
    out = evaluate_policy(run_dir, args.checkpoint, args.episodes, args.particles, args.seed, args.device)
    atomic_write_json(os.path.join(run_dir, "reeval.json"), out)
    print(f"{out['env_id']} {out['algo']}: return {out['return_mean']:.1f} ± {out['return_std']:.1f} "
          f"over {out['episodes']} episodes ({out['checkpoint']})")
    return out


if __name__ == "__main__":
    sys.exit(main())
