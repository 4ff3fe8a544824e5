"""Checkpoint files: streamed atomic writes, the previous checkpoint kept as a fallback, replay rows saved without
copies, RNG states as plain data, and loading that accepts only tensors and plain data (a pickled payload is
refused without running it)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastrsm import cli, evaluate, export, utils
from fastrsm.config import make_config
from fastrsm.policy import load_policy
from fastrsm.replay import ReplayBuffer, saved_rows
from fastrsm.runlog import RunLog, UnsafeCheckpoint, load_checkpoint, load_resume_checkpoint
from fastrsm.train import main
from fastrsm.utils import DiskFullError, UsageError, atomic_torch_save, rng_state, seed_everything, set_rng_state

TINY = ["--env", "Pendulum-v1", "--algo", "sac", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--set", "warmup_steps=200", "--set", "eval_every=200", "--set", "checkpoint_every=200",
        "--set", "log_every=100", "--set", "eval_episodes=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished 600-step run (checkpoints at 200, 400, 600); tests work on copies of it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TINY, "--total-steps", "600", "--run-dir", str(run)]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]


def _steps(csv: Path) -> list[int]:
    return [int(r.split(",")[0]) for r in csv.read_text().strip().splitlines()[1:]]


# ------------------------------------------------------------------------------------------- atomic writes


def test_torch_save_is_streamed_in_pieces_and_a_full_disk_keeps_both_files(tmp_path, monkeypatch):
    path, prev = str(tmp_path / "latest.pt"), str(tmp_path / "previous.pt")
    big = torch.randn(1000, 100)
    pieces: list[int] = []
    original = utils._write_all

    def spy(f, data, p):
        pieces.append(memoryview(data).nbytes)
        return original(f, data, p)

    monkeypatch.setattr(utils, "_write_all", spy)
    atomic_torch_save({"x": big, "n": 1}, path, previous=prev)
    assert len(pieces) > 3 and max(pieces) == big.numel() * 4  # the tensor went over as one piece, uncopied
    assert sum(pieces) == os.path.getsize(path) and not os.path.exists(prev)
    atomic_torch_save({"x": big, "n": 2}, path, previous=prev)
    assert torch.load(path, weights_only=True)["n"] == 2 and torch.load(prev, weights_only=True)["n"] == 1

    def full(f, data, p):
        if len(pieces) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return spy(f, data, p)

    pieces.clear()
    monkeypatch.setattr(utils, "_write_all", full)
    with pytest.raises(DiskFullError, match="no space left on device writing .*latest.pt"):
        atomic_torch_save({"x": big, "n": 3}, path, previous=prev)
    assert torch.load(path, weights_only=True)["n"] == 2 and torch.load(prev, weights_only=True)["n"] == 1
    assert sorted(os.listdir(tmp_path)) == ["latest.pt", "previous.pt"]  # no temp file left


def test_save_checkpoint_keeps_the_previous_latest_only(tmp_path):
    log = RunLog(str(tmp_path))
    os.makedirs(log.ckpt_dir)
    for step in (1, 2, 3):
        log.save_checkpoint({"agent": {}, "loop": {"env_steps": step}}, "latest")
        log.save_checkpoint({"agent": {}, "step": step}, "best")
    assert sorted(os.listdir(log.ckpt_dir)) == ["best.pt", "latest.pt", "previous.pt"]
    assert load_checkpoint(os.path.join(log.ckpt_dir, "previous.pt"))["loop"]["env_steps"] == 2
    assert load_resume_checkpoint(str(tmp_path)) == ({"agent": {}, "loop": {"env_steps": 3}}, None)


@pytest.mark.parametrize("fail_at", ["link", "replace_previous", "replace_latest"])
def test_a_crash_at_any_step_of_a_save_leaves_a_checkpoint_to_resume(tmp_path, monkeypatch, fail_at):
    """The process dying between any two steps of a save (simulated by an exception at that step) leaves
    `load_resume_checkpoint` a complete checkpoint: the new one or the one before."""
    log = RunLog(str(tmp_path))
    os.makedirs(log.ckpt_dir)
    log.save_checkpoint({"agent": {}, "loop": {"env_steps": 1}}, "latest")
    log.save_checkpoint({"agent": {}, "loop": {"env_steps": 2}}, "latest")
    real_link, real_replace = os.link, os.replace

    class Crash(Exception):
        pass

    def link(src, dst):
        if fail_at == "link":  # a file system without hard links: the rename path, then the crash
            raise OSError(errno.EPERM, "no hard links here")
        return real_link(src, dst)

    def replace(src, dst):
        if fail_at == "replace_previous" and str(dst).endswith("previous.pt"):
            raise Crash
        if str(dst).endswith("latest.pt") and fail_at in ("replace_latest", "link"):
            raise Crash
        return real_replace(src, dst)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        log.save_checkpoint({"agent": {}, "loop": {"env_steps": 3}}, "latest")
    monkeypatch.undo()
    ckpt, note = load_resume_checkpoint(str(tmp_path))
    if fail_at == "link":  # latest.pt was renamed to previous.pt, the new one never arrived
        assert ckpt["loop"]["env_steps"] == 2
        assert note == "checkpoints/latest.pt is missing; resuming from checkpoints/previous.pt at env step 2"
    else:
        assert ckpt["loop"]["env_steps"] == 2 and note is None


# --------------------------------------------------------------------------------- what a checkpoint holds


def test_rng_state_is_plain_data_and_restores_every_generator():
    seed_everything(5)
    random.random()
    np.random.normal()  # leaves a cached gaussian in NumPy's state
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    draws = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


def test_checkpoints_from_before_plain_rng_states_still_load(tmp_path):
    """Older checkpoints hold Python's state as tuples and NumPy's as an array: loaded safely, restored."""
    seed_everything(3)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path / "old.pt"
    torch.save({"agent": {}, "rng": legacy}, path)
    draws = (random.random(), np.random.rand())
    set_rng_state(load_checkpoint(str(path))["rng"])
    assert (random.random(), np.random.rand()) == draws


def test_rows_with_nan_and_inf_survive(tmp_path):
    rows = {"train": [{"step": 1, "loss_q": float("nan"), "episode_return": float("-inf"), "note": "x"}],
            "eval": [{"step": 1, "return_mean": float("inf"), "episodes": 2}]}
    atomic_torch_save({"agent": {}, "rows": rows}, str(tmp_path / "c.pt"))
    back = load_checkpoint(str(tmp_path / "c.pt"))["rows"]
    assert np.isnan(back["train"][0]["loss_q"]) and back["train"][0]["episode_return"] == float("-inf")
    assert back["eval"][0] == rows["eval"][0] and back["train"][0]["note"] == "x"


def test_replay_state_saves_the_filled_rows_without_copying_them(tmp_path):
    rb = ReplayBuffer(10_000, 3, 2, "cpu", 4)
    rng = np.random.default_rng(0)
    n = 100
    rb.add(rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=n), rng.normal(size=(n, 3)),
           np.zeros(n))
    state = rb.state_dict()
    assert state["obs"].data_ptr() == rb.obs.data_ptr() and state["obs"].shape == (n, 3)  # the buffer's memory
    path = str(tmp_path / "r.pt")
    atomic_torch_save(state, path)
    assert os.path.getsize(path) < 20_000  # 100 of the 10 000 rows: a whole-storage save would be ~1 MB
    back = ReplayBuffer(10_000, 3, 2, "cpu", 4)
    back.load_state_dict(torch.load(path, weights_only=True))
    assert len(back) == n and all(torch.equal(getattr(back, k), getattr(rb, k)) for k in
                                  ("obs", "action", "reward", "next_obs", "terminated"))
    # one seed's block of a seed-stacked buffer, and an empty buffer
    stacked = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    rows = saved_rows(stacked[1], 2)
    assert torch.equal(rows, stacked[1, :2]) and rows.untyped_storage().nbytes() == 2 * 3 * 4
    assert ReplayBuffer(5, 3, 2, "cpu", 4).state_dict()["obs"].shape == (0, 3)


# ------------------------------------------------------------------------------------------------- resume


def test_truncated_latest_resumes_from_previous_without_a_duplicated_or_missing_row(run, capsys):
    eval_before = (run / "eval.csv").read_text()
    latest = run / "checkpoints" / "latest.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["--resume", str(run), "--quiet"]) == 0
    notes = [ln for ln in _err_lines(capsys) if "previous.pt" in ln]
    assert len(notes) == 1
    assert "checkpoints/latest.pt is unreadable (" in notes[0]
    assert "resuming from checkpoints/previous.pt at env step 400" in notes[0]
    assert _steps(run / "eval.csv") == [200, 400, 600]
    assert (run / "eval.csv").read_text() == eval_before  # the resume is exact: the same row for step 600 again
    train_steps = _steps(run / "train.csv")
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 600
    assert load_resume_checkpoint(str(run))[0]["loop"]["env_steps"] == 600


def test_no_readable_checkpoint_is_one_line(run, capsys):
    (run / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    (run / "checkpoints" / "previous.pt").write_bytes(b"")
    with pytest.raises(UsageError) as e:
        load_resume_checkpoint(str(run))
    assert "checkpoints/latest.pt is unreadable" in str(e.value) and "previous.pt is unreadable too" in str(e.value)
    assert main(["--resume", str(run), "--quiet"]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "cannot resume" in lines[0]


# ---------------------------------------------------------------------------------------- pickled payloads


class Payload:
    """Pickles as a call of open(marker, "w"): loading it with pickle would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_a_pickled_payload_is_refused_everywhere_without_running(run, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    good = load_checkpoint(str(run / "checkpoints" / "best.pt"))
    torch.save({**good, "extra": Payload(marker)}, run / "checkpoints" / "best.pt")
    latest = load_checkpoint(str(run / "checkpoints" / "latest.pt"))
    torch.save({**latest, "rng": Payload(marker)}, run / "checkpoints" / "latest.pt")

    with pytest.raises(UnsafeCheckpoint, match="holds pickled Python objects") as e:
        load_policy(str(run))
    assert "\n" not in str(e.value) and "GLOBAL io.open" in str(e.value)
    capsys.readouterr()
    for prog, entry in (("fastrsm-eval", lambda: evaluate.main([str(run), "--episodes", "1", "--device", "cpu"])),
                        ("fastrsm-export", lambda: export.main([str(run), str(tmp_path / "p.pt2")])),
                        ("fastrsm-train", lambda: main(["--resume", str(run), "--quiet"]))):
        code = entry()
        lines = _err_lines(capsys)
        assert code == 2 and len(lines) == 1, (prog, lines)
        assert lines[0].startswith(f"{prog}: error: checkpoint ") and "was refused" in lines[0]
    assert "delete it to resume from checkpoints/previous.pt" in str(pytest.raises(
        UnsafeCheckpoint, load_resume_checkpoint, str(run)).value)
    (run / "checkpoints" / "previous.pt").unlink()
    assert main(["--resume", str(run), "--quiet"]) == 2
    assert "was refused" in _err_lines(capsys)[0]
    assert not marker.exists()
    assert not (tmp_path / "p.pt2").exists()


# ------------------------------------------------------------------------------------------ memory checks


def test_replay_memory_check_counts_the_host_copy_of_a_cuda_checkpoint(monkeypatch):
    cfg = make_config("smoke", {"buffer_size": 1_000_000})
    need = cli.replay_bytes(cfg, 10, 2)
    host = {"cpu": need // 2, "cuda": 100 * need}
    monkeypatch.setattr(cli, "available_memory", lambda device: host[device.type])
    with pytest.raises(UsageError, match="a checkpoint copies the replay buffer to host memory") as e:
        cli.check_replay_fits(cfg, 10, 2, torch.device("cuda"))
    assert "save_replay=false" in str(e.value)
    cli.check_replay_fits(make_config("smoke", {"buffer_size": 1_000_000, "save_replay": False}), 10, 2,
                          torch.device("cuda"))
    # a CPU run needs the buffer and nothing more: exactly the bytes it allocates fit
    host["cpu"] = need
    cli.check_replay_fits(cfg, 10, 2, torch.device("cpu"))
    host["cpu"] = need - 1
    with pytest.raises(UsageError, match="the replay buffer needs"):
        cli.check_replay_fits(cfg, 10, 2, torch.device("cpu"))
