"""fastrsm-sweep on a local Ray (CPU): the grid, a killed trial retried from its checkpoint, a killed driver
restarted, an earlier attempt's trainer that still holds its run dir, and every bad input. One Ray session (2 CPUs)
is shared by the module: starting Ray is the slow part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from fastrsm import sweep as sw  # noqa: E402

# tests/test_resume.py's tiny runs, smaller still: a trial's cost is mostly its process start-up.
TINY = ["--preset", "smoke"] + [a for kv in (
    "warmup_steps=50", "eval_every=100", "eval_episodes=1", "batch_size=32", "particles=4", "diffusion_steps=3",
    "hidden=16", "log_every=50", "reverse_samples=4", "nan_check_every=25") for a in ("--set", kv)]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; in-process `main` calls reuse it, subprocess drivers join its address."""
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                   log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def _state(out) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _eval_steps(run_dir) -> list[int]:
    return [int(r.split(",")[0]) for r in (run_dir / "eval.csv").read_text().strip().splitlines()[1:]]


# ------------------------------------------------------------------------------------------------- pure parts
def test_parse_seeds_and_trials():
    assert sw.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sw.parse_seeds("0-2,7") == [0, 1, 2, 7]
    trials = sw.make_trials(["A-v1"], ["sac", "dpmd"], [0, 1, 2], 2, "smoke", {"hidden": "16", "total_steps": 10})
    assert [(t.algo, t.seeds) for t in trials] == [("sac", [0, 1]), ("sac", [2]), ("dpmd", [0, 1]), ("dpmd", [2])]
    group = sw.train_command(trials[0], "/o", resume=False)
    assert group[group.index("--seeds") + 1] == "0,1" and "--seed" not in group
    assert {"hidden=16", "total_steps=10"} <= set(group) and group[group.index("--preset") + 1] == "smoke"
    single = sw.train_command(trials[1], "/o", resume=False)
    assert single[single.index("--seed") + 1] == "2" and single[single.index("--run-dir") + 1] == "/o/A-v1__sac__2"
    assert sw.train_command(trials[1], "/o", resume=True)[-2:] == ["--resume", "/o/A-v1__sac__2"]
    trials[1].extend = True  # a resumed run taken further gets its new budget, and nothing else
    assert sw.train_command(trials[1], "/o", resume=True)[-3:] == ["/o/A-v1__sac__2", "--set", "total_steps=10"]


def test_done_is_what_the_summary_says(tmp_path):
    t = sw.make_trials(["A-v1"], ["sac"], [0], 1, settings={"total_steps": 300})[0]
    run = tmp_path / t.run_dir
    assert sw.done_status(t, str(tmp_path)) is None
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"x")
    for status, done in (("stopped", None), ("diverged", "diverged"), ("finished", "finished")):
        (run / "summary.json").write_text(json.dumps({"status": status, "env_steps": 200}))
        assert sw.done_status(t, str(tmp_path)) == done
    t.extend = True  # finished at 200 of 300: taken further from its checkpoint
    assert sw.done_status(t, str(tmp_path)) is None


def test_progress_table_counts_and_aggregate_speed(tmp_path):
    trials = sw.make_trials(["A-v1"], ["sac"], [0, 1, 2], 1)
    for t, status in zip(trials, ("finished", "running", "running")):
        t.status = status
    for t, sps in zip(trials[1:], (120.0, 80.5)):
        (tmp_path / t.run_dir).mkdir()
        (tmp_path / t.run_dir / "train.csv").write_text(f"step,steps_per_s\n50,1\n100,{sps}\n")
    text = sw.progress_table(sw.Sweep(str(tmp_path), {}, trials), str(tmp_path))
    assert "1/3" in text and "100,100" in text and "aggregate 200 env-steps/s" in text
    assert sw.tally(sw.Sweep(str(tmp_path), {}, trials)).startswith("1/3 done")


def test_fastrsm_never_imports_ray():
    code = "import sys, fastrsm, fastrsm.train, fastrsm.cli, fastrsm.plot; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------------------------------------- bad input
BASE = ["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0"]


