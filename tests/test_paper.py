"""fastrsm-paper (fastrsm/paper.py): the paper's experiment as one command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastrsm import paper


def test_scale_keeps_the_papers_proportions():
    s = paper.scaled_settings("Hopper-v4", "paper", "dpmd", 0.1, None)
    assert s["total_steps"] == 100_000 and s["eval_every"] == 2_500 and s["checkpoint_every"] == 2_500
    assert s["warmup_steps"] == 3_000 and (s["lr_decay_start"], s["lr_decay_end"]) == (2_500, 7_500)
    assert s["eval_episodes"] == paper.EVAL_EPISODES
    humanoid = paper.scaled_settings("Humanoid-v4", "paper", "dpmd", 1.0, None)
    assert (humanoid["total_steps"], humanoid["eval_every"]) == (5_000_000, 125_000)
    # --steps: the budget itself, every other count scaled alike; a warm-up never takes more than half the run
    tiny = paper.scaled_settings("Hopper-v4", "smoke", "sac", 1.0, 300)
    assert tiny["total_steps"] == 300 and tiny["warmup_steps"] == 128  # smoke's batch: the first update's rows


def test_trials_cover_tasks_methods_seeds_and_ablations():
    trials = paper.make_trials(["Hopper-v4"], ["dpmd", "dacer"], [0, 1], "paper", 0.01, None, 2, {"lr_q": 1e-3},
                               ["steps", "schedule"], "Walker2d-v4")
    main = [t for t in trials if not t.run_dir.startswith("ablation-")]
    # DPMD's seeds share a process; DACER has no seed axis (one process per seed) and runs its own preset
    assert [(t.algo, t.seeds, t.preset) for t in main] == [("dpmd", [0, 1], "paper"), ("dacer", [0], "dacer"),
                                                            ("dacer", [1], "dacer")]
    assert all(t.settings["lr_q"] == 1e-3 and t.settings["total_steps"] == 10_000 for t in main)
    abl = [t for t in trials if t.run_dir.startswith("ablation-")]
    assert {t.settings.get("diffusion_steps") for t in abl if t.run_dir.startswith("ablation-steps/")} == {10, 20, 30}
    assert {t.settings.get("schedule") for t in abl if "schedule" in t.run_dir} == {"linear", "cosine", "vp"}
    assert all(t.env == "Walker2d-v4" and t.algo == "dpmd" for t in abl) and len({t.run_dir for t in abl}) == 6


def test_the_table_names_the_methods_it_could_not_run():
    text = paper._table([], ["Hopper-v4"], ["dpmd", "sac"], ["ppo", "dppo"], [0, 1], {"Hopper-v4": 1000}, 20)
    assert "| Hopper-v4 | – | – |" in text and "Not in fastrsm yet, so not run: ppo, dppo." in text
    assert set(paper.implemented()) <= set(paper.PAPER_METHODS) and "dpmd" in paper.implemented()


def test_bad_input_is_one_line(capsys):
    for argv, needle in ((["--algos", "trpo"], "not an algorithm of fastrsm: trpo"), (["--scale", "2"], "--scale"),
                         (["--ablations", "width"], "unknown ablation"), (["--tasks", "Hoper-v4"], "Hopper")):
        assert paper.main(["--out", "/tmp/never-written", *argv, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def _paper(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastrsm.paper", "--out", str(out), "--preset", "smoke",
                           "--tasks", "InvertedPendulum-v4,Pendulum-v1", "--algos", "sac,dpmd", "--seeds", "0,1",
                           "--seeds-per-process", "2", "--steps", "300", "--num-cpus", "2", "--set", "eval_episodes=2",
                           *extra],
                          capture_output=True, text=True, timeout=900)


def test_the_experiment_end_to_end_at_a_tiny_scale(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("mujoco")
    out = tmp_path / "paper"
    p = _paper(out)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    table = (out / "table.md").read_text()
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| task |"))
    assert lines[head] == "| task | sac | dpmd |"
    rows = lines[head + 2:head + 4]
    assert [r.split("|")[1].strip() for r in rows] == ["InvertedPendulum-v4", "Pendulum-v1"]
    assert all(r.count("±") == 2 and r.count("**") == 2 for r in rows), rows  # one bold best per task
    assert "seeds 0,1" in table and "(2 episodes" in table and "Not in fastrsm yet" not in table  # asked for 2
    compute = table.split("# Compute")[1].splitlines()
    assert sum(line.startswith(("| sac |", "| dpmd |")) for line in compute) == 2, compute
    assert (out / "curves.png").stat().st_size > 1000
    record = json.loads((out / "paper.json").read_text())
    assert len(record["runs"]) == 4 and record["grid"]["algos"] == ["sac", "dpmd"]
    # a second start trains nothing; --report-only writes the same table from the files
    mtime = (out / "InvertedPendulum-v4__sac__seeds0-1" / "seed_0" / "eval.csv").stat().st_mtime_ns
    p = _paper(out)
    assert p.returncode == 0 and "finished" in p.stdout + p.stderr, p.stderr[-2000:]
    assert (out / "InvertedPendulum-v4__sac__seeds0-1" / "seed_0" / "eval.csv").stat().st_mtime_ns == mtime
    (out / "table.md").unlink()
    p = _paper(out, "--report-only")
    assert p.returncode == 0 and (out / "table.md").read_text() == table
    # another experiment in the same folder is refused before anything runs
    p = _paper(out, "--set", "lr_q=0.01")
    assert p.returncode == 2 and "another experiment" in p.stderr
