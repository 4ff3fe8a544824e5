"""torch.compile of the whole acting function and of each update: on a CPU, where eager
PyTorch pays per-op overhead on small tensors, the T-step chain, the twin-Q scoring and the argmax become one
graph, and each update (critic step, policy step, α step, their backward passes and optimiser steps, the target
and EMA updates) is compiled once per distinct `Parts` the agent's schedule names — the same shape as
fastrsm.graphs' CUDA graphs, for the parts fastrsm.learner's schedule names. For DPMD, SDAC and SAC each update is
one graph: dynamo traces `backward()`, and the agents step their optimisers through `gradient_step`, which
dynamo can trace (`Optimizer.step` cannot be).

`CompiledLearner` is the compiled form of fastrsm.learner's one update protocol (the schedule stays there). The
first call of each variant compiles (seconds to minutes on a small CPU); `compile_seconds` adds them up so the run
can report its start-up cost. Results equal the eager agent's up to floating-point reassociation by the compiler
(tests/test_compiled.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .agents.base import Agent, Parts
from .learner import Learner, Metrics

# Dynamo traces `loss.backward()` into the graph (torch >= 2.12's `trace_autograd_ops`; older versions break the
# graph there). With the agents' `gradient_step` (no Optimizer.step, which always breaks the graph) a DPMD or SDAC
# update becomes one graph instead of eight: the per-graph overhead (guards, wrappers, autograd bookkeeping) was
# as large as the chain's own compute at smoke sizes on a CPU.
_TRACE_BACKWARD: dict[str, Any] = (
    {"trace_autograd_ops": True} if hasattr(torch._dynamo.config, "trace_autograd_ops") else {})


class CompiledLearner(Learner):
    """A Learner whose `act` and update parts run torch.compile'd functions; see the module docstring."""

    def __init__(self, agent: Agent, mode: str | None = None):
        super().__init__(agent)
        self.mode = mode
        if mode is None and agent.device.type == "cpu":
            # inductor's C++ wrapper calls the generated kernels from C++ rather than Python: a one-observation
            # act at smoke sizes runs ~2× faster than with the default Python wrapper (the launches were the
            # cost there) and compiles sooner (bench/RESULTS.md)
            self._compile_kwargs: dict[str, Any] = {"options": {"cpp_wrapper": True}}
        else:
            self._compile_kwargs = {"mode": mode}
        self._acts: dict[bool, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._updates: dict[Parts, Callable[[Any], Metrics]] = {}
        self.compile_seconds = 0.0
        self._seen: set[tuple] = set()

    def __repr__(self) -> str:
        return (f"CompiledLearner({type(self.agent).__name__}, acts={sorted(self._acts)}, "
                f"updates={sorted(self._updates)})")

    def _timed(self, key: tuple, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn`; the first call for `key` (which compiles) counts towards `compile_seconds`."""
        if key in self._seen:
            return fn(*args)
        t0 = time.perf_counter()
        out = fn(*args)
        self.compile_seconds += time.perf_counter() - t0
        self._seen.add(key)
        return out

    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        fn = self._acts.get(explore)
        if fn is None:
            agent = self.agent

            def act_fn(o: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
                return agent.act(o, explore, g)

            fn = self._acts[explore] = torch.compile(act_fn, dynamic=False, **self._compile_kwargs)
        return self._timed(("act", explore, tuple(obs.shape), generator is None), fn, obs, generator)

    def capture(self, replay: Any, obs: torch.Tensor | None = None) -> None:
        """Compile now every update the schedule can reach (and act(explore=True) for `obs`), leaving the agent
        and the RNG exactly as found, so no compilation lands in a timed stretch."""
        from .graphs import Snapshot  # the same in-place snapshot the CUDA-graph warm-up uses

        snapshot = Snapshot(self.agent, replay)
        try:
            for parts in self.agent.reachable_parts():
                self._timed(("update", parts), self._update_fn(parts), self.agent.draw_batch(replay))
            if obs is not None:
                self.act(obs, explore=True)
        finally:
            snapshot.restore(self.agent)

    def _update_fn(self, parts: Parts) -> Callable[[Any], Metrics]:
        fn = self._updates.get(parts)
        if fn is None:
            agent = self.agent

            def update_fn(batch: Any, parts: Parts = parts) -> Metrics:
                return agent.update_step(batch, parts)

            compiled = torch.compile(update_fn, dynamic=False, **self._compile_kwargs)
            if agent.trace_backward and _TRACE_BACKWARD:

                def fn(batch: Any) -> Metrics:
                    with torch._dynamo.config.patch(**_TRACE_BACKWARD):  # read when a frame is traced
                        return compiled(batch)
            else:
                # nothing to patch (the DACER family, or a torch without trace_autograd_ops): the patch's enter
                # and exit cost ~40 µs per call for nothing
                fn = compiled

            self._updates[parts] = fn
        return fn

    def _run(self, parts: Parts, replay: Any) -> Metrics:
        return self._timed(("update", parts), self._update_fn(parts), self.agent.draw_batch(replay))
