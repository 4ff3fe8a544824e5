"""One writer per run directory (fastrsm.lock): a second trainer on a live run or group directory exits 2 with
one line and writes nothing; readers need no lock; a killed trainer leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastrsm import evaluate
from fastrsm.lock import LOCK_FILE, RunDirLock, acquire_run_dir, holder_pid, wait_for_release
from fastrsm.runlog import load_resume_checkpoint
from fastrsm.train import main
from fastrsm.utils import UsageError

TINY = ["--env", "Pendulum-v1", "--algo", "sac", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--set", "warmup_steps=200", "--set", "eval_every=200", "--set", "checkpoint_every=200",
        "--set", "log_every=100", "--set", "eval_episodes=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# A process that takes a directory's lock (and its sub-directories'), says so, and sleeps until killed.
HOLDER = ("import sys, time\n"
          "from fastrsm.lock import acquire_run_dir\n"
          "lock = acquire_run_dir(sys.argv[1], sys.argv[2:])\n"
          "print('held', flush=True)\n"
          "time.sleep(600)\n")


@pytest.fixture
def hold():
    """hold(dir, *subdirs) -> the Popen of a child process holding the lock; every child is killed after."""
    procs: list[subprocess.Popen] = []

    def start(path, *subdirs) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), *map(str, subdirs)], stdout=subprocess.PIPE,
                             text=True, env=ENV)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]


def _files(root: Path) -> dict[str, int]:
    """Every file under `root` with its modification time: a refused trainer must change none of them."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _assert_in_use(lines: list[str], path, pid: int) -> None:
    assert len(lines) == 1, lines
    assert f"run directory {path} is in use by another trainer (pid {pid})" in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------- the lock


