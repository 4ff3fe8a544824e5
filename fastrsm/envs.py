"""Vectorised environments: EnvPool by default, gymnasium's vector envs as the fallback, one interface.

Both back-ends run with *next-step* auto-reset, and `VecEnv` exposes its consequences explicitly:

- On the step where an episode ends (`terminated` or `truncated`), `next_obs` is the TRUE last observation
  of that episode, not a reset observation. It is therefore the right bootstrap state for a truncated
  episode, and `(obs, action, reward, next_obs, terminated)` is exactly the transition to store.
- The following step is the auto-reset step: the sub-env ignores the action, returns reward 0 and the
  first observation of the new episode. It is no transition at all, so `StepResult.valid` is False there
  and the replay buffer must skip that row (`ReplayBuffer.add(..., valid=result.valid)`).

A training loop therefore reads

    obs = env.reset()
    while ...:
        result = env.step(policy(obs))
        buffer.add(obs, action, result.reward, result.next_obs, result.terminated, result.valid)
        obs = result.next_obs

Actions are taken in [-1, 1] (the diffusion policy's range), clipped, and mapped affinely onto the
action-space bounds here, so no agent needs to know them. Observations arrive as float64 and are cast to
float32 once, here.

Known difference between the back-ends: when an episode terminates on the very step its time limit is
reached, gymnasium reports terminated=True and truncated=True, while EnvPool reports only truncated=True
(it computes terminated as `done & ~trunc`). This is rare (a termination on exactly the last allowed step)
and only changes whether that single transition bootstraps.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

ENV_BACKENDS = ("auto", "envpool", "gymnasium")


class EnvIdError(ValueError):
    """The environment id or back-end cannot be used; the message is one line, fit for the CLI."""


@dataclass(frozen=True)
class StepResult:
    """One vector step. Arrays are indexed by sub-env; `episode_*` list the episodes that ended here,
    in the order of `np.flatnonzero(terminated | truncated)`."""

    next_obs: np.ndarray  # float32 [E, S]: act on it next; also the transition's next state
    reward: np.ndarray  # float32 [E]
    terminated: np.ndarray  # bool [E]
    truncated: np.ndarray  # bool [E]
    valid: np.ndarray  # bool [E]: False on auto-reset steps, whose rows must not enter the replay buffer
    episode_returns: np.ndarray  # float64 [k]: undiscounted sums of env rewards
    episode_lengths: np.ndarray  # int64 [k]: real (valid) steps

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


def _envpool_ids() -> list[str]:
    try:
        import envpool
    except ImportError:
        return []
    return list(envpool.list_all_envs())


def _gymnasium_ids() -> list[str]:
    import gymnasium

    return list(gymnasium.envs.registry.keys())


def _envpool_available() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def _closest(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Closest ids, best first; ties in alphabetical order so that Ant-v4 comes before Ant-v5."""
    low = name.lower()
    scored = []
    for cand in set(candidates):
        m = difflib.SequenceMatcher(None, low, cand.lower())
        # The cheap upper bounds prune most of the ~2k ids before the exact ratio is computed.
        if m.real_quick_ratio() >= 0.6 and m.quick_ratio() >= 0.6 and (r := m.ratio()) >= 0.6:
            scored.append((-r, cand))
    return [cand for _, cand in sorted(scored)[:n]]


def _check_backend(backend: str) -> None:
    if backend not in ENV_BACKENDS:
        raise EnvIdError(f"unknown env backend {backend!r}; choose one of {', '.join(ENV_BACKENDS)}")
    if backend == "envpool" and not _envpool_available():
        raise EnvIdError("env backend 'envpool' requested but envpool is not installed (pip install envpool)")


def check_env_id(env_id: str, backend: str = "auto") -> None:
    """Raise EnvIdError, naming the closest valid ids, if `backend` cannot make `env_id`."""
    _check_backend(backend)
    if backend == "envpool":
        ids = _envpool_ids()
    elif backend == "gymnasium":
        ids = _gymnasium_ids()
    else:
        ids = _envpool_ids() + _gymnasium_ids()
    if env_id in ids:
        return
    close = _closest(env_id, ids)
    where = "" if backend == "auto" else f" for env backend {backend!r}"
    hint = f"; closest: {', '.join(close)}" if close else "; see envpool.list_all_envs() or gymnasium.pprint_registry()"
    raise EnvIdError(f"unknown environment {env_id!r}{where}{hint}")


def resolve_backend(env_id: str, backend: str = "auto") -> str:
    """The back-end that `make_vec_env` will use: EnvPool wherever it has the id, else gymnasium."""
    check_env_id(env_id, backend)
    if backend != "auto":
        return backend
    return "envpool" if env_id in _envpool_ids() else "gymnasium"


