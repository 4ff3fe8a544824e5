"""Wall-clock per gradient update of every algorithm at one preset, measured side by side in one process.

    python bench/bench_algos.py --env InvertedDoublePendulum-v4 --preset small [--algos dpmd,sdac,sac,td3]
                                [--updates 40] [--rounds 5] [--device cpu] [--json out.json]

Each algorithm gets an agent on the same replay contents (random rows); the rounds time `--updates` updates of
each algorithm in turn, the order rotating every round, so load from other processes falls on all alike. The
updates follow each agent's own schedule (policy delay, α clock), except the rare expensive α steps (DACER's GMM
entropy estimate every 10 000 updates), which are timed apart and reported with their amortised share. Reported:
median over rounds of ms per update, and the ratio to the first algorithm's; on CUDA also the peak memory an
update takes above what every agent and buffer holds at rest.

The on-policy algorithms (PPO, DPPO) have no replay: their "update" is one minibatch gradient step (policy and
value network) on a minibatch of a synthetic rollout of the preset's shape, i.e. epochs x minibatches of these
make one rollout's update (the GAE pass before them is bench/bench_onpolicy.py's to time)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from fastrsm.agents import AGENTS, make_agent
from fastrsm.backend import make_ops, resolve_backend
from fastrsm.bench import fill_random, sync
from fastrsm.config import make_config
from fastrsm.envs import env_dims
from fastrsm.onpolicy import synthetic_rollout
from fastrsm.replay import ReplayBuffer
from fastrsm.utils import resolve_device, seed_everything


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="InvertedDoublePendulum-v4")
    p.add_argument("--preset", default="small")
    p.add_argument("--algos", default=",".join(AGENTS), help="comma-separated (default: every algorithm)")
    p.add_argument("--updates", type=int, default=40, help="timed updates per algorithm per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    obs_dim, act_dim = env_dims(args.env)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    agents, replays, cfgs = {}, {}, {}
    for a in algos:
        cfg = make_config(args.preset, {"env_id": args.env, "algo": a, "device": str(device)})
        seed_everything(0)
        ops = make_ops(resolve_backend(cfg.backend, device), device)
        agents[a] = make_agent(a, obs_dim, act_dim, cfg, device, ops)
        if agents[a].on_policy:  # the flat rows of one rollout, minibatches drawn from it
            flat = agents[a].flat_rollout(synthetic_rollout(agents[a], cfg.rollout_steps, cfg.num_envs))
            replays[a] = (flat, flat["adv"].shape[0] // cfg.num_minibatches)
        else:
            replays[a] = ReplayBuffer(10_000, obs_dim, act_dim, device, cfg.batch_size)
            fill_random(replays[a], 10_000, 0)
        cfgs[a] = cfg

    def steady_update(a: str) -> None:
        agent = agents[a]
        if agent.on_policy:
            flat, size = replays[a]
            idx = torch.randint(flat["adv"].shape[0], (size,), device=device)
            agent.minibatch_step({k: v[idx] for k, v in flat.items()})
            return
        parts = tuple(x for x in agent.next_parts() if x != "alpha" or a not in ("dacer", "dacer2"))
        agent.update_step(replays[a].sample(), parts)
        agent.advance(parts)

    rare: dict[str, float] = {}
    peak: dict[str, float] = {}  # MiB above what every agent and buffer holds at rest (CUDA only)
    for a in algos:  # warm-up (first-call allocations), and the rare α step of DACER/DACER2 timed apart
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            rest = torch.cuda.memory_allocated(device)
        for _ in range(3):
            steady_update(a)
        if device.type == "cuda":
            sync(device)
            peak[a] = (torch.cuda.max_memory_allocated(device) - rest) / 2**20
        if a in ("dacer", "dacer2"):
            t0 = time.perf_counter()
            agents[a].update_step(replays[a].sample(), ("critic", "alpha"))
            sync(device)
            t_alpha = time.perf_counter() - t0
            t0 = time.perf_counter()
            agents[a].update_step(replays[a].sample(), ("critic",))
            sync(device)
            rare[a] = (t_alpha - (time.perf_counter() - t0)) * 1e3
    times: dict[str, list[float]] = {a: [] for a in algos}
    for r in range(args.rounds):
        order = algos[r % len(algos):] + algos[:r % len(algos)]
        for a in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.updates):
                steady_update(a)
            sync(device)
            times[a].append((time.perf_counter() - t0) * 1e3 / args.updates)
    base = statistics.median(times[algos[0]])
    rows = []
    print(f"{args.env}, preset {args.preset}, {device}, {args.threads} thread(s), {args.updates} updates x "
          f"{args.rounds} rounds; torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print(f"{'algo':8} {'ms/update':>10} {'min-max':>14} {'x ' + algos[0]:>9} {'rare α step ms':>15} {'amortised':>10}"
          f" {'update MiB':>10}")
    for a in algos:
        med = statistics.median(times[a])
        every = cfgs[a].dacer_alpha_every if a in rare else 0
        amort = rare[a] / every if a in rare else 0.0
        rows.append({"algo": a, "ms_per_update": med, "min": min(times[a]), "max": max(times[a]),
                     "ratio": med / base, "alpha_step_ms": rare.get(a), "alpha_every": every or None,
                     "update_peak_mib": peak.get(a)})
        alpha = f"{rare[a]:.0f} (1/{every})" if a in rare else "-"
        share = f"+{amort:.3f}" if a in rare else "-"
        mib = f"{peak[a]:.1f}" if a in peak else "-"
        print(f"{a:8} {med:10.2f} {min(times[a]):6.2f}-{max(times[a]):<7.2f} {med / base:9.2f} {alpha:>15} {share:>10}"
              f" {mib:>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "preset": args.preset, "device": str(device), "updates": args.updates,
                       "rounds": args.rounds, "torch": torch.__version__,
                       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
