"""Every GPU test and benchmark in one command (docs/design.md "The GPU suite"); see bench/GPU_SUITE.md.

    python bench/gpu_suite.py [--out DIR] [--only PART ...] [--wheelhouse DIR] [--dry-run]

Parts, in order, each under its own time limit (`--limit PART=SECONDS`), so that one failing or hanging part is
recorded and the others still run:

  setup    install the carried wheels (`--wheelhouse`, offline) and the project (`--no-deps -e .`); import check
  tests    `pytest -m gpu` (junit XML)
  kernels  the kernel micro-benchmarks of bench/bench_kernels.py (pytest-benchmark JSON), in chunks: eager and
           Triton first, torch.compile after (it compiles for tens of seconds), so a time-out loses only a chunk
  bench    `fastrsm-bench` for dpmd, sdac and sac x every backend, at UTD 1 (one env) and the paper's UTD 0.2
           (five envs); torch.compile runs last for the same reason
  train    a 90-second DPMD paper-preset Ant-v4 training with a short warm-up, stopped by SIGTERM: steady steps/s
  jax      the place for the authors' JAX code side by side; empty for now

Everything goes to one folder ($OUT when set, else --out): gpu_results.json, gpu_results.md, logs/ and each
part's raw files. `--only` reruns some parts and merges them into the summary already in the folder.
`--dry-run` runs the same steps on the CPU at tiny sizes (smoke preset, Pendulum-v1, torch backend), so CI can
prove the suite itself works (tests/test_gpu_suite.py).

EnvPool is not carried to the GPU machine (its wheel alone is 64 MiB), so every part runs gymnasium's vector envs
(`--set env_backend=gymnasium`); `--env-backend auto` lifts that.

This script imports neither torch nor fastrsm: it must start before the project is installed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("setup", "tests", "kernels", "bench", "algos", "seeds", "train", "jax")
# Seconds per part on the GPU machine: they add up to under 6 minutes, so a second call (say `--only kernels
# --limit kernels=300` for the torch.compile chunks) fits in the same 15 minutes of device time.
GPU_LIMITS = {"setup": 60, "tests": 75, "kernels": 110, "bench": 130, "algos": 50, "seeds": 50, "train": 70,
              "jax": 0}
DRY_LIMITS = {"setup": 30, "tests": 60, "kernels": 30, "bench": 60, "algos": 60, "seeds": 60, "train": 40, "jax": 0}
TRAIN_SECONDS = {"gpu": 55.0, "dry": 30.0}  # the training runs this long, then gets SIGTERM
DRY_STEADY_ROWS = 2  # the dry run stops its training as soon as train.csv has this many steady rows
MIN_STEP_S = 5.0  # a step with less time left than this is not started
EXIT_USAGE = 2
SCHEMA = 1
FAIL_ENV = "GPU_SUITE_FAIL"  # test-only: comma-separated parts whose commands are replaced by a failing one
OK, FAILED, TIMEOUT, PARTIAL, SKIPPED, NA = "ok", "failed", "timeout", "partial", "skipped", "n/a"

ENVPOOL_NOTE = ("EnvPool is not carried to the GPU machine (its wheel alone is 64 MiB): every part runs "
                "gymnasium's vector envs (env_backend=gymnasium), so env-steps/s are gymnasium's, not EnvPool's.")
# What the GPU targets ask for that this suite does not measure (yet): stated in the summary, not silently absent.
NOT_MEASURED = [
    "Nsight Compute (ncu) profiles of the kernels (achieved FLOP/s, DRAM bandwidth): run by hand, see GPU_SUITE.md",
    "NVTX-ranged phases of one training step timed by CUDA events",
    "the authors' JAX code side by side (the `jax` part is an empty hook)",
]


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Step:
    """One command of a part. `na` gives the reason it is not run in this mode (it then counts for nothing)."""

    name: str
    cmd: list[str]
    cap_s: float = 1e9  # at most this long, within what is left of the part's limit
    stop_after_s: float | None = None  # send SIGTERM after this long and expect a clean exit
    stop_when: Callable[[], bool] | None = None  # ... or as soon as this says so (polled)
    ok_codes: tuple[int, ...] = (0,)
    na: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the suite's environment


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, to the step's whole process group (pytest workers, inductor compile workers)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, limit_s: float, log_path: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one command with its output in `log_path`; returns its record (status, rc, wall time, log tail)."""
    rec: dict[str, Any] = {"name": step.name, "cmd": " ".join(step.cmd),
                           "log": os.path.join("logs", os.path.basename(log_path))}
    if step.na:
        rec.update(status=NA, note=step.na)
        return rec
    limit = min(step.cap_s, limit_s)
    if limit < MIN_STEP_S:
        rec.update(status=SKIPPED, note=f"not started: {limit_s:.0f}s left of the part's time limit")
        return rec
    print(f"  [{step.name}] {rec['cmd']}  (limit {limit:.0f}s)", flush=True)
    t0 = time.monotonic()
    stopped = timed_out = False
    with open(log_path, "w") as log:
        log.write(f"$ {rec['cmd']}\n")
        log.flush()
        # its own process group, to kill it whole; not its own session, so that whatever kills the suite's
        # session (the device tool, at its time limit) takes it along
        proc = subprocess.Popen(step.cmd, cwd=ROOT, env={**env, **step.env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
        try:
            if step.stop_after_s is not None and step.stop_after_s < limit:
                stop_at = t0 + step.stop_after_s
                while proc.poll() is None and time.monotonic() < stop_at:
                    if step.stop_when is not None and step.stop_when():
                        break
                    time.sleep(0.5)
                if proc.poll() is None:
                    stopped = True
                    proc.send_signal(signal.SIGTERM)  # the main process only: it saves and exits by itself
            proc.wait(timeout=max(0.1, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc, grace=1.0)
            raise
    rc = proc.returncode
    rec.update(rc=rc, wall_s=round(time.monotonic() - t0, 2), limit_s=round(limit, 1))
    if stopped:
        rec["stopped_after_s"] = step.stop_after_s
    if timed_out:
        rec.update(status=TIMEOUT, note=f"killed after its {limit:.0f}s limit")
    else:
        rec["status"] = OK if rc in step.ok_codes else FAILED
    if rec["status"] != OK:
        rec["tail"] = _tail(log_path, 15)
    print(f"  [{step.name}] {rec['status']} (rc {rc}, {rec['wall_s']:.1f}s)", flush=True)
    return rec


def _tail(path: str, n: int) -> list[str]:
    try:
        with open(path, errors="replace") as fh:
            return [line.rstrip()[:300] for line in fh.readlines()[-n:]]
    except OSError:
        return []


def part_status(steps: list[dict[str, Any]]) -> str:
    """ok when every step that was meant to run did; partial when some did; else timeout or failed."""
    counted = [s["status"] for s in steps if s["status"] != NA]
    if not counted:
        return NA
    if all(s == OK for s in counted):
        return OK
    if any(s == OK for s in counted):
        return PARTIAL
    return TIMEOUT if TIMEOUT in counted else FAILED


# ---------------------------------------------------------------------------------------------- the parts


@dataclass
class Ctx:
    work: str  # raw files: logs, junit, benchmark JSON, the training run (the summary goes to the results folder)
    dry: bool
    env_backend: str
    wheelhouse: str | None
    kernel_sweep: bool
    py: str = sys.executable

    @property
    def mode(self) -> str:
        return "dry" if self.dry else "gpu"

    def sets(self) -> list[str]:
        return [] if self.env_backend == "auto" else ["--set", f"env_backend={self.env_backend}"]

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)


def steps_setup(c: Ctx) -> list[Step]:
    steps = []
    wh = c.wheelhouse
    if wh:
        manifest = _read_json(os.path.join(wh, "MANIFEST.json")) or {}
        reqs = manifest.get("install") or sorted(os.path.join(wh, f) for f in os.listdir(wh) if f.endswith(".whl")
                                                  and not f.startswith("setuptools-"))
        pip = [c.py, "-m", "pip", "install", "--no-index", "--find-links", wh, "--disable-pip-version-check"]
        na = "dry-run: the wheels are for the GPU machine's CPython 3.12" if c.dry else None
        # a throw-away machine: an "externally managed" system Python must not stop the install
        steps.append(Step("wheels", pip + list(reqs), na=na, env={"PIP_BREAK_SYSTEM_PACKAGES": "1"}))
        # --no-deps: the index-less machine has what the project needs once the wheels are in; setuptools for
        # the isolated build comes from the wheelhouse too
        # if the isolated build fails there, the machine's own setuptools builds it (--no-build-isolation)
        inst = " ".join(pip + ["--no-deps", "-e", "."])
        steps.append(Step("project", ["sh", "-c", f"{inst} || {inst} --no-build-isolation"],
                          na="dry-run: installed already" if c.dry else None, env={"PIP_BREAK_SYSTEM_PACKAGES": "1"}))
    env_id = "Pendulum-v1" if c.dry else "Ant-v4"
    check = ("import json, fastrsm, fastrsm.kernels, gymnasium, torch; "
             f"e = gymnasium.make({env_id!r}); e.reset(seed=0); e.close(); "
             "print(json.dumps({'cuda': torch.cuda.is_available()}))")
    steps.append(Step("import-check", [c.py, "-c", check], cap_s=60))
    return steps


def steps_tests(c: Ctx) -> list[Step]:
    # On the CPU the project's conftest skips every gpu test, so the dry run takes one small file: it proves
    # the command and the XML, quickly.
    where = ["tests/test_replay.py"] if c.dry else ["tests"]
    return [Step("pytest-gpu", [c.py, "-m", "pytest", "-m", "gpu", *where, "-q", "-rfEs", "-p", "no:randomly",
                                f"--junitxml={c.path('tests', 'junit.xml')}"])]


KERNEL_CHUNKS = [  # (name, -k expression); ids: test_chain[ant-eager], test_sm_loss_fwd_bwd[8-sdac-triton], ...
    ("eager-triton", "not configs and not compile"),
    ("compile-chain-ant", "test_chain and compile and ant and not configs"),
    ("compile-loss-bon", "(test_sm_loss or test_best_of_n) and compile"),
    ("compile-chain-humanoid", "test_chain and compile and humanoid and not configs"),
]


def steps_kernels(c: Ctx) -> list[Step]:
    chunks = KERNEL_CHUNKS + ([("triton-config-sweep", "configs")] if c.kernel_sweep else [])
    steps = []
    for i, (name, expr) in enumerate(chunks):
        cmd = [c.py, "-m", "pytest", "bench/", "--ignore=bench/bench_train_throughput.py", "-q", "-p", "no:randomly",
               "-k", expr, "--benchmark-only", f"--benchmark-json={c.path('kernels', name + '.json')}",
               "--benchmark-min-rounds=5", "--benchmark-max-time=0.25", "--benchmark-warmup=off"]
        # every chunk is skipped alike on the CPU: the first proves the command, the rest would add nothing
        na = "dry-run: bench_kernels.py needs CUDA; the first chunk proves the command" if c.dry and i else None
        steps.append(Step(name, cmd, na=na))
    return steps


FAST_BACKENDS, COMPILE_BACKENDS = ["triton", "graphs", "torch"], ["compile"]
UTDS = {"utd1": ["--num-envs", "1", "--utd", "1"], "utd0.2": ["--num-envs", "5", "--utd", "0.2"]}


def bench_plan() -> list[tuple[str, str, str, str]]:
    """(algo, utd key, backend group, env) in priority order: what matters most runs first."""
    fast = [("dpmd", "utd1"), ("dpmd", "utd0.2"), ("sdac", "utd1"), ("sac", "utd1"), ("sdac", "utd0.2"),
            ("sac", "utd0.2")]
    ant = [(a, u, "fast", "Ant-v4") for a, u in fast[:4]]
    return (ant + [("dpmd", "utd1", "fast", "Hopper-v4")] + [(a, u, "fast", "Ant-v4") for a, u in fast[4:]]
            + [(a, u, "compile", "Ant-v4") for a, u in fast])


def steps_bench(c: Ctx) -> list[Step]:
    steps = []
    for algo, utd, group, env_id in bench_plan():
        name = f"{algo}-{utd}-{group}" + ("" if env_id == "Ant-v4" else f"-{env_id.split('-')[0].lower()}")
        sizes = {"utd1": ["--updates", "100", "--warmup-updates", "10", "--act-calls", "30", "--env-steps", "400"],
                 "utd0.2": ["--updates", "20", "--warmup-updates", "5", "--act-calls", "10", "--env-steps", "1000"]}
        cmd = [c.py, "-m", "fastrsm.bench", "--algo", algo, *UTDS[utd], "--json", c.path("bench", name + ".json")]
        na = None
        if c.dry:
            cmd += ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--backends", "torch",
                    "--updates", "3", "--warmup-updates", "1", "--act-calls", "3", "--env-steps", "20", "--fill", "256"]
            if group == "compile":
                na = "dry-run: torch.compile takes minutes on this CPU"
            elif algo != "dpmd" or env_id != "Ant-v4":
                na = "dry-run: dpmd at both UTDs proves the command"
        else:
            backends = FAST_BACKENDS if group == "fast" else COMPILE_BACKENDS
            cmd += ["--env", env_id, "--preset", "paper", "--backends", *backends, *sizes[utd]]
        # one stuck invocation must not starve the rest of the part
        steps.append(Step(name, cmd + c.sets(), cap_s=60 if group == "fast" else 120, na=na))
    return steps


ALGOS_UPDATES = {"gpu": ["--updates", "30", "--rounds", "3"], "dry": ["--updates", "2", "--rounds", "1"]}


def steps_algos(c: Ctx) -> list[Step]:
    """The compute-and-memory table: ms per update and the update's peak memory of every algorithm, one process."""
    where = (["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu"] if c.dry
             else ["--env", "Ant-v4", "--preset", "paper", "--device", "cuda"])
    return [Step("every-algo", [c.py, "bench/bench_algos.py", *where, *ALGOS_UPDATES[c.mode],
                                "--json", c.path("algos", "algos.json")])]


def steps_seeds(c: Ctx) -> list[Step]:
    """S = 8 seeds as one batched agent against 8 single-seed runs, same work, interleaved (bench/bench_seeds.py),
    on the path fastrsm-train takes on CUDA (PyTorch ops under CUDA graphs)."""
    if c.dry:
        where = ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--seeds", "2", "--steps", "6",
                 "--rounds", "2", "--burn-in", "2", "--warmup-steps", "20"]
    else:
        where = ["--env", "Ant-v4", "--preset", "paper", "--device", "cuda", "--backend", "torch", "--cuda-graphs",
                 "--seeds", "8",
                 "--steps", "120", "--rounds", "2", "--burn-in", "10", "--warmup-steps", "300"]
    return [Step("seeds-8", [c.py, "bench/bench_seeds.py", *where, "--json", c.path("seeds", "seeds.json")])]


