"""fastrsm-diagnose policy-spread (the LEARNING.md diagnostic) on tiny runs: one row per seed, the numbers it reports
are the ones it claims (the training noise is explore_std·α; a diffusion policy's draws differ; SAC has no noise
column), and a path that is not a run is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fastrsm.diagnose import policy_spread
from fastrsm.train import main as train_main

TINY = ["--env", "Pendulum-v1", "--preset", "smoke", "--device", "cpu", "--quiet", "--total-steps", "300",
        "--warmup-steps", "100", "--eval-every", "300", "--eval-episodes", "1", "--batch-size", "32",
        "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100", "--reverse-samples", "4"]


def test_policy_spread_rows(tmp_path: Path, capsys) -> None:
    runs = {}
    for algo in ("dpmd", "sac"):
        runs[algo] = tmp_path / algo
        assert train_main([*TINY, "--algo", algo, "--run-dir", str(runs[algo]), "--explore-std", "0.2",
                           "--learn-alpha", "false", "--alpha-init", "0.5"]) == 0
    out = tmp_path / "rows.json"
    mod = policy_spread
    assert mod.main([str(runs["dpmd"]), str(runs["sac"]), "--states", "8", "--draws", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [Path(r["run"]).name for r in rows] == ["dpmd", "sac"] and rows[0]["step"] == 300
    dpmd, sac = rows
    assert dpmd["noise"] == pytest.approx(0.2 * 0.5, rel=1e-5)  # explore_std · α, α fixed at 0.5
    assert dpmd["spread"] > 0 and dpmd["explore"] > 0 and 0 <= dpmd["bound"] <= 1
    assert math.isnan(sac["noise"]) and sac["explore"] == sac["spread"] > 0
    assert mod.main([str(tmp_path / "nope")]) == 2
    # A run without the checkpoint asked for: one line naming the tool, exit 2 (it was a traceback).
    capsys.readouterr()
    (runs["dpmd"] / "checkpoints" / "latest.pt").rename(tmp_path / "moved.pt")
    assert mod.main([str(runs["dpmd"]), "--states", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastrsm-diagnose policy-spread: ") and "latest.pt" in err[0]
