"""bench/learning.py end to end at a tiny budget: it trains (on fastrsm-sweep's machinery), survives being stopped,
resumes without losing or repeating an evaluation row, skips what is done, and writes the report (table with the
N = 1 column + PNG)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "learning.py"
ENV = "InvertedDoublePendulum-v4"


def _campaign(out: Path, *extra: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--tasks", ENV, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def _eval_steps(seed_dir: Path) -> list[int]:
    with open(seed_dir / "eval.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_campaign_stops_resumes_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("ray")
    out = tmp_path / "camp"
    group = out / f"{ENV}__sac"
    # 1) stop the campaign once every seed has its first checkpoint (step 150 of 1200)
    p = _campaign(out, "--algos", "sac", "--steps", "1200")
    deadline = time.time() + 120
    ckpts = [group / f"seed_{s}" / "checkpoints" / "latest.pt" for s in (0, 1)]
    while time.time() < deadline and not all(c.is_file() for c in ckpts) and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be stopped: " + p.communicate()[0][-2000:]
    p.send_signal(signal.SIGTERM)
    log = p.communicate(timeout=120)[0]
    assert "stopped" in log, log[-2000:]
    before = _eval_steps(group / "seed_0")
    assert before and before[-1] < 1200

    # 2) the same command continues it (with --resume) to the end: every evaluation exactly once
    p = _campaign(out, "--algos", "sac", "--steps", "1200")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    assert "--resume" in log, log[-2000:]
    for s in (0, 1):
        assert _eval_steps(group / f"seed_{s}") == list(range(150, 1201, 150))

    # 3) a third start trains nothing
    mtime = (group / "seed_0" / "eval.csv").stat().st_mtime_ns
    p = _campaign(out, "--algos", "sac", "--steps", "1200")
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0 and f"skip {ENV} sac seeds 0,1: finished" in log, log[-2000:]
    assert (group / "seed_0" / "eval.csv").stat().st_mtime_ns == mtime

    # 3b) a larger --steps extends the finished run from its checkpoint: the old rows kept, the new ones once
    p = _campaign(out, "--algos", "sac", "--steps", "1500")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0 and "total_steps=1500" in log, log[-2000:]
    for s in (0, 1):
        assert _eval_steps(group / f"seed_{s}") == list(range(150, 1501, 150))

    # 4) a diffusion algorithm joins: its N = 1 column is filled, SAC's says n/a; the PNG is written
    p = _campaign(out, "--algos", "sac,dpmd")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    table = (out / "report.md").read_text()
    dpmd_row = next(line for line in table.splitlines() if f"| {ENV} | dpmd |" in line)
    sac_row = next(line for line in table.splitlines() if f"| {ENV} | sac |" in line)
    cells = [c.strip() for c in dpmd_row.strip("|").split("|")]
    assert cells[2] == "2 (tuning: 0, 1)" and "finished" in cells[3]
    assert "±" in cells[7], dpmd_row  # the N = 1 re-evaluation
    assert "n/a" in sac_row
    for s in (0, 1):
        assert (out / f"{ENV}__dpmd" / f"seed_{s}" / "reeval_n1.json").is_file()
    assert (out / "curves.png").stat().st_size > 1000

    # 5) DACER2 has no multi-seed path: one process per seed, in TASK__dacer2__seedK, reported as one row
    p = _campaign(out, "--algos", "dacer2")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    for s in (0, 1):
        assert _eval_steps(out / f"{ENV}__dacer2__seed{s}") == [150, 300]
    row = next(line for line in (out / "report.md").read_text().splitlines() if f"| {ENV} | dacer2 |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2 (tuning: 0, 1)" and "finished" in cells[3] and "±" in cells[6], row
    report = (out / "report.md").read_text()  # the per-seed table has a row per seed
    assert "evaluation return per seed" in report
    assert all(f"| dacer2 | {s} |" in report for s in (0, 1)), report[-2000:]

    # 6) --keep copies the results without checkpoints; the copy alone gives the same report
    kept = tmp_path / "kept"
    p = _campaign(out, "--algos", "sac,dpmd,dacer2", "--report-only", "--keep", str(kept))
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0 and "kept " in log, log[-2000:]
    assert not list(kept.rglob("*.pt")) and (kept / f"{ENV}__dpmd" / "seed_1" / "reeval_n1.json").is_file()
    assert _eval_steps(kept / f"{ENV}__sac" / "seed_0") == list(range(150, 1501, 150))
    p = _campaign(kept, "--algos", "sac,dpmd,dacer2", "--report-only")
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log[-2000:]
    assert (kept / "report.md").read_text() == (out / "report.md").read_text()


def test_fresh_seed_protocol_labels_and_refuses_mixing_flags(tmp_path: Path, import_bench) -> None:
    lr = import_bench("learning")
    assert lr.seed_label([0, 1, 2, 3]) == "tuning" and lr.seed_label([4, 5, 6, 7]) == "fresh"
    assert lr.seed_label([3, 4]) == "mixed"
    assert set(lr.FRESH_SEEDS).isdisjoint(lr.TUNING_SEEDS)
    assert {"Walker2d-v4", "HalfCheetah-v4", "Hopper-v4"} <= set(lr.TASKS)
    # --fresh is seeds 4-7 for every trial; with --seeds as well it is a one-line usage error
    assert lr.main(["--out", str(tmp_path / "x"), "--fresh", "--seeds", "4", "--report-only"]) == 2
    assert lr.main(["--out", str(tmp_path / "y"), "--fresh", "--algos", "dpmd2", "--tasks", "Walker2d-v4",
                    "--report-only"]) == 0
    row = next(line for line in (tmp_path / "y" / "report.md").read_text().splitlines() if "| dpmd2 |" in line)
    assert "not started" in row and "(fresh: 4, 5, 6, 7)" in row


def test_single_seed_algorithms_get_one_run_per_seed(tmp_path: Path, import_bench) -> None:
    learning = import_bench("learning")
    from fastrsm import sweep as sw

    trials = learning.make_trials(["sac"], [ENV], with_dacer=True, tiny=False)
    assert [(t.algo, t.seeds) for t in trials] == [
        ("sac", [0, 1, 2, 3]), *[(a, [s]) for a in ("dacer", "dacer2") for s in (0, 1, 2, 3)]]
    sac, dacer_1 = trials[0], trials[2]
    assert "--seeds" in sw.train_command(sac, str(tmp_path), resume=False) and sac.run_dir == f"{ENV}__sac"
    cmd = sw.train_command(dacer_1, str(tmp_path), resume=False)
    assert "--seeds" not in cmd and cmd[cmd.index("--seed") + 1] == "1" and "--preset" in cmd
    assert dacer_1.run_dir == f"{ENV}__dacer__seed1" and "total_steps=30000" in cmd
    sw.check_trials(trials)  # every trial as its trainer takes it: no multi-seed group of DACER


def test_report_goes_between_the_doc_markers(tmp_path: Path, import_bench) -> None:
    learning = import_bench("learning")
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- report -->\nold table\n<!-- end report -->\noutro\n")
    learning.put_in_doc(doc, "| new | table |\n")
    assert doc.read_text() == "intro\n<!-- report -->\n| new | table |\n<!-- end report -->\noutro\n"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit):
        learning.put_in_doc(doc, "x")
    assert doc.read_text() == "no markers\n"


def test_campaign_refuses_unknown_task(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tasks", "Nope-v0", "--report-only"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "tasks must be among" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--keep", str(tmp_path), "--report-only"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--keep must name another folder" in r.stderr


def test_variant_campaign_passes_its_settings_and_keeps_to_them(tmp_path: Path, import_bench) -> None:
    learning = import_bench("learning")
    from fastrsm import sweep as sw

    over = {"explore_std": "0.25", "learn_alpha": "false"}
    trials = learning.make_trials(["dpmd"], ["Hopper-v4"], False, False, 40_000, [0, 1], over)
    cmd = sw.train_command(trials[0], str(tmp_path), resume=False)
    assert trials[0].seeds == [0, 1] and cmd[cmd.index("--seeds") + 1] == "0,1"
    assert {"explore_std=0.25", "learn_alpha=false", "total_steps=40000"} <= set(cmd)
    assert trials[0].extend  # --steps: an existing run, finished or not, goes on to 40k
    assert sw.train_command(trials[0], str(tmp_path), resume=True)[-2:] == ["--set", "total_steps=40000"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--tasks", ENV, "--algos", "sac", *args],
                              capture_output=True, text=True, cwd=ROOT)

    # every bad --set is refused in one line before anything is written or started
    for bad, words in ((["explore_std"], "KEY=VALUE"), (["no_such_setting=1"], "unknown setting"),
                       (["explore_std=-1"], "explore-std"), (["seed=1"], "seed")):
        r = run("--out", str(tmp_path / "bad"), *[a for kv in bad for a in ("--set", kv)])
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "bad").exists()
    # a campaign folder keeps the settings it began with: another --set there is refused
    (tmp_path / "camp").mkdir()
    (tmp_path / "camp" / "campaign.json").write_text('{"preset": "small", "set": {"tau": "0.01"}}')
    r = run("--out", str(tmp_path / "camp"))
    assert r.returncode == 2 and "use another --out" in r.stderr and not (tmp_path / "camp" / f"{ENV}__sac").exists()
