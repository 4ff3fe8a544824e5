"""Many seeds in one process: aggregate env-steps/s of S seeds as one batched agent
(`fastrsm-train --seeds`) against S single-seed runs doing the same work. A script, not a pytest benchmark:

    python bench/bench_seeds.py [--env Hopper-v4] [--algo dpmd] [--seeds 4] [--steps 600] [--rounds 3]
                                [--preset smoke] [--device cpu] [--warmup-steps N] [--json out.json]

Both contestants run the training loop's body (fastrsm.loop.vector_step, as fastrsm-train does) with the chosen
preset (smoke by default: the CPU figure) at one torch thread,
without logging, evaluation and checkpoints. Each first collects the preset's
warm-up transitions and makes `--burn-in` training steps (neither timed); then the `--steps` timed env steps per
seed are split into `--rounds` chunks and the two contestants alternate chunk by chunk (S = 4 group, then the four
single runs one after the other, the order swapping each round), so that load on a shared CPU hits both alike.
The ratio is (time of the S single runs) / (time of the group) for the same S × steps env steps and updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
import warnings

import torch

from fastrsm import loop
from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.bench import sync
from fastrsm.config import make_config
from fastrsm.envs import make_vec_env
from fastrsm.group import SeedEnvs
from fastrsm.loop import LoopState, env_seed
from fastrsm.replay import ReplayBuffer
from fastrsm.runner import SeedActor, make_learner
from fastrsm.seeds import SeedReplay
from fastrsm.utils import resolve_device, seed_everything

warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)


class Runner:
    """One contestant: envs, agent, replay, loop state; `advance(n)` makes n vector steps."""

    def __init__(self, cfg, seeds: list[int] | None, dev: torch.device, backend: str, cuda_graphs: bool):
        ops = make_ops(backend, dev)
        cfgs = [dataclasses.replace(cfg, seed=s) for s in (seeds or [cfg.seed])]
        if seeds is None:
            self.envs = make_vec_env(cfg.env_id, cfg.num_envs, env_seed(cfg, 0), cfg.env_backend)
            seed_everything(cfg.seed)
            agent = make_agent(cfg.algo, self.envs.obs_dim, self.envs.act_dim, cfg, dev, ops)
            self.agent = SeedActor(make_learner(agent, backend, cuda_graphs, cfg.num_envs), None, [False])
            self.replay = ReplayBuffer(cfg.buffer_size, self.envs.obs_dim, self.envs.act_dim, dev, cfg.batch_size)
        else:
            self.envs = SeedEnvs([make_vec_env(c.env_id, c.num_envs, env_seed(c, 0), c.env_backend) for c in cfgs])
            seed_everything(seeds[0])
            agent = make_agent(cfg.algo, self.envs.obs_dim, self.envs.act_dim, cfg, dev, ops, seeds=len(seeds))
            self.agent = SeedActor(make_learner(agent, backend, cuda_graphs, cfg.num_envs), len(seeds),
                                   [False] * len(seeds))
            self.replay = SeedReplay(len(seeds), cfg.buffer_size, self.envs.obs_dim, self.envs.act_dim, dev,
                                     cfg.batch_size)
        self.cfg, self.st, self.metrics, self.dev = cfg, LoopState(), {}, dev
        self.obs = self.envs.reset()

    def advance(self, n: int) -> None:
        for _ in range(n):
            res = loop.vector_step(self.cfg, self.envs, self.agent, self.replay, self.obs, self.st, self.metrics,
                                   self.dev)
            self.obs = res.next_obs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Hopper-v4")
    p.add_argument("--algo", default="dpmd")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=600, help="timed env steps per seed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burn-in", type=int, default=50)
    p.add_argument("--preset", default="smoke", help="smoke (the CPU figure) or paper (the GPU figure)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", default="torch", help="ops backend of both contestants (torch, triton)")
    p.add_argument("--cuda-graphs", action="store_true", help="both contestants under CUDA graphs (CUDA only)")
    p.add_argument("--warmup-steps", type=int, default=None, help="random-action steps first (default: the preset's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    # read now: the code being timed is what was imported at start, whatever HEAD is when the run ends
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    dev = resolve_device(args.device)
    over = {"env_id": args.env, "algo": args.algo, "buffer_size": 20_000, "device": str(dev)}
    if args.warmup_steps is not None:
        over["warmup_steps"] = args.warmup_steps
    cfg = make_config(args.preset, over)
    S = args.seeds
    group = Runner(cfg, list(range(S)), dev, args.backend, args.cuda_graphs)
    singles = [Runner(dataclasses.replace(cfg, seed=s), None, dev, args.backend, args.cuda_graphs) for s in range(S)]
    for r in [group, *singles]:  # warm-up (random actions) + burn-in updates, untimed
        r.advance(cfg.warmup_steps // cfg.num_envs + args.burn_in)
    chunk = args.steps // args.rounds
    t_group, t_singles, ratios = 0.0, 0.0, []
    for k in range(args.rounds):
        order = ["group", "singles"] if k % 2 == 0 else ["singles", "group"]
        times = {}
        for who in order:
            sync(dev)
            t0 = time.perf_counter()
            if who == "group":
                group.advance(chunk)
            else:
                for r in singles:
                    r.advance(chunk)
            sync(dev)
            times[who] = time.perf_counter() - t0
        t_group += times["group"]
        t_singles += times["singles"]
        ratios.append(times["singles"] / times["group"])
        print(f"round {k}: group {S * chunk / times['group']:.1f} env-steps/s, singles "
              f"{S * chunk / times['singles']:.1f} env-steps/s, ratio {ratios[-1]:.2f}", flush=True)
    steps = S * chunk * args.rounds
    out = {
        "env": args.env, "algo": args.algo, "preset": args.preset, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "seeds": S,
        "backend": args.backend, "cuda_graphs": args.cuda_graphs,
        "timed_steps_per_seed": chunk * args.rounds,
        "group_env_steps_per_s": steps / t_group, "singles_env_steps_per_s": steps / t_singles,
        "ratio": t_singles / t_group, "round_ratios": ratios,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
