"""Download the wheels the GPU machine lacks into an ignored folder that travels with the working tree.

The GPU machine (bench/GPU_SUITE.md) has CPython 3.12, torch, triton, pytest(-benchmark, -xdist), matplotlib,
scikit-learn and JAX, but no package index and none of MuJoCo, gymnasium, nvtx or EnvPool. Everything it is
given must fit in 64 MiB together with the working tree, so this script:

- downloads `gymnasium[mujoco]`, `mujoco` and `nvtx` (pinned to the versions installed here, which the tests
  pass with; `--no-pin` takes the newest) plus `setuptools` (the editable install's isolated build needs it),
  with their dependencies, as binary wheels for CPython 3.12 on manylinux x86-64;
- drops the wheels of packages the GPU machine already has (numpy, pillow, packaging: see PROVIDED);
- writes MANIFEST.json (what to install, what was dropped and why) for `bench/gpu_suite.py --wheelhouse`;
- prints the total size and refuses (exit 1) when it is over `--max-mib`.

EnvPool is not carried (its wheel alone is 64 MiB): the suite runs gymnasium's vector envs there.

    python tools/wheelhouse.py [--dest wheelhouse] [--max-mib 50]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys

DEFAULT_DEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wheelhouse")
# (distribution whose version is pinned, requirement as installed there)
WANTED = [("gymnasium", "gymnasium[mujoco]"), ("mujoco", "mujoco"), ("nvtx", "nvtx")]
BUILD_ONLY = ["setuptools"]  # for `pip install --no-index --find-links DIR -e .`, not installed by itself
# Present on the GPU machine already (why), so their wheels are not carried.
PROVIDED = {"numpy": "torch, JAX and matplotlib need it", "pillow": "matplotlib needs it",
            "packaging": "matplotlib and pytest need it"}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
EXIT_TOO_BIG = 1


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(filename: str) -> str:
    """The canonical distribution name of a wheel file (`mujoco_core-4.0.0-cp312-...whl` -> `mujoco-core`)."""
    return _canonical(os.path.basename(filename).split("-", 1)[0])


def requirements(pin: bool) -> list[str]:
    """The requirement strings to download, pinned to the installed versions where there are any."""
    out = []
    for dist, req in WANTED + [(b, b) for b in BUILD_ONLY]:
        version = None
        if pin:
            try:
                version = md.version(dist)
            except md.PackageNotFoundError:
                pass
        out.append(f"{req}=={version}" if version else req)
    return out


def download(reqs: list[str], dest: str, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp", "--dest", dest, "--progress-bar", "off", "--disable-pip-version-check"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    print("$ " + " ".join(cmd + reqs), flush=True)
    subprocess.run(cmd + reqs, check=True)


def prune(dest: str, keep_provided: bool) -> dict[str, str]:
    """Delete the wheels of PROVIDED packages (unless kept); returns {file: why dropped}."""
    dropped = {}
    for f in sorted(os.listdir(dest)):
        if f.endswith(".whl") and not keep_provided and wheel_dist(f) in PROVIDED:
            os.remove(os.path.join(dest, f))
            dropped[f] = f"on the GPU machine already: {PROVIDED[wheel_dist(f)]}"
    return dropped


def wheel_sizes(dest: str) -> dict[str, int]:
    return {f: os.path.getsize(os.path.join(dest, f)) for f in sorted(os.listdir(dest)) if f.endswith(".whl")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Download the wheels bench/gpu_suite.py installs on the GPU machine.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dest", default=DEFAULT_DEST, help="folder for the wheels (ignored by git)")
    p.add_argument("--max-mib", type=float, default=50.0, help="refuse a wheelhouse larger than this")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's CPython")
    p.add_argument("--no-pin", action="store_true", help="newest versions, not the ones installed here")
    p.add_argument("--keep-provided", action="store_true",
                   help=f"keep the wheels of {', '.join(PROVIDED)} (present on the GPU machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    reqs = requirements(pin=not args.no_pin)
    try:
        download(reqs, args.dest, args.python_version)
    except subprocess.CalledProcessError as e:
        print(f"wheelhouse: error: pip download failed (exit {e.returncode})", file=sys.stderr)
        return e.returncode or 1
    dropped = prune(args.dest, args.keep_provided)
    sizes = wheel_sizes(args.dest)
    total = sum(sizes.values())
    for f, n in sizes.items():
        print(f"  {n / 2**20:7.2f} MiB  {f}")
    for f, why in dropped.items():
        print(f"  dropped {f} ({why})")
    print(f"wheelhouse: {len(sizes)} wheels, {total / 2**20:.1f} MiB in {args.dest}")
    install = [r for r in reqs if _canonical(re.split(r"[\[=<>]", r)[0]) not in BUILD_ONLY]
    manifest = {"python_version": args.python_version, "platforms": PLATFORMS, "install": install,
                "build_only": BUILD_ONLY, "dropped": dropped, "wheels": sizes, "total_bytes": total}
    with open(os.path.join(args.dest, "MANIFEST.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    if total > args.max_mib * 2**20:
        print(f"wheelhouse: error: {total / 2**20:.1f} MiB is over the {args.max_mib:g} MiB limit: it would not "
              "fit beside the working tree in the device tool's 64 MiB carry; drop packages or pass --max-mib",
              file=sys.stderr)
        return EXIT_TOO_BIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
