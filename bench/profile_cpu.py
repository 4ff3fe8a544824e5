"""Where a CPU spends a DPMD update and an act: torch.profiler's self-CPU time by op.

    python bench/profile_cpu.py [--preset smoke] [--calls 50] [--top 10] [--compiled]

Profiles, one torch thread, Hopper's shapes (obs 11, act 3): acting on one observation (best-of-N, no noise) and
one DPMD update, each with the chain the torch backend ran before the factored chain (`reverse_chain`, the
reference) and with today's (`factored_chain`), and with --compiled also fastrsm.compiled's whole-function
torch.compile. Prints, per case, the top ops by self-CPU time with their share, and the total per call.
"""

from __future__ import annotations

import argparse
import sys

import torch
from fastrsm.kernels.reference import reverse_chain
from torch.profiler import ProfilerActivity, profile

from fastrsm.agents import make_agent
from fastrsm.backend import Ops, make_ops, torch_ops_with_chain
from fastrsm.bench import fill_random
from fastrsm.compiled import CompiledLearner
from fastrsm.config import make_config
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer
from fastrsm.utils import seed_everything

OBS, ACT = 11, 3


def reference_ops(device: torch.device) -> Ops:
    """The torch backend as it was before the factored chain: the reference chain."""
    return torch_ops_with_chain(reverse_chain, device)


def table(prof, calls: int, top: int) -> str:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    lines = [f"    total self-CPU {total / calls / 1e3:.3f} ms per call"]
    for e in events[:top]:
        lines.append(f"    {e.key[:48]:48} {e.self_cpu_time_total / calls / 1e3:8.3f} ms  "
                     f"{100 * e.self_cpu_time_total / total:5.1f} %  ({e.count // calls} calls)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--compiled", action="store_true", help="also the torch.compile'd act and update")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    cfg = make_config(args.preset, {"env_id": "Hopper-v4", "algo": "dpmd", "device": "cpu"})
    print(f"preset {args.preset}: H {cfg.hidden}x{cfg.layers}, T {cfg.diffusion_steps}, N {cfg.particles}, "
          f"batch {cfg.batch_size}, a' best of {cfg.target_particles or cfg.particles}; torch {torch.__version__}")
    agents = {}
    for name, ops in (("reference chain (before)", reference_ops(dev)), ("factored chain", make_ops("torch", dev))):
        seed_everything(0)
        agents[name] = Learner(make_agent("dpmd", OBS, ACT, cfg, dev, ops))
    if args.compiled:
        seed_everything(0)
        eager = make_agent("dpmd", OBS, ACT, cfg, dev, make_ops("torch", dev))
        agents["factored chain, compiled"] = CompiledLearner(eager)
    rb = ReplayBuffer(10_000, OBS, ACT, dev, cfg.batch_size)
    fill_random(rb, 10_000, 0)
    obs = torch.randn(1, OBS)
    for name, agent in agents.items():
        def update(agent=agent):
            return agent.update(rb)

        for _ in range(3):  # warm-up (and compilation)
            agent.act(obs, explore=False)
            update()
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                agent.act(obs, explore=False)
        print(f"act, 1 obs | {name}\n{table(prof, args.calls, args.top)}")
        n = max(args.calls // 5, 4)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                update()
        print(f"update (DPMD, schedule's mix of parts) | {name}\n{table(prof, n, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
