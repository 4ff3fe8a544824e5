"""The compiled update with its backward traced into one graph against the same update with graph breaks at
backward(), per algorithm, side by side in one process (interleaved rounds, medians).

`--backend compile` traces each update's backward and optimiser steps into one graph where torch has
`trace_autograd_ops` (torch >= 2.12; fastrsm.compiled); an agent class with `trace_backward = False` keeps the
breaks. This measures what the one graph buys at `small`'s sizes on Hopper-v4's shapes (11-dim observations,
3-dim actions), one CPU thread:

  python bench/bench_trace_backward.py --algos dacer,dacer2 [--rounds 5 --updates 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

OBS_DIM, ACT_DIM = 11, 3


def build(algo: str, trace: bool):
    from fastrsm.agents import make_agent
    from fastrsm.backend import make_ops
    from fastrsm.compiled import CompiledLearner
    from fastrsm.config import make_config

    cfg = make_config("small", {"algo": algo, "device": "cpu"})
    torch.manual_seed(0)
    agent = make_agent(algo, OBS_DIM, ACT_DIM, cfg, torch.device("cpu"), make_ops("compile", "cpu"))
    agent.trace_backward = trace  # an instance attribute: the class default is left alone
    return CompiledLearner(agent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="dacer,dacer2", help="comma-separated algorithms")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--updates", type=int, default=10, help="updates per contestant per round")
    a = p.parse_args(argv)
    import torch._dynamo.config as dynamo

    if not hasattr(dynamo, "trace_autograd_ops"):
        print(f"bench_trace_backward: torch {torch.__version__} cannot trace the backward (no trace_autograd_ops)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from fastrsm.bench import fill_random
    from fastrsm.replay import ReplayBuffer

    rb = ReplayBuffer(4096, OBS_DIM, ACT_DIM, "cpu", 256)
    fill_random(rb, 4096, 0)
    print(f"torch {torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}; ms per update, median of "
          f"{a.rounds} rounds of {a.updates}\n")
    print("| algo | one graph | graph breaks | breaks / one graph |\n|---|---:|---:|---:|")
    for algo in a.algos.split(","):
        contestants = {trace: build(algo, trace) for trace in (True, False)}
        for agent in contestants.values():  # compile (and recompile once the update counter moves) outside timing
            for _ in range(3):
                agent.update(rb)
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(a.rounds):
            for trace in ((True, False) if r % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                for _ in range(a.updates):
                    contestants[trace].update(rb)
                times[trace].append((time.perf_counter() - t0) * 1e3 / a.updates)
        one, broken = statistics.median(times[True]), statistics.median(times[False])
        print(f"| {algo} | {one:.1f} | {broken:.1f} | {broken / one:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
