"""One switch for the hot paths (docs/design.md "Dispatch"): the reverse chain, the weighted score-matching loss and
best-of-N selection, each as plain PyTorch ('torch'), torch.compile of the same ('compile') or the fused Triton
kernels of fastrsm.kernels ('triton'). Every backend computes the same function; the PyTorch references live
beside the kernels in kernels/reference.py. The torch and compile chains are fastrsm.diffusion.sample_chain (the
library's one chain); the triton chain is the fused kernel, held to the same reference.

Two settings shape the triton chain only:
- `chain_noise`: 'torch' draws x_T and the per-step noise with torch's generator and hands them to the chain
  (the same random numbers as the torch backend for a seed); 'kernel' draws them inside the kernel with
  Philox from a seed taken from torch's generator (reproducible for a seed, a different stream from torch's,
  and on a GPU it never materialises the [T, B·N, A] noise tensor). The kernel draws x_T ~ 0.5·N(0, I); a
  sampler asking for another x_T scale gets its x_T from torch and only the step noise from the kernel.
- `chain_precision`: 'fp32' (exact products), 'tf32' or 'bf16' matmul operands (accumulation and the chain
  state stay fp32). Triton: tf32 and bf16 on a GPU. torch and compile: bf16 in the no-autograd chains (acting,
  the bootstrap's candidates, particle draws) on a CPU with native bf16 or on CUDA; tf32 is the triton
  backend's alone.

Triton is imported only when the triton backend is chosen, so the library imports where it is absent.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from .diffusion import X_T_SCALE, draw_chain_inputs, randn, run_chain, sample_chain
from .kernels._utils import interpreter_enabled, triton_device_problem
from .kernels.reference import best_of_n as best_of_n_reference
from .kernels.reference import weighted_sm_loss

BACKENDS = ("auto", "torch", "compile", "triton")
CHAIN_NOISE = ("torch", "kernel")
CHAIN_PRECISIONS = ("fp32", "tf32", "bf16")

__all__ = ["BACKENDS", "CHAIN_NOISE", "CHAIN_PRECISIONS", "BackendError", "Ops", "best_of_n_reference",
           "draw_chain_inputs", "interpreter_enabled", "make_ops", "resolve_backend", "triton_available"]

# What kernels/chain.py draws x_T from when it draws it in-kernel: x_T ~ 0.5·N(0, I).
_KERNEL_X_T_SCALE = 0.5


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


def compiler_available() -> bool:
    """torch.compile on a CPU needs a C++ compiler for inductor's generated code."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def resolve_backend(name: str, device: torch.device | str) -> str:
    """'auto' -> on a CPU 'compile' (act and update compiled once per run, fastrsm.compiled) when a C++ compiler
    is present, else 'torch'; on CUDA 'torch'. The Triton kernels and CUDA graphs are opt-in on CUDA until the GPU
    suite has passed on a GPU. 'auto' depends on the machine only, never on the run's length, so validation and the
    run resolve the same backend. Other names are checked and returned."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "compile" if device.type == "cpu" and compiler_available() else "torch"
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
    if backend != "triton" and (chain_noise != "torch" or chain_precision == "tf32"):
        raise BackendError(f"--chain-noise {chain_noise} / --chain-precision {chain_precision} need the triton "
                           f"backend (this run resolves to {backend!r}); the other backends draw their noise with "
                           "torch and compute in fp32 or bf16")
    dev = torch.device(device)
    if chain_precision == "bf16" and backend == "triton" and dev.type != "cuda":
        raise BackendError("--chain-precision bf16 with the triton backend needs CUDA (the Triton interpreter has "
                           "no bf16 matmul); on a CPU the torch and compile backends run bf16 chains")
    if chain_precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        raise BackendError("--chain-precision bf16 needs a CPU with bf16 matmul support (AVX-512 BF16 or AMX); "
                           "this one has none: use fp32")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's AVX-512 BF16 / AMX paths); without it bf16 is slower
    than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Ops:
    """The hot paths of one backend, all with the references' signatures:

    chain(eps_net, sched, s, x_T, noise=None, *, generator=None) -> x_0 [B·N, A]
        (no autograd; given x_T; noise None: drawn fresh)
    sample(eps_net, sched, s, particles, *, x_T_scale=0.5, generator=None) -> actions [B, N, A]
        (no autograd; draws x_T ~ x_T_scale·N(0, I) and the noise as `chain_noise` says)
    sm_loss(eps_pred, eps_targets, logits) -> scalar loss         (differentiable in eps_pred)
    best_of_n(q, cand, noise, noise_std, clip=1.0) -> (action [B, A], idx [B])

    What the chains draw comes from `generator` when one is given, else from torch's global generator.
    """

    backend: str
    chain: Callable[..., torch.Tensor]
    sample: Callable[..., torch.Tensor]
    sm_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    best_of_n: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    chain_noise: str = "torch"
    chain_precision: str = "fp32"


def _torch_chain(run: Callable[..., torch.Tensor]) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """Ops.chain and Ops.sample as `sample_chain` with `run` as its step loop."""

    def chain(eps_net, sched, s: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor | None = None, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_chain(eps_net, sched, s, x_T, noise, generator=generator, run=run)

    def sample(eps_net, sched, s: torch.Tensor, particles: int, *, x_T_scale: float = X_T_SCALE,
               generator: torch.Generator | None = None) -> torch.Tensor:
        # s [B, S_dim] -> [B, N, A]; with a leading seed axis (stacked eps_net) s [S, B, S_dim] -> [S, B, N, A]
        x0 = sample_chain(eps_net, sched, s, particles=particles, x_T_scale=x_T_scale, generator=generator, run=run)
        return x0.reshape(*s.shape[:-2], s.shape[-2], particles, eps_net.act_dim)

    return chain, sample


def torch_ops_with_chain(run: Callable[..., torch.Tensor], device: torch.device | str) -> Ops:
    """The torch backend with another step loop (e.g. the unfactored `reverse_chain`, for a before/after
    comparison): same draws, loss and selection, `run` for the reverse process."""
    chain, sample = _torch_chain(run)
    return replace(make_ops("torch", device), chain=chain, sample=sample)


def _philox_seed(device: torch.device, generator: torch.Generator | None) -> torch.Tensor | None:
    """The fused chain's in-kernel seed drawn from `generator`, as fused_chain draws it from the global generator
    when given none (None: leave that draw to fused_chain)."""
    if generator is None:
        return None
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64, generator=generator)


def make_ops(backend: str, device: torch.device | str, chain_precision: str = "fp32",
             chain_noise: str = "torch") -> Ops:
    """The Ops of `backend` ('auto' resolved for `device`); see the module docstring for the chain settings."""
    name = resolve_backend(backend, device)
    check_chain_options(name, device, chain_noise, chain_precision)
    if name in ("torch", "compile"):
        # compiled: the step loop only; sample_chain draws outside it, so compiled and eager runs consume the
        # same random numbers (inductor would otherwise draw its own)
        run = partial(run_chain, precision=chain_precision) if chain_precision != "fp32" else run_chain
        chain, sample = _torch_chain(torch.compile(run) if name == "compile" else run)
        if name == "torch":
            return Ops(name, chain, sample, weighted_sm_loss, best_of_n_reference, chain_precision=chain_precision)
        return Ops(name, chain, sample, torch.compile(weighted_sm_loss), torch.compile(best_of_n_reference),
                   chain_precision=chain_precision)
    # triton: imported here, not at the top, so the library works without it
    from .kernels import fused_best_of_n, fused_chain, fused_weighted_sm_loss

    def triton_chain(eps_net, sched, s: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        # a stacked (S-seed) network runs as one launch with the seed as a grid axis; noise None: drawn in-kernel
        seed = _philox_seed(s.device, generator) if noise is None else None
        return fused_chain(eps_net, sched, s, x_T, noise, seed=seed, precision=chain_precision)

    def sample(eps_net, sched, s: torch.Tensor, particles: int, *, x_T_scale: float = X_T_SCALE,
               generator: torch.Generator | None = None) -> torch.Tensor:
        B, A = s.shape[-2], eps_net.act_dim
        if chain_noise == "kernel":
            x_T = None
            if x_T_scale != _KERNEL_X_T_SCALE:
                x_T = x_T_scale * randn(*s.shape[:-2], B * particles, A, device=s.device, generator=generator)
            # the step noise (and x_T at the kernel's scale) drawn in-kernel with Philox, from one seed drawn from
            # torch's generator on the device
            out = fused_chain(eps_net, sched, s, x_T, None, seed=_philox_seed(s.device, generator),
                              particles=particles, precision=chain_precision)
        else:
            seeds = s.shape[0] if s.dim() == 3 else None
            x_T, noise = draw_chain_inputs(B * particles, sched.T, A, s.device, seeds, x_T_scale=x_T_scale,
                                           generator=generator)
            out = fused_chain(eps_net, sched, s, x_T, noise, precision=chain_precision)
        return out.reshape(*s.shape[:-2], B, particles, A)

    return Ops(name, triton_chain, sample, fused_weighted_sm_loss, fused_best_of_n, chain_noise, chain_precision)