def train_cmd(c: Ctx) -> list[str]:
    run = c.path("train", "run")
    common = ["--algo", "dpmd", "--eval-every", "10000000", "--quiet", "--run-dir", run, "--set",
              "save_replay=false"]
    if c.dry:
        return [c.py, "-m", "fastrsm.train", "--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu",
                "--warmup-steps", "150", "--log-every", "25", *common, *c.sets()]
    return [c.py, "-m", "fastrsm.train", "--env", "Ant-v4", "--preset", "paper", "--warmup-steps", "2000",
            "--log-every", "1000", *common, *c.sets()]


def steps_train(c: Ctx) -> list[Step]:
    run = c.path("train", "run")
    # On the CPU a fixed duration would be mostly start-up on a loaded machine: stop once the figure exists.
    enough = (lambda: train_figures(run).get("steady_rows", 0) >= DRY_STEADY_ROWS) if c.dry else None
    # 143 = stopped by our SIGTERM after saving; 0 = it finished first (only a tiny total could)
    return [Step("fastrsm-train", train_cmd(c), stop_after_s=TRAIN_SECONDS[c.mode], stop_when=enough,
                 ok_codes=(0, 143))]


def steps_jax(c: Ctx) -> list[Step]:
    # Hook: the authors' JAX code side by side (JAX is on the GPU machine; dm-haiku would be carried as a wheel).
    # Return its Steps here and add a figures function below; nothing else in the suite needs to change.
    return []