@pytest.mark.parametrize("args, words", [
    (["--envs", "Pendulm-v1", "--algos", "sac", "--seeds", "0"], ["unknown environment", "Pendulum-v1"]),
    (["--envs", "Pendulum-v1", "--algos", "sacc", "--seeds", "0"], ["unknown algo", "sac"]),
    (["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0-"], ["--seeds"]),
    (["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "3-1"], ["--seeds"]),
    (["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "x"], ["--seeds"]),
    (["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0,0"], ["twice"]),
    (["--envs", "Pendulum-v1,", "--algos", "sac", "--seeds", "0"], ["--envs"]),
    ([*BASE, "--set", "seed=3"], ["--seeds"]),
    ([*BASE, "--set", "hiden=3"], ["unknown setting"]),
    ([*BASE, "--set", "hidden=-3"], ["hidden"]),
    (["--envs", "CartPole-v1", "--algos", "sac", "--seeds", "0"], ["CartPole-v1", "action space"]),
    # every (env, algo, seeds per process) is checked, not the first algo's: DACER has no multi-seed path
    (["--envs", "Pendulum-v1", "--algos", "sac,dacer", "--seeds", "0-3", "--seeds-per-process", "2"],
     ["dacer", "multi-seed", "--seeds-per-process 1"]),
    ([*BASE, "--gpus-per-trial", "1.5"], ["--gpus-per-trial"]),
    ([*BASE, "--seeds-per-process", "0"], ["--seeds-per-process"]),
    ([*BASE, "--address", "127.0.0.1:1"], ["--address", "no Ray cluster reachable"]),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, words):
    out = tmp_path / "sweep"
    assert sw.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastrsm-sweep: error:"), err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_bad_combination_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    """`--algos dacer --seeds-per-process 2` used to pass the checks and then fail every trial."""
    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sw, "start_ray", no_ray)
    out = tmp_path / "s"
    assert sw.main(["--envs", "Pendulum-v1", "--algos", "dacer", "--seeds", "0-1", "--seeds-per-process", "2",
                    "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dacer" in err and "multi-seed" in err, err
    assert not out.exists()
    # its seeds one per process are fine: the same grid passes the checks (and would start Ray)
    with pytest.raises(AssertionError, match="Ray was started"):
        sw.main(["--envs", "Pendulum-v1", "--algos", "dacer", "--seeds", "0-1", "--out", str(out)])


def test_out_with_another_sweeps_grid(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"grid": {"envs": ["Hopper-v4"]}, "trials": []}))
    assert sw.main([*BASE, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another sweep" in err and "envs" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert sw.main([*BASE, "--out", str(tmp_path / "other")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_without_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert sw.main([*BASE, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install" in err and "sweep" in err


def test_gpus_refused_without_gpus(ray_session, tmp_path, capsys):
    assert sw.main([*BASE, "--gpus-per-trial", "0.25", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no GPU" in err


# ------------------------------------------------------------------- an earlier attempt's trainer still there
# A trainer as fastrsm.lock makes one hold its run dir: flock(LOCK_EX) on <dir>/.lock, its pid written there.
HOLDER = """
import fcntl, os, signal, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, str(os.getpid()).encode(), 0)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.mark.parametrize("holder, ends", [("polite", -signal.SIGTERM), ("stubborn", -signal.SIGKILL),
                                          ("leaving", 0), ("remote", None)])
def test_run_dir_still_held_is_waited_for_then_its_holder_stopped(tmp_path, capsys, monkeypatch, holder, ends):
    monkeypatch.setattr(sw, "HOLDER_WAIT_S", 1.0)
    monkeypatch.setattr(sw, "HOLDER_GRACE_S", 1.0)
    t = sw.make_trials(["Pendulum-v1"], ["sac"], [0], 1)[0]
    (tmp_path / t.run_dir).mkdir()
    if holder == "remote":  # its last attempt ran on another node: no pid there is ours to signal
        (tmp_path / ".sweep" / t.run_dir).mkdir(parents=True)
        (tmp_path / ".sweep" / t.run_dir / "attempt.json").write_text(json.dumps({"node": "elsewhere"}))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / t.run_dir), holder,
                          "0.3" if holder == "leaving" else "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "held\n"
        sw.release_run_dir(t, str(tmp_path))
        said = capsys.readouterr().out
        if ends is None:
            assert p.poll() is None and "not stopped" in said and "elsewhere" in said
        else:
            assert p.wait(timeout=10) == ends
        if ends == 0:  # it let go within the wait: nothing to say
            assert said == ""
        elif ends:
            assert said.count("\n") == 1 and f"pid {p.pid}" in said and signal.Signals(-ends).name in said, said
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------------------------------------------------------ sweeps
def test_grid_2x2x2_finishes_with_its_table(ray_session, tmp_path, capsys):
    out = tmp_path / "grid"
    code = sw.main(["--envs", "InvertedPendulum-v4,Pendulum-v1", "--algos", "sac,dpmd", "--seeds", "0-1",
                    "--total-steps", "200", *TINY, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    state = _state(out)
    assert len(state["trials"]) == 8 and all(t["status"] == "finished" and t["attempts"] == 1
                                              for t in state["trials"])
    assert state["counts"]["finished"] == 8
    rows = [r for r in (out / "table.md").read_text().splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert len(rows) == 4
    assert {tuple(c.strip() for c in r.split("|")[1:3]) for r in rows} == {
        (e, a) for e in ("InvertedPendulum-v4", "Pendulum-v1") for a in ("sac", "dpmd")}
    assert all(r.split("|")[3].strip() == "2 (0,1)" for r in rows)
    assert (out / "curves.png").stat().st_size > 0
    for t in state["trials"]:
        assert _eval_steps(out / t["run_dir"]) == [100, 200]
    assert "running" in printed and "finished" in printed


def test_seeds_per_process_runs_one_group_per_env_and_algo(ray_session, tmp_path, capsys):
    """K = 2 seeds in one process (fastrsm-train --seeds): one group trial, both seeds in the table."""
    out = tmp_path / "groups"
    code = sw.main(["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0-1", "--seeds-per-process", "2",
                    "--total-steps", "200", *TINY, "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    state = _state(out)
    assert len(state["trials"]) == 1 and state["trials"][0]["status"] == "finished"
    group = out / state["trials"][0]["run_dir"]
    assert (group / "group.json").exists() and sw._has_checkpoint(str(group))
    for seed in (0, 1):
        assert _eval_steps(group / f"seed_{seed}") == [100, 200]
    rows = [r for r in (out / "table.md").read_text().splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert len(rows) == 1 and rows[0].split("|")[3].strip() == "2 (0,1)"


@pytest.mark.parametrize("victim", ["pid", "worker_pid"])  # the trainer itself, or the Ray worker that runs it
def test_killed_trial_is_retried_from_its_checkpoint(ray_session, tmp_path, victim):
    out = tmp_path / "kill"
    side = out / ".sweep" / "Pendulum-v1__sac__0"
    run = out / "Pendulum-v1__sac__0"
    killed = {}

    def killer():
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                info = json.loads((side / "attempt.json").read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("attempt") == 1 and (run / "checkpoints" / "latest.pt").exists():
                time.sleep(0.3)  # mid-run, between checkpoints
                os.kill(info[victim], signal.SIGKILL)
                killed["pid"] = info[victim]
                return
            time.sleep(0.05)

    th = threading.Thread(target=killer)
    th.start()
    code = sw.main(["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0", "--total-steps", "600", *TINY,
                    "--out", str(out)])
    th.join()
    assert killed, "the trainer was never seen running"
    assert code == 0
    trial = _state(out)["trials"][0]
    assert trial["status"] == "finished" and trial["attempts"] == 2
    first = trial["history"][0]
    if victim == "pid":
        assert first["exit_code"] == -signal.SIGKILL
    else:  # Ray reports the dead worker; its trainer got SIGTERM, saved a checkpoint and exited
        assert first["exit_code"] is None and "Ray" in first["error"]
    assert trial["history"][1]["exit_code"] == 0
    assert "--resume" in (side / "train.log").read_text()
    assert _eval_steps(run) == list(range(100, 601, 100))  # one row per evaluation: no duplicates, no gaps


def test_driver_killed_and_restarted_runs_nothing_twice(ray_session, tmp_path, capsys):
    out = tmp_path / "drv"
    args = ["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "0-1", "--total-steps", "400", *TINY,
            "--cpus-per-trial", "2", "--out", str(out)]  # one trial at a time on the 2 CPUs
    driver = subprocess.Popen([sys.executable, "-m", "fastrsm.sweep", *args, "--address", ray_session],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    first = None
    try:
        while first is None:
            assert driver.poll() is None, driver.communicate()[0]
            assert time.time() - t0 < 240, "the first trial never finished"
            try:
                trials = _state(out)["trials"]
            except (OSError, ValueError, KeyError):
                trials = []
            done = [t for t in trials if t["status"] == "finished"]
            second = [t["run_dir"] for t in trials if t["status"] == "running"]
            if done and second and (out / second[0] / "checkpoints" / "latest.pt").exists():
                first = done[0]["run_dir"]  # and the second is mid-run, a checkpoint behind it
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.communicate(timeout=60)
    stamp = (out / first / "summary.json").stat().st_mtime_ns
    assert sw.main(args) == 0
    printed = capsys.readouterr().out
    # the second trial resumes from its checkpoint, or was finished by its trainer after the driver died
    assert "1 already done" in printed or "2 already done" in printed, printed
    state = _state(out)
    assert [t["status"] for t in state["trials"]] == ["finished", "finished"]
    by_dir = {t["run_dir"]: t for t in state["trials"]}
    assert by_dir[first]["attempts"] == 1
    assert (out / first / "summary.json").stat().st_mtime_ns == stamp  # not run again
    for t in state["trials"]:
        assert _eval_steps(out / t["run_dir"]) == [100, 200, 300, 400]
    assert len(state["commands"]) == 2
