"""Typed configuration and presets: the machinery, which imports no algorithm (the agents import it to declare
their own settings). Import it as fastrsm.config, which first makes every algorithm register its settings.

`Config` holds the settings every run has (env, budget, evaluation, replay, networks, critic, diffusion chain)
and, flat beside them, each algorithm's own settings: a dataclass in the algorithm's agent file (its `Settings`,
fastrsm.agents), registered with the algorithm. Adding an algorithm adds its file, not fields here; a setting is
still read as `cfg.<name>`, set as `--<name> V` or `--set name=V`, and written flat to config.json.

`paper` is docs/algorithms.md §7 (the authors' MuJoCo configuration); `small` halves its networks, chain and
particles for MuJoCo on a CPU (bench/LEARNING.md); `smoke` is a tiny CPU-friendly variant used by the learning
tests. An algorithm's own values in a preset live with its settings (`AlgoSettings.presets`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .backend import BACKENDS, CHAIN_NOISE, CHAIN_PRECISIONS
from .diffusion import SCHEDULES
from .envs import ENV_BACKENDS
from .utils import DEVICES

# what fastrsm.config gives
__all__ = ["PRESETS", "AlgoSettings", "Config", "ConfigError", "apply_overrides", "field_help", "field_names",
           "load_config_file", "make_config", "preset_for_algo", "settings_of", "unused_settings"]

CRITIC_ACTIVATIONS = ("mish", "relu")


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLI prints it on one line and exits with code 2."""


Need = Callable[[bool, str], None]


@dataclass
class AlgoSettings:
    """An algorithm's own settings: subclass it as a dataclass in the agent's file and name it as the agent's
    `Settings`. Field names carry the algorithm's prefix where another algorithm could want the same word."""

    # preset name -> this algorithm's values in that preset (applied after the preset's common part, before the
    # user's settings)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # field name -> a note shown beside the flag in `fastrsm-train --help`
    help: ClassVar[dict[str, str]] = {}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        """Refuse invalid values of this algorithm's settings (called by Config.validate for every algorithm)."""


# Every registered algorithm's settings: field name -> (dataclass field, the settings class declaring it).
_ALGO_FIELDS: dict[str, tuple[dataclasses.Field, type[AlgoSettings]]] = {}
_ALGO_SETTINGS: list[type[AlgoSettings]] = []
_ALGO_BY_NAME: dict[str, type[AlgoSettings]] = {}  # algorithm name -> its settings


def register_settings(settings: type[AlgoSettings], algo: str | None = None) -> None:
    """Make an algorithm's settings part of Config (fastrsm.agents registers each algorithm's). Two algorithms may
    share a field only through a shared base class (one declaration)."""
    if algo is not None:
        _ALGO_BY_NAME[algo] = settings
    if settings in _ALGO_SETTINGS:
        return
    common = {f.name for f in dataclasses.fields(Config)}
    for f in dataclasses.fields(settings):
        if f.name in common:
            raise TypeError(f"{settings.__name__}.{f.name} is a common setting of Config")
        owner = _ALGO_FIELDS.get(f.name)
        if owner is not None and not issubclass(settings, owner[1]) and owner[0] is not f:
            raise TypeError(f"{settings.__name__}.{f.name} is already {owner[1].__name__}'s setting")
        if owner is None:
            _ALGO_FIELDS[f.name] = (f, settings)
    _ALGO_SETTINGS.append(settings)


def _algo_fields() -> dict[str, tuple[dataclasses.Field, type[AlgoSettings]]]:
    # filled when fastrsm.agents is imported (fastrsm.config, the module every user imports, imports it first)
    return _ALGO_FIELDS


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


