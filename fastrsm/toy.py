"""The toy experiment of the paper: a 2-D diffusion model trained from an energy alone (docs/algorithms.md §1, §5).

A single-state RL problem: the action space is the box [-1, 1]^2, Q(a) = -E(a), λ = 1, and the target is
p(a) ∝ exp(Q(a)/λ). SDAC and DPMD see only Q; DSM is the reference that sees true samples; `uniform` is SDAC
with its weights switched off, which must fail (it shows that the reweighting is what does the work).

    python -m fastrsm.toy --energy gmm --loss all --out toy.png [--steps N] [--seed S]

`run_toy` is the library entry point (the tests call it); the CLI adds the table and the picture.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .cli import OneLineParser
from .diffusion import DiffusionPolicy, q_sample
from .losses import dpmd_loss, dsm_loss, sdac_loss, sdac_reverse_samples

ENERGIES = ("gmm", "moons")
LOSSES = ("sdac", "dpmd", "dsm", "uniform")

# ---------------------------------------------------------------- energies (Q = -E, log unnormalised density)


def _logsumexp0(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 0 of a component-major [M, N] tensor. Component-major, because reductions over a
    short innermost dim are slow on CPU while over dim 0 they are plain vectorised row operations; terms are
    clamped at e^-80 of the largest, because exp of arguments below ≈ -87 underflows into denormals, which take
    a ~10x slower path. Both matter: SDAC evaluates Q on B·K points every step."""
    m = x.amax(0)
    return m + (x - m).clamp_(min=-80.0).exp_().sum(0).log()


