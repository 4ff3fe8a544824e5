"""The one update protocol: a `Learner` turns an agent's pure `update_step(batch, parts)` into the step the loop
runs, eager, compiled (fastrsm.compiled) or CUDA-graphed (fastrsm.graphs), and decides the schedule of parts in
one place (`Learner.update`).

An update is: ask the agent which parts come next (`Agent.next_parts`, from its host-side counters), write the
host-side schedules (learning rates) in place (`Agent.schedule`), run the parts on a batch sampled from the replay
(`_run`: the only thing the compiled and graphed forms replace; the batch is drawn by `Agent.draw_batch`), then
count the update (`Agent.advance`). LeanRL's
split is the model: the host keeps the schedule, the device runs static-shape parts.

The loop calls `act(obs, explore)` and `update(replay)`; everything else (counters, checkpoints, α) is the
agent's, read as `learner.agent.<name>`: a learner forwards nothing implicitly."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .agents.base import Agent, Parts

Metrics = dict[str, torch.Tensor]


class Sampler(Protocol):
    """What an update draws its batch from: a replay buffer (fastrsm.replay, fastrsm.seeds.SeedReplay)."""

    def sample(self) -> Any: ...

    def __len__(self) -> int: ...


class Learner:
    """The eager form: `act` is the agent's, `update` runs `agent.update_step` on `agent.draw_batch(replay)`."""

    compile_seconds = 0.0  # start-up spent compiling (fastrsm.compiled); none here

    def __init__(self, agent: Agent):
        self.agent = agent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.agent).__name__})"

    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.agent.act(obs, explore, generator)

    def update(self, replay: Sampler) -> Metrics:
        """One gradient update: the parts the agent's schedule names, then the counters advance."""
        agent = self.agent
        parts = agent.next_parts()
        agent.schedule()
        metrics = self._run(parts, replay)
        agent.advance(parts)
        return metrics

    def _run(self, parts: Parts, replay: Sampler) -> Metrics:
        return self.agent.update_step(self.agent.draw_batch(replay), parts)

    def capture(self, replay: Sampler, obs: torch.Tensor | None = None) -> None:
        """Prepare every update the schedule can reach (and act for `obs`) before a timed stretch; eager: nothing
        to prepare."""


class OneBatch:
    """A replay that always hands out the same batch (tests and benchmarks that feed a fixed batch)."""

    def __init__(self, batch: Any):
        self.batch = batch

    def sample(self) -> Any:
        return self.batch

    def __len__(self) -> int:
        return 1

