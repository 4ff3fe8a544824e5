"""What Ray costs a sweep on this CPU. A script, not a pytest benchmark:

    python bench/bench_sweep.py [--trials 4] [--total-steps 2000] [--num-cpus 2] [--json bench/sweep.json]

Measures, one after another in one process:
1. Ray start-up: `ray.init(address="local")` wall seconds, the first no-op task (a worker process starts) and
   the median of later no-op tasks (a warm worker).
2. The same `--trials` smoke trials (InvertedPendulum-v4, sac, seeds 0..n-1) three ways:
   a. `fastrsm-train` run directly, one after another (no Ray);
   b. `fastrsm-sweep` with `--cpus-per-trial` = all CPUs, so Ray runs them one after another: (b - a) / n is
      Ray's scheduling overhead per trial (including the sweep's bookkeeping; the final table and PNG are
      timed separately and left out);
   c. `fastrsm-sweep` with `--cpus-per-trial 1`: as many trials at once as CPUs.
   Aggregate env-steps/s = trials × steps / wall. `*_trainer_s` sums the trainers' own wall times
   (summary.json): on a shared, loaded CPU it tells a slower machine apart from Ray's overhead.

Every trainer uses one torch thread (the smoke preset's). Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import ray

from fastrsm import sweep as sw


def _trainer_seconds(root: str) -> float:
    """Sum of the trainers' own wall times (summary.json): what the trials cost inside their processes."""
    total = 0.0
    for d, _, files in os.walk(root):
        if "summary.json" in files:
            with open(os.path.join(d, "summary.json"), encoding="utf-8") as f:
                total += json.load(f)["wall_time_s"]
    return total

SETTINGS = ["warmup_steps=500", "eval_every=1000", "eval_episodes=2", "log_every=500"]


def _noop() -> int:
    return os.getpid()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--total-steps", type=int, default=2000)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--json", default="bench/sweep_bench.json")
    a = p.parse_args()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
                 platform.machine(), "nproc": os.cpu_count(), "ray": ray.__version__, "trials": a.trials,
                 "total_steps": a.total_steps, "num_cpus": a.num_cpus, "load_before": _load()}

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    res["ray_init_s"] = time.perf_counter() - t0
    task = ray.remote(_noop)
    t0 = time.perf_counter()
    ray.get(task.remote())
    res["first_task_s"] = time.perf_counter() - t0
    lat = []
    for _ in range(20):
        t0 = time.perf_counter()
        ray.get(task.remote())
        lat.append(time.perf_counter() - t0)
    res["warm_task_s"] = statistics.median(lat)

    sets = [x for kv in SETTINGS for x in ("--set", kv)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for seed in range(a.trials):
            subprocess.run([sys.executable, "-m", "fastrsm.train", "--quiet", "--env", "InvertedPendulum-v4",
                            "--algo", "sac", "--seed", str(seed), "--preset", "smoke", "--device", "cpu",
                            "--total-steps", str(a.total_steps), *sets, "--run-dir", f"{tmp}/direct/{seed}"],
                           check=True, capture_output=True)
        res["direct_sequential_s"] = time.perf_counter() - t0
        res["direct_sequential_trainer_s"] = _trainer_seconds(f"{tmp}/direct")

        def sweep(name: str, cpus: int) -> float:
            finish = sw.finish
            spent = {}

            def timed_finish(*args):  # the table and PNG are the same work with or without Ray: timed apart
                t = time.perf_counter()
                code = finish(*args)
                spent["finish"] = time.perf_counter() - t
                return code

            sw.finish = timed_finish
            t = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    code = sw.main(["--envs", "InvertedPendulum-v4", "--algos", "sac", "--seeds",
                                    f"0-{a.trials - 1}", "--preset", "smoke", "--total-steps", str(a.total_steps),
                                    *sets, "--cpus-per-trial", str(cpus), "--report-every", "1e9",
                                    "--out", f"{tmp}/{name}"])
            finally:
                sw.finish = finish
            assert code == 0, code
            res[f"{name}_finish_s"] = spent["finish"]
            res[f"{name}_trainer_s"] = _trainer_seconds(f"{tmp}/{name}")
            return time.perf_counter() - t - spent["finish"]

        res["ray_sequential_s"] = sweep("ray_sequential", a.num_cpus)
        res["ray_parallel_s"] = sweep("ray_parallel", 1)
    ray.shutdown()
    steps = a.trials * a.total_steps
    res["overhead_per_trial_s"] = (res["ray_sequential_s"] - res["direct_sequential_s"]) / a.trials
    for k in ("direct_sequential", "ray_sequential", "ray_parallel"):
        res[f"{k}_env_steps_per_s"] = steps / res[f"{k}_s"]
    res["speedup_parallel_vs_direct"] = res["direct_sequential_s"] / res["ray_parallel_s"]
    res["load_after"] = _load()
    print(json.dumps(res, indent=2))
    with open(a.json, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
