"""One switch for the hot paths (DESIGN.md "Dispatch"): the reverse chain, the weighted score-matching loss and
best-of-N selection, each as plain PyTorch ('torch'), torch.compile of the same ('compile') or the fused Triton
kernels of fastrsm.kernels ('triton'). Every backend computes the same function; the PyTorch references live
beside the kernels in kernels/reference.py.

Two settings shape the triton chain only:
- `chain_noise`: 'torch' draws x_T and the per-step noise with torch's generator and hands them to the chain
  (the same random numbers as the torch backend for a seed); 'kernel' draws them inside the kernel with
  Philox from a seed taken from torch's generator (reproducible for a seed, a different stream from torch's,
  and on a GPU it never materialises the [T, B·N, A] noise tensor).
- `chain_precision`: 'fp32' (exact products), 'tf32' or 'bf16' matmul operands (GPU only; accumulation and the
  chain state stay fp32).

Triton is imported only when the triton backend is chosen, so the library imports where it is absent.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .diffusion import factored_chain
from .kernels._utils import interpreter_enabled, triton_device_problem
from .kernels.reference import best_of_n as best_of_n_reference
from .kernels.reference import weighted_sm_loss

BACKENDS = ("auto", "torch", "compile", "triton")
CHAIN_NOISE = ("torch", "kernel")
CHAIN_PRECISIONS = ("fp32", "tf32", "bf16")

__all__ = ["BACKENDS", "CHAIN_NOISE", "CHAIN_PRECISIONS", "BackendError", "Ops", "best_of_n_reference",
           "interpreter_enabled", "make_ops", "resolve_backend", "triton_available"]


class BackendError(ValueError):
    """A backend that cannot run here (unknown name, triton without CUDA or its interpreter, ...)."""


def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as absent: 'auto' then falls back to torch
        return False
    return True


# On a CPU, 'auto' compiles act and update (fastrsm.compiled) when a run has at least this many updates: the
# start-up (about a minute on a small CPU, less with inductor's cache) then pays for itself (bench/RESULTS.md).
AUTO_COMPILE_MIN_UPDATES = 50_000


def compiler_available() -> bool:
    """torch.compile on a CPU needs a C++ compiler for inductor's generated code."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def resolve_backend(name: str, device: torch.device | str, updates: int | None = None) -> str:
    """'auto' -> 'triton' on CUDA when triton imports; on a CPU 'compile' for a run of at least
    AUTO_COMPILE_MIN_UPDATES `updates` (when a C++ compiler is present), else 'torch'. Other names are checked
    and returned."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type == "cuda":
            return "triton" if triton_available() else "torch"
        long_run = updates is not None and updates >= AUTO_COMPILE_MIN_UPDATES
        return "compile" if long_run and compiler_available() else "torch"
    if name == "triton":
        problem = triton_device_problem(device)
        if problem is not None:
            raise BackendError(problem)
        if not triton_available():
            raise BackendError("the triton backend needs the `triton` package (pip install triton)")
    return name


def check_chain_options(backend: str, device: torch.device | str, chain_noise: str, chain_precision: str) -> None:
    """Refuse chain settings the resolved `backend` cannot honour (they would otherwise be silently ignored)."""
    if chain_noise not in CHAIN_NOISE:
        raise BackendError(f"unknown chain-noise {chain_noise!r}; choose one of {', '.join(CHAIN_NOISE)}")
    if chain_precision not in CHAIN_PRECISIONS:
        raise BackendError(f"unknown chain-precision {chain_precision!r}; choose one of "
                           f"{', '.join(CHAIN_PRECISIONS)}")
    if backend != "triton" and (chain_noise != "torch" or chain_precision != "fp32"):
        raise BackendError(f"--chain-noise {chain_noise} / --chain-precision {chain_precision} need the triton "
                           f"backend (this run resolves to {backend!r}); the other backends draw their noise with "
                           "torch and compute in fp32")
    if chain_precision == "bf16" and torch.device(device).type != "cuda":
        raise BackendError("--chain-precision bf16 needs CUDA (the Triton interpreter has no bf16 matmul)")


def draw_chain_inputs(rows: int, T: int, A: int, device: torch.device, seeds: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T ~ 0.5·N(0, I) [rows, A] and the per-step noise [T, rows, A], from torch's generator. With `seeds`:
    [S, rows, A] and [T, S, rows, A], drawn as [S, ...] so that seed s's slice has a single run's shape."""
    if seeds is None:
        x_T = 0.5 * torch.randn(rows, A, device=device)
        noise = torch.randn(T, rows, A, device=device)
        return x_T, noise
    x_T = 0.5 * torch.randn(seeds, rows, A, device=device)
    noise = torch.randn(seeds, T, rows, A, device=device).transpose(0, 1)
    return x_T, noise


