"""fastrsm against the authors' own JAX code on this CPU: acting on 1 and 5 observations and one DPMD
update, at the smoke and the paper sizes, both libraries in one process, interleaved rounds, medians.

Optional and never in CI. It needs a checkout of the authors' repository (github
mahaitongdae/diffusion_policy_online_rl; nothing of it is copied here, their package is imported from the path
given with --authors) and a venv with their dependencies and fastrsm's (docs/authors_code.md):

    python -m venv /work/venv-authors
    /work/venv-authors/bin/pip install "jax==0.4.30" "jaxlib==0.4.30" "dm-haiku==0.0.12" "optax==0.2.2" \
        "numpy<2" "numpyro==0.15.2" "dill==0.3.8" torch==2.13.0 "gymnasium[mujoco]"
    /work/venv-authors/bin/pip install --no-deps -e .          # fastrsm itself
    taskset -c 0 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        /work/venv-authors/bin/python bench/bench_vs_authors.py --authors /path/to/checkout [--sizes smoke paper]

`taskset` is what makes JAX single-threaded (the XLA flags alone still use ~1.7 cores); torch runs one thread.
Their DPMD is built as their `scripts/train_mujoco.py --alg dpmd` builds it. fastrsm runs eager, compiled
(fastrsm.compiled: torch.compile of the whole act and update) and, for acting, exported (fastrsm.export: the
evaluation act compiled ahead of time into one file, as a deployed policy runs); compile and export times are
reported apart, never timed.
The "train step" row is act on one observation plus one update: the training loop's compute per env step at
UTD 1 (the env step, the same MuJoCo step for both, left out).
Each round times every contestant once, in a rotating order; the table holds medians over rounds and the
ratio to the authors' time (> 1: fastrsm slower).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

SIZES = {  # hidden, layers, T, N, batch
    "smoke": (64, 2, 5, 8, 128),
    "paper": (256, 3, 20, 32, 256),
}
OBS_DIM, ACT_DIM = 11, 3  # Hopper's shapes
CALLS = ("act1", "act5", "update", "step")


def authors_dpmd(authors: str, hidden: int, layers: int, T: int, N: int, batch: int):
    """Their DPMD, acting function and update, as their training script builds them."""
    sys.path.insert(0, os.path.abspath(authors))
    import jax
    import jax.numpy as jnp
    import numpy as np
    from relax.algorithm.dpmd import DPMD
    from relax.network.diffv2 import create_diffv2_net
    from relax.utils.experience import Experience

    def mish(x):
        return x * jnp.tanh(jax.nn.softplus(x))

    sizes = [hidden] * layers
    agent, params = create_diffv2_net(jax.random.key(0), OBS_DIM, ACT_DIM, sizes, sizes, mish, num_timesteps=T,
                                      num_particles=N, noise_scale=0.1, beta_schedule_scale=0.8)
    algo = DPMD(agent, params, lr=3e-4, alpha_lr=7e-3, delay_alpha_update=250, lr_schedule_end=3e-5)
    example = Experience.create_example(OBS_DIM, ACT_DIM, batch)
    rng = np.random.default_rng(0)
    data = type(example)(*[np.asarray(rng.standard_normal(np.shape(x)), dtype=np.asarray(x).dtype)
                           for x in example])
    key = jax.random.key(1)
    obs1 = rng.standard_normal(OBS_DIM).astype(np.float32)
    obs5 = rng.standard_normal((5, OBS_DIM)).astype(np.float32)

    def act(obs):
        return lambda: np.asarray(algo.get_action(key, obs))

    def update():
        info, _ = algo.update(key, data)
        jax.block_until_ready(info)

    fns = {"act1": act(obs1), "act5": act(obs5), "update": update}
    fns["step"] = train_step(fns)
    return fns


def fastrsm_dpmd(hidden: int, layers: int, T: int, N: int, batch: int, compiled: bool):
    import numpy as np
    import torch

    from fastrsm.agents import make_agent
    from fastrsm.backend import make_ops
    from fastrsm.compiled import CompiledLearner
    from fastrsm.config import make_config
    from fastrsm.learner import Learner
    from fastrsm.replay import ReplayBuffer

    cfg = make_config("paper", {"device": "cpu", "hidden": hidden, "layers": layers, "diffusion_steps": T,
                                "particles": N, "batch_size": batch, "policy_delay": 2})
    torch.manual_seed(0)
    agent = make_agent("dpmd", OBS_DIM, ACT_DIM, cfg, torch.device("cpu"),
                       make_ops("compile" if compiled else "torch", "cpu"))
    fast = CompiledLearner(agent) if compiled else Learner(agent)
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(4096, OBS_DIM, ACT_DIM, "cpu", batch)
    rb.add(rng.standard_normal((4096, OBS_DIM)), rng.uniform(-1, 1, (4096, ACT_DIM)), rng.standard_normal(4096),
           rng.standard_normal((4096, OBS_DIM)), rng.random(4096) < 0.01)
    obs1 = torch.randn(1, OBS_DIM)
    obs5 = torch.randn(5, OBS_DIM)

    def act(obs):
        return lambda: fast.act(obs, explore=True).numpy()  # to NumPy, as the training loop does

    def update():
        # policy_delay 2: every other call runs the policy step, as the authors compute theirs every call and
        # apply it every other (the per-call mean over an even number of calls is one update)
        fast.update(rb)

    fns = {"act1": act(obs1), "act5": act(obs5), "update": update}
    fns["step"] = train_step(fns)
    t0 = time.perf_counter()
    for f in fns.values():  # compile every variant (and build caches) outside the timings
        for _ in range(3):
            f()
    return fns, time.perf_counter() - t0


def train_step(fns: dict[str, Callable[[], object]]) -> Callable[[], object]:
    """The training loop's compute per env step at UTD 1: act on one observation (to NumPy), then one update. The
    env step itself (the same MuJoCo step for both libraries) and the replay write are left out."""
    act1, update = fns["act1"], fns["update"]

    def step() -> None:
        act1()
        update()

    return step


def fastrsm_exported(hidden: int, layers: int, T: int, N: int, batch: int, folder: str):
    """The evaluation act (no exploration noise: what a deployed policy runs) compiled ahead of time into one
    file (fastrsm.export, AOTInductor) and called as a deployed policy calls it (NumPy out)."""
    import numpy as np
    import torch

    from fastrsm.agents import make_agent
    from fastrsm.backend import make_ops
    from fastrsm.config import make_config
    from fastrsm.export import export_loaded, load_exported
    from fastrsm.policy import Policy

    cfg = make_config("paper", {"device": "cpu", "hidden": hidden, "layers": layers, "diffusion_steps": T,
                                "particles": N, "batch_size": batch})
    torch.manual_seed(0)
    agent = make_agent("dpmd", OBS_DIM, ACT_DIM, cfg, torch.device("cpu"), make_ops("torch", "cpu")).eval()
    ones = np.ones(ACT_DIM, dtype=np.float32)
    t0 = time.perf_counter()
    path = export_loaded(Policy(agent, -ones, ones, "bench", "dpmd", N), os.path.join(folder, f"act{hidden}.pt2"))
    pol = load_exported(path)
    seconds = time.perf_counter() - t0
    obs1, obs5 = torch.randn(1, OBS_DIM), torch.randn(5, OBS_DIM)
    fns = {"act1": lambda: pol.act_tensor(obs1).numpy(), "act5": lambda: pol.act_tensor(obs5).numpy()}
    for f in fns.values():
        f()
    return fns, seconds


def update_flops(hidden: int, layers: int, T: int, N: int, batch: int) -> float:
    """The GEMM FLOPs that dominate one DPMD update: the bootstrap's chain over batch·N rows (per row and step the
    factored first layer W_a·a, layers−1 hidden H×H layers, the output layer) and min(Q1, Q2) of the batch·N
    candidates (two critics of the same sizes on concat(s, a)). The policy and critic steps on `batch` rows and
    everything elementwise are left out, so the floor below is a lower bound."""
    rows, H = batch * N, hidden
    chain = T * 2 * (ACT_DIM * H + (layers - 1) * H * H + H * ACT_DIM)
    critics = 2 * 2 * ((OBS_DIM + ACT_DIM) * H + (layers - 1) * H * H + H)
    return rows * (chain + critics)


def gemm_call(hidden: int, N: int, batch: int) -> Callable[[], object]:
    """One FP32 GEMM of the chain's hidden-layer shape, [batch·N, H] @ [H, H]: this core's rate at that shape."""
    import torch

    x, w = torch.randn(batch * N, hidden), torch.randn(hidden, hidden)
    out = torch.empty(batch * N, hidden)
    return lambda: torch.mm(x, w, out=out)


def mean_ms(fn: Callable[[], object], reps: int) -> float:
    """ms per call, averaged over `reps` back-to-back calls (one round's figure; the table takes the median of
    these over rounds)."""
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / reps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, help="a checkout of the authors' repository")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None, help="also append the markdown table to this file")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
             f"affinity {sorted(os.sched_getaffinity(0))}; torch {torch.__version__}, one thread; "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| size | call | authors (XLA) ms | fastrsm eager ms | fastrsm compiled ms | fastrsm exported ms | "
             "eager / authors | compiled / authors | exported / authors |", "|---|---|---|---|---|---|---|---|---|"]
    floors: list[str] = []
    for size in args.sizes:
        hidden, layers, T, N, batch = SIZES[size]
        theirs = authors_dpmd(args.authors, hidden, layers, T, N, batch)
        for f in theirs.values():  # jit compilation outside the timings
            f()
        eager, _ = fastrsm_dpmd(hidden, layers, T, N, batch, compiled=False)
        comp, compile_s = fastrsm_dpmd(hidden, layers, T, N, batch, compiled=True)
        with tempfile.TemporaryDirectory() as folder:  # the loaded package no longer needs its file
            exported, export_s = fastrsm_exported(hidden, layers, T, N, batch, folder)
        reps = {"act1": 200 if size == "smoke" else 20, "act5": 100 if size == "smoke" else 10,
                "update": 20 if size == "smoke" else 2, "step": 20 if size == "smoke" else 2}
        times: dict[tuple[str, str], list[float]] = {}
        contestants = [("authors", theirs), ("eager", eager), ("compiled", comp), ("exported", exported)]
        gemm = gemm_call(hidden, N, batch)
        for r in range(args.rounds):
            order = contestants[r % 4:] + contestants[: r % 4]
            for call in CALLS:
                for name, fns in order:
                    if call in fns:  # the exported policy acts; it has no update
                        times.setdefault((name, call), []).append(mean_ms(fns[call], reps[call]))
            times.setdefault(("gemm", ""), []).append(mean_ms(gemm, 50))
        for call in CALLS:
            a, e, c = (statistics.median(times[(n, call)]) for n in ("authors", "eager", "compiled"))
            x = statistics.median(times[("exported", call)]) if ("exported", call) in times else None
            label = {"act1": "act, 1 obs", "act5": "act, 5 obs", "update": f"DPMD update, batch {batch}",
                     "step": "train step at UTD 1 (act 1 obs + update)"}[call]
            xs = ("–", "–") if x is None else (f"{x:.3f}", f"{x / a:.2f}")
            lines.append(f"| {size} ({hidden}×{layers}, T {T}, N {N}) | {label} | {a:.3f} | {e:.3f} | {c:.3f} | "
                         f"{xs[0]} | {e / a:.2f} | {c / a:.2f} | {xs[1]} |")
        lines.append(f"| {size} | fastrsm compile start-up | | | {compile_s:.1f} s | {export_s:.1f} s | | | |")
        rate = 2 * batch * N * hidden * hidden / (statistics.median(times[("gemm", "")]) * 1e-3)  # FLOP/s
        floor = update_flops(hidden, layers, T, N, batch) / rate * 1e3
        a, e, c = (statistics.median(times[(n, "update")]) for n in ("authors", "eager", "compiled"))
        floors.append(f"- {size}: one core's FP32 GEMM rate at [{batch * N}, {hidden}] @ [{hidden}, {hidden}] "
                      f"{rate / 1e9:.1f} GFLOP/s (interleaved with the rounds); the update's chain + candidate "
                      f"scoring {update_flops(hidden, layers, T, N, batch) / 1e9:.2f} GFLOP → floor {floor:.2f} ms; "
                      f"update / floor: authors {a / floor:.2f}, eager {e / floor:.2f}, compiled {c / floor:.2f}")
    text = "\n".join(lines + [""] + floors) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
