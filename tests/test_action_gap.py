"""fastrsm-diagnose action-gap (the LEARNING.md diagnostic of where a hopper's fall comes from): the critic scores at
one state are the ones claimed (checked on a critic with a known maximum), and on a tiny MuJoCo run every marked step
is scored, the summary follows from the rows, and a path that is not a run is refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastrsm.diagnose import action_gap
from fastrsm.train import main as train_main

TINY = ["--env", "InvertedPendulum-v4", "--algo", "dpmd", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--total-steps", "200", "--warmup-steps", "100", "--eval-every", "200", "--eval-episodes", "1",
        "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100"]


def test_scores_on_a_critic_with_a_known_best_action() -> None:
    best = torch.tensor([0.3, -0.5])

    def min_q(s, a):  # Q = 10 − |a − best|², whatever the state: the best action scores 10, the rest less
        return 10.0 - ((a - best) ** 2).sum(-1)

    agent = SimpleNamespace(critic=SimpleNamespace(min_q=min_q),
                            act=lambda s, explore=True, generator=None: torch.zeros(s.shape[0], 2))  # always acts 0
    g = torch.Generator().manual_seed(0)
    r = action_gap.score_state(agent, torch.zeros(3), best, uniform=4096, draws=8, generator=g)
    assert r["q_taken"] == pytest.approx(10.0)
    assert r["q_uniform_max"] <= 10.0 and r["q_uniform_max"] > 9.9  # 4096 draws on [-1, 1]² come close to it
    assert r["q_uniform_min"] == pytest.approx(10.0 - (1.3 ** 2 + 1.5 ** 2), abs=0.15)  # the far corner (−1, 1)
    assert r["q_uniform_min"] < r["q_uniform_mean"] < r["q_uniform_max"]
    assert r["q_draws_max"] == pytest.approx(10.0 - (0.3 ** 2 + 0.5 ** 2))  # the policy's only action, 0


def test_a_tiny_run_is_scored_at_every_marked_step(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mujoco")
    run = tmp_path / "run"
    assert train_main([*TINY, "--run-dir", str(run)]) == 0
    out = tmp_path / "gap.json"
    mod = action_gap
    assert mod.main([str(run), "--every", "3", "--tail", "2", "--uniform", "64", "--draws", "8", "--rows",
                     "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    n = r["length"]
    assert 1 <= n <= 1000 and isinstance(r["terminated"], bool)
    assert [row["step"] for row in r["rows"]] == sorted(set(range(0, n, 3)) | set(range(max(0, n - 2), n)))
    gaps = [row["q_uniform_max"] - row["q_taken"] for row in r["rows"]]
    assert r["gap_mean"] == pytest.approx(sum(gaps) / len(gaps)) and r["gap_max"] == pytest.approx(max(gaps))
    short = [row["q_uniform_max"] - row["q_draws_max"] for row in r["rows"]]
    assert r["draws_short_mean"] == pytest.approx(sum(short) / len(short))
    assert r["q_peak"] == pytest.approx(max(row["q_taken"] for row in r["rows"]))
    # InvertedPendulum's body: qpos[1] is the pole's hinge angle, upright (|angle| ≤ 0.2) while the episode runs
    assert all(isinstance(row["body_vx"], float) and abs(row["body_qpos1"]) <= 0.2 + 1e-6 for row in r["rows"])
    assert (r["warning_steps"] is None) == (not r["terminated"])
    if r["terminated"]:
        assert 0 <= r["warning_steps"] <= n
    printed = capsys.readouterr().out
    assert printed.count("| run | run |") == 1 and printed.count("    step ") == len(r["rows"])
    assert mod.main([str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit):
        mod.main([str(run), "--every", "0"])


def test_sac_draws_repeat_with_the_generator_and_leave_the_global_rng_alone() -> None:
    # an agent's exploring act draws from the generator it is given: the score follows the generator's seed alone
    agent = SimpleNamespace(critic=SimpleNamespace(min_q=lambda s, a: -(a ** 2).sum(-1)),
                            act=lambda s, explore=True, generator=None: torch.randn(s.shape[0], 2,
                                                                                    generator=generator).tanh())
    score = action_gap.score_state
    state = torch.random.get_rng_state()
    runs = [score(agent, torch.zeros(3), torch.zeros(2), 16, 8, torch.Generator().manual_seed(k)) for k in (5, 5, 6)]
    assert runs[0]["q_draws_max"] == runs[1]["q_draws_max"] != runs[2]["q_draws_max"]
    assert torch.equal(torch.random.get_rng_state(), state)
