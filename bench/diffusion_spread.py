"""How much of its targets' spread does the diffusion policy give back? (bench/LEARNING.md, DPMD on Hopper)

DPMD trains the policy on its own best-of-N actions plus the exploration noise, so the policy's width is set by how
faithfully the diffusion model reproduces the spread of what it is trained on. This trains `DiffusionPolicy` by plain
denoising score matching on a known target, a_0 = 0.8·tanh(W s) + σ·N(0, I) clipped to the box (a state-dependent
mean, spread σ per dimension), then samples it back with the run's sampler and reports

    ratio = (std of the samples at one state, mean over states) / σ

per schedule and number of steps. A ratio r < 1 compounds in DPMD's loop: a policy of spread s trained on its
own draws plus noise n settles where s = r·√(s² + n²), i.e. s = n·r/√(1 − r²) (n = 0.1, r = 0.34: s = 0.036).

    python bench/diffusion_spread.py                      # the table of bench/LEARNING.md (about 3 min, 1 thread)
    python bench/diffusion_spread.py --cases linear:10,geometric:10 --sigmas 0.1 --steps 2000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastrsm.diffusion import SCHEDULES, DiffusionPolicy  # noqa: E402
from fastrsm.losses import dsm_loss  # noqa: E402

OBS, ACT = 11, 3  # Hopper-v4's sizes
DEFAULT_CASES = "linear:10,linear:20,cosine:10,cosine:20,vp:10,vp:20,geometric:10"


def measure(schedule: str, T: int, sigma: float, steps: int, hidden: int = 128, layers: int = 2,
            seed: int = 0) -> dict[str, float]:
    """Train on the target for `steps` Adam steps (batch 256, lr 1e-3), then sample 256 actions at 64 states."""
    torch.manual_seed(seed)
    W = torch.randn(OBS, ACT) * 0.3
    pol = DiffusionPolicy(OBS, ACT, hidden=hidden, layers=layers, T=T, schedule=schedule)
    opt = torch.optim.Adam(pol.parameters(), 1e-3)

    def target(s: torch.Tensor) -> torch.Tensor:
        return 0.8 * torch.tanh(s @ W)

    for _ in range(steps):
        s = torch.randn(256, OBS)
        a0 = (target(s) + sigma * torch.randn(256, ACT)).clamp(-1, 1)
        loss = dsm_loss(pol.eps_net, pol.sched, s, a0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = torch.randn(64, OBS)
        x = pol.sample(s, 256)  # [64, 256, A]
        want = (target(s).unsqueeze(1) + sigma * torch.randn(64, 256, ACT)).clamp(-1, 1)
        spread = x.std(1).mean().item()
        return {"spread": spread, "target_spread": want.std(1).mean().item(), "ratio": spread / sigma,
                "mean_err": (x.mean(1) - target(s)).abs().mean().item(),
                "lowest_levels": pol.sched.sqrt_1m_abar[:3].tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated SCHEDULE:T")
    p.add_argument("--sigmas", default="0.1,0.3", help="comma-separated target spreads σ")
    p.add_argument("--steps", type=int, default=4000, help="Adam steps per case")
    p.add_argument("--noise", type=float, default=0.1, help="DPMD's exploration noise n for the fixed-point column")
    args = p.parse_args(argv)
    cases = []
    for c in args.cases.split(","):
        kind, _, T = c.partition(":")
        if kind not in SCHEDULES or not T.isdigit() or int(T) < 1:
            p.error(f"--cases: {c!r} is not SCHEDULE:T with SCHEDULE one of {', '.join(SCHEDULES)}")
        cases.append((kind, int(T)))
    try:
        sigmas = [float(x) for x in args.sigmas.split(",")]
    except ValueError:
        p.error(f"--sigmas: {args.sigmas!r} is not a comma-separated list of numbers")
    if args.steps < 1 or any(s <= 0 for s in sigmas):
        p.error("--steps and every σ must be positive")
    torch.set_num_threads(1)
    print(f"| schedule | T | lowest noise levels √(1−ᾱ) | σ | sampled spread | ratio | mean error "
          f"| DPMD's fixed point at noise {args.noise} |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for kind, T in cases:
        for sigma in sigmas:
            t0 = time.perf_counter()
            r = measure(kind, T, sigma, args.steps)
            fixed = args.noise * r["ratio"] / math.sqrt(1 - r["ratio"] ** 2) if r["ratio"] < 1 else math.inf
            levels = ", ".join(f"{v:.3f}" for v in r["lowest_levels"])
            print(f"| {kind} | {T} | {levels} | {sigma} | {r['spread']:.4f} | {r['ratio']:.2f} | "
                  f"{r['mean_err']:.4f} | {fixed:.3f} |", flush=True)
            print(f"  ({kind} T={T} σ={sigma}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
