"""fastrsm: online RL with diffusion policies trained by Reweighted Score Matching (DPMD, SDAC), and SAC.

`fastrsm.load_policy(run_dir)` loads a trained policy to act with (fastrsm/policy.py) and
`fastrsm.evaluate_policy(run_dir)` evaluates it again by the evaluation protocol (fastrsm/evaluate.py);
`fastrsm.export_policy(run_dir, path)` compiles it into one file and `fastrsm.load_exported(path)` acts with that
file (fastrsm/export.py). All are imported on first use, so `import fastrsm` stays light."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ExportedPolicy", "Policy", "evaluate_policy", "export_policy", "load_exported", "load_policy",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Policy", "load_policy"):
        from . import policy

        return getattr(policy, name)
    if name in ("ExportedPolicy", "export_policy", "load_exported"):
        from . import export

        return getattr(export, name)
    if name == "evaluate_policy":
        from .evaluate import evaluate_policy

        return evaluate_policy
    raise AttributeError(f"module 'fastrsm' has no attribute {name!r}")