@dataclass(frozen=True)
class Ops:
    """The hot paths of one backend, all with the references' signatures:

    chain(eps_net, sched, s, x_T, noise=None) -> x_0 [B·N, A]   (given x_T; noise None: drawn fresh)
    sample(eps_net, sched, s, particles) -> actions [B, N, A]   (draws x_T and the noise as `chain_noise` says)
    sm_loss(eps_pred, eps_targets, logits) -> scalar loss         (differentiable in eps_pred)
    best_of_n(q, cand, noise, noise_std, clip=1.0) -> (action [B, A], idx [B])
    """

    backend: str
    chain: Callable[..., torch.Tensor]
    sample: Callable[..., torch.Tensor]
    sm_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    best_of_n: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    chain_noise: str = "torch"
    chain_precision: str = "fp32"


def _sampler(chain: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """sample() on top of a chain that takes its noise: draw it with torch, run the chain, shape [B, N, A]."""

    def sample(eps_net, sched, s: torch.Tensor, particles: int) -> torch.Tensor:
        # s [B, S_dim] -> [B, N, A]; with a leading seed axis (stacked eps_net) s [S, B, S_dim] -> [S, B, N, A]
        B, A = s.shape[-2], eps_net.act_dim
        seeds = s.shape[0] if s.dim() == 3 else None
        x_T, noise = draw_chain_inputs(B * particles, sched.T, A, s.device, seeds)
        return chain(eps_net, sched, s, x_T, noise).reshape(*s.shape[:-2], B, particles, A)

    return sample


def fresh_noise_chain(run_chain: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Ops.chain on top of `run_chain(eps_net, sched, s, x_T, noise)`: every backend draws fresh noise when none
    is given."""

    def chain(eps_net, sched, s, x_T, noise=None):
        if noise is None:
            noise = torch.randn(sched.T, *x_T.shape, device=x_T.device, dtype=x_T.dtype)
        return run_chain(eps_net, sched, s, x_T, noise)

    return chain


def torch_ops_with_chain(run_chain: Callable[..., torch.Tensor], device: torch.device | str) -> Ops:
    """The torch backend with another PyTorch chain (e.g. the unfactored `reverse_chain`, for a before/after
    comparison): same loss and selection, `run_chain` for the reverse process."""
    chain = fresh_noise_chain(run_chain)
    return replace(make_ops("torch", device), chain=chain, sample=_sampler(chain))


def make_ops(backend: str, device: torch.device | str, chain_precision: str = "fp32",
             chain_noise: str = "torch") -> Ops:
    """The Ops of `backend` ('auto' resolved for `device`); see the module docstring for the chain settings."""
    name = resolve_backend(backend, device)
    check_chain_options(name, device, chain_noise, chain_precision)
    if name in ("torch", "compile"):
        # the factored chain: the reference's arithmetic with the step-invariant work hoisted (fewer ops and
        # FLOPs per step; held to reverse_chain by tests/test_factored_chain.py)
        chain = fresh_noise_chain(torch.compile(factored_chain) if name == "compile" else factored_chain)
        if name == "torch":
            return Ops(name, chain, _sampler(chain), weighted_sm_loss, best_of_n_reference)
        return Ops(name, chain, _sampler(chain), torch.compile(weighted_sm_loss), torch.compile(best_of_n_reference))
    # triton: imported here, not at the top, so the library works without it
    from .kernels import fused_best_of_n, fused_chain, fused_weighted_sm_loss

    def triton_chain(eps_net, sched, s, x_T, noise=None):
        # a stacked (S-seed) network runs as one launch with the seed as a grid axis
        return fused_chain(eps_net, sched, s, x_T, noise, precision=chain_precision)

    if chain_noise == "kernel":
        def sample(eps_net, sched, s, particles):
            # x_T and every step's noise drawn in-kernel (Philox), the seed from torch's generator on the device
            out = fused_chain(eps_net, sched, s, None, None, particles=particles, precision=chain_precision)
            return out.reshape(*s.shape[:-2], s.shape[-2], particles, eps_net.act_dim)
    else:
        sample = _sampler(triton_chain)
    return Ops(name, triton_chain, sample, fused_weighted_sm_loss, fused_best_of_n, chain_noise, chain_precision)
