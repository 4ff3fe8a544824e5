"""fastrsm: diffusion-policy online RL (DPMD, SDAC) and SAC, fast, on PyTorch + Triton."""

from setuptools import setup

setup(
    name="fastrsm",
    version="0.1.0",
    description="Reweighted Score Matching (DPMD, SDAC) and SAC for online RL, with Triton kernels and CUDA graphs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is shipped as fastrsm.kernels: a top-level `kernels` package would clash with other installs.
    packages=["fastrsm", "fastrsm.agents", "fastrsm.diagnose", "fastrsm.kernels"],
    package_dir={"fastrsm.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        # Triton wheels exist for Linux x86-64/aarch64 only; elsewhere the torch backend is used.
        "triton>=3.0; platform_system == 'Linux'",
        "numpy>=1.24",
        "gymnasium[mujoco]>=1.0",
        "mujoco>=3.0",
        # EnvPool has no wheels past CPython 3.12; gymnasium's vector envs are the fallback.
        "envpool>=1.2.5; python_version < '3.13' and platform_system == 'Linux'",
        "nvtx>=0.2",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3", "imageio>=2.30", "imageio-ffmpeg>=0.4"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3", "ruff>=0.5", "imageio>=2.30",
                "imageio-ffmpeg>=0.4"],
        "bench": ["stable-baselines3>=2.3"],
        # fastrsm-eval --video FILE.mp4 (a .gif needs only Pillow, which matplotlib brings)
        "video": ["imageio>=2.30", "imageio-ffmpeg>=0.4"],
        # fastrsm-sweep only (fastrsm/sweep.py is the one module that imports Ray).
        "sweep": ["ray[default]>=2.9"],
        # DACER's official entropy estimator (--dacer-entropy sklearn); the default torch EM needs nothing
        "dacer": ["scikit-learn>=1.3"],
    },
    entry_points={
        "console_scripts": [
            "fastrsm-train=fastrsm.train:main",
            "fastrsm-eval=fastrsm.evaluate:main",
            "fastrsm-export=fastrsm.export:main",
            "fastrsm-plot=fastrsm.plot:main",
            "fastrsm-bench=fastrsm.bench:main",
            "fastrsm-sweep=fastrsm.sweep:main",
            "fastrsm-paper=fastrsm.paper:main",
            "fastrsm-diagnose=fastrsm.diagnose:main",
        ]
    },
)
