"""`fastrsm-train` / `fastrsm-eval`: bad input gives one line and exit code 2 with nothing written; a
real tiny run leaves a complete run directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from fastrsm.train import main

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--total-steps", "300", "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150",
        "--eval-episodes", "2", "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16",
        "--log-every", "100", "--reverse-samples", "4"]


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["--env", "Antt-v4"], "closest: Ant-v4"),
    (["--total-steps", "0"], "total-steps must be a positive integer"),
    (["--total-steps", "-5"], "total-steps must be a positive integer"),
    (["--total-steps", "ten"], "total-steps expects an integer"),
    (["--algo", "trpo"], "unknown algo 'trpo'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--lr-policy", "-1"], "lr-policy must be a positive number"),
    # a setting of the shared diffusion block, checked by that block whichever algorithm runs (DPMD's own check
    # adds to it), and one of DACER's, refused under DACER2 that inherits it
    (["--algo", "sac", "--explore-std", "-1"], "explore-std must be >= 0"),
    (["--algo", "dpmd", "--explore-std", "-1"], "explore-std must be >= 0"),
    (["--algo", "dacer2", "--set", "dacer_alpha_init=-1"], "dacer-alpha-init must be a positive number"),
    (["--set", "particels=3"], "did you mean particles"),
    (["--set", "noequals"], "KEY=VALUE"),
    (["--bogus-flag", "1"], "unrecognized arguments"),
    (["--env", "CartPole-v1"], "only continuous 1-D Box action spaces"),
    (["--env", "Humanoid-v4", "--buffer-size", "1e11"], "the replay buffer needs"),
    (["--run-dir", "/dev/null/x"], "/dev/null is not a directory"),
    (["--run-dir", "/proc/x"], "cannot be created under /proc"),
    (["--chain-noise", "kernel", "--backend", "torch"], "need the triton backend"),
    (["--chain-precision", "fp64"], "unknown chain-precision 'fp64'"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, needle):
    run_dir = tmp_path / "run"
    code, err = _run(["--run-dir", str(run_dir), *args], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and needle in lines[0], err
    assert not run_dir.exists()


def test_device_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _run(["--run-dir", str(tmp_path / "r"), "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available" in err and not (tmp_path / "r").exists()


def test_argparse_errors_are_one_line():
    # argparse's own errors (a flag missing its value) also come as one line with exit code 2
    p = subprocess.run([sys.executable, "-m", "fastrsm.train", "--seed"], capture_output=True, text=True)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "expected one argument" in p.stderr


def test_nonempty_run_dir_needs_resume(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    code, err = _run(["--run-dir", str(tmp_path)], capsys)
    assert code == 2 and "not empty" in err and "--resume" in err
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_resume_errors(tmp_path, capsys):
    code, err = _run(["--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "not a run directory" in err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"env_id": "InvertedPendulum-v4"}}))
    code, err = _run(["--resume", str(run)], capsys)
    assert code == 2 and "no checkpoint" in err
    (run / "checkpoints" / "latest.pt").write_bytes(b"this is not a checkpoint")
    code, err = _run(["--resume", str(run)], capsys)
    assert code == 2 and "corrupt" in err


def test_config_file_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"particles": 4, "learning_rate": 1e-3}))
    code, err = _run(["--run-dir", str(tmp_path / "r"), "--config", str(cfg)], capsys)
    assert code == 2 and "unknown setting 'learning_rate'" in err
    cfg.write_text("{not json")
    code, err = _run(["--run-dir", str(tmp_path / "r"), "--config", str(cfg)], capsys)
    assert code == 2 and "not valid JSON" in err
    code, err = _run(["--run-dir", str(tmp_path / "r"), "--config", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("algo", ["dpmd", "sdac", "sac", "td3", "qsm", "qvpo", "dipo"])
def test_tiny_run_leaves_complete_run_dir(tmp_path, capsys, algo):
    run = tmp_path / "run"
    code, err = _run([*TINY, "--algo", algo, "--run-dir", str(run)], capsys)
    assert code == 0
    # TINY gives --reverse-samples, SDAC's own setting: any other algorithm records it as unused, with one line
    unused = json.loads((run / "config.json").read_text())["config"].get("unused_settings", [])
    assert ("reverse_samples" in unused) == (algo != "sdac")
    assert ("does not use reverse-samples" in err) == (algo != "sdac")
    # a temperature column only where the algorithm has a temperature (nothing faked for TD3, QSM, QVPO)
    header = (run / "train.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "updates"] and ("alpha" in header) == (algo in ("dpmd", "sdac", "sac"))
    for f in ("config.json", "train.csv", "eval.csv", "summary.json", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["algo"] == algo and cfg["config"]["particles"] == 4
    assert "torch" in cfg["versions"] and cfg["device"].startswith("cpu")
    # The commit the run came from (this checkout is a git clone; "+dirty" when its tracked files were edited).
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", cfg["commit"]), cfg["commit"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["env_steps"] == 300
    evals = (run / "eval.csv").read_text().strip().splitlines()
    assert evals[0] == "step,return_mean,return_std,episodes" and len(evals) == 3
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    # fastrsm-eval re-evaluates the best checkpoint
    from fastrsm.evaluate import main as eval_main

    assert eval_main([str(run), "--episodes", "2", "--device", "cpu"]) == 0
    reeval = json.loads((run / "reeval.json").read_text())
    assert reeval["episodes"] == 2 and len(reeval["returns"]) == 2
    assert eval_main([str(tmp_path / "none")]) == 2
    # the same through the public API: same episodes and seed, so the same returns; N = 1 for the diffusion agents
    import fastrsm

    again = fastrsm.evaluate_policy(str(run), episodes=2)
    assert again["returns"] == pytest.approx(reeval["returns"]) and again["algo"] == algo
    alone = fastrsm.evaluate_policy(str(run), episodes=2, particles=1)
    assert alone["particles"] == (None if algo in ("sac", "td3") else 1)
    with pytest.raises(fastrsm.utils.UsageError):
        fastrsm.evaluate_policy(str(run), episodes=0)


def test_disk_full_while_checkpointing_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    """ENOSPC while `latest.pt` is written: exit code 4, one line naming the file, the bytes and the --resume
    command; the previous checkpoint survives and --resume finishes the run without a duplicated row."""
    import errno

    from fastrsm import utils

    run = tmp_path / "run"
    original, seen = utils._write_all, []

    def full_disk(f, data, path):
        if path.endswith("latest.pt"):
            if not any(f is g for g in seen):  # a checkpoint arrives in many pieces, all into one temp file
                seen.append(f)
            if len(seen) == 2:  # the first checkpoint is written, the second finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(f, data, path)

    monkeypatch.setattr(utils, "_write_all", full_disk)
    code = main([*TINY, "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 4
    msg = [ln for ln in err.splitlines() if "no space left" in ln]
    assert len(msg) == 1 and "latest.pt" in msg[0] and "bytes needed" in msg[0] and "--resume" in msg[0]
    assert "Traceback" not in err
    assert json.loads((run / "summary.json").read_text())["status"] == "disk_full"
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["loop"]["env_steps"] == 150  # the checkpoint before the failed one, intact
    monkeypatch.setattr(utils, "_write_all", original)
    assert main(["--resume", str(run), "--quiet"]) == 0
    rows = (run / "eval.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [150, 300]


def test_slow_cpu_run_gets_one_line_of_advice_and_keeps_running(tmp_path, capsys, monkeypatch):
    from fastrsm import runner as train_mod

    monkeypatch.setattr(train_mod, "PACE_UPDATES", (10, 60))
    monkeypatch.setattr(train_mod, "SLOW_RUN_SECONDS", 0.0)  # every run counts as slow
    assert main([*TINY, "--run-dir", str(tmp_path / "run")]) == 0
    advice = [ln for ln in capsys.readouterr().err.splitlines() if "env steps/s on this CPU" in ln]
    assert len(advice) == 1 and "--preset smoke" in advice[0] and "to finish" in advice[0]
    monkeypatch.setattr(train_mod, "SLOW_RUN_SECONDS", 1e12)  # a run that finishes soon: no advice
    assert main([*TINY, "--run-dir", str(tmp_path / "run2")]) == 0
    assert "env steps/s on this CPU" not in capsys.readouterr().err
