"""A trained policy you can deploy: `fastrsm.load_policy(run_dir)` -> `Policy`, NumPy observations in,
actions in the env's own bounds out. The one way to act with a trained policy; `fastrsm-eval` uses it.

Evaluation behaviour (docs/algorithms.md §3, §7): the EMA diffusion policy, best-of-N with the run's N (or `particles`),
no exploration noise; SAC acts with tanh(mean). The policy draws its random numbers from its own generator
state (seeded by `seed`), so the same seed gives the same actions and the caller's global RNG is untouched.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from .agents import Agent, make_agent
from .backend import make_ops
from .compiled import CompiledLearner
from .config import field_names, make_config
from .learner import Learner
from .runlog import load_checkpoint
from .utils import UsageError, resolve_device

__all__ = ["Policy", "load_policy"]


def checkpoint_path(run_dir: str, checkpoint: str) -> str:
    """"best" or "latest" -> that checkpoint file of `run_dir`; anything else is already a path."""
    if checkpoint in ("best", "latest"):
        return os.path.join(run_dir, "checkpoints", f"{checkpoint}.pt")
    return checkpoint


def to_env_bounds(a: torch.Tensor, low: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Policy actions in [-1, 1] -> the env's bounds [low, low + 2·half]."""
    return low + (a.clamp(-1.0, 1.0) + 1.0) * half