class Energy:
    """A target on the box: Q(a), exact samples, and the nearest-component assignment the metrics use."""

    name: str
    weights: torch.Tensor  # true mass of each component (mode / moon)
    near: float  # distance to the nearest component below which a sample counts as "on" the target

    def q(self, a: torch.Tensor) -> torch.Tensor:
        """Q(a) = -E(a), the log of the unnormalised target density: [..., 2] -> [...]."""
        return self._q_flat(a.reshape(-1, 2)).reshape(a.shape[:-1])

    def _q_flat(self, a: torch.Tensor) -> torch.Tensor:  # [N, 2] -> [N]
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def nearest(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of the nearest component [n], distance to it [n]) for a: [n, 2]."""
        raise NotImplementedError


class GMMEnergy(Energy):
    """Six modes on a circle of radius 0.6, std 0.07, unequal weights. Neighbours are 0.6 apart (8.6σ), and the
    box edge is ≥ 0.4 (5.7σ) from every mode, so the mass outside the box (which the chain cannot reach) is
    negligible and the exact mixture density is the target (λ = 1: Q = log p)."""

    name = "gmm"

    def __init__(self, radius: float = 0.6, std: float = 0.07,
                 weights: tuple[float, ...] = (0.28, 0.08, 0.20, 0.12, 0.22, 0.10)):
        m = len(weights)
        ang = torch.arange(m, dtype=torch.float32) * (2 * math.pi / m) + math.pi / 2
        self.means = radius * torch.stack([ang.cos(), ang.sin()], -1)  # [M, 2]
        self.std = std
        self.weights = torch.tensor(weights, dtype=torch.float32) / sum(weights)
        self.near = 3 * std
        # log(w_m N(a; μ_m, σ²I)) = a·μ_m/σ² + b_m − ‖a‖²/(2σ²): one matmul for all modes.
        self._W = self.means / std**2  # [M, 2]
        self._b = self.weights.log() - (self.means**2).sum(-1) / (2 * std**2) - math.log(2 * math.pi * std**2)

    def _q_flat(self, a: torch.Tensor) -> torch.Tensor:
        logits = torch.addmm(self._b.unsqueeze(1), self._W, a.T)  # [M, N]
        sq = a[:, 0] * a[:, 0] + a[:, 1] * a[:, 1]
        return _logsumexp0(logits) - sq / (2 * self.std**2)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        out = torch.empty(0, 2)
        while out.shape[0] < n:  # rejection of the (vanishingly rare) draws outside the box
            comp = torch.multinomial(self.weights, n, replacement=True, generator=gen)
            x = self.means[comp] + self.std * torch.randn(n, 2, generator=gen)
            out = torch.cat([out, x[(x.abs() <= 1).all(-1)]])
        return out[:n]

    def nearest(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, idx = torch.cdist(a, self.means).min(-1)
        return idx, dist


class MoonsEnergy(Energy):
    """Two moons as Gaussian tubes around two half circles: Q(a) = log Σ_moons exp(-d_moon(a)²/(2s²)), with d the
    distance to the arc. Unnormalised; exact samples by rejection from the uniform box (Q ≤ log 2). The moons are
    images of each other under a half turn about the origin, so each carries exactly half the mass; the tubes
    stay ≥ 0.3 (6s) from the box edge."""

    name = "moons"

    def __init__(self, radius: float = 0.45, tube: float = 0.05):
        # sklearn's layout (unit arcs centred at (0, 0) and (1, 0.5)) recentred and scaled into the box;
        # moon 0 is the upper half circle (side +1), moon 1 the lower one (side -1).
        self.arcs = ((-0.5 * radius, -0.25 * radius, 1.0), (0.5 * radius, 0.25 * radius, -1.0))
        self.radius, self.tube = radius, tube
        self.weights = torch.tensor([0.5, 0.5])
        self.near = 3 * tube

    def arc_dist(self, a: torch.Tensor) -> torch.Tensor:
        """Distance to each moon's arc, component-major: [N, 2] -> [2 moons, N]."""
        x, y = a[:, 0], a[:, 1]
        out = []
        for cx, cy, side in self.arcs:
            dx, dy = x - cx, y - cy
            ring = ((dx * dx + dy * dy).sqrt() - self.radius).abs()
            # Off the half circle's side the nearest arc point is an end point, (cx ± r, cy).
            ends = torch.minimum(((dx - self.radius) ** 2 + dy * dy), ((dx + self.radius) ** 2 + dy * dy)).sqrt()
            out.append(torch.where(dy * side >= 0, ring, ends))
        return torch.stack(out)

    def _q_flat(self, a: torch.Tensor) -> torch.Tensor:
        return _logsumexp0(-self.arc_dist(a) ** 2 / (2 * self.tube**2))

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        out = torch.empty(0, 2)
        while out.shape[0] < n:  # acceptance ≈ 4 %: 25 n proposals per round is plenty
            x = torch.rand(25 * n, 2, generator=gen) * 2 - 1
            keep = torch.rand(25 * n, generator=gen) < torch.exp(self.q(x) - math.log(2))
            out = torch.cat([out, x[keep]])
        return out[:n]

    def nearest(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, idx = self.arc_dist(a).min(0)
        return idx, dist


def make_energy(name: str) -> Energy:
    if name == "gmm":
        return GMMEnergy()
    if name == "moons":
        return MoonsEnergy()
    raise ValueError(f"unknown energy {name!r}; choose one of {', '.join(ENERGIES)}")


# ---------------------------------------------------------------- metrics


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.1) -> float:
    """√MMD² (biased V-statistic, so ≥ 0) with the Gaussian kernel exp(-‖x−y‖²/(2h²)); h is fixed so that
    figures are comparable across methods and runs."""
    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2)).mean()
    return math.sqrt(max((k(x, x) + k(y, y) - 2 * k(x, y)).item(), 0.0))


def reference_samples(energy: Energy, n: int) -> torch.Tensor:
    """True samples with a fixed seed of their own: every method and training seed is measured against the same
    set. At least 2000 (the MMD's share)."""
    return energy.sample(max(n, 2000), torch.Generator().manual_seed(12345))


