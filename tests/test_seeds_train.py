"""`fastrsm-train --seeds`: the group directory, per-seed run dirs, bad input, the replay estimate, resume, and a
diverged seed frozen while the others continue."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastrsm import cli
from fastrsm.envs import make_vec_env
from fastrsm.group import SeedEnvs, seed_dirs
from fastrsm.loop import env_seed
from fastrsm.plot import main as plot_main
from fastrsm.runlog import load_checkpoint
from fastrsm.train import main

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "2",
        "--batch-size", "32",
        "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "50", "--reverse-samples", "4",
        "--nan-check-every", "25"]


def _summary(path):
    return json.loads((path / "summary.json").read_text())


@pytest.mark.slow  # compiles (about a minute on a 2-core CPU)
def test_group_runs_compiled_and_reports_it(tmp_path, capsys):
    from fastrsm.backend import compiler_available

    if not compiler_available():
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "150", "--warmup-steps", "100", "--log-every", "50", "--seeds", "0,1",
                 "--backend", "compile", "--run-dir", str(g)]) == 0
    s = _summary(g)
    assert s["status"] == "finished" and s["backend"] == "compile" and s["compile_seconds"] > 0
    assert "torch.compile took" in capsys.readouterr().err
    assert all(len((g / f"seed_{k}" / "eval.csv").read_text().splitlines()) == 2 for k in (0, 1))


def test_group_run_writes_one_ordinary_run_dir_per_seed(tmp_path, capsys):
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "300", "--seeds", "3,5", "--run-dir", str(g)]) == 0
    s = _summary(g)
    assert s["seeds"] == [3, 5] and s["status"] == "finished" and [r["status"] for r in s["runs"]] == ["finished"] * 2
    for seed in (3, 5):
        d = g / f"seed_{seed}"
        assert json.loads((d / "config.json").read_text())["config"]["seed"] == seed
        assert _summary(d)["seed"] == seed and _summary(d)["env_steps"] == 300
        assert len((d / "eval.csv").read_text().splitlines()) == 3  # header + evals at 150 and 300
        ck = load_checkpoint(str(d / "checkpoints" / "latest.pt"))
        assert ck["agent"]["modules"]["log_alpha"].shape == ()  # an ordinary single-seed checkpoint
    # seeds differ (independent agents), and fastrsm-plot reads the group: one row, mean ± std over 2 seeds
    a0 = load_checkpoint(str(g / "seed_3" / "checkpoints" / "latest.pt"))["agent"]["modules"]
    a1 = load_checkpoint(str(g / "seed_5" / "checkpoints" / "latest.pt"))["agent"]["modules"]
    assert not torch.equal(a0["critic.linears.0.weight"], a1["critic.linears.0.weight"])
    capsys.readouterr()
    assert plot_main([str(g), "--table-format", "csv", "--out", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "InvertedPendulum-v4" in out and "2" in out
    from fastrsm.evaluate import main as eval_main
    assert eval_main([str(g / "seed_5"), "--episodes", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert eval_main([str(g), "--episodes", "2", "--device", "cpu"]) == 0  # the group: every seed, then mean ± std
    assert "group of 2 seeds" in capsys.readouterr().out
    assert (g / "seed_3" / "reeval.json").is_file()
    assert seed_dirs(str(g)) == [str(g / "seed_3"), str(g / "seed_5")]
    assert seed_dirs(str(g / "seed_3")) == [str(g / "seed_3")]  # a single-seed run is its own seed directory


def test_seed_dirs_follow_group_json_and_a_broken_one_is_refused(tmp_path, capsys):
    g = tmp_path / "g"
    g.mkdir()
    (g / "group.json").write_text(json.dumps({"seeds": [5, 3], "config": {}}))
    assert seed_dirs(str(g)) == [str(g / "seed_5"), str(g / "seed_3")]  # group.json's order, not the disk's
    for broken in ("{not json", json.dumps({"config": {}}), json.dumps({"seeds": ["a"]})):
        (g / "group.json").write_text(broken)
        with pytest.raises(ValueError, match="group.json"):
            seed_dirs(str(g))
    from fastrsm.evaluate import main as eval_main
    assert eval_main([str(g), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrsm-eval: error:") and "group.json" in err and len(err.strip().splitlines()) == 1


def test_seed_blocks_are_seeded_as_their_single_runs():
    from fastrsm.config import make_config
    cfgs = [make_config("smoke", {"env_id": "InvertedPendulum-v4", "seed": s, "num_envs": 2}) for s in (0, 7)]
    envs = SeedEnvs([make_vec_env(c.env_id, c.num_envs, env_seed(c, 3), c.env_backend) for c in cfgs])
    obs = envs.reset()
    for i, c in enumerate(cfgs):
        single = make_vec_env(c.env_id, c.num_envs, env_seed(c, 3), c.env_backend)
        np.testing.assert_array_equal(obs[2 * i:2 * i + 2], single.reset())
        single.close()
    envs.close()


@pytest.mark.parametrize("args", [["--seeds", "0-"], ["--seeds", ""], ["--seeds", "1,1"], ["--seeds", "x"],
                                  ["--seeds", "0-2", "--seed", "1"], ["--seeds", "3-1"]])
def test_bad_seeds_one_line_exit_2_nothing_written(tmp_path, capsys, args):
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "300", *args, "--run-dir", str(g)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed" in err
    assert not g.exists()


def test_replay_estimate_counts_every_seed(tmp_path, capsys, monkeypatch):
    one = cli.replay_bytes(cli.make_config("smoke", {"env_id": "InvertedPendulum-v4"}), 4, 1)
    monkeypatch.setattr(cli, "available_memory", lambda device: int(2.5 * one))  # room for 2 seeds, not 3
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "300", "--seeds", "0-2", "--run-dir", str(g)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 seeds" in err and "--buffer-size" in err
    assert not g.exists()


def _modules(g, seed):
    return load_checkpoint(str(g / f"seed_{seed}" / "checkpoints" / "latest.pt"))["agent"]["modules"]


def test_resume_group_continues_every_seed_exactly(tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    assert main([*TINY, "--total-steps", "300", "--seeds", "0-1", "--run-dir", str(straight)]) == 0
    assert main([*TINY, "--total-steps", "150", "--seeds", "0-1", "--run-dir", str(split)]) == 0
    assert main(["--resume", str(split), "--total-steps", "300", "--quiet"]) == 0
    for seed in (0, 1):
        a, b = _modules(straight, seed), _modules(split, seed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), seed
        assert (straight / f"seed_{seed}" / "eval.csv").read_text() == (split / f"seed_{seed}" / "eval.csv").read_text()


def test_resume_group_refuses_seeds(tmp_path, capsys):
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "150", "--seeds", "0-1", "--run-dir", str(g)]) == 0
    capsys.readouterr()
    assert main(["--resume", str(g), "--seeds", "0-3", "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_diverged_seed_is_frozen_and_the_others_continue(tmp_path, poison_seed):
    poison_seed(1, 60)  # from the 60th update on, seed index 1's rewards are NaN
    g = tmp_path / "g"
    assert main([*TINY, "--total-steps", "300", "--seeds", "0-2", "--run-dir", str(g)]) == 0
    s = _summary(g)
    assert [r["status"] for r in s["runs"]] == ["finished", "diverged", "finished"]
    assert _summary(g / "seed_1")["status"] == "diverged" and "frozen" in _summary(g / "seed_1")["message"]
    for seed in (0, 2):  # the others ran to the end, finite
        assert _summary(g / f"seed_{seed}")["env_steps"] == 300
        assert len((g / f"seed_{seed}" / "eval.csv").read_text().splitlines()) == 3
        assert all(torch.isfinite(v).all() for v in _modules(g, seed).values() if v.is_floating_point())
    # the frozen seed kept its last good checkpoint (from before the NaN: step 150) and stopped logging
    ck = load_checkpoint(str(g / "seed_1" / "checkpoints" / "latest.pt"))
    assert ck["loop"]["env_steps"] == 150
    assert all(torch.isfinite(v).all() for v in ck["agent"]["modules"].values() if v.is_floating_point())
    assert math.isfinite(s["best_return_mean"])
