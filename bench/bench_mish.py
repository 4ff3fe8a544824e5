"""The one-exp Mish (fastrsm.nets.mish) against ATen's F.mish on a CPU: the op alone, and whole updates and acts.

    python bench/bench_mish.py [--rounds 5] [--presets smoke,small] [--algos dpmd,sdac,sac] [--json out.json]

Part 1 times the op (forward without grad; forward + backward) at the sizes the presets produce, F.mish against
fastrsm.nets.exp_mish. Part 2 times whole DPMD/SDAC/SAC updates and a one-observation act with
`fastrsm.nets.FAST_MISH_MIN_NUMEL` at its value (the fast path where it pays) and at infinity (F.mish
everywhere), the two settings alternating in every round on the same agents, so load from other processes falls
on both alike. One torch thread; median over rounds; ratio = F.mish time / fast time (> 1: the fast path wins)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from fastrsm import nets
from fastrsm.agents import make_agent
from fastrsm.backend import make_ops, resolve_backend
from fastrsm.bench import fill_random
from fastrsm.config import make_config
from fastrsm.replay import ReplayBuffer
from fastrsm.utils import seed_everything

OBS_DIM, ACT_DIM = 11, 3  # Hopper's
OP_SHAPES = [(8, 64), (128, 64), (256, 128), (1024, 64), (1024, 128), (4096, 256)]


def _time(fn: Callable[[], object], calls: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def _median_times(contestants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    t: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(rounds):
        for k, fn in contestants.items():
            t[k].append(_time(fn, calls))
    return {k: statistics.median(v) for k, v in t.items()}


def _fwd_bwd(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, up: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        f(x).backward(up)
    return run


def op_row(shape: tuple[int, int], rounds: int) -> dict:
    x = torch.randn(shape) * 3
    xg = x.clone().requires_grad_()
    up = torch.randn(shape)
    contestants = {"fwd_aten": partial(F.mish, x), "fwd_exp": partial(nets.exp_mish, x),
                   "fb_aten": _fwd_bwd(F.mish, xg, up), "fb_exp": _fwd_bwd(nets.exp_mish, xg, up)}
    m = _median_times(contestants, rounds, min(2000, max(20, int(1e6 / x.numel()))))
    return {"shape": list(shape), **{k + "_ms": v for k, v in m.items()},
            "fwd_ratio": m["fwd_aten"] / m["fwd_exp"], "fb_ratio": m["fb_aten"] / m["fb_exp"]}


def update_row(preset: str, algo: str, rounds: int, updates: int, acts: int) -> dict:
    """One agent; F.mish and the fast path alternate within every round (the first round warms up both)."""
    fast = nets.FAST_MISH_MIN_NUMEL
    device = torch.device("cpu")
    cfg = make_config(preset, {"env_id": "Hopper-v4", "algo": algo, "device": "cpu"})
    seed_everything(0)
    agent = make_agent(algo, OBS_DIM, ACT_DIM, cfg, device, make_ops(resolve_backend(cfg.backend, device), device))
    replay = ReplayBuffer(10_000, OBS_DIM, ACT_DIM, device, cfg.batch_size)
    fill_random(replay, 10_000, 0)
    obs = torch.randn(1, OBS_DIM)

    def update() -> None:
        parts = agent.next_parts()
        agent.update_step(replay.sample(), parts)
        agent.advance(parts)

    def act() -> None:
        with torch.inference_mode():
            agent.act(obs, explore=False)

    t: dict[str, list[float]] = {k: [] for k in ("upd_aten", "upd_fast", "act_aten", "act_fast")}
    try:
        for r in range(rounds + 1):
            for name in (("aten", "fast") if r % 2 else ("fast", "aten")):
                nets.FAST_MISH_MIN_NUMEL = fast if name == "fast" else float("inf")
                u, a = _time(update, updates), _time(act, acts)
                if r:
                    t["upd_" + name].append(u)
                    t["act_" + name].append(a)
    finally:
        nets.FAST_MISH_MIN_NUMEL = fast
    m = {k: statistics.median(v) for k, v in t.items()}
    return {"preset": preset, "algo": algo, "batch": cfg.batch_size, "hidden": cfg.hidden,
            **{k + "_ms": v for k, v in m.items()},
            "update_ratio": m["upd_aten"] / m["upd_fast"], "act_ratio": m["act_aten"] / m["act_fast"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--updates", type=int, default=20, help="timed updates per setting per round")
    p.add_argument("--acts", type=int, default=200, help="timed one-observation acts per setting per round")
    p.add_argument("--presets", default="smoke,small")
    p.add_argument("--algos", default="dpmd,sdac,sac")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {cpu}, one thread, "
          f"{args.rounds} rounds, median; ratio = F.mish / fast")
    print("op: shape, forward (no grad) aten -> exp ms, forward+backward aten -> exp ms")
    ops = [op_row(shape, args.rounds) for shape in OP_SHAPES]
    for r in ops:
        print(f"  {str(tuple(r['shape'])):12} fwd {r['fwd_aten_ms']:.4f} -> {r['fwd_exp_ms']:.4f} "
              f"(x{r['fwd_ratio']:.2f})   fwd+bwd {r['fb_aten_ms']:.4f} -> {r['fb_exp_ms']:.4f} (x{r['fb_ratio']:.2f})")
    print(f"whole updates and acts, FAST_MISH_MIN_NUMEL = inf (F.mish) -> {nets.FAST_MISH_MIN_NUMEL}:")
    ups = []
    for preset in [x for x in args.presets.split(",") if x]:
        for algo in [x for x in args.algos.split(",") if x]:
            r = update_row(preset, algo, args.rounds, args.updates, args.acts)
            ups.append(r)
            print(f"  {preset:6} {algo:5} update {r['upd_aten_ms']:8.2f} -> {r['upd_fast_ms']:8.2f} ms "
                  f"(x{r['update_ratio']:.2f})   act {r['act_aten_ms']:6.3f} -> {r['act_fast_ms']:6.3f} ms "
                  f"(x{r['act_ratio']:.2f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "ops": ops, "updates": ups}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
