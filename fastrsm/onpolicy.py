"""The on-policy loop's body (PPO, DPPO), beside fastrsm.loop's off-policy one: fastrsm.runner runs one or the
other (the agent's `on_policy` says which) and owns everything around it — run directory, evaluation,
checkpoints, `--resume`, signals, NaN guard, progress bar, logs.

One call of `rollout_update`: `rollout_steps` vector steps of the envs with the exploring policy, recorded as a
`Rollout` (normalised observations, what the policy drew, scaled rewards, the end-of-episode flags), then the
agent's update on it (GAE, epochs of minibatches). The running observation statistics are updated with every
observation just before the policy acts on it; the observation the last step returned is normalised without
counting it (the next rollout acts on it and counts it then), so that an uninterrupted run and one resumed at a
rollout boundary see the same statistics. Checkpoints and evaluations fall between calls: at rollout boundaries."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .agents.onpolicy_base import Metrics, OnPolicyAgent, Rollout
from .config import Config
from .envs import VecEnv
from .loop import LoopState
from .profiling import nvtx_range


class OnPolicyLearner:
    """What the runner steps for an on-policy agent: `act` (evaluation; the loop acts through `explore`) and
    `learn(rollout)`. backend 'compile': the minibatch step (both gradient steps, with fused Adam) and the
    exploring act are torch.compile'd once per run; else eager."""

    def __init__(self, agent: OnPolicyAgent, backend: str):
        self.agent = agent
        self.compile_seconds = 0.0
        self._step = agent.minibatch_step
        self._explore = agent.policy_act
        self._first = {"step", "explore"}
        if backend == "compile":
            self._step = torch.compile(agent.minibatch_step, dynamic=False)
            self._explore = torch.compile(agent.policy_act, dynamic=False)
        else:
            self._first.clear()

    def __repr__(self) -> str:
        return f"OnPolicyLearner({type(self.agent).__name__})"

    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.agent.act(obs, explore, generator)

    def explore(self, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self._timed("explore", self._explore, obs_n, True)

    def step(self, mb: dict[str, torch.Tensor]) -> Metrics:
        return self._timed("step", self._step, mb)

    def learn(self, rollout: Rollout) -> Metrics:
        return self.agent.learn(rollout, self.step)

    def _timed(self, key: str, fn: Any, *args: Any) -> Any:
        """The first call of a compiled function compiles it: that time is reported as start-up."""
        if key not in self._first:
            return fn(*args)
        t0 = time.perf_counter()
        out = fn(*args)
        self.compile_seconds += time.perf_counter() - t0
        self._first.discard(key)
        return out


def rollout_update(cfg: Config, envs: VecEnv, learner: OnPolicyLearner, obs: np.ndarray, st: LoopState,
                   metrics: Metrics, device: torch.device) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Collect one rollout from `obs` (raw observations of the envs), learn from it; returns the envs' current
    raw observations and the episodes that ended, as (sub-env, return). `metrics` receives the update's."""
    agent = learner.agent
    T, E = cfg.rollout_steps, envs.num_envs
    obs_buf = torch.empty(T + 1, E, envs.obs_dim, device=device)
    reward = torch.empty(T, E, device=device)
    flags = torch.empty(3, T, E, dtype=torch.bool, device=device)  # terminated, truncated, valid
    samples: list[torch.Tensor] = []
    episodes: list[tuple[int, float]] = []
    o = torch.as_tensor(obs, device=device)
    with nvtx_range("rollout"):
        for t in range(T):
            if agent.obs_norm.enabled:
                agent.obs_norm.update(o)
            obs_buf[t] = agent.obs_norm(o)
            action, drawn = learner.explore(obs_buf[t])
            samples.append(drawn)
            envs.step_async(action.cpu().numpy())
            res = envs.step_wait()
            step_flags = torch.as_tensor(np.stack([res.terminated, res.truncated, res.valid]), device=device)
            flags[:, t] = step_flags
            reward[t] = agent.reward_scaler(torch.as_tensor(res.reward, device=device), step_flags[0] | step_flags[1],
                                            step_flags[2])
            episodes.extend((int(k), float(r)) for k, r in zip(np.flatnonzero(res.done), res.episode_returns))
            o = torch.as_tensor(res.next_obs, device=device)
            st.env_steps += E
        obs_buf[T] = agent.obs_norm(o)
    rollout = Rollout(obs=obs_buf, sample=torch.stack(samples), reward=reward, terminated=flags[0],
                      truncated=flags[1], valid=flags[2])
    with nvtx_range("update"):
        metrics.update(learner.learn(rollout))
    return res.next_obs, episodes


@torch.no_grad()
def synthetic_rollout(agent: OnPolicyAgent, steps: int, envs: int, generator: torch.Generator | None = None
                      ) -> Rollout:
    """A rollout of the right shapes without envs (benchmarks, pace estimates): N(0, 1) observations, the agent's
    own draws on them, N(0, 1) rewards, an episode ending now and then (terminations and truncations)."""
    dev = agent.device
    obs = torch.randn(steps + 1, envs, agent.obs_dim, device=dev, generator=generator)
    samples = torch.stack([agent.policy_act(obs[t], True, generator)[1] for t in range(steps)])
    ends = torch.rand(2, steps, envs, device=dev, generator=generator) < 0.01
    return Rollout(obs=obs, sample=samples, reward=torch.randn(steps, envs, device=dev, generator=generator),
                   terminated=ends[0], truncated=ends[1] & ~ends[0], valid=torch.ones(steps, envs, dtype=torch.bool,
                                                                                      device=dev))