class NumpyActing:
    """`act(obs)` on NumPy observations for a class with `obs_dim` and `act_tensor` (Policy, ExportedPolicy)."""

    obs_dim: int

    def act_tensor(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def act(self, obs: np.ndarray) -> np.ndarray:
        """obs [obs_dim] or [B, obs_dim] (NumPy, any float dtype) -> actions in the env's bounds (float32)."""
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(f"an observation must be [{self.obs_dim}] or [B, {self.obs_dim}], got {x.shape}")
        return self.act_tensor(torch.from_numpy(x)).cpu().numpy()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.act(obs)


class Policy(NumpyActing):
    """A trained agent in evaluation mode. `act(obs)`: obs [obs_dim] or [B, obs_dim] (NumPy) -> actions
    [act_dim] or [B, act_dim] (NumPy float32) in the env's action bounds."""

    def __init__(self, agent: Agent, action_low: np.ndarray, action_high: np.ndarray, env_id: str, algo: str,
                 particles: int | None, seed: int = 0, learner: Learner | None = None):
        self.agent = agent
        self.learner = learner or Learner(agent)  # how it acts: eager, or compiled (fastrsm.learner)
        self.device = agent.device
        self.env_id, self.algo, self.particles = env_id, algo, particles
        self.obs_dim, self.act_dim = agent.obs_dim, agent.act_dim
        self.action_low = np.asarray(action_low, dtype=np.float32)
        self.action_high = np.asarray(action_high, dtype=np.float32)
        self._low = torch.as_tensor(self.action_low, device=self.device)
        self._half = torch.as_tensor((self.action_high - self.action_low) / 2.0, device=self.device)
        self._gen = torch.Generator(device=self.device).manual_seed(int(seed))

    def __repr__(self) -> str:
        n = "" if self.particles is None else f", particles={self.particles}"
        return f"Policy({self.algo} on {self.env_id}: obs {self.obs_dim} -> act {self.act_dim}{n}, {self.device})"

    # -- acting
    @torch.inference_mode()
    def act_unit(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim] (a tensor on `device`) -> actions [B, act_dim] in [-1, 1] (the policy's own range)."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observations must be [B, {self.obs_dim}], got {tuple(obs.shape)}")
        return self.learner.act(obs.to(self.device, torch.float32), explore=False, generator=self._gen)

    def to_env(self, a_unit: torch.Tensor) -> torch.Tensor:
        """Actions in the policy's range [-1, 1] (as `act_unit` gives them) -> the env's bounds."""
        return to_env_bounds(a_unit, self._low, self._half)

    def act_tensor(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [obs_dim] or [B, obs_dim] tensor -> actions in the env's bounds, same leading shape."""
        single = obs.dim() == 1
        a = self.to_env(self.act_unit(obs.reshape(1, -1) if single else obs))
        return a[0] if single else a


class swapped_global_rng:
    """Run a block on `gen`'s random stream (the global generator's state is swapped in and out): for an exported
    program (fastrsm.export), whose random ops draw from the global generator and take no generator argument.
    Not thread-safe; Policy passes its generator down instead."""

    def __init__(self, gen: torch.Generator, device: torch.device):
        self.gen, self.cuda = gen, device.type == "cuda"
        self.device = device

    def __enter__(self) -> None:
        if self.cuda:
            self.saved = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.gen.get_state(), self.device)
        else:
            self.saved = torch.get_rng_state()
            torch.set_rng_state(self.gen.get_state())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.gen.set_state(torch.cuda.get_rng_state(self.device))
            torch.cuda.set_rng_state(self.saved, self.device)
        else:
            self.gen.set_state(torch.get_rng_state())
            torch.set_rng_state(self.saved)


def _read_run_config(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data["config"]["env_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    return data


def load_policy(run_dir: str, checkpoint: str = "best", device: str = "cpu", particles: int | None = None,
                seed: int = 0, backend: str = "auto") -> Policy:
    """The trained policy of a run directory.

    checkpoint: "best" (the best evaluation's weights), "latest", or a path to a .pt file. device: "cpu",
    "cuda" or "auto". particles: best-of-N candidates (diffusion policies; default the run's N; 1 = the
    diffusion policy alone). backend: "auto" (eager torch, the default), "torch", "triton", or "compile"
    (the whole act compiled on its first call: the fastest on a CPU when the policy acts many times). A missing
    or corrupt checkpoint, or a run directory that is not one, raises fastrsm.utils.UsageError with one line; so
    does a checkpoint holding pickled Python objects, refused without running any of them (only tensors and plain
    data are loaded)."""
    data = _read_run_config(run_dir)
    saved = {k: v for k, v in data["config"].items() if k in field_names()}
    over: dict[str, Any] = {"device": device, "backend": backend}
    if particles is not None:
        if int(particles) < 1:
            raise UsageError(f"particles must be >= 1, got {particles}")
        over["particles"] = int(particles)
    # chain settings are the training run's hardware choice; a deployed policy picks its own backend
    over.update(chain_noise="torch", chain_precision="fp32")
    cfg = make_config("paper", {**saved, **over})
    dev = resolve_device(cfg.device)
    # 'auto' acts eagerly: a deployed policy pays torch.compile's start-up only when asked for it by name
    backend = "torch" if cfg.backend == "auto" else cfg.backend
    path = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    env = data.get("env") or _describe_env(cfg)
    # the initial weights are overwritten by the checkpoint: their random draws must not move the caller's RNG
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        agent = make_agent(cfg.algo, int(env["obs_dim"]), int(env["act_dim"]), cfg, dev, make_ops(backend, dev))
    try:
        agent.restore(ckpt["agent"], weights_only=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise UsageError(f"checkpoint {path} does not fit the run's {cfg.algo} agent ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    agent.eval()
    n = agent.deploy_particles()
    learner = None
    if backend == "compile":
        # the whole act (chain, Q scoring, argmax) as one compiled function, built on the first call of each
        # batch shape: 10-20 s once, then ~4.5x the eager act at smoke sizes on a CPU (bench/RESULTS.md)
        learner = CompiledLearner(agent)
    return Policy(agent, env["action_low"], env["action_high"], cfg.env_id, cfg.algo, n, seed, learner)


def _describe_env(cfg: Any) -> dict[str, Any]:
    """Runs written before config.json carried the env's bounds: make the env once to read them."""
    from .envs import make_vec_env

    env = make_vec_env(cfg.env_id, 1, 0, cfg.env_backend)
    try:
        return env.describe()
    finally:
        env.close()