STEPS = {"setup": steps_setup, "tests": steps_tests, "kernels": steps_kernels, "bench": steps_bench,
         "algos": steps_algos, "seeds": steps_seeds, "train": steps_train, "jax": steps_jax}


# ---------------------------------------------------------------------------------------------- figures


def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def junit_figures(path: str) -> dict[str, Any]:
    """Counts and the failing tests (name: first line of the message) from a pytest junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failing = []
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                msg = (el.get("message") or "").strip().splitlines()
                failing.append(f"{case.get('classname')}::{case.get('name')}: {tag}: {msg[0][:200] if msg else ''}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failing": failing}


def kernel_figures(paths: list[str]) -> dict[str, Any]:
    """Median microseconds per implementation, per benchmark group, and each one's speed-up over eager and over
    the best torch.compile variant, merged over the chunks' pytest-benchmark JSON files."""
    groups: dict[str, dict[str, float]] = {}
    for p in paths:
        data = _read_json(p) or {}
        for b in data.get("benchmarks", []):
            params = b.get("params") or {}
            impl = params.get("impl") or b.get("name", "?").split("[", 1)[-1].rstrip("]")
            if "block_m" in params:
                impl = f"{params.get('precision')} m{params['block_m']} w{params['num_warps']} s{params['num_stages']}"
            groups.setdefault(b.get("group") or b.get("name", "?"), {})[impl] = b["stats"]["median"] * 1e6
    out = {}
    for g, impls in sorted(groups.items()):
        eager = impls.get("eager")
        comp = min((v for k, v in impls.items() if k.startswith("compile")), default=None)
        out[g] = {k: {"median_us": round(v, 2),
                      "x_eager": round(eager / v, 2) if eager else None,
                      "x_compile": round(comp / v, 2) if comp else None} for k, v in sorted(impls.items())}
    return out


