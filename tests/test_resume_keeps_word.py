"""What `--resume` promises, and what the one loop guarantees for single runs and seed groups alike: the settings a
run was trained with cannot change on resume (one line, exit 2), a changed budget is kept by the next resume and
written to config.json, a group with a diverged seed resumes with that seed frozen, and the evaluation cadence
does not move training."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch

from fastrsm.runlog import load_checkpoint
from fastrsm.seeds import SeedReplay
from fastrsm.train import main

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "2",
        "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "50",
        "--reverse-samples", "4", "--nan-check-every", "25"]


def _config(run) -> dict:
    return json.loads((run / "config.json").read_text())


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_resume_refuses_a_changed_architecture_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--algo", "sac", "--total-steps", "150", "--run-dir", str(run)]) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["--resume", str(run), "--hidden", "32", "--quiet"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "hidden cannot change on resume" in err[0] and "16" in err[0] and "32" in err[0]
    assert main(["--resume", str(run), "--set", "algo=dpmd", "--quiet"]) == 2
    assert "algo cannot change" in _err_lines(capsys)[0]
    assert main(["--resume", str(run), "--preset", "small", "--quiet"]) == 2
    assert len(_err_lines(capsys)) == 1
    # nothing was written by the refused attempts
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_a_changed_budget_is_kept_by_the_next_resume(tmp_path):
    run = tmp_path / "run"
    assert main([*TINY, "--algo", "sac", "--total-steps", "150", "--run-dir", str(run)]) == 0
    assert main(["--resume", str(run), "--total-steps", "300", "--quiet"]) == 0
    cfg = _config(run)
    assert cfg["config"]["total_steps"] == 300
    assert cfg["resumes"][0]["changed"] == {"total_steps": [150, 300]} and cfg["resumes"][0]["env_step"] == 150
    # a plain resume (a preemption, a sweep retry) keeps the new budget: already finished, nothing to do
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 300
    assert load_checkpoint(str(run / "checkpoints" / "latest.pt"))["config"]["total_steps"] == 300
    assert _config(run)["config"]["total_steps"] == 300 and len(_config(run)["resumes"]) == 2
    assert len((run / "eval.csv").read_text().splitlines()) == 1 + 2


def _losses(run, upto: int) -> list[tuple[str, str]]:
    with open(run / "train.csv") as f:
        return [(r["step"], r["loss_q"]) for r in csv.DictReader(f) if int(r["step"]) <= upto]


def test_the_evaluation_cadence_does_not_move_training(tmp_path):
    """Evaluations draw from their own generator and envs: evaluating every 150 steps or once at the end leaves
    training (here, the critic losses logged every 50 steps, past two evaluations) exactly the same."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, "--algo", "dpmd", "--total-steps", "450", "--checkpoint-every", "1000"]
    assert main([*common, "--eval-every", "150", "--run-dir", str(a)]) == 0
    assert main([*common, "--eval-every", "1000", "--run-dir", str(b)]) == 0
    assert len((a / "eval.csv").read_text().splitlines()) == 1 + 3
    assert len((b / "eval.csv").read_text().splitlines()) == 1 + 1
    la, lb = _losses(a, 450), _losses(b, 450)
    assert len(la) >= 6 and la == lb


def test_a_group_with_a_frozen_seed_resumes_frozen(tmp_path, monkeypatch, poison_seed):
    """Seed index 1 diverges; the group is stopped by SIGTERM after the divergence and resumed: the frozen seed
    stays frozen (diverged in its summary, its last good checkpoint untouched), the others finish."""

    def stop(n: int) -> None:
        if n == 150:  # after the NaN check froze seed 1: stop the run as a scheduler would
            os.kill(os.getpid(), signal.SIGTERM)

    real = poison_seed(1, 60, stop)
    g = tmp_path / "g"
    assert main([*TINY, "--algo", "dpmd", "--total-steps", "600", "--seeds", "0-2", "--run-dir", str(g)]) == 143
    frozen_ckpt = g / "seed_1" / "checkpoints" / "latest.pt"
    frozen_bytes = frozen_ckpt.read_bytes()
    assert load_checkpoint(str(frozen_ckpt))["loop"]["env_steps"] == 150
    live_step = load_checkpoint(str(g / "seed_0" / "checkpoints" / "latest.pt"))["loop"]["env_steps"]
    assert live_step > 150
    monkeypatch.setattr(SeedReplay, "sample", real)
    assert main(["--resume", str(g), "--quiet"]) == 0
    s = json.loads((g / "summary.json").read_text())
    assert [r["status"] for r in s["runs"]] == ["finished", "diverged", "finished"]
    assert frozen_ckpt.read_bytes() == frozen_bytes
    for seed in (0, 2):
        assert json.loads((g / f"seed_{seed}" / "summary.json").read_text())["env_steps"] == 600
        ck = load_checkpoint(str(g / f"seed_{seed}" / "checkpoints" / "latest.pt"))
        assert all(torch.isfinite(v).all() for v in ck["agent"]["modules"].values() if v.is_floating_point())
    assert "frozen" in json.loads((g / "seed_1" / "summary.json").read_text())["message"]


@pytest.mark.parametrize("bad", [["--seed", "3"], ["--env", "Hopper-v4"]])
def test_resume_refuses_another_experiment(tmp_path, capsys, bad):
    run = tmp_path / "run"
    assert main([*TINY, "--algo", "sac", "--total-steps", "150", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["--resume", str(run), *bad, "--quiet"]) == 2
    assert len(_err_lines(capsys)) == 1
