"""`fastrsm-eval RUN --video FILE`: one evaluation episode rendered off-screen, written as .gif or .mp4.

The tests run the command as a user would, in a child process (MuJoCo fixes its GL backend at import, so the
choice has to happen in a fresh process), on a tiny trained run, and decode what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastrsm.train import main as train_main
from fastrsm.video import expected_frames, frame_stride

TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet", "--total-steps", "400",
        "--set", "warmup_steps=200", "--set", "eval_every=200", "--set", "eval_episodes=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("video") / "run"
    assert train_main([*TINY, "--algo", "dpmd", "--run-dir", str(run)]) == 0
    return run


def fastrsm_eval(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastrsm.evaluate", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def _parse(stdout: str) -> tuple[int, int, float]:
    """steps, frames and return from the command's line."""
    words = stdout.split()
    steps = int(words[words.index("steps;") - 1])
    frames = int(words[words.index("frames") - 1])
    ret = float(words[words.index("return") + 1])
    return steps, frames, ret


def test_gif_has_the_episodes_frames_and_decodes(run_dir, tmp_path):
    from PIL import Image

    gif = tmp_path / "episode.gif"
    r = fastrsm_eval(str(run_dir), "--video", str(gif), "--video-size", "96x64", "--max-steps", "60")
    assert r.returncode == 0, r.stderr
    steps, frames, ret = _parse(r.stdout)
    assert 1 <= steps <= 60 and gif.is_file()
    stride = frame_stride(25.0, 30.0)  # InvertedPendulum renders at 25 frames per simulated second
    assert frames == expected_frames(steps, stride)
    with Image.open(gif) as img:
        assert img.n_frames == frames and img.size == (96, 64)
        img.seek(frames - 1)
        last = np.asarray(img.convert("RGB"))
    assert last.std() > 1.0  # a rendered scene, not a blank frame
    # the same episode as the evaluation protocol's policy plays it: the return printed is the episode's
    assert np.isfinite(ret) and ret <= steps + 1e-6  # InvertedPendulum pays 1 per step
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def test_mp4_decodes_with_its_frame_count(run_dir, tmp_path):
    import imageio.v3 as iio

    mp4 = tmp_path / "episode.mp4"
    r = fastrsm_eval(str(run_dir), "--video", str(mp4), "--video-size", "96x64", "--max-steps", "30",
                     "--video-fps", "25")
    assert r.returncode == 0, r.stderr
    steps, frames, _ = _parse(r.stdout)
    assert frames == expected_frames(steps, 1)
    decoded = iio.imread(mp4, plugin="pyav") if _has_pyav() else np.stack(list(iio.imiter(mp4)))
    assert decoded.shape[0] == frames and decoded.shape[1:3] == (64, 96)


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("args, needle", [
    (["--video", "x.avi"], "must end in .gif or .mp4"),
    (["--video", "/no/such/folder/x.gif"], "does not exist"),
    (["--video", "x.gif", "--video-size", "big"], "WIDTHxHEIGHT"),
    (["--video", "x.gif", "--max-steps", "0"], "positive"),
])
def test_bad_video_arguments_are_one_line_exit_2(run_dir, tmp_path, args, needle):
    r = fastrsm_eval(str(run_dir), *[a if a != "x.gif" and a != "x.avi" else str(tmp_path / a) for a in args])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_gl_backend_names_the_package(run_dir, tmp_path):
    r = fastrsm_eval(str(run_dir), "--video", str(tmp_path / "x.gif"), env={"MUJOCO_GL": "no-such-backend"})
    assert r.returncode == 2 and "libegl1" in r.stderr and "libosmesa6" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.gif").exists()


def test_a_seed_group_is_refused_with_the_seed_dir_to_give(tmp_path):
    group = tmp_path / "group"
    assert train_main([*TINY, "--algo", "sac", "--seeds", "0,1", "--run-dir", str(group)]) == 0
    r = fastrsm_eval(str(group), "--video", str(tmp_path / "x.gif"))
    assert r.returncode == 2 and "seed_0" in r.stderr, r.stderr
    assert json.loads((group / "seed_0" / "config.json").read_text())["config"]["algo"] == "sac"
