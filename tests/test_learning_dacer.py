"""Learning test of the baselines: with the smoke preset and seed 0, DACER and DACER2 reach an
evaluation return >= 900 on InvertedPendulum-v4 within 20 000 env steps. Their evaluation is the policy acting
alone (one chain sample, no best-of-N, no added noise), so the bar tests the policy update itself.

Measured (2026-11-29, the shared 2-core CPU machine, 1 thread, seed 0): DACER 1000 at 18 000 steps (1275 s),
DACER2 1000 at 18 000 steps (1102 s); both were near 100 at 12 000 steps, so the margin is one evaluation."""

from __future__ import annotations

import json

import pytest

from fastrsm.config import make_config
from fastrsm.train import train

BUDGET, BAR = 20_000, 900.0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dacer", "dacer2"])
def test_reaches_900_on_inverted_pendulum(tmp_path, algo):
    cfg = make_config("smoke", {"env_id": "InvertedPendulum-v4", "algo": algo, "seed": 0, "device": "cpu",
                                "total_steps": BUDGET, "stop_return": BAR})
    run_dir = tmp_path / algo
    assert train(cfg, str(run_dir), progress=False) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"{algo}: best {summary['best_return']} at {summary['env_steps']} env steps")
    assert summary["best_return"] >= BAR, summary
    assert summary["env_steps"] <= BUDGET
