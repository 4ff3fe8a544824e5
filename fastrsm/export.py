"""A trained policy as one ahead-of-time compiled file: `fastrsm-export RUN_DIR policy.pt2`, then
`fastrsm.load_exported("policy.pt2").act(obs)` on the robot's computer.

Why: acting on one observation is what a control loop does, and on a CPU at small sizes its cost is not
arithmetic but the per-call overhead around ~20 small kernels. `torch.compile` (fastrsm.compiled) still pays
dynamo's guard checks and its Python wrapper on every call; AOTInductor compiles the whole evaluation act — the
T-step chain of every particle, the twin-Q scoring, the best-of-N argmax and the scaling to the env's bounds —
into one shared library with the weights inside, called from C++ (bench/RESULTS.md has the timings against
the compiled act and the authors' XLA act).

What is exported: `Policy.act` exactly (fastrsm/policy.py: the EMA policy, best-of-N with the run's N or
`particles`, no exploration noise; SAC: tanh of its mean), for any batch of observations. Its random numbers
come from torch's generator as the eager policy's do (inductor's `fallback_random`), so an exported policy
loaded with `seed=s` acts exactly as `load_policy(..., seed=s)` does. The package needs torch (no fastrsm) to
run: `torch._inductor.aoti_load_package(path)(obs)` works too.

The file is machine code for the exporting CPU's instruction set (its metadata names it, e.g. AVX512):
export on the machine that will run it, or on one of the same kind, and with the same torch version.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

from .backend import compiler_available
from .compiled import CompiledLearner
from .policy import NumpyActing, Policy, checkpoint_path, load_policy, swapped_global_rng, to_env_bounds
from .utils import UsageError

FORMAT = "fastrsm-exported-policy/1"
__all__ = ["ExportedPolicy", "export_loaded", "export_policy", "load_exported"]


class _EvalAct(nn.Module):
    """obs [B, obs_dim] -> actions [B, act_dim] in the env's bounds: the computation `Policy.act_tensor` runs."""

    def __init__(self, policy: Policy):
        super().__init__()
        agent = policy.agent.agent if isinstance(policy.agent, CompiledLearner) else policy.agent
        self.agent = agent
        self.register_buffer("action_low", torch.as_tensor(policy.action_low, dtype=torch.float32))
        self.register_buffer("action_half", torch.as_tensor((policy.action_high - policy.action_low) / 2.0,
                                                     dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return to_env_bounds(self.agent.act(obs, explore=False), self.action_low, self.action_half)


def export_policy(run_dir: str, path: str, checkpoint: str = "best", particles: int | None = None,
                  max_batch: int = 4096) -> str:
    """Compile a run's trained policy (as `load_policy(run_dir, checkpoint, particles=...)` acts) into one
    AOTInductor package at `path` (written atomically); returns its absolute path. Takes 15-60 s on a CPU.
    Observations of any batch size 1..max_batch are accepted by the package. Needs a C++ compiler; bad input
    raises fastrsm.utils.UsageError."""
    policy = load_policy(run_dir, checkpoint, device="cpu", particles=particles, backend="torch")
    return export_loaded(policy, path, max_batch, source=os.path.abspath(checkpoint_path(run_dir, checkpoint)))


def export_loaded(policy: Policy, path: str, max_batch: int = 4096, source: str = "") -> str:
    """`export_policy` for a Policy already in hand (e.g. built around an agent in a benchmark)."""
    if not compiler_available():
        raise UsageError("exporting a policy compiles C++: install a C++ compiler (g++ or clang++)")
    if max_batch < 2:
        raise UsageError(f"max_batch must be >= 2, got {max_batch}")
    module = _EvalAct(policy).eval()
    # the batch is a symbolic size: the example has 2 rows, since export specialises a size-1 dimension
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    example = torch.zeros(2, policy.obs_dim)
    with torch.inference_mode(), torch.random.fork_rng():
        program = torch.export.export(module, (example,), dynamic_shapes={"obs": {0: batch}})
    metadata = {"format": FORMAT, "env_id": policy.env_id, "algo": policy.algo, "obs_dim": str(policy.obs_dim),
                "act_dim": str(policy.act_dim), "particles": "" if policy.particles is None else str(policy.particles),
                "max_batch": str(int(max_batch)), "torch": torch.__version__, "checkpoint": source}
    out = os.path.abspath(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".tmp-", suffix=".pt2")
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(
            program, package_path=tmp,
            inductor_configs={"fallback_random": True, "aot_inductor.metadata": metadata})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


class ExportedPolicy(NumpyActing):
    """A policy loaded from `export_policy`'s file. `act(obs)`: obs [obs_dim] or [B, obs_dim] (NumPy) -> actions
    in the env's bounds (float32), as `Policy.act`; `act_tensor` for torch tensors. Random numbers come from the
    policy's own generator state (seeded by `seed`), as `Policy`'s do."""

    def __init__(self, path: str, seed: int = 0):
        self.path = os.path.abspath(path)
        if not os.path.isfile(self.path):
            raise UsageError(f"no exported policy at {path}")
        try:
            self._run = torch._inductor.aoti_load_package(self.path)
            meta = self._run.get_metadata()
        except Exception as e:  # torch raises several kinds for a file that is not a package
            raise UsageError(f"{path} is not a loadable exported policy ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if meta.get("format") != FORMAT:
            raise UsageError(f"{path} is not a fastrsm exported policy (format {meta.get('format')!r})")
        self.metadata: dict[str, Any] = dict(meta)
        self.env_id, self.algo = meta["env_id"], meta["algo"]
        self.obs_dim, self.act_dim = int(meta["obs_dim"]), int(meta["act_dim"])
        self.particles = int(meta["particles"]) if meta.get("particles") else None
        self.max_batch = int(meta["max_batch"])
        self.device = torch.device("cpu")
        self._gen = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        n = "" if self.particles is None else f", particles={self.particles}"
        return f"ExportedPolicy({self.algo} on {self.env_id}: obs {self.obs_dim} -> act {self.act_dim}{n})"

    @torch.inference_mode()
    def act_tensor(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [obs_dim] or [B, obs_dim] tensor -> actions in the env's bounds, same leading shape."""
        single = obs.dim() == 1
        x = obs.reshape(1, -1) if single else obs
        if x.dim() != 2 or x.shape[1] != self.obs_dim or not 1 <= x.shape[0] <= self.max_batch:
            raise ValueError(f"observations must be [{self.obs_dim}] or [B, {self.obs_dim}] with B <= "
                             f"{self.max_batch}, got {tuple(obs.shape)}")
        with swapped_global_rng(self._gen, self.device):
            a = self._run(x.to(torch.float32).contiguous())
        return a[0] if single else a


def load_exported(path: str, seed: int = 0) -> ExportedPolicy:
    """The policy in an `export_policy` file (see ExportedPolicy)."""
    return ExportedPolicy(path, seed)


def main(argv: list[str] | None = None) -> int:
    from .cli import OneLineParser, run_main

    def _main() -> int:
        p = OneLineParser(prog="fastrsm-export",
                          description="Compile a run's trained policy into one file to deploy (AOTInductor).")
        p.add_argument("run_dir")
        p.add_argument("out", help="the package to write, e.g. policy.pt2")
        p.add_argument("--checkpoint", default="best", help="best, latest, or a path to a .pt file")
        p.add_argument("--particles", type=int, default=None,
                       help="best-of-N candidates (default: the run's); 1 = the diffusion policy alone")
        p.add_argument("--max-batch", type=int, default=4096, help="largest batch of observations per call")
        args = p.parse_args(argv)
        out = export_policy(args.run_dir, args.out, args.checkpoint, args.particles, args.max_batch)
        pol = load_exported(out)
        print(f"fastrsm-export: wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB): {pol!r}")
        return 0

    return run_main("fastrsm-export", _main)


if __name__ == "__main__":
    raise SystemExit(main())
