"""Env steps per second of the on-policy loop (PPO, DPPO), EnvPool beside gymnasium's vector env, at several env
counts, interleaved.

    python bench/bench_onpolicy.py [--env Hopper-v4] [--algos ppo,dppo] [--envs 8,32,128] [--preset small]
                                   [--rollout-steps 64] [--rounds 3] [--threads 1] [--json out.json]

Every (algo, env back-end, env count) runs `fastrsm.onpolicy.rollout_update` — the body `fastrsm-train` runs: a
rollout of env count x rollout-steps vector steps, then its update (GAE, the preset's epochs and minibatches over
the rollout; minibatches = the preset's, or fewer where they do not divide the rollout). One round runs one rollout
of every configuration in turn, the order rotating each round, so load from other processes falls on all alike.
Reported per configuration (median over rounds): env steps/s of the rollout alone (acting + env stepping), of the
whole iteration (rollout + update), the update's seconds, and EnvPool's rollout speed-up over gymnasium's."""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.envs import make_vec_env
from fastrsm.loop import LoopState
from fastrsm.onpolicy import OnPolicyLearner, rollout_update
from fastrsm.utils import seed_everything


class TimedLearner(OnPolicyLearner):
    """The eager learner, with the update's time kept apart from the rollout's."""

    last_learn = 0.0

    def learn(self, rollout):
        t0 = time.perf_counter()
        out = super().learn(rollout)
        self.last_learn = time.perf_counter() - t0
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Hopper-v4")
    p.add_argument("--algos", default="ppo,dppo")
    p.add_argument("--envs", default="8,32,128")
    p.add_argument("--backends", default="envpool,gymnasium")
    p.add_argument("--preset", default="small")
    p.add_argument("--rollout-steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    runs = {}
    for algo in args.algos.split(","):
        for n in (int(x) for x in args.envs.split(",")):
            base = make_config(args.preset, {"algo": algo})
            rows = n * args.rollout_steps
            mbs = math.gcd(base.num_minibatches, rows)
            cfg = make_config(args.preset, {"env_id": args.env, "algo": algo, "device": "cpu", "backend": "torch",
                                            "num_envs": n, "rollout_steps": args.rollout_steps,
                                            "num_minibatches": mbs})
            for backend in args.backends.split(","):
                envs = make_vec_env(args.env, n, 0, backend)
                seed_everything(0)
                agent = make_agent(algo, envs.obs_dim, envs.act_dim, cfg, dev, make_ops("torch", dev))
                runs[(algo, backend, n)] = {"cfg": cfg, "envs": envs, "learner": TimedLearner(agent, "torch"),
                                            "obs": envs.reset(), "st": LoopState(), "rollout": [], "total": [],
                                            "update": []}
    keys = list(runs)
    for r in range(args.rounds + 1):  # round 0 warms up (first-call allocations), untimed
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            run = runs[key]
            t0 = time.perf_counter()
            run["obs"], _ = rollout_update(run["cfg"], run["envs"], run["learner"], run["obs"], run["st"], {}, dev)
            total = time.perf_counter() - t0
            if r:
                steps = run["cfg"].num_envs * run["cfg"].rollout_steps
                learn = run["learner"].last_learn
                run["rollout"].append(steps / (total - learn))
                run["total"].append(steps / total)
                run["update"].append(learn)
    for run in runs.values():
        run["envs"].close()
    print(f"{args.env}, preset {args.preset}, rollout {args.rollout_steps} steps x envs, {args.threads} thread(s), "
          f"{args.rounds} rounds; torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print(f"{'algo':5} {'backend':10} {'envs':>5} {'rollout steps/s':>16} {'with update':>12} {'update s':>9} "
          f"{'envpool x':>10}")
    out = []
    for (algo, backend, n), run in runs.items():
        med = {k: statistics.median(run[k]) for k in ("rollout", "total", "update")}
        gym = runs.get((algo, "gymnasium", n))
        ratio = med["rollout"] / statistics.median(gym["rollout"]) if gym and backend == "envpool" else None
        out.append({"algo": algo, "backend": backend, "envs": n, "rollout_steps_per_s": med["rollout"],
                    "steps_per_s": med["total"], "update_s": med["update"], "envpool_speedup": ratio,
                    "minibatches": run["cfg"].num_minibatches, "epochs": run["cfg"].update_epochs})
        print(f"{algo:5} {backend:10} {n:5d} {med['rollout']:16.0f} {med['total']:12.0f} {med['update']:9.2f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "preset": args.preset, "rollout_steps": args.rollout_steps,
                       "threads": args.threads, "torch": torch.__version__, "rows": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
