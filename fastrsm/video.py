"""One evaluation episode of a trained policy, rendered off-screen to a .gif or .mp4: `fastrsm-eval RUN --video F`.

MuJoCo renders without a display through EGL or OSMesa; which one works is found in a child process before this
process imports MuJoCo (MuJoCo fixes its GL backend at import, and a failed EGL start can abort the process), so a
machine with neither gets one line naming the system package to install. The policy acts exactly as in evaluation
(`load_policy`: the EMA policy, best-of-N, no exploration noise). Frames are kept at about `fps` per second of the
task's own time, so the file plays in real time; the running return and step are written on each frame."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np

from .utils import UsageError

GL_BACKENDS = ("egl", "osmesa")
GL_PACKAGES = "EGL (Debian/Ubuntu: apt-get install libegl1) or OSMesa (apt-get install libosmesa6)"
_PROBE = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"


def choose_gl_backend() -> str:
    """The off-screen GL backend MuJoCo will use: MUJOCO_GL if the user set it, else the first of EGL and OSMesa
    that starts in a child process. Sets MUJOCO_GL for this process; UsageError when none works."""
    if "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ:
        raise UsageError("MuJoCo was imported before an off-screen GL backend was chosen: set MUJOCO_GL=egl (or "
                         "osmesa) before starting")
    tried = [os.environ["MUJOCO_GL"]] if os.environ.get("MUJOCO_GL") else list(GL_BACKENDS)
    for backend in tried:
        try:
            probe = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, "MUJOCO_GL": backend},
                                   capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return backend
    raise UsageError(f"no off-screen OpenGL for MuJoCo (tried MUJOCO_GL={', '.join(tried)}): install {GL_PACKAGES}")


def frame_stride(render_fps: float, fps: float) -> int:
    """Keep every k-th frame so that `render_fps` (the task's frames per simulated second) plays at about `fps`."""
    return max(1, round(render_fps / fps))


def annotate(frame: np.ndarray, text: str) -> Any:
    """The frame as a PIL image with `text` in its top-left corner on a dark band (readable on any floor)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((4, 3), text)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return img


def follow_body(env: Any) -> None:
    """Keep the camera over the body the task's camera config names (`trackbodyid`): gymnasium sets it on a free
    camera, which MuJoCo does not move, so a walker leaves the frame. Moves the look-at point in x and y only."""
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    viewer = getattr(renderer, "viewer", None)
    body = (getattr(renderer, "default_cam_config", None) or {}).get("trackbodyid", -1)
    if viewer is None or body is None or body < 1:
        return
    viewer.cam.lookat[:2] = env.unwrapped.data.xpos[body][:2]


def _frame(env: Any) -> np.ndarray:
    if getattr(getattr(env.unwrapped, "mujoco_renderer", None), "viewer", 1) is None:
        env.render()  # the first call creates the viewer (and its camera)
    follow_body(env)
    return env.render()


def write_video(path: str, images: list[Any], fps: float) -> None:
    """`images` (PIL) to `path`: .gif through Pillow, .mp4 through imageio's ffmpeg; written to a temporary file
    first and moved into place, so a stopped write leaves no half file."""
    tmp = f"{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        if path.endswith(".gif"):
            # GIF delays are in 10 ms units: round the frame time to one of them
            images[0].save(tmp, save_all=True, append_images=images[1:], loop=0,
                           duration=max(20, 10 * round(100 / fps)), optimize=False)
        else:
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as w:
                for img in images:
                    w.append_data(np.asarray(img))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_video_path(path: str) -> None:
    """Refuse a bad --video before any work: an unknown suffix, a missing folder, .mp4 without its writer."""
    if not path.endswith((".gif", ".mp4")):
        raise UsageError(f"--video {path}: the file must end in .gif or .mp4")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--video {path}: the folder {folder} does not exist")
    if path.endswith(".mp4"):
        try:
            import imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UsageError("--video .mp4 needs imageio and imageio-ffmpeg: pip install 'fastrsm[video]' (or "
                             "write a .gif, which needs nothing more)") from None


def record_episode(policy: Any, path: str, seed: int = 12345, fps: float = 30.0, width: int = 320,
                   height: int = 240, max_steps: int | None = None) -> dict:
    """Run one episode of `policy` (a fastrsm Policy: `env_id` and `act`) on its task, rendered off-screen, and
    write it to `path` (.gif or .mp4). Returns the episode's return, steps, frames written and stride.
    Call `choose_gl_backend()` first, before anything in the process imports MuJoCo."""
    import gymnasium as gym

    check_video_path(path)
    try:
        env = gym.make(policy.env_id, render_mode="rgb_array", width=width, height=height)
    except TypeError:  # a task whose renderer takes no size (classic control)
        env = gym.make(policy.env_id, render_mode="rgb_array")
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(f"{policy.env_id} cannot render here: {str(e).splitlines()[0]}") from None
    render_fps = float(env.metadata.get("render_fps") or fps)
    stride = frame_stride(render_fps, fps)
    images, ret, steps = [], 0.0, 0
    try:
        obs, _ = env.reset(seed=seed)
        images.append(annotate(_frame(env), f"{policy.env_id}  {policy.algo}  step 0  return 0.0"))
        done = False
        while not done and (max_steps is None or steps < max_steps):
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            ret, steps, done = ret + float(reward), steps + 1, bool(terminated or truncated)
            if steps % stride == 0 or done or steps == max_steps:
                images.append(annotate(_frame(env), f"{policy.env_id}  {policy.algo}  step {steps}  return "
                                                     f"{ret:.1f}"))
    finally:
        env.close()
    write_video(path, images, render_fps / stride)
    return {"path": os.path.abspath(path), "return": ret, "steps": steps, "frames": len(images), "stride": stride,
            "fps": render_fps / stride}


def expected_frames(steps: int, stride: int) -> int:
    """Frames `record_episode` writes for an episode of `steps` steps: the reset frame, every stride-th step's,
    and the last step's when the stride does not land on it."""
    return 1 + steps // stride + (1 if steps % stride else 0)


__all__ = ["choose_gl_backend", "expected_frames", "frame_stride", "record_episode"]