def bench_figures(paths: list[str]) -> list[dict[str, Any]]:
    """One row per (algo, UTD, backend) from fastrsm-bench's JSON files."""
    rows = []
    for p in paths:
        data = _read_json(p)
        if not data:
            continue
        a = data.get("args", {})
        for r in data.get("results", []):
            rows.append({"algo": a.get("algo"), "utd": a.get("utd"), "num_envs": a.get("num_envs"),
                         "env": a.get("env"), "preset": a.get("preset"), **{k: r.get(k) for k in (
                             "backend", "update_ms", "act_ms", "env_steps_per_s", "peak_mem_mb", "status")},
                         "env_only_steps_per_s": data.get("env_only_steps_per_s")})
    return rows


def train_figures(run_dir: str) -> dict[str, Any]:
    """Steady env-steps/s: the median over train.csv's rows after the warm-up's end and the first training
    interval (which holds graph capture and compilation)."""
    cfg = _read_json(os.path.join(run_dir, "config.json")) or {}
    cfg = cfg.get("config", cfg)
    try:
        with open(os.path.join(run_dir, "train.csv")) as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {"rows": 0}
    warm, every = int(cfg.get("warmup_steps", 0)), int(cfg.get("log_every", 0))
    steady = [float(r["steps_per_s"]) for r in rows if r.get("steps_per_s") and int(r["step"]) > warm + every]
    last = rows[-1] if rows else {}
    return {"rows": len(rows), "steady_rows": len(steady),
            "steady_steps_per_s": round(statistics.median(steady), 1) if steady else None,
            "env_steps": int(last["step"]) if last else 0, "updates": int(last["updates"]) if last else 0,
            "warmup_steps": warm, "log_every": every, "summary": _read_json(os.path.join(run_dir, "summary.json"))}