def sub_env_seeds(seed: int, num_envs: int) -> list[int]:
    """Independent per-sub-env seeds in EnvPool's int32 range. Both back-ends otherwise seed sub-env i with
    seed + i, so seeds s and s + 1 would share all but one start-state stream (and EnvPool rejects seeds
    beyond int32)."""
    state = np.random.SeedSequence(seed % 2**64).generate_state(num_envs, dtype=np.uint32)
    return [int(x) for x in state & 0x7FFFFFFF]


class VecEnv:
    """`num_envs` copies of one task, stepped together; see the module docstring for the semantics."""

    def __init__(self, env: Any, env_id: str, backend: str, seed: int, max_episode_steps: int | None):
        self._env = env
        self.env_id = env_id
        self.backend = backend
        self.num_envs = int(env.num_envs)
        self.max_episode_steps = max_episode_steps
        self._seed = seed
        act_space, obs_space = env.single_action_space, env.single_observation_space
        self._check_spaces(act_space, obs_space)
        self.obs_dim = int(obs_space.shape[0])
        self.act_dim = int(act_space.shape[0])
        self.action_low = np.asarray(act_space.low, dtype=np.float32)
        self.action_high = np.asarray(act_space.high, dtype=np.float32)
        # Scale in float64 and hand the env its own dtype: EnvPool's MuJoCo tasks declare float64 actions.
        self._low64 = np.asarray(act_space.low, dtype=np.float64)
        self._half_range = (np.asarray(act_space.high, dtype=np.float64) - self._low64) / 2.0
        self._act_dtype = act_space.dtype
        self._seeded = False
        self._started = False
        self._pending: np.ndarray | None = None  # scaled actions handed to step_async
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)  # sub-envs whose next step is the reset step
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)

    def _check_spaces(self, act_space: Any, obs_space: Any) -> None:
        from gymnasium import spaces

        if not (isinstance(act_space, spaces.Box) and np.issubdtype(act_space.dtype, np.floating)
                and len(act_space.shape) == 1):
            self.close()
            raise EnvIdError(f"environment {self.env_id!r} has action space {act_space}; "
                             "only continuous 1-D Box action spaces are supported")
        if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            self.close()
            raise EnvIdError(f"environment {self.env_id!r} has unbounded actions {act_space}; "
                             "actions in [-1, 1] need finite bounds to be scaled onto")
        if not (isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1):
            self.close()
            raise EnvIdError(f"environment {self.env_id!r} has observation space {obs_space}; "
                             "only flat 1-D Box observations are supported")

    def describe(self) -> dict[str, Any]:
        """The task's shapes and action bounds, as JSON (saved in a run's config.json)."""
        return {"env_id": self.env_id, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "action_low": self.action_low.tolist(), "action_high": self.action_high.tolist()}

    def scale_action(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] (clipped) -> [low, high], in the env's action dtype."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return (self._low64 + (a + 1.0) * self._half_range).astype(self._act_dtype, copy=False)

    def reset(self) -> np.ndarray:
        """Start a fresh episode in every sub-env; returns float32 [E, obs_dim]."""
        if self.backend == "gymnasium":
            # Seed once: later resets continue the seeded RNG streams, as EnvPool's do.
            obs, _ = self._env.reset(seed=None if self._seeded else sub_env_seeds(self._seed, self.num_envs))
        else:
            obs, _ = self._env.reset()  # EnvPool is seeded at construction
        self._seeded = self._started = True
        self._needs_reset[:] = False
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        return np.asarray(obs, dtype=np.float32)

    def step(self, action: np.ndarray) -> StepResult:
        """Step every sub-env with `action` [E, act_dim] in [-1, 1]."""
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: np.ndarray) -> None:
        """Hand the actions over and return at once: EnvPool steps in its own threads until `step_wait`, so
        the caller can run a gradient update meanwhile. gymnasium's sync envs step inside `step_wait`."""
        if not self._started:
            raise RuntimeError("VecEnv.step() called before reset()")
        if self._pending is not None:
            raise RuntimeError("VecEnv.step_async() called twice without step_wait()")
        action = np.asarray(action)
        if action.shape != (self.num_envs, self.act_dim):
            raise ValueError(f"action must have shape ({self.num_envs}, {self.act_dim}), got {action.shape}")
        self._pending = self.scale_action(action)
        if self.backend == "envpool":
            self._env.send(self._pending)

    def step_wait(self) -> StepResult:
        if self._pending is None:
            raise RuntimeError("VecEnv.step_wait() called without step_async()")
        if self.backend == "envpool":
            obs, reward, terminated, truncated, info = self._env.recv()
            order = np.argsort(info["env_id"])  # recv returns sub-envs in completion order
            obs, reward, terminated, truncated = obs[order], reward[order], terminated[order], truncated[order]
        else:
            obs, reward, terminated, truncated, _ = self._env.step(self._pending)
        self._pending = None
        valid = ~self._needs_reset
        raw_reward = np.where(valid, np.asarray(reward, dtype=np.float64), 0.0)
        # The reset step carries no transition; force its flags off whatever the back-end says.
        terminated = np.asarray(terminated, dtype=bool) & valid
        truncated = np.asarray(truncated, dtype=bool) & valid
        self._ep_return += raw_reward
        self._ep_len += valid
        done = terminated | truncated
        ended = np.flatnonzero(done)
        returns, lengths = self._ep_return[ended].copy(), self._ep_len[ended].copy()
        self._ep_return[ended] = 0.0
        self._ep_len[ended] = 0
        self._needs_reset = done
        return StepResult(
            next_obs=np.asarray(obs, dtype=np.float32),
            reward=raw_reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            valid=valid,
            episode_returns=returns,
            episode_lengths=lengths,
        )

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VecEnv({self.env_id!r}, backend={self.backend!r}, num_envs={self.num_envs}, "
                f"obs_dim={self.obs_dim}, act_dim={self.act_dim})")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the construction-time noise that says nothing actionable here: the v4 tasks are the paper's
    (docs/algorithms.md §8), and EnvPool's float64 Box bounds trip gymnasium's float32 precision notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*precision lowered by casting", category=UserWarning)
        yield


