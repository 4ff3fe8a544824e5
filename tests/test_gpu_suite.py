"""bench/gpu_suite.py proves itself on the CPU: its dry run writes the JSON and markdown summary with
every part's status, a part that fails is recorded while the rest still run, `--only` merges into the folder,
and the figures are read right from files shaped like the GPU run's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import pytest

from fastrsm.agents import AGENTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "bench", "gpu_suite.py")


def _load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


suite = _load_suite()


def _run(*args: str, fail: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", suite.FAIL_ENV)}
    if fail:
        env[suite.FAIL_ENV] = fail
    return subprocess.run([sys.executable, SUITE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One full dry run with `setup` forced to fail: the other parts must still run, and pass."""
    out = tmp_path_factory.mktemp("gpu_results")
    proc = _run("--dry-run", "--out", str(out), fail="setup")
    return out, proc


def _results(out) -> dict:
    with open(os.path.join(out, "gpu_results.json")) as fh:
        return json.load(fh)


def test_dry_run_writes_every_part_and_records_a_failing_one(dry_run):
    out, proc = dry_run
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: a part (the forced one) is not ok
    res = _results(out)
    assert res["schema"] == suite.SCHEMA
    env = res["environment"]
    for key in ("device", "driver", "nvidia_smi", "commit", "versions", "cuda_available"):
        assert key in env
    assert env["versions"]["torch"] and "triton" in env["versions"]
    assert res["env_backend"] == "gymnasium"
    assert set(res["parts"]) == set(suite.PARTS)
    status = {p: v["status"] for p, v in res["parts"].items()}
    failed_logs = {p: [s.get("tail") for s in v["steps"]] for p, v in res["parts"].items() if v["status"] != "ok"}
    assert status == {"setup": "failed", "tests": "ok", "kernels": "ok", "bench": "ok", "algos": "ok", "seeds": "ok",
                      "train": "ok", "jax": "skipped"}, failed_logs
    assert res["parts"]["setup"]["forced_failure"] is True
    for part in ("tests", "kernels", "bench", "algos", "seeds", "train"):
        assert res["parts"][part]["mode"] == "dry"
        for step in res["parts"][part]["steps"]:
            assert step["status"] in ("ok", "n/a")
            assert os.path.exists(os.path.join(out, step["log"])) or step["status"] == "n/a"

    # the figures each part is there for
    tests = res["parts"]["tests"]["figures"]
    assert tests["tests"] >= 1 and tests["failures"] == tests["errors"] == 0
    rows = res["parts"]["bench"]["figures"]["rows"]
    assert {(r["algo"], r["utd"]) for r in rows} == {("dpmd", 1.0), ("dpmd", 0.2)}
    assert all(r["status"] == "ok" and r["update_ms"] > 0 and r["env_steps_per_s"] > 0 for r in rows)
    algos = res["parts"]["algos"]["figures"]["rows"]
    assert {r["algo"] for r in algos} == set(AGENTS) and all(r["ms_per_update"] > 0 for r in algos)
    seeds = res["parts"]["seeds"]["figures"]
    assert seeds["seeds"] == 2 and seeds["ratio"] > 0 and seeds["group_env_steps_per_s"] > 0
    assert any(t["target"].startswith("S = 8 seeds") and t["measured"] == round(seeds["ratio"], 3)
               for t in res["targets"])
    train = res["parts"]["train"]["figures"]
    assert train["steady_steps_per_s"] > 0 and train["steady_rows"] >= suite.DRY_STEADY_ROWS
    assert not os.path.exists(os.path.join(out, "train", "run", "checkpoints"))
    assert [t["target"] for t in res["targets"]] and all("met" in t for t in res["targets"])

    md = open(os.path.join(out, "gpu_results.md")).read()
    assert md.startswith("# GPU suite results")
    for part in suite.PARTS:
        assert f"## {part}: {status[part]}" in md
    assert "gymnasium" in md and "Not measured by this suite" in md