def figures(part: str, c: Ctx, steps: list[dict[str, Any]]) -> dict[str, Any]:
    if part == "setup":
        return {"wheelhouse": c.wheelhouse, "versions_after": package_versions()}
    if part == "tests":
        return junit_figures(c.path("tests", "junit.xml"))
    if part == "kernels":
        files = sorted(c.path("kernels", f) for f in os.listdir(c.path("kernels")) if f.endswith(".json"))
        return {"groups": kernel_figures(files), "files": [os.path.basename(f) for f in files]}
    if part == "bench":
        return {"rows": bench_figures([c.path("bench", s["name"] + ".json") for s in steps])}
    if part in ("algos", "seeds"):
        return _read_json(c.path(part, part + ".json")) or {}
    if part == "train":
        run = c.path("train", "run")
        fig = train_figures(run)
        shutil.rmtree(os.path.join(run, "checkpoints"), ignore_errors=True)  # megabytes nobody reads here
        return fig
    return {}


def targets(parts: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets against what was measured (None where it was not)."""
    out = []

    def add(what: str, value: float | None, goal: str, met: bool | None) -> None:
        out.append({"target": what, "goal": goal, "measured": None if value is None else round(value, 3),
                    "met": met if value is not None else None})

    groups = (parts.get("kernels", {}).get("figures") or {}).get("groups", {})

    def best(prefix: str, key: str, impl_prefix: str = "triton") -> float | None:
        vals = [v[key] for g, impls in groups.items() if g.startswith(prefix)
                for k, v in impls.items() if k.startswith(impl_prefix) and v.get(key)]
        return max(vals) if vals else None

    def worst_group(prefix: str, key: str) -> float | None:
        per = [max((v[key] for k, v in impls.items() if k.startswith("triton") and v.get(key)), default=None)
               for g, impls in groups.items() if g.startswith(prefix)]
        per = [p for p in per if p is not None]
        return min(per) if per else None

    x = best("chain ant", "x_eager")
    add("fused chain vs eager (Ant, B*N=256*32, T=20, H=256)", x, ">= 5x", x is not None and x >= 5)
    x = best("chain ant", "x_compile")
    add("fused chain vs best torch.compile (Ant)", x, ">= 1.5x", x is not None and x >= 1.5)
    x = worst_group("sm_loss", "x_eager")
    add("weighted loss fwd+bwd vs eager (worst group)", x, ">= 3x", x is not None and x >= 3)
    x = worst_group("best_of_n", "x_eager")
    add("best-of-N vs eager (worst group)", x, ">= 2x", x is not None and x >= 2)
    rows = (parts.get("bench", {}).get("figures") or {}).get("rows", [])

    def row(algo: str, utd: float, backend: str) -> dict[str, Any]:
        return next((r for r in rows if r["algo"] == algo and r["utd"] == utd and r["backend"] == backend
                     and r["preset"] == "paper"), {})

    tri, eager = row("dpmd", 1.0, "triton"), row("dpmd", 1.0, "torch")
    v = tri.get("update_ms")
    add("DPMD paper update latency (triton + graphs)", v, "<= 1.5 ms", v is not None and v <= 1.5)
    x = eager["update_ms"] / v if v and eager.get("update_ms") else None
    add("DPMD paper update vs eager", x, ">= 5x", x is not None and x >= 5)
    v = tri.get("env_steps_per_s")
    add("DPMD env-steps/s at UTD 1 on Ant-v4 (gymnasium envs)", v, ">= 1000", v is not None and v >= 1000)
    v = tri.get("peak_mem_mb")
    add("DPMD paper preset peak GPU memory (MB)", v, "reported", True)
    v = (parts.get("seeds", {}).get("figures") or {}).get("ratio")
    add("S = 8 seeds in one process vs 8 single runs (aggregate env-steps/s)", v, ">= 6x", v is not None and v >= 6)
    return out


# ---------------------------------------------------------------------------------------------- environment


def _cmd_out(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "triton", "numpy", "gymnasium", "mujoco", "nvtx", "envpool", "jax", "jaxlib", "pytest",
                 "pytest-benchmark", "fastrsm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def environment(commit: str | None) -> dict[str, Any]:
    """Device, driver, versions and commit. Torch is asked in a child process: this one stays torch-free."""
    smi = _cmd_out(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader"])
    probe = ("import json, torch; c = torch.cuda.is_available(); print(json.dumps({'cuda_available': c, "
             "'device': torch.cuda.get_device_name(0) if c else None, 'torch_cuda': torch.version.cuda}))")
    torch_info = json.loads(_cmd_out([sys.executable, "-c", probe], timeout=60) or "{}")
    git = _cmd_out(["git", "rev-parse", "HEAD"])
    dirty = _cmd_out(["git", "status", "--porcelain", "--untracked-files=no"]) if git else None
    return {"nvidia_smi": smi.splitlines() if smi else None, "driver": smi.split(",")[1].strip() if smi else None,
            **torch_info, "versions": package_versions(),
            # a given commit wins: the device machine's copy may carry a .git older than the tree it runs
            "commit": commit or git, "commit_source": "given" if commit else ("git" if git else None), "git_head": git,
            "dirty": bool(dirty) if git else None, "host_cpus": os.cpu_count(),
            "cpu": _cmd_out(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])}


# ---------------------------------------------------------------------------------------------- summary


def _f(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else (format(v, spec) if isinstance(v, (int, float)) else str(v))


def render_markdown(res: dict[str, Any]) -> str:
    e = res.get("environment", {})
    v = e.get("versions", {})
    lines = ["# GPU suite results", "",
             f"- device: {e.get('device') or 'no CUDA device'}; nvidia-smi: {'; '.join(e.get('nvidia_smi') or ['-'])}",
             f"- driver {_f(e.get('driver'))}, CUDA (torch) {_f(e.get('torch_cuda'))}, python {_f(v.get('python'))}, "
             f"torch {_f(v.get('torch'))}, triton {_f(v.get('triton'))}, jax {_f(v.get('jax'))}, "
             f"gymnasium {_f(v.get('gymnasium'))}, mujoco {_f(v.get('mujoco'))}",
             f"- commit {_f(e.get('commit'))}{' (uncommitted changes)' if e.get('dirty') else ''}; "
             f"updated {res.get('updated')}",
             f"- env backend: {res.get('env_backend')}. "
             + (ENVPOOL_NOTE if res.get("env_backend") == "gymnasium" else ""),
             "- raw files (logs, junit XML, benchmark JSON, train.csv): the folders beside this file, or "
             "gpu_results_raw.tar.gz where the run was packed for the device tool's $OUT",
             "", "| part | mode | status | wall s | limit s | note |", "|---|---|---|---|---|---|"]
    parts = res.get("parts", {})
    for name in PARTS:
        p = parts.get(name)
        if p:
            lines.append(f"| {name} | {p.get('mode')} | **{p['status']}** | {_f(p.get('wall_s'), '.1f')} | "
                         f"{_f(p.get('limit_s'), '.0f')} | {p.get('note', '')} |")
    if res.get("targets"):
        lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
        for t in res["targets"]:
            met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['goal']} | {_f(t['measured'], '.4g')} | {met} |")
    for name in PARTS:
        p = parts.get(name)
        if not p:
            continue
        lines += ["", f"## {name}: {p['status']}", ""]
        for s in p.get("steps", []):
            lines.append(f"- `{s['name']}`: {s['status']}" + (f" (rc {s['rc']}, {s['wall_s']:.1f}s)" if "rc" in s
                                                               else "") + (f" — {s['note']}" if s.get("note") else ""))
            if s.get("tail") and s["status"] != NA:
                lines += ["", "  ```", *[f"  {t}" for t in s["tail"][-6:]], "  ```"]
        lines += _part_md(name, p.get("figures") or {})
    lines += ["", "## Not measured by this suite", ""] + [f"- {m}" for m in res.get("not_measured", [])]
    return "\n".join(lines) + "\n"


def _part_md(name: str, fig: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if name == "tests" and fig:
        out += ["", f"{fig.get('tests')} tests: {fig.get('passed')} passed, {fig.get('failures')} failed, "
                    f"{fig.get('errors')} errors, {fig.get('skipped')} skipped"]
        out += [f"- {f}" for f in fig.get("failing", [])[:40]]
    if name == "kernels":
        groups = fig.get("groups") or {}
        if not groups:
            out += ["", "no benchmark figures (they need CUDA)"]
        for g, impls in groups.items():
            out += ["", f"**{g}**", "", "| impl | median us | x eager | x best compile |", "|---|---|---|---|"]
            out += [f"| {k} | {_f(r['median_us'], '.1f')} | {_f(r['x_eager'], '.2f')} | {_f(r['x_compile'], '.2f')} |"
                    for k, r in impls.items()]
    if name == "bench" and fig.get("rows"):
        out += ["", "| algo | UTD | envs | backend | update ms | act ms | env steps/s | peak MB | status |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['algo']} | {_f(r['utd'], 'g')} | {r['num_envs']} | {r['backend']} | {_f(r['update_ms'], '.3f')} "
                f"| {_f(r['act_ms'], '.3f')} | {_f(r['env_steps_per_s'], '.1f')} | {_f(r['peak_mem_mb'], '.1f')} | "
                f"{r['status']} |" for r in fig["rows"]]
    if name == "algos" and fig.get("rows"):
        out += ["", f"{fig.get('env')}, preset {fig.get('preset')}, {fig.get('device_name') or fig.get('device')}; "
                    f"median of {fig.get('rounds')} rounds of {fig.get('updates')} updates, eager learner",
                "", "| algo | ms/update | x first | update peak MiB |", "|---|---|---|---|"]
        out += [f"| {r['algo']} | {_f(r['ms_per_update'], '.3f')} | {_f(r['ratio'], '.2f')} | "
                f"{_f(r.get('update_peak_mib'), '.1f')} |" for r in fig["rows"]]
    if name == "seeds" and fig:
        out += ["", f"{fig.get('seeds')} seeds, {fig.get('env')}, {fig.get('algo')}, preset {fig.get('preset')}: "
                    f"group {_f(fig.get('group_env_steps_per_s'), '.1f')} env-steps/s, singles "
                    f"{_f(fig.get('singles_env_steps_per_s'), '.1f')}, ratio {_f(fig.get('ratio'), '.2f')}"]
    if name == "train" and fig:
        out += ["", f"steady {_f(fig.get('steady_steps_per_s'), '.1f')} env-steps/s (median of "
                    f"{fig.get('steady_rows')} log rows after warm-up {fig.get('warmup_steps')} + one interval); "
                    f"{fig.get('env_steps')} env steps, {fig.get('updates')} updates"]
    return out


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main


def parse_limits(items: list[str], base: dict[str, float]) -> dict[str, float]:
    limits = dict(base)
    for item in items:
        part, _, sec = item.partition("=")
        if part not in PARTS or not sec:
            raise ValueError(f"--limit expects PART=SECONDS with PART one of {', '.join(PARTS)}, got {item!r}")
        limits[part] = float(sec)
    return limits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Every GPU test and benchmark of fastrsm in one command "
                                            "(bench/GPU_SUITE.md).")
    p.add_argument("--out", default=None, help="results folder (default: $OUT when set, else gpu_results/)")
    p.add_argument("--only", nargs="+", default=None, metavar="PART",
                   help=f"run only these parts ({', '.join(PARTS)}) and merge them into the folder's summary")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (CI)")
    p.add_argument("--wheelhouse", default=None, metavar="DIR",
                   help="install these wheels offline first (tools/wheelhouse.py), then the project --no-deps")
    p.add_argument("--env-backend", default="gymnasium", choices=["gymnasium", "auto", "envpool"],
                   help="env backend for every part (EnvPool is not carried to the GPU machine)")
    p.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help="a part's time limit")
    p.add_argument("--kernel-sweep", action="store_true", help="also the Triton launch-config sweep (minutes)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="fold these gpu_results.json (say, two device calls') into the folder's summary; runs no "
                        "part unless --only names some")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="raw files as one gpu_results_raw.tar.gz (default: when writing to $OUT, which the device "
                        "tool returns at most 8 files from)")
    p.add_argument("--plan", action="store_true", help="print the commands each part would run, run nothing")
    p.add_argument("--commit", default=os.environ.get("GPU_SUITE_COMMIT"),
                   help="the commit, where the copy has no .git (default $GPU_SUITE_COMMIT)")
    return p


def merge(res: dict[str, Any], other: Any) -> None:
    """Fold another summary's parts (and its environment, where `res` has none) into `res`; `other` wins."""
    if not isinstance(other, dict) or other.get("schema") != SCHEMA:
        return
    res["parts"].update(other.get("parts", {}))
    res["runs"] += [r for r in other.get("runs", []) if r not in res["runs"]]
    for key in ("environment", "env_backend"):
        if other.get(key):
            res[key] = other[key]


def pack(work: str, tarball: str) -> None:
    """The raw files as one archive: the device tool returns at most 8 files from $OUT."""
    import tarfile

    with tarfile.open(tarball + ".tmp", "w:gz") as tar:
        tar.add(work, arcname="gpu_results_raw")
    os.replace(tarball + ".tmp", tarball)


def print_summary(res: dict[str, Any]) -> None:
    """The part and target tables on stdout too: the device tool's output tail holds them if files go astray."""
    md = render_markdown(res).splitlines()
    keep = [line for line in md if line.startswith("|") or line.startswith("- device") or line.startswith("- driver")]
    print("\n".join(keep), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default = [] if args.merge and not args.only else list(PARTS)
    only = [x.strip() for item in (args.only or default) for x in item.split(",") if x.strip()]
    unknown = [x for x in only if x not in PARTS]
    try:
        if unknown or (not only and not args.merge):
            raise ValueError(f"unknown part(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PARTS)}")
        limits = parse_limits(args.limit, DRY_LIMITS if args.dry_run else GPU_LIMITS)
        if args.wheelhouse and not os.path.isdir(args.wheelhouse):
            raise ValueError(f"no wheelhouse folder {args.wheelhouse} (build it with tools/wheelhouse.py)")
        missing = [m for m in args.merge or [] if not os.path.isfile(m)]
        if missing:
            raise ValueError(f"no summary to merge at {', '.join(missing)}")
    except ValueError as e:
        print(f"gpu_suite: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = os.path.abspath(args.out or os.environ.get("OUT") or os.path.join(ROOT, "gpu_results"))
    # Into the device tool's $OUT only a few files may go: the raw ones then travel as one archive.
    packed = args.pack if args.pack is not None else (args.out is None and bool(os.environ.get("OUT")))
    work = out
    if packed and not args.plan:
        import tempfile

        work = tempfile.mkdtemp(prefix="gpu_suite_")
    c = Ctx(work=work, dry=args.dry_run, env_backend=args.env_backend,
            wheelhouse=os.path.abspath(args.wheelhouse) if args.wheelhouse else None, kernel_sweep=args.kernel_sweep)
    if args.plan:
        for part in only:
            print(f"{part} (limit {limits[part]:.0f}s)")
            for s in STEPS[part](c):
                print(f"  {s.name}: {'n/a: ' + s.na if s.na else ' '.join(s.cmd)}")
        return 0
    forced = {x.strip() for x in os.environ.get(FAIL_ENV, "").split(",") if x.strip()}
    os.makedirs(c.path("logs"), exist_ok=True)
    json_path = os.path.join(out, "gpu_results.json")
    res: dict[str, Any] = {"schema": SCHEMA, "parts": {}, "runs": []}
    if args.only or args.merge:  # a partial run adds to what the folder holds; a full run starts afresh
        merge(res, _read_json(json_path))
    for m in args.merge or []:
        merge(res, _read_json(m))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.makedirs(out, exist_ok=True)

    def save() -> None:
        """After every part: a suite killed later still leaves the parts done so far."""
        res.update(updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), not_measured=NOT_MEASURED,
                   targets=targets(res["parts"]))
        if only:
            res["environment"]["versions"] = package_versions()  # setup may have installed some
        _atomic_write(json_path, json.dumps(res, indent=1, default=str) + "\n")
        _atomic_write(os.path.join(out, "gpu_results.md"), render_markdown(res))
        if packed and only:
            pack(work, os.path.join(out, "gpu_results_raw.tar.gz"))

    if only:
        print(f"gpu_suite: {'dry run' if c.dry else 'GPU run'}: parts {', '.join(only)} -> {out}", flush=True)
        # the machine the parts run on; a merge alone keeps the merged summaries' machine
        res["environment"] = environment(args.commit)
        res["env_backend"] = c.env_backend
        if not c.dry and not res["environment"].get("cuda_available"):
            res.setdefault("warnings", []).append("not a dry run, but torch sees no CUDA device")
        res["runs"].append({"started": started, "parts": only, "mode": c.mode, "argv": sys.argv[1:],
                            "device": res["environment"].get("device"), "commit": res["environment"].get("commit")})
        # SIGTERM (a time limit around the suite) ends the running command's group too, via run_step
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    # a suite started from inside pytest-xdist (the CI test) must not hand its worker variables to the pytest runs
    # it starts: pytest-benchmark would take them for xdist and refuse --benchmark-only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PYTHONUNBUFFERED"] = "1"
    for part in PARTS:
        if part not in only:
            continue
        print(f"gpu_suite: {part} (limit {limits[part]:.0f}s)", flush=True)
        t0 = time.monotonic()
        if part in ("tests", "kernels", "bench", "algos", "seeds", "train"):
            # a rerun starts clean: an old chunk's JSON or run dir must not mix into the new figures
            shutil.rmtree(c.path(part), ignore_errors=True)
            os.makedirs(c.path(part))
        steps = STEPS[part](c)
        if part in forced:
            for s in steps:
                s.cmd, s.na = [c.py, "-c", f"import sys; print('{FAIL_ENV}: forced failure'); sys.exit(1)"], None
        recs = []
        for s in steps:
            left = limits[part] - (time.monotonic() - t0)
            recs.append(run_step(s, left, c.path("logs", f"{part}__{s.name}.log"), env))
        status = part_status(recs) if steps else SKIPPED
        note = {"jax": "hook for the authors' JAX code side by side: not written yet"}.get(part, "")
        if part == "setup" and not c.wheelhouse:
            note = "no --wheelhouse: nothing installed, import check only"
        try:
            fig = figures(part, c, recs)
        except Exception as e:  # a figure that cannot be read must not lose the part's record
            fig, note = {}, f"{note} figures unreadable: {type(e).__name__}: {e}".strip()
        if part == "train" and status == OK and fig.get("steady_steps_per_s") is None:
            status, note = FAILED, "no steady rows in train.csv (warm-up not over, or no log interval after it)"
        res["parts"][part] = {"status": status, "mode": c.mode, "wall_s": round(time.monotonic() - t0, 2),
                              "limit_s": limits[part], "steps": recs, "figures": fig, "note": note,
                              "raw": "gpu_results_raw.tar.gz" if packed else ".",
                              "run_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "forced_failure": part in forced}
        print(f"gpu_suite: {part}: {status} ({res['parts'][part]['wall_s']:.1f}s)", flush=True)
        save()

    save()
    if packed and only:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(res)
    bad = [p for p in only if res["parts"][p]["status"] not in (OK, NA, SKIPPED)]
    verdict = "not ok: " + ", ".join(f"{p} ({res['parts'][p]['status']})" for p in bad) if bad else "all ok"
    print(f"gpu_suite: wrote {json_path} and gpu_results.md; {verdict}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
