"""Where Triton kernels can run. Imports nothing but torch: the library asks here before it imports triton."""

from __future__ import annotations

import os

import torch


def interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors (slowly), for tests without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_device_problem(device: torch.device | str) -> str | None:
    """Why Triton kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()):
        return None
    return (f"the triton backend needs a CUDA device (got {device.type!r}); on CPU it runs only under the Triton "
            "interpreter (set TRITON_INTERPRET=1 before triton is imported), or choose --backend torch/compile/auto")


def check_triton_device(device: torch.device | str) -> None:
    """Raise ValueError unless Triton kernels can run on `device`."""
    problem = triton_device_problem(device)
    if problem is not None:
        raise ValueError(problem)