def test_lock_api(tmp_path):
    d = tmp_path / "new" / "run"
    assert holder_pid(str(d)) is None and wait_for_release(str(d), 0.0)
    with acquire_run_dir(str(d)) as lock:
        assert isinstance(lock, RunDirLock) and lock.held
        assert (d / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert holder_pid(str(d)) == os.getpid()
        assert not wait_for_release(str(d), 0.1)
        with pytest.raises(UsageError, match=f"is in use by another trainer \\(pid {os.getpid()}\\)"):
            acquire_run_dir(str(d))  # a second lock is refused even within one process
    assert not lock.held and holder_pid(str(d)) is None
    lock.release()  # releasing twice is harmless
    # the file left behind is no lock: the next trainer takes it at once
    acquire_run_dir(str(d)).release()


def test_sub_directories_are_locked_and_released_together(tmp_path):
    g = tmp_path / "group"
    lock = acquire_run_dir(str(g), [str(g / "seed_0"), str(g / "seed_1")])
    assert holder_pid(str(g / "seed_1")) == os.getpid()
    lock.release()
    assert holder_pid(str(g)) is None and holder_pid(str(g / "seed_0")) is None
    # a sub-directory already held: nothing is kept
    with acquire_run_dir(str(g / "seed_1")), pytest.raises(UsageError, match="seed_1 is in use"):
        acquire_run_dir(str(g), [str(g / "seed_0"), str(g / "seed_1")])
    assert holder_pid(str(g)) is None and holder_pid(str(g / "seed_0")) is None


def test_dropping_the_last_reference_releases(tmp_path):
    acquire_run_dir(str(tmp_path))
    assert holder_pid(str(tmp_path)) is None


def test_a_killed_holder_leaves_no_lock(tmp_path, hold):
    p = hold(tmp_path)
    assert holder_pid(str(tmp_path)) == p.pid
    with pytest.raises(UsageError) as e:
        acquire_run_dir(str(tmp_path))
    assert str(e.value) == (f"run directory {tmp_path} is in use by another trainer (pid {p.pid}); wait for it to "
                            "finish or stop it first")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert wait_for_release(str(tmp_path), 0.0) and holder_pid(str(tmp_path)) is None


def test_a_forked_child_does_not_keep_the_lock_past_its_parent(tmp_path):
    """Env workers or a compile pool forked by the trainer must not hold the run after the trainer is killed."""
    script = ("import os, sys, time\n"
              "from fastrsm.lock import acquire_run_dir\n"
              "lock = acquire_run_dir(sys.argv[1])\n"
              "child = os.fork()\n"
              "if child == 0:\n"
              "    time.sleep(600)\n"
              "    os._exit(0)\n"
              "print(child, flush=True)\n"
              "time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    child = int(p.stdout.readline())
    try:
        assert holder_pid(str(tmp_path)) == p.pid
        p.kill()
        p.wait()
        os.kill(child, 0)  # the child still lives...
        assert holder_pid(str(tmp_path)) is None  # ...and the lock is free
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------------- trainers and readers


def test_second_trainer_on_a_live_run_exits_2_and_kill_then_resume(tmp_path, capsys):
    """A real trainer holds the run: a plain trainer and a --resume on it exit 2 with one line, fastrsm-eval
    reads it; after SIGKILL, --resume takes the directory at once and finishes."""
    run = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "fastrsm.train", *TINY, "--total-steps", "1000000",
                                "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "checkpoints" / "latest.pt").exists() and (run / "checkpoints" / "best.pt").exists()):
            assert trainer.poll() is None, trainer.stderr.read()
            assert time.monotonic() < deadline, "the trainer wrote no checkpoint in time"
            time.sleep(0.2)
        assert holder_pid(str(run)) == trainer.pid
        capsys.readouterr()
        assert main([*TINY, "--total-steps", "600", "--run-dir", str(run)]) == 2
        _assert_in_use(_err_lines(capsys), run, trainer.pid)
        assert main(["--resume", str(run), "--quiet"]) == 2
        _assert_in_use(_err_lines(capsys), run, trainer.pid)
        # a reader takes no lock
        assert evaluate.main([str(run), "--checkpoint", "best", "--episodes", "1", "--device", "cpu"]) == 0
        assert "Pendulum-v1 sac: return" in capsys.readouterr().out
    finally:
        trainer.kill()
        trainer.wait()
    assert holder_pid(str(run)) is None
    ckpt, _ = load_resume_checkpoint(str(run))
    step = ckpt["loop"]["env_steps"]
    assert main(["--resume", str(run), "--total-steps", str(step + 200), "--quiet"]) == 0
    assert holder_pid(str(run)) is None  # released when the trainer returns
    rows = (run / "eval.csv").read_text().strip().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == list(range(200, step + 201, 200))


def test_refused_trainers_write_nothing(tmp_path, capsys, hold):
    """A held new directory, run directory and group directory: plain, --resume and --seeds trainers exit 2
    with the "in use" line and leave every file as it was (the .lock included)."""
    fresh = tmp_path / "fresh"
    p = hold(fresh)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main([*TINY, "--total-steps", "200", "--run-dir", str(fresh)]) == 2
    _assert_in_use(_err_lines(capsys), fresh, p.pid)  # not "exists and is not empty"
    assert main([*TINY, "--total-steps", "200", "--seeds", "0-1", "--run-dir", str(fresh)]) == 2
    _assert_in_use(_err_lines(capsys), fresh, p.pid)
    assert _files(tmp_path) == before

    run = tmp_path / "run"
    assert main([*TINY, "--total-steps", "200", "--run-dir", str(run)]) == 0
    p = hold(run)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(["--resume", str(run), "--total-steps", "400", "--quiet"]) == 2
    _assert_in_use(_err_lines(capsys), run, p.pid)
    assert _files(tmp_path) == before


def test_live_group_refuses_a_second_trainer_on_it_and_on_its_seeds(tmp_path, capsys, hold):
    g = tmp_path / "group"
    assert main([*TINY, "--total-steps", "200", "--seeds", "0-1", "--run-dir", str(g)]) == 0
    assert holder_pid(str(g)) is None and holder_pid(str(g / "seed_1")) is None
    p = hold(g, g / "seed_0", g / "seed_1")  # as a group trainer holds it
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(["--resume", str(g), "--total-steps", "400", "--quiet"]) == 2
    _assert_in_use(_err_lines(capsys), g, p.pid)
    assert main(["--resume", str(g / "seed_1"), "--total-steps", "400", "--quiet"]) == 2
    _assert_in_use(_err_lines(capsys), g / "seed_1", p.pid)
    assert _files(tmp_path) == before
    p.kill()
    p.wait()
    assert main(["--resume", str(g), "--total-steps", "400", "--quiet"]) == 0
    for s in (0, 1):
        steps = [int(r.split(",")[0]) for r in (g / f"seed_{s}" / "eval.csv").read_text().strip().splitlines()[1:]]
        assert steps == [200, 400]