def test_only_reruns_one_part_merges_and_packs(dry_run):
    out, _ = dry_run
    before = _results(out)
    proc = _run("--dry-run", "--out", str(out), "--only", "setup", "--pack")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _results(out)
    assert after["parts"]["setup"]["status"] == "ok" and not after["parts"]["setup"]["forced_failure"]
    for part in ("tests", "kernels", "bench", "algos", "seeds", "train", "jax"):
        assert after["parts"][part] == before["parts"][part]
    assert [r["parts"] for r in after["runs"]] == [list(suite.PARTS), ["setup"]]
    assert "## setup: ok" in open(os.path.join(out, "gpu_results.md")).read()
    with tarfile.open(os.path.join(out, "gpu_results_raw.tar.gz")) as tar:
        assert "gpu_results_raw/logs/setup__import-check.log" in tar.getnames()
    assert "| setup | dry | **ok**" in proc.stdout  # the tables on stdout too, for the device tool's output tail


def test_merge_folds_summaries_without_running_anything(tmp_path):
    def summary(part, status, device):
        return {"schema": suite.SCHEMA, "parts": {part: {"status": status, "mode": "gpu", "steps": [],
                                                         "figures": {}}},
                "runs": [{"parts": [part], "device": device}], "environment": {"device": device}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(summary("tests", "ok", "H200")))
    b.write_text(json.dumps(summary("kernels", "partial", "H200 (second call)")))
    assert suite.main(["--out", str(tmp_path / "out"), "--merge", str(a), str(b)]) == 0
    res = _results(tmp_path / "out")
    assert {p: v["status"] for p, v in res["parts"].items()} == {"tests": "ok", "kernels": "partial"}
    assert res["environment"]["device"] == "H200 (second call)" and len(res["runs"]) == 2
    assert "## kernels: partial" in open(tmp_path / "out" / "gpu_results.md").read()


def test_unknown_part_is_a_one_line_usage_error(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path), "--only", "kernels", "nonsense", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nonsense" in proc.stderr
    assert not os.path.exists(tmp_path / "gpu_results.json")


def test_figures_from_gpu_shaped_files(tmp_path):
    """The GPU run's files, in miniature: the kernel table, the speed-ups and the targets come out right."""

    def bench(group, impl, median):
        return {"group": group, "name": f"test_x[{impl}]", "params": {"impl": impl}, "stats": {"median": median}}

    g = "chain ant rows=8192 T=20 H=256"
    kern = tmp_path / "k.json"
    kern.write_text(json.dumps({"benchmarks": [bench(g, "eager", 10e-3), bench(g, "compile", 3e-3),
                                               bench(g, "compile-cudagraphs", 2e-3), bench(g, "triton-tf32", 1e-3),
                                               bench("best_of_n B=256 N=32 A=8", "eager", 1e-4),
                                               bench("best_of_n B=256 N=32 A=8", "triton", 1e-4)]}))
    groups = suite.kernel_figures([str(kern), str(tmp_path / "missing.json")])
    assert groups[g]["triton-tf32"] == {"median_us": 1000.0, "x_eager": 10.0, "x_compile": 2.0}
    fb = tmp_path / "b.json"
    fb.write_text(json.dumps({"args": {"algo": "dpmd", "utd": 1.0, "num_envs": 1, "env": "Ant-v4",
                                       "preset": "paper"}, "env_only_steps_per_s": 9000.0,
                              "results": [{"backend": "triton", "update_ms": 1.2, "env_steps_per_s": 1100.0,
                                           "status": "ok"},
                                          {"backend": "torch", "update_ms": 12.0, "status": "ok"}]}))
    parts = {"kernels": {"figures": {"groups": groups}}, "bench": {"figures": {"rows": suite.bench_figures([str(fb)])}}}
    met = {t["target"].split(" (")[0]: t["met"] for t in suite.targets(parts)}
    assert met["fused chain vs eager"] and met["fused chain vs best torch.compile"]
    assert met["best-of-N vs eager"] is False
    assert met["weighted loss fwd+bwd vs eager"] is None  # not measured
    assert met["DPMD paper update latency"] and met["DPMD paper update vs eager"]
    assert met["DPMD env-steps/s at UTD 1 on Ant-v4"]

    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                     '<testcase classname="tests.test_a" name="test_ok"/>'
                     '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2&#10;more"/>'
                     '</testcase><testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                     '</testsuite></testsuites>')
    fig = suite.junit_figures(str(junit))
    assert (fig["passed"], fig["failures"], fig["skipped"]) == (1, 1, 1)
    assert fig["failing"] == ["tests.test_a::test_bad: failure: assert 1 == 2"]