def make_vec_env(env_id: str, num_envs: int, seed: int, backend: str = "auto",
                 max_episode_steps: int | None = None) -> VecEnv:
    """`num_envs` sub-envs of `env_id`; the same seed gives the same observations (any int seed; each
    sub-env gets its own stream from `sub_env_seeds`). `max_episode_steps` overrides the task's time limit
    (tests use it to force short episodes)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    backend = resolve_backend(env_id, backend)
    extra = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    with _quiet():
        if backend == "envpool":
            import envpool

            env = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs,
                               seed=sub_env_seeds(seed, num_envs), **extra)
            limit = getattr(env.spec.config, "max_episode_steps", None)
        else:
            import gymnasium
            from gymnasium.vector import AutoresetMode

            try:
                env = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                         vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP}, **extra)
            except (ImportError, gymnasium.error.Error) as e:  # e.g. a missing optional dependency
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise EnvIdError(f"cannot make {env_id!r} with gymnasium: {msg}") from e
            limit = max_episode_steps if max_episode_steps is not None else gymnasium.spec(env_id).max_episode_steps
        return VecEnv(env, env_id, backend, seed, limit)



def env_dims(env_id: str, backend: str = "auto", seed: int = 0) -> tuple[int, int]:
    """(obs_dim, act_dim) of a task, from one env made and closed (raises EnvIdError like make_vec_env)."""
    probe = make_vec_env(env_id, 1, seed, backend)
    try:
        return probe.obs_dim, probe.act_dim
    finally:
        probe.close()

def evaluate_episodes(env: VecEnv, policy_fn: Callable[[np.ndarray], np.ndarray], episodes: int) -> np.ndarray:
    """Returns of exactly `episodes` complete episodes, float64 [episodes].

    Sub-env i contributes a fixed quota of its first episodes after a reset (quotas differ by at most one),
    so the sample does not favour short episodes as "the first `episodes` to finish" would.
    `policy_fn` maps float32 obs [E, S] to actions [E, A] in [-1, 1].
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = env.num_envs
    quota = np.full(n, episodes // n, dtype=np.int64)
    quota[: episodes % n] += 1
    got: list[list[float]] = [[] for _ in range(n)]
    # A guard, not a budget: with a time limit every episode ends within limit + 1 steps (the reset step).
    max_steps = None if env.max_episode_steps is None else int(quota.max()) * (env.max_episode_steps + 1) + 1
    obs = env.reset()
    steps = 0
    while any(len(g) < q for g, q in zip(got, quota)):
        if max_steps is not None and steps >= max_steps:
            raise RuntimeError(f"evaluation did not finish {episodes} episodes in {steps} steps")
        result = env.step(policy_fn(obs))
        steps += 1
        for i, ret in zip(np.flatnonzero(result.done), result.episode_returns):
            if len(got[i]) < quota[i]:
                got[i].append(float(ret))
        obs = result.next_obs
    return np.array([r for g in got for r in g], dtype=np.float64)
