"""bench/diffusion_spread.py (the LEARNING.md measurement of how much spread the diffusion policy gives back):
a tiny run prints one table row per case, a trained model returns a spread of the target's order, and bad input
is refused with a message."""

from __future__ import annotations

import pytest


def test_a_row_per_case(capsys, import_bench):
    bench = import_bench("diffusion_spread")
    assert bench.main(["--cases", "linear:3,geometric:3", "--sigmas", "0.1", "--steps", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| linear")
            or line.startswith("| geometric")]
    assert len(rows) == 2 and all(len(r.strip("|").split("|")) == 8 for r in rows)


def test_measure_reports_the_target_and_a_positive_spread(import_bench):
    r = import_bench("diffusion_spread").measure("geometric", 5, 0.3, steps=200)
    assert 0.25 < r["target_spread"] < 0.32  # σ = 0.3, a little less after clipping to the box
    assert 0 < r["spread"] < 1 and r["ratio"] == pytest.approx(r["spread"] / 0.3)
    assert r["lowest_levels"][0] == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("argv", [["--cases", "quadratic:10"], ["--cases", "linear:x"], ["--sigmas", "a"],
                                  ["--steps", "0"]])
def test_bad_input_is_refused(argv, capsys, import_bench):
    with pytest.raises(SystemExit) as e:
        import_bench("diffusion_spread").main(argv)
    assert e.value.code == 2 and "error" in capsys.readouterr().err