def toy_metrics(energy: Energy, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """weight_err: max over components of |empirical − true weight| (samples assigned to the nearest one);
    near_frac: fraction of samples within `energy.near` (3σ of a mode / 3 tube widths of a moon);
    mmd: against true samples (the first 2000 of each, to bound the O(n²) cost)."""
    idx, dist = energy.nearest(samples)
    emp = torch.bincount(idx, minlength=len(energy.weights)).float() / samples.shape[0]
    return {
        "weight_err": (emp - energy.weights).abs().max().item(),
        "near_frac": (dist <= energy.near).float().mean().item(),
        "mmd": mmd(samples[:2000], reference[:2000]),
        "weights": emp.tolist(),
    }


# ---------------------------------------------------------------- training


@dataclass
class ToyConfig:
    """One setting for every method: same network, T, schedule, optimiser, EMA, number of steps and batch."""

    steps: int = 3000
    batch: int = 256
    lr: float = 1e-2  # Adam, cosine-decayed to lr/10 (a lower rate sits for ~1000 steps on a blurred blob)
    ema: float = 0.02  # τ of the EMA copy that is sampled (RL acts with an EMA policy, algorithms §3); 0: the raw one
    hidden: int = 128
    layers: int = 3
    T: int = 20
    schedule: str = "cosine"  # with the exact score, T = 20 cosine puts 96 % of samples within 3σ, linear 79 %
    lambda_: float = 1.0
    # SDAC. K: the weights are a self-normalised importance sample, biased at finite K towards equal mode
    # weights (where few a_0^k land near a mode, the softmax picks the nearest, not the heaviest). GMM, seed 0,
    # these defaults: max mode-weight error 0.028 at K = 64 (the RL default), 0.009 at 256, 0.010 at 512.
    reverse_samples: int = 256
    h_model_frac: float = 0.5  # h_t: share of a_0 drawn from the current (EMA) model, the rest uniform
    h_pool: int = 1024  # model samples drawn per refresh ...
    h_refresh: int = 250  # ... every this many steps
    # DPMD: two mirror-descent steps; 70 % of the exponent in the first, the fit from π_0 (uniform, exact
    # samples), 30 % in the second, from the model; 60 % / 40 % of the steps.
    dpmd_temps: tuple[float, ...] = (0.7, 0.3)  # share of 1/λ per iteration
    dpmd_split: tuple[float, ...] = (0.6, 0.4)  # share of the steps per iteration
    dpmd_pool: int = 8192  # samples of π_k (k ≥ 1) drawn per iteration; π_0 gets 8x as many (they are free)
    dpmd_resample: float = 0.5  # β: the pool is resampled ∝ w^β and the loss weighted by w^(1−β)


def _box(n: int) -> torch.Tensor:
    return torch.rand(n, 2) * 2 - 1


def _draw(policy: DiffusionPolicy, n: int) -> torch.Tensor:
    with torch.no_grad():
        return policy.sample(torch.zeros(1, 1), n).reshape(-1, 2)


def _split(n: int, shares: tuple[float, ...]) -> list[int]:
    """n split into integers in the given proportions, summing exactly to n."""
    edges = [round(c * n / sum(shares)) for c in itertools.accumulate(shares)]
    return [e - s for s, e in zip([0] + edges[:-1], edges)]


def _sdac_losses(policy: DiffusionPolicy, sampler: DiffusionPolicy, energy: Energy, cfg: ToyConfig,
                 uniform_weights: bool) -> Callable[[int], torch.Tensor]:
    """SDAC (docs/algorithms.md §5): a_t ~ h_t; K reverse samples a_0^k ~ φ_{0|t}(·|a_t); weights softmax_k(Q(a_0^k)/λ).

    h_t: a_0 from the model (docs/algorithms.md §5's default: training goes where the chain goes) mixed with uniform
    draws on the box (coverage: early on the model is nowhere near the target), noised to a uniform level. Any h_t > 0
    leaves the minimiser, the target's score, unchanged. `uniform_weights` zeroes the logits: the regression target
    becomes the plain mean of the ε^k, which carries no information about Q at all."""
    sched, B, K = policy.sched, cfg.batch, cfg.reverse_samples
    n_model = round(cfg.h_model_frac * B)
    s = torch.zeros(B, 1)
    pool = _box(cfg.h_pool)  # until the first refresh, the model is untrained anyway

    def step(i: int) -> torch.Tensor:
        nonlocal pool
        if n_model and i > 0 and i % cfg.h_refresh == 0:
            pool = _draw(sampler, cfg.h_pool)
        a0 = torch.cat([pool[torch.randint(0, pool.shape[0], (n_model,))], _box(B - n_model)])
        t = torch.randint(0, sched.T, (B,))
        a_t = q_sample(sched, a0, t, torch.randn(B, 2))
        a0k, eps_k = sdac_reverse_samples(sched, a_t, t, K)
        q = torch.zeros(B, K) if uniform_weights else energy.q(a0k)
        return sdac_loss(policy.eps_net(a_t, s, t), eps_k, q, cfg.lambda_)

    return step


def _dsm_losses(policy: DiffusionPolicy, energy: Energy, cfg: ToyConfig) -> Callable[[int], torch.Tensor]:
    """The reference: plain DSM on fresh true samples of the target."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    s = torch.zeros(cfg.batch, 1)
    return lambda i: dsm_loss(policy.eps_net, policy.sched, s, energy.sample(cfg.batch, gen))


def _dpmd_losses(policy: DiffusionPolicy, sampler: DiffusionPolicy, energy: Energy, cfg: ToyConfig
                 ) -> Callable[[int], torch.Tensor]:
    """Mirror descent π_{k+1} ∝ π_k · exp(Q/λ_k) from π_0 = uniform on the box, k = 0..M-1.

    The inverse temperature is split over the iterations, Σ_k 1/λ_k = 1/λ, so the product of the M steps is
    exp(Q/λ) and π_M ∝ exp(Q/λ) is the target. (docs/algorithms.md §5's clip((Q−m)/σ, −3, 3) is the RL recipe, where Q
    is learned and drifts; here Q is exact, so the exact mirror-descent weights are used.) π_0's samples are exact
    uniform draws (a perfect "broad initial policy"); later π_k is the model (its EMA copy, the one that is sampled) at
    the start of iteration k, drawn by the reverse chain without gradient, once per iteration (a pool). Weights are
    normalised to mean 1 over the pool in log space (exp(Q/λ_k) spans up to e^±50 on the box; a constant only rescales
    the loss).

    Batches: the pool is resampled ∝ w^β and dpmd_loss gets the weights w^(1−β) (rescaled to mean 1). The
    expected loss is that of uniform draws weighted by w, for any β; β = 0.5 is the variance fix: from the
    uniform π_0, plain weighting (β = 0) leaves an effective batch of ~20-30 of 256 (the target covers a few %
    of the box), and 2000 such steps only reach a blurred blob (~35 % within 3σ), which every later iteration
    inherits."""
    sched, B, beta = policy.sched, cfg.batch, cfg.dpmd_resample
    temps = cfg.dpmd_temps
    if len(temps) != len(cfg.dpmd_split) or min(temps) < 0 or sum(temps) <= 0:
        raise ValueError(f"dpmd_temps {temps}, dpmd_split {cfg.dpmd_split}: one non-negative share per iteration")
    inv_lam = [f / sum(temps) / cfg.lambda_ for f in temps]
    starts = list(itertools.accumulate([0] + _split(cfg.steps, cfg.dpmd_split)))
    s = torch.zeros(B, 1)
    pool = w_draw = w_loss = torch.empty(0)

    def step(i: int) -> torch.Tensor:
        nonlocal pool, w_draw, w_loss
        if i in starts[:-1]:
            k = starts.index(i)
            pool = _box(8 * cfg.dpmd_pool) if k == 0 else _draw(sampler, cfg.dpmd_pool)
            logw = energy.q(pool) * inv_lam[k]
            logw = logw - (torch.logsumexp(logw, 0) - math.log(len(pool)))  # mean(w) = 1
            w_draw = torch.exp(beta * logw)
            w_loss = torch.exp((1 - beta) * logw) * w_draw.mean()  # E_{idx ∝ w_draw}[w_loss] = mean(w) = 1
        idx = torch.multinomial(w_draw, B, replacement=True)
        t = torch.randint(0, sched.T, (B,))
        eps = torch.randn(B, 2)
        return dpmd_loss(policy.eps_net(q_sample(sched, pool[idx], t, eps), s, t), eps, w_loss[idx])

    return step


def _train(policy: DiffusionPolicy, energy: Energy, loss: str, cfg: ToyConfig) -> DiffusionPolicy:
    """The one loop every method shares; returns the policy to sample (the EMA copy unless cfg.ema == 0)."""
    sampler = copy.deepcopy(policy).requires_grad_(False) if cfg.ema > 0 else policy
    if loss in ("sdac", "uniform"):
        batch_loss = _sdac_losses(policy, sampler, energy, cfg, uniform_weights=loss == "uniform")
    elif loss == "dsm":
        batch_loss = _dsm_losses(policy, energy, cfg)
    elif loss == "dpmd":
        batch_loss = _dpmd_losses(policy, sampler, energy, cfg)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    # Cosine decay to lr/10 over each phase: the high rate learns the mode layout fast, the decay then removes
    # the noise that blurs the modes. DPMD restarts it at each mirror-descent iteration: each is its own fit, and
    # the next one samples the model, so each must end sharp (blur is inherited and compounds).
    phases = _split(cfg.steps, cfg.dpmd_split) if loss == "dpmd" else [cfg.steps]
    factor = [0.1 + 0.45 * (1 + math.cos(math.pi * j / n)) for n in phases for j in range(n)]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: factor[min(i, len(factor) - 1)])
    params, ema_params = list(policy.parameters()), list(sampler.parameters())
    for i in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        batch_loss(i).backward()
        opt.step()
        lr_sched.step()
        if sampler is not policy:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, cfg.ema)
    return sampler


def run_toy(energy: str, loss: str, steps: int = 3000, seed: int = 0, batch: int = 256, samples: int = 4000,
            **overrides: Any) -> dict:
    """Train one method on one energy and measure it. Returns the metrics (weight_err, near_frac, mmd,
    weights), the model's samples [samples, 2], the reference true samples, and the wall time in seconds.

    The caller's global RNG state is left untouched; the run is a function of `seed` (and the thread count)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    for name, v in (("steps", steps), ("batch", batch), ("samples", samples)):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    en = make_energy(energy)
    cfg = ToyConfig(steps=steps, batch=batch, **overrides)
    reference = reference_samples(en, samples)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = DiffusionPolicy(1, 2, hidden=cfg.hidden, layers=cfg.layers, T=cfg.T, schedule=cfg.schedule)
        t0 = time.perf_counter()
        sampler = _train(policy, en, loss, cfg)
        train_s = time.perf_counter() - t0
        x = _draw(sampler, samples)
    out = toy_metrics(en, x, reference)
    out.update(samples=x, reference=reference, train_s=train_s)
    return out


# ---------------------------------------------------------------- picture and CLI


def plot(energy: Energy, results: dict[str, dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.linspace(-1, 1, 200)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    Z = energy.q(torch.stack([X, Y], -1))
    levels = torch.linspace(-12, Z.max().item(), 10).tolist()  # Q on the target's support, not the far tails
    panels = {"true samples": None, **results}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], panels.items()):
        ax.contour(X.numpy(), Y.numpy(), Z.numpy(), levels=levels, cmap="Greys", linewidths=0.6)
        pts = (next(iter(results.values()))["reference"] if res is None else res["samples"])[:2000].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="C3" if res is None else "C0")
        label = name if res is None else f"{name}\nw.err {res['weight_err']:.3f}  near {res['near_frac']:.2f}" \
            f"  mmd {res['mmd']:.3f}"
        ax.set_title(label, fontsize=8)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _picture_formats() -> set[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return set(Figure().canvas.get_supported_filetypes())


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fastrsm.toy", description=__doc__.split("\n")[0])
    p.add_argument("--energy", choices=ENERGIES, default="gmm")
    p.add_argument("--loss", choices=(*LOSSES, "all"), default="all")
    p.add_argument("--out", default="toy.png", help="picture (PNG) of the energy and the samples")
    p.add_argument("--steps", type=_positive_int, default=ToyConfig.steps,
                   help="gradient steps, the same for every method")
    p.add_argument("--batch", type=_positive_int, default=256)
    p.add_argument("--samples", type=_positive_int, default=4000, help="model samples for the metrics")
    p.add_argument("--reverse-samples", type=_positive_int, default=ToyConfig.reverse_samples, help="K of SDAC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)
    # Fail before minutes of training, not after.
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        p.error(f"the directory of --out does not exist: {out_dir}")
    ext = os.path.splitext(a.out)[1].lower().lstrip(".")
    if ext and ext not in _picture_formats():
        p.error(f"--out: matplotlib cannot write .{ext} files")

    torch.set_num_threads(a.threads)
    losses = LOSSES if a.loss == "all" else (a.loss,)
    results = {}
    print(f"energy={a.energy} steps={a.steps} batch={a.batch} seed={a.seed} K={a.reverse_samples}")
    print(f"{'loss':<8} {'weight_err':>10} {'near_frac':>9} {'mmd':>7} {'train_s':>7}  weights")
    for name in losses:
        r = run_toy(a.energy, name, steps=a.steps, seed=a.seed, batch=a.batch, samples=a.samples,
                    reverse_samples=a.reverse_samples)
        results[name] = r
        ws = " ".join(f"{w:.3f}" for w in r["weights"])
        print(f"{name:<8} {r['weight_err']:>10.3f} {r['near_frac']:>9.3f} {r['mmd']:>7.3f} {r['train_s']:>7.1f}  {ws}",
              flush=True)
    # The ceiling: a second set of true samples measured against the reference (MMD's floor at this n).
    en = make_energy(a.energy)
    t = toy_metrics(en, en.sample(a.samples, torch.Generator().manual_seed(a.seed + 1)),
                    reference_samples(en, a.samples))
    print(f"{'true':<8} {t['weight_err']:>10.3f} {t['near_frac']:>9.3f} {t['mmd']:>7.3f} {'':>7}  "
          + " ".join(f"{w:.3f}" for w in en.weights.tolist()))
    plot(en, results, a.out, title=f"{a.energy}: {a.steps} steps × batch {a.batch}, seed {a.seed}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
