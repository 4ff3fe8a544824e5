"""fastrsm-diagnose episode-stats (the LEARNING.md gait diagnostic) on a tiny MuJoCo run: a row per episode whose length
and return are those of the episode played, a distance for a MuJoCo body, and a refused path that is not a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastrsm.diagnose import episode_stats
from fastrsm.train import main as train_main

TINY = ["--env", "InvertedPendulum-v4", "--algo", "dpmd", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--total-steps", "200", "--warmup-steps", "100", "--eval-every", "200", "--eval-episodes", "1",
        "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100"]


def test_episode_rows(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mujoco")
    run = tmp_path / "run"
    assert train_main([*TINY, "--run-dir", str(run)]) == 0
    out = tmp_path / "rows.json"
    mod = episode_stats
    assert mod.main([str(run), "--episodes", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["episode"] for r in rows] == [0, 1]
    for r in rows:
        # InvertedPendulum pays 1 per step the pole stays up: the return is the length
        assert 1 <= r["length"] <= 1000 and r["return"] == pytest.approx(r["length"])
        assert isinstance(r["distance"], float) and r["speed"] == pytest.approx(r["distance"] / (r["length"] * 0.04))
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("| run | run |")]) == 2
    assert mod.main([str(tmp_path / "nope")]) == 2


def test_installed_command_lists_and_refuses() -> None:
    """`fastrsm-diagnose` (the console script) lists its commands, and an unknown one is one line, exit 2."""
    import subprocess
    import sys

    listing = subprocess.run([sys.executable, "-m", "fastrsm.diagnose", "--help"], capture_output=True, text=True)
    assert listing.returncode == 0
    assert all(c in listing.stdout for c in ("policy-spread", "episode-stats", "action-gap"))
    bad = subprocess.run([sys.executable, "-m", "fastrsm.diagnose", "spread"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "policy-spread" in bad.stderr
    nothing = subprocess.run([sys.executable, "-m", "fastrsm.diagnose"], capture_output=True, text=True)
    assert nothing.returncode == 2
