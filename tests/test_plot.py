"""fastrsm-plot on hand-made run directories that follow the run-directory contract (docs/design.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

from fastrsm import plot
from fastrsm.plot import load_runs, main, mean_curve, paper_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (env, algo, seed) -> eval.csv return_mean column; steps are 0, 1000, 2000, ...
CURVES = {
    ("Hopper-v4", "dpmd", 0): [10.5, 850.25, 1200.5, 1100.0],
    ("Hopper-v4", "dpmd", 1): [12.0, 990.5, 1050.0, 1500.5],
    ("Hopper-v4", "sac", 0): [11.0, 400.0, 700.5, 650.0],
    ("Ant-v4", "dpmd", 0): [-50.0, 300.0, 2500.5, 2400.0],
    ("Ant-v4", "dpmd", 1): [-40.0, 900.0, 1800.0, 3100.5],
    ("Ant-v4", "sac", 0): [-60.0, 200.0, 600.0, 1200.5],
}


def write_run(root: Path, env: str, algo: str, seed: int, returns: list[float], *, step: int = 1000) -> Path:
    d = root / f"{env}__{algo}__{seed}__20250101-000000"
    d.mkdir(parents=True)
    cfg = {"env_id": env, "algo": algo, "seed": seed, "total_steps": step * (len(returns) - 1)}
    (d / "config.json").write_text(
        json.dumps({"config": cfg, "versions": {"torch": "x"}, "device": "cpu", "argv": ["--env", env]})
    )
    with (d / "eval.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "return_mean", "return_std", "episodes", "wall_time"])
        for i, r in enumerate(returns):
            w.writerow([i * step, r, abs(r) * 0.1, 5, 0.5 * i])
    best = max(returns)
    summary = {
        "env_id": env,
        "algo": algo,
        "seed": seed,
        "best_return": best,
        "best_step": returns.index(best) * step,
        "final_return": returns[-1],
        "final_step": (len(returns) - 1) * step,
        "wall_time_s": 1.0,
        "steps_per_s": 1000.0,
        "env_steps": (len(returns) - 1) * step,
        "status": "finished",
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "train.csv").write_text("step,loss_q\n0,1.0\n")
    (d / "checkpoints").mkdir()
    return d


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (env, algo, seed), rets in CURVES.items():
        write_run(root, env, algo, seed, rets)
    return root


def expected_rows(root: Path) -> dict[tuple[str, str], list[float]]:
    """best_return per seed, read back from each summary.json, grouped by (env, algo)."""
    out: dict[tuple[str, str], list[float]] = {}
    for s in sorted(root.glob("*/summary.json")):
        summ = json.loads(s.read_text())
        out.setdefault((summ["env_id"], summ["algo"]), []).append(summ["best_return"])
    return out


def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_plot_and_csv_table_match_summaries(runs_root, tmp_path, capsys):
    out = tmp_path / "curves.png"
    code, stdout, stderr = run_main(capsys, [str(runs_root), "--out", str(out), "--table-format", "csv"])
    assert code == 0, stderr
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing behind

    rows = list(csv.DictReader(io.StringIO(stdout)))
    expected = expected_rows(runs_root)
    assert {(r["env"], r["algo"]) for r in rows} == set(expected)
    for r in rows:
        best = expected[(r["env"], r["algo"])]
        per_seed = [float(v) for v in r["per_seed"].split(";")]
        assert per_seed == best
        assert int(r["n_seeds"]) == len(best)
        # mean and population std (ddof=0) over seeds, by hand
        mean = sum(best) / len(best)
        std = math.sqrt(sum((b - mean) ** 2 for b in best) / len(best))
        assert float(r["mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(r["std"]) == pytest.approx(std, rel=1e-12, abs=1e-12)
        assert float(r["std"]) == pytest.approx(statistics.pstdev(best), abs=1e-9)


def test_text_and_markdown_tables(runs_root, tmp_path, capsys):
    # Ant dpmd: seeds best 2500.5 and 3100.5 -> mean 2800.5, population std 300.0
    code, text, _ = run_main(capsys, [str(runs_root), "--out", str(tmp_path / "a.png")])
    assert code == 0
    ant_dpmd = next(line for line in text.splitlines() if line.startswith("Ant-v4") and " dpmd " in line)
    assert "2800.5 ± 300.0" in ant_dpmd and "0: 2500.5" in ant_dpmd and "1: 3100.5" in ant_dpmd
    hopper_sac = next(line for line in text.splitlines() if line.startswith("Hopper-v4") and " sac " in line)
    assert "700.5 ± 0.0" in hopper_sac

    code, md, _ = run_main(capsys, [str(runs_root), "--out", str(tmp_path / "b.png"), "--table-format", "markdown"])
    assert code == 0
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(expected_rows(runs_root))
    assert "| Hopper-v4 | dpmd | 2 | 1350.5 ± 150.0 |" in md  # (1200.5 + 1500.5) / 2, |diff| / 2


def test_load_runs_and_paper_table(runs_root):
    runs = load_runs([runs_root])
    assert len(runs) == len(CURVES)
    assert [(r.env_id, r.algo, r.seed) for r in runs] == sorted(CURVES)
    rows = paper_table(runs)
    assert [(r["env"], r["algo"]) for r in rows] == sorted({(e, a) for e, a, _ in CURVES})
    for r in rows:
        best = [max(CURVES[(r["env"], r["algo"], s)]) for s in r["seeds"]]
        assert r["per_seed"] == best
        assert r["n_seeds"] == len(best)
        assert r["mean"] == pytest.approx(np.mean(best))
        assert r["std"] == pytest.approx(np.std(best))


def test_run_dir_and_nested_dirs_and_duplicates(runs_root, tmp_path):
    one = next(runs_root.iterdir())
    assert len(load_runs([one])) == 1
    # Two levels: groups/<group>/<run>; the same run given twice counts once.
    nested = tmp_path / "groups" / "g1"
    nested.mkdir(parents=True)
    write_run(nested, "Walker2d-v4", "sdac", 3, [1.0, 2.0])
    assert [r.algo for r in load_runs([tmp_path / "groups", nested, nested])] == ["sdac"]


def test_mean_curve_interpolates_different_grids(tmp_path):
    a = write_run(tmp_path, "E", "dpmd", 0, [0.0, 10.0, 20.0, 30.0], step=1000)  # 0..3000
    b = write_run(tmp_path, "E", "dpmd", 1, [0.0, 30.0], step=1500)  # 0, 1500
    steps, mean, std = mean_curve(load_runs([a, b]))
    # union grid clipped to the common range [0, 1500]; seed 1 interpolated at 1000 -> 20
    assert steps.tolist() == [0, 1000, 1500]
    assert mean.tolist() == pytest.approx([0.0, 15.0, 22.5])
    assert std.tolist() == pytest.approx([0.0, 5.0, 7.5])


def test_runs_without_evaluations_are_skipped_with_warning(runs_root, tmp_path, capsys):
    empty = write_run(runs_root, "Ant-v4", "sdac", 0, [1.0])
    (empty / "eval.csv").write_text("step,return_mean,return_std,episodes,wall_time\n")
    (write_run(runs_root, "Ant-v4", "sdac", 1, [1.0]) / "eval.csv").write_text("")
    # The trainer creates eval.csv at the first evaluation: a young run has config.json only.
    (write_run(runs_root, "Ant-v4", "sdac", 2, [1.0]) / "eval.csv").unlink()
    code, stdout, stderr = run_main(capsys, [str(runs_root), "--out", str(tmp_path / "p.png")])
    assert code == 0
    assert "sdac" not in stdout
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 3 and all(w.startswith("fastrsm-plot: warning: ") for w in warnings)

    # Only empty runs: nothing to plot is an error.
    code, _, stderr = run_main(capsys, [str(empty), "--out", str(tmp_path / "q.png")])
    assert code == 2 and "fastrsm-plot: error:" in stderr


def _corrupt_config(d: Path) -> None:
    (d / "config.json").write_text('{"config": {"env_id": ')


def _missing_config(d: Path) -> None:
    (d / "config.json").unlink()


def _bad_eval_row(d: Path) -> None:
    with (d / "eval.csv").open("a") as f:
        f.write("3000,not-a-number,1,5,1\n")


def _bad_eval_header(d: Path) -> None:
    (d / "eval.csv").write_text("foo,bar\n1,2\n")


@pytest.mark.parametrize("damage", [_corrupt_config, _missing_config, _bad_eval_row, _bad_eval_header])
def test_broken_run_is_an_error(runs_root, tmp_path, capsys, damage):
    damage(next(runs_root.iterdir()))
    out = tmp_path / "p.png"
    code, stdout, stderr = run_main(capsys, [str(runs_root), "--out", str(out)])
    assert code == 2
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastrsm-plot: error: ")
    assert not out.exists()


def test_bad_paths_are_errors(runs_root, tmp_path, capsys):
    empty_dir = tmp_path / "nothing"
    (empty_dir / "sub").mkdir(parents=True)
    cases = [
        [str(tmp_path / "does-not-exist")],
        [str(empty_dir)],
        [str(runs_root), str(tmp_path / "does-not-exist")],
        [str(next(runs_root.iterdir()) / "eval.csv")],  # a file, not a directory
        [str(runs_root), "--out", str(tmp_path / "no-such-dir" / "p.png")],
        [str(runs_root), "--out", str(tmp_path)],  # a directory
    ]
    for argv in cases:
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "p.png")]
        code, stdout, stderr = run_main(capsys, argv)
        assert code == 2, argv
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastrsm-plot: error: "), (argv, stderr)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir(runs_root, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, stderr = run_main(capsys, [str(runs_root), "--out", str(ro / "p.png")])
    finally:
        ro.chmod(0o755)
    assert code == 2 and stderr.startswith("fastrsm-plot: error: ") and stderr.count("\n") == 1


def test_write_failure_is_an_error_and_leaves_no_temp(runs_root, tmp_path, capsys, monkeypatch):
    # Covers unwritable --out as root too: the atomic replace fails.
    def fail(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plot.os, "replace", fail)
    code, _, stderr = run_main(capsys, [str(runs_root), "--out", str(tmp_path / "p.png")])
    assert code == 2 and stderr.startswith("fastrsm-plot: error: ") and stderr.count("\n") == 1
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".p.png*")) == []


def test_usage_error_and_help(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_reads_what_the_trainer_writes(tmp_path, capsys):
    # The real writer (fastrsm.runlog), not a hand-made imitation: its eval.csv has no wall_time column and
    # 6 significant digits, config.json has extra keys, and a diverged evaluation is written as "nan".
    from types import SimpleNamespace

    import torch

    from fastrsm.runlog import RunLog

    for seed, evals in [(0, [[1.0, 2.0], [100.5, 300.5], [250.0, 250.0]]), (1, [[5.0], [float("nan")], [90.0]])]:
        log = RunLog(str(tmp_path / f"Pendulum-v1__sac__{seed}__20250101-000000"))
        log.create({"env_id": "Pendulum-v1", "algo": "sac", "seed": seed}, torch.device("cpu"), ["x"])
        for i, returns in enumerate(evals):
            log.log_eval(1000 * i, returns)
        cfg = SimpleNamespace(env_id="Pendulum-v1", algo="sac", seed=seed)
        log.write_summary(cfg, env_steps=2000, wall_time=1.0, steps_per_s=1.0, status="finished")
        log.close()
    code, stdout, stderr = run_main(capsys, [str(tmp_path), "--out", str(tmp_path / "p.png"), "--table-format", "csv"])
    assert code == 0, stderr
    (row,) = csv.DictReader(io.StringIO(stdout))
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    best = [s["best_return"] for s in summaries]
    assert best == [250.0, 90.0]
    assert [float(v) for v in row["per_seed"].split(";")] == pytest.approx(best, rel=1e-6)
    assert float(row["mean"]) == pytest.approx(170.0) and float(row["std"]) == pytest.approx(80.0)
