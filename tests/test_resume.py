"""Runs that survive: exact resume, NaN guard, SIGINT and SIGKILL, determinism (CPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastrsm.train import main

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "2",
        "--batch-size", "32",
        "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "50", "--reverse-samples", "4",
        "--nan-check-every", "25"]


def _params(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(os.path.join(run_dir, "checkpoints", "latest.pt"), weights_only=False)
    return ckpt["agent"]["modules"]


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", ["dpmd", "sdac", "sac", "td3", "qsm", "qvpo", "dpmd2", "dipo"])
def test_resume_is_exact(tmp_path, algo):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*TINY, "--algo", algo, "--total-steps", "600", "--run-dir", str(straight)]) == 0
    assert main([*TINY, "--algo", algo, "--total-steps", "300", "--run-dir", str(split)]) == 0
    assert json.loads((split / "summary.json").read_text())["env_steps"] == 300
    assert main(["--resume", str(split), "--total-steps", "600", "--quiet"]) == 0
    assert (straight / "eval.csv").read_text() == (split / "eval.csv").read_text()
    assert len((split / "eval.csv").read_text().splitlines()) == 1 + 4
    assert _same_params(_params(straight), _params(split))


def test_same_seed_same_result_other_seed_differs(tmp_path):
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert main([*TINY, "--algo", "dpmd", "--total-steps", "300", "--seed", str(seed),
                     "--run-dir", str(tmp_path / name)]) == 0
        runs.append(_params(tmp_path / name))
    assert _same_params(runs[0], runs[1])
    assert not _same_params(runs[0], runs[2])


class NaNRewardsAfter:
    """A replay buffer whose batches carry NaN rewards after `after` samples (a fault injected by the test)."""

    def __init__(self, rb, after: int):
        self.rb, self.after, self.samples = rb, after, 0

    def sample(self):
        self.samples += 1
        b = self.rb.sample()
        return b._replace(reward=torch.full_like(b.reward, math.nan)) if self.samples > self.after else b

    def __len__(self) -> int:
        return len(self.rb)

    def __getattr__(self, name):
        return getattr(self.rb, name)


def test_nan_in_loss_stops_run_keeping_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    # Updates start near env step 100; 100 samples later (~ step 200) a NaN reward reaches the critic loss.
    code = main([*TINY, "--algo", "dpmd", "--total-steps", "600", "--run-dir", str(run)],
                wrap_replay=lambda rb: NaNRewardsAfter(rb, 100))
    err = capsys.readouterr().err
    assert code == 3
    assert "non-finite" in err and "env step" in err and "loss_q" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["message"]
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["loop"]["env_steps"] == 150  # the checkpoint of the last good evaluation
    assert all(torch.isfinite(v).all() for v in ckpt["agent"]["modules"].values())


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastrsm.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=300.0) -> None:
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out waiting for " + str(path)
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_resumes(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = _spawn([*TINY, "--algo", "sac", "--total-steps", "100000", "--run-dir", str(run)])
    _wait_for(run / "checkpoints" / "latest.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "--resume" in summary["message"]
    stopped_at = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["loop"]["env_steps"]
    assert stopped_at == summary["env_steps"] >= 150
    assert main(["--resume", str(run), "--total-steps", str(stopped_at + 150), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_sigkill_mid_run_is_resumable(tmp_path):
    run = tmp_path / "run"
    # Frequent evaluations and checkpoints: the kill lands while files are being (re)written.
    proc = _spawn([*TINY, "--algo", "sac", "--total-steps", "100000", "--eval-every", "50", "--eval-episodes", "1",
                   "--run-dir", str(run)])
    _wait_for(run / "checkpoints" / "latest.pt", proc)
    time.sleep(1.5)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    for f in ("config.json", "eval.csv", "train.csv"):
        (run / f).read_text()
    step = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["loop"]["env_steps"]
    assert main(["--resume", str(run), "--total-steps", str(step + 100), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["env_steps"] == step + 100
    rows = (run / "eval.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(50, step + 101, 50))