@dataclass
class Config:
    # --- run ---
    env_id: str = "Ant-v4"
    algo: str = "dpmd"
    seed: int = 0
    total_steps: int = 1_000_000
    num_envs: int = 5
    utd: float = 0.2  # gradient updates per env step (5 envs, one update per vector step)
    warmup_steps: int = 30_000
    device: str = "auto"
    backend: str = "auto"
    torch_threads: int = 0  # CPU threads for torch; 0 = torch's default. Small nets run fastest on 1.
    # capture acting and the update step in CUDA graphs (CUDA only; ignored on a CPU and under compile). On by
    # default: on an H200 (GPU suite, 2026-12-04) it made the DPMD paper-preset update 4.1x faster than eager and
    # matched eager to 1e-6 in the -m gpu tests
    cuda_graphs: bool = True
    env_backend: str = "auto"  # auto = EnvPool where it has the id, else gymnasium
    chain_noise: str = "torch"  # triton backend: 'kernel' draws the chain's noise in-kernel (Philox)
    chain_precision: str = "fp32"  # bf16: matmul operands of the no-grad chains (CPU with bf16, CUDA); tf32: triton
    # --- evaluation ---
    eval_every: int = 50_000
    eval_episodes: int = 20
    log_every: int = 5_000
    # env steps between `latest` checkpoints; the training envs are re-created (episodes cut as truncations) at
    # each, so that a checkpoint describes the run completely. Not tied to eval_every: the evaluation cadence
    # never moves training.
    checkpoint_every: int = 50_000
    stop_return: float = math.inf  # end the run once an evaluation reaches this mean return
    # --- replay ---
    buffer_size: int = 1_000_000
    batch_size: int = 256
    # --- networks ---
    hidden: int = 256
    layers: int = 3
    time_dim: int = 16
    # --- critic ---
    critic_layers: int = 0  # hidden layers of the critics; 0 = `layers`
    critic_activation: str = "mish"  # mish (the authors' relax code) or relu (FlowRL)
    lr_q: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    reward_scale: float = 0.2
    # --- policy ---
    lr_policy: float = 3e-4
    lr_policy_end: float = 3e-5
    # linear decay lr_policy -> lr_policy_end between these *policy-optimiser* steps (optax counts its own
    # updates): gradient updates 50k-150k with policy_delay 2
    lr_decay_start: int = 25_000
    lr_decay_end: int = 75_000
    policy_delay: int = 2
    # --- diffusion ---
    diffusion_steps: int = 20
    schedule: str = "linear"
    beta_scale: float = 0.8
    particles: int = 32  # N, best-of-N candidates per state (evaluation, and training unless set below)
    # --- temperature ---
    learn_alpha: bool = True  # False: α stays alpha_init (FlowRL's fixed temperature)
    alpha_every: int = 250  # gradient (critic) updates between alpha steps, as the authors' `step % 250`
    target_entropy_per_dim: float = -0.9
    # --- housekeeping ---
    save_replay: bool = True
    nan_check_every: int = 1_000  # env steps between NaN/inf checks of losses and parameters
    # --- every algorithm's own settings (AlgoSettings), read and written as cfg.<name> ---
    algo_settings: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        given = dict(self.algo_settings)
        fields = _algo_fields()
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}")
        self.algo_settings = {name: given.get(name, _default(f)) for name, (f, _) in fields.items()}

    def __getattr__(self, name: str) -> Any:  # only reached when ordinary lookup fails: an algorithm's setting
        algo = self.__dict__.get("algo_settings")
        if algo is not None and name in algo:
            return algo[name]
        raise AttributeError(f"Config has no setting {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        algo = self.__dict__.get("algo_settings")
        if algo is not None and name in algo:
            algo[name] = value
        else:
            object.__setattr__(self, name, value)

    def validate(self) -> Config:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        # `algo` is checked against the one registry of algorithms, fastrsm.agents.AGENTS (check_algo), where
        # agents are made: the settings know nothing of the agents that read them.
        need(self.backend in BACKENDS, f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        need(self.device in DEVICES, f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        need(self.env_backend in ENV_BACKENDS,
             f"unknown env backend {self.env_backend!r}; choose one of {', '.join(ENV_BACKENDS)}")
        need(self.chain_noise in CHAIN_NOISE,
             f"unknown chain-noise {self.chain_noise!r}; choose one of {', '.join(CHAIN_NOISE)}")
        need(self.chain_precision in CHAIN_PRECISIONS,
             f"unknown chain-precision {self.chain_precision!r}; choose one of {', '.join(CHAIN_PRECISIONS)}")
        need(self.critic_activation in CRITIC_ACTIVATIONS, f"unknown critic-activation {self.critic_activation!r}; "
             f"choose one of {', '.join(CRITIC_ACTIVATIONS)}")
        for name in ("total_steps", "num_envs", "batch_size", "buffer_size", "hidden", "layers", "time_dim",
                     "diffusion_steps", "particles", "eval_episodes", "policy_delay",
                     "alpha_every", "eval_every", "log_every", "checkpoint_every"):
            v = getattr(self, name)
            need(v > 0, f"{name.replace('_', '-')} must be a positive integer, got {v}")
        for name in ("warmup_steps", "torch_threads", "lr_decay_start", "lr_decay_end", "nan_check_every",
                     "critic_layers"):
            v = getattr(self, name)
            need(v >= 0, f"{name.replace('_', '-')} must be >= 0, got {v}")
        for name in ("utd", "lr_q", "lr_policy", "lr_policy_end", "beta_scale", "reward_scale"):
            v = getattr(self, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        need(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        need(not math.isnan(self.stop_return), "stop-return must be a number")
        need(self.lr_decay_end >= self.lr_decay_start, "lr-decay-end must be >= lr-decay-start")
        need(self.buffer_size >= self.batch_size, "buffer-size must be at least batch-size")
        # every `check` along each algorithm's settings classes: a subclass's check (DPMD's) adds to its base's
        # (the diffusion settings'), it does not replace it
        owners = dict.fromkeys(c for s in _ALGO_SETTINGS for c in s.__mro__ if "check" in vars(c))
        for owner in owners:
            owner.check(self, need)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every setting, flat (common and algorithms' alike), as config.json and checkpoints store them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "algo_settings"}
        return {**out, **self.algo_settings}


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Tiny nets, few particles and diffusion steps: a CPU can learn InvertedPendulum in a couple of minutes.
    "smoke": dict(
        # eager: a smoke run lasts minutes, and torch.compile's start-up (about a minute on a small CPU) would not
        # pay for itself
        backend="torch", total_steps=20_000, num_envs=1, utd=1.0, warmup_steps=1_000, eval_every=2_000,
        checkpoint_every=2_000, eval_episodes=5, log_every=1_000, buffer_size=100_000, batch_size=128, hidden=64,
        layers=2, diffusion_steps=5,
        particles=8, reverse_samples=16, lr_decay_start=5_000, lr_decay_end=10_000,
        # α (and with it the exploration noise 0.1·α) keeps the authors' schedule: α₀ = 5, lr 7e-3, a step every
        # 250 gradient updates. A faster anneal (α₀ 3, lr 3e-2 every 20 updates, this preset until 2026-11-29)
        # shrank the noise to 0.1 within ~1k updates, and DPMD, which trains on its own best-of-N picks, then
        # learned 2-3x slower than the authors' DPMD (bench/DPMD_PENDULUM_BISECT.md).
        reward_scale=1.0, q_norm_rate=0.02, torch_threads=1,
        # a short run needs fast target propagation: a larger Polyak rate and learning rates
        tau=0.02, lr_q=1e-3, lr_policy=1e-3,
    ),
    # Between smoke and paper: MuJoCo locomotion within a CPU's reach (IDP/Hopper in bench/LEARNING.md). Half-width
    # nets with two hidden layers (SAC's usual 256x2 halved: a 4-seed group update costs what one paper-size update
    # does), T = 10 and N = 16 (half the paper's chain and particles: the chain is half of DPMD's update), one env at
    # UTD 1 (the standard sample-efficient SAC set-up: a short budget spends its compute on updates, not on a
    # 30k-step warm-up), and smoke's faster optimisation (lr 1e-3 decaying to 1e-4, Polyak rate 0.02, reward scale
    # 1): DPMD small on InvertedDoublePendulum reached 781 at 12.5k steps with it and 335 with the paper's (lr 3e-4,
    # τ 0.005, reward scale 0.2; seed 0, 2026-12-01). α starts at 1, the fixed point of the authors' anneal (noise
    # 0.1·α = 0.1, the entropy target −0.9 per dimension), where a 1M-step run arrives after ~60k updates: a short
    # run spent at α 5 → 3.5 (noise 0.5 → 0.35) left DPMD 6-10x behind SAC on InvertedDoublePendulum at 12.5k steps
    # (4 seeds: 620-880 vs 8 424); with α₀ = 1 seeds 0 and 1 reached 9 359 and 7 535 (bench/LEARNING.md).
    "small": dict(
        num_envs=1, utd=1.0, warmup_steps=5_000, eval_every=5_000, checkpoint_every=5_000, eval_episodes=10,
        log_every=1_000, total_steps=100_000, buffer_size=1_000_000, batch_size=256, hidden=128, layers=2,
        diffusion_steps=10,
        particles=16, reverse_samples=16, lr_decay_start=25_000, lr_decay_end=50_000, torch_threads=1,
        # the bootstrap's a' (DPMD's a_0, SDAC's anchor) is the best of 4, not of 16: that best-of-N over the whole
        # batch is 3/4 of a DPMD update at N = 16 (99 ms vs 29 ms per update on one CPU thread, Hopper)
        target_particles=4, lr_q=1e-3, lr_policy=1e-3, lr_policy_end=1e-4, tau=0.02, reward_scale=1.0,
        alpha_init=1.0,
    ),
    # DACER's MuJoCo numbers (official code: scripts/train_mujoco.py, relax/algorithm/dacer.py; docs/algorithms.md §10):
    # T = 20 on the VP schedule, 20 envs with one update per vector step, Adam 1e-4 with no decay, warm-up 3e4.
    "dacer": dict(
        algo="dacer", diffusion_steps=20, schedule="vp", num_envs=20, utd=1 / 20, warmup_steps=30_000,
        lr_q=1e-4, lr_policy=1e-4, lr_policy_end=1e-4, tau=0.005, reward_scale=0.2, batch_size=256,
        policy_delay=2,
    ),
    # DACER2 (arXiv 2505.23426): DACER's setup with T = 5 and the Q-gradient-field loss.
    "dacer2": dict(
        algo="dacer2", diffusion_steps=5, schedule="vp", num_envs=20, utd=1 / 20, warmup_steps=30_000,
        lr_q=1e-4, lr_policy=1e-4, lr_policy_end=1e-4, tau=0.005, reward_scale=0.2, batch_size=256,
        policy_delay=2,
    ),
    # The authors' later library FlowRL (docs/algorithms.md §11; per-algorithm values with their settings). Not
    # reproduced: its ε-network's learnable Fourier time embedding (64) and state MLP (128, 128); fastrsm keeps its own
    # ε-network.
    "flowrl": dict(
        num_envs=1, utd=1.0, warmup_steps=5_000, eval_every=10_000, checkpoint_every=10_000, eval_episodes=10,
        log_every=1_000,
        batch_size=256, buffer_size=1_000_000, learn_alpha=False, explore_std=0.0, particles=10,
        train_particles=1, target_particles=1, policy_delay=1, lr_q=3e-4, lr_policy=3e-4, lr_policy_end=3e-4,
        tau=0.005, gamma=0.99, reward_scale=1.0, critic_layers=2, critic_activation="relu", schedule="cosine",
        beta_scale=1.0, diffusion_steps=20, q_norm_rate=1e-4, q_norm_eps=1e-6, q_clip=3.0,
    ),
}


# Notes shown beside a setting in `fastrsm-train --help`.
FIELD_HELP: dict[str, str] = {
    "schedule": "linear, cosine, vp or geometric; the authors' training script always runs linear (it never "
                "forwards the option); their cosine β are scaled by beta-scale, as here; geometric (not the "
                "paper's) spaces the noise levels geometrically so that few steps keep the policy's spread",
    "alpha_every": "gradient updates between α steps (the authors test step %% 250)",
    "learn_alpha": "false: a fixed temperature α = alpha-init (FlowRL)",
    "lr_decay_start": "policy-optimiser steps (optax counts its own updates)",
}


def field_names() -> list[str]:
    """Every setting's name: the common ones, then each algorithm's."""
    return [f.name for f in dataclasses.fields(Config) if f.name != "algo_settings"] + list(_algo_fields())


def field_help() -> dict[str, str]:
    """Notes shown beside a setting in `fastrsm-train --help`: the common ones and each algorithm's."""
    out = dict(FIELD_HELP)
    for settings in _ALGO_SETTINGS:
        out.update(settings.help)
    return out


def _coerce(name: str, raw: Any) -> Any:
    common = {f.name: f.type for f in dataclasses.fields(Config)}
    ftype = common[name] if name in common else _algo_fields()[name][0].type
    default = getattr(Config(), name)
    if not isinstance(raw, str):
        if isinstance(default, bool) and not isinstance(raw, bool):
            raise ConfigError(f"{name} expects true/false, got {raw!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise ConfigError(f"{name} expects an integer, got {raw!r}")
        if isinstance(default, float) and not isinstance(raw, (int, float)):
            raise ConfigError(f"{name} expects a number, got {raw!r}")
        return float(raw) if isinstance(default, float) else raw
    try:
        if isinstance(default, bool):
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            v = float(raw)  # accept 1e6
            if not v.is_integer():
                raise ValueError
            return int(v)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = {"bool": "true/false", "int": "an integer", "float": "a number"}.get(
            type(default).__name__, str(ftype))
        raise ConfigError(f"{name.replace('_', '-')} expects {kind}, got {raw!r}") from None
    return raw


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    names = field_names()
    for key, raw in overrides.items():
        name = key.replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r}{hint}")
        setattr(cfg, name, _coerce(name, raw))
    return cfg


def make_config(preset: str = "paper", overrides: dict[str, Any] | None = None) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = apply_overrides(Config(), dict(PRESETS[preset]))
    algo = (overrides or {}).get("algo", cfg.algo)
    cfg = apply_overrides(cfg, preset_for_algo(preset, algo))
    cfg = apply_overrides(cfg, overrides or {})
    return cfg.validate()


def unused_settings(algo: str, names: Any) -> list[str]:
    """Of `names` (settings a user gave), those that are other algorithms' own and not `algo`'s: accepted, and
    recorded as unused (config.json's `unused_settings`), so that one command line can serve several algorithms
    (a sweep's or a campaign's `--set`) and a reader still sees what the run ignored."""
    own = _ALGO_BY_NAME.get(algo)
    own_fields = {f.name for f in dataclasses.fields(own)} if own is not None else set()
    return sorted(n for n in names if n in _ALGO_FIELDS and n not in own_fields)


def settings_of(algo: str) -> type[AlgoSettings] | None:
    """The settings class `algo` registered (None for an unknown name): lets a `check` that concerns one family of
    algorithms (e.g. the on-policy rollout's shape) apply to runs of that family only."""
    return _ALGO_BY_NAME.get(algo)


def preset_for_algo(preset: str, algo: str) -> dict[str, Any]:
    """What `preset` gives `algo` alone: the algorithm's own entry (its settings' `presets`)."""
    settings = _ALGO_BY_NAME.get(algo)
    return dict(settings.presets.get(preset, {})) if settings is not None else {}


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON file of overrides (or a run's config.json); unknown keys are an error, not silently dropped."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a JSON object")
    data = dict(data.get("config", data))  # a run's config.json nests the settings under "config"
    apply_overrides(Config(), data)  # raises on unknown keys
    return data
