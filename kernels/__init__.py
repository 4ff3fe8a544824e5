"""Fused Triton kernels of docs/algorithms.md §9, importable as ``fastrsm.kernels``.

Each kernel module holds the @triton.jit kernel, its launcher and a ``reference`` (from ``reference.py``, plain
PyTorch) that defines what it computes. Nothing here imports the library above it. The kernels are loaded
lazily: ``fastrsm.kernels.reference`` and ``fastrsm.kernels._utils`` import without triton, so the library
keeps working where triton is absent.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"fused_best_of_n": "best_of_n", "fused_chain": "chain", "chain_noise": "chain",
         "fused_weighted_sm_loss": "sm_loss", "FusedWeightedSMLoss": "sm_loss"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
