"""CUDA-graph capture of the acting path and of the whole update step (LeanRL's static shapes).

`GraphedLearner` is the CUDA-graphed form of fastrsm.learner's one update protocol:

- `act(obs, explore)`: for a batch of exactly `num_envs` states, one graph per `explore` flag holds the whole
  best-of-N path (the N-particle reverse chain, Q scoring, selection, exploration noise); `obs` is copied into
  a static input buffer before each replay.
- the update: replay sampling on the device (`ReplayBuffer.sample()` is sync-free and static-shape) and the
  agent's `update_step` — critic, policy, alpha, EMA and target updates — in one graph per distinct `Parts`.
  Which parts an update runs is decided by `Learner.update` from the agent's schedule; this module only replays
  the graph of those parts, capturing it on first use.

One graph per update (rather than one per part, replayed in turn) keeps a single launch per update and lets the
critic step's best-of-N draws flow into the policy step as ordinary tensors inside the graph, with no static
hand-off buffers between graphs. Whether separate part-graphs would cost measurably more is still to be
measured on a GPU (bench/RESULTS.md).

Graphs are captured lazily on first use (or all at once with `capture()`), each after a few warm-up calls on
a side stream (which also creates the optimisers' state). Warm-up changes parameters, optimiser state,
running statistics and the RNG, so all of that is snapshotted before and restored in place afterwards: a
graphed run starts from the state an eager one would, and consumes the same random numbers (a replay draws
from the default CUDA generator at its current offset, advancing it by what the eager kernels would).

Captured graphs read and write the agent's tensors by address. Everything the update mutates is mutated in
place (Adam(capturable=True) with a tensor lr, `_foreach_lerp_` targets, running statistics), and a
checkpoint restore replaces the optimisers' state tensors: the wrapper notices that (and a different replay
buffer) and re-captures. Outputs are static: the metrics dict of an update holds tensors that the next replay
of the same parts overwrites, and `float()` on them is the caller's (interval) sync.

Off CUDA, or when disabled, it is the eager Learner, so results are identical. `emulate=True` runs the
capture bookkeeping (warm-up, snapshot/restore, lr writes, static outputs) without a
GPU, re-running the captured call eagerly at each "replay": the CPU tests use it to check that bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .agents.base import Agent, Parts
from .learner import Learner, Metrics, Sampler


def graphs_supported(device: torch.device | str) -> bool:
    """CUDA graphs need a CUDA device that is actually present."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def _clone_tree(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    return x


class Snapshot:
    """Everything an update mutates, cloned; `restore` writes it back *in place*, so tensors that graphs
    captured keep their addresses. With `replay`, also what the agent's update writes there
    (`Agent.written_in_replay`: DIPO's moved actions)."""

    def __init__(self, agent: Agent, replay: Any = None):
        self.modules = _clone_tree(agent.state_dict())
        self.extra = _clone_tree(agent.extra_state())
        self.optimizers = {name: ({p: _clone_tree(st) for p, st in o.state.items()},
                                  [_clone_tree(g["lr"]) for g in o.param_groups])
                           for name, o in agent.optimizers().items()}
        self.counters = agent.updates, agent.policy_updates  # warm-up runs update_step only; kept for safety
        self.cuda_device = agent.device if agent.device.type == "cuda" else None
        self.rng_cpu = torch.get_rng_state()
        self.rng_cuda = torch.cuda.get_rng_state(self.cuda_device) if self.cuda_device is not None else None
        written = agent.written_in_replay(replay) if replay is not None else []
        self.replay = [(t, t.detach().clone()) for t in written]

    @torch.no_grad()
    def restore(self, agent: Agent) -> None:
        agent.load_state_dict(self.modules)  # copy_ into the existing parameters and buffers
        agent.load_extra_state(_clone_tree(self.extra))
        for name, o in agent.optimizers().items():
            states, lrs = self.optimizers[name]
            for p, st in o.state.items():
                old = states.get(p)
                if old is None and not isinstance(o, torch.optim.Adam):
                    raise TypeError(f"cannot reset the fresh state of a {type(o).__name__} in place")
                for k, v in st.items():
                    if torch.is_tensor(v):
                        # State created by the warm-up: Adam's fresh state is all zeros (step 0, both moments 0),
                        # and zeroing it in place keeps the tensors the graphs captured.
                        if old is None:
                            v.zero_()
                        else:
                            v.copy_(old[k])
                    elif old is not None:
                        st[k] = old[k]
            for g, lr in zip(o.param_groups, lrs):
                if torch.is_tensor(g["lr"]):
                    g["lr"].copy_(lr)
                else:
                    g["lr"] = lr
        agent.updates, agent.policy_updates = self.counters
        for t, saved in self.replay:
            t.copy_(saved)
        torch.set_rng_state(self.rng_cpu)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.rng_cuda, self.cuda_device)


def _copy_into(static: Any, fresh: Any) -> None:
    if torch.is_tensor(static):
        static.copy_(fresh)
    else:
        for k in static:
            static[k].copy_(fresh[k])


class _Captured:
    """One captured call and its static outputs; `replay()` refreshes the outputs in place."""

    def __init__(self, outputs: Any, graph: torch.cuda.CUDAGraph | None = None,
                 rerun: Callable[[], Any] | None = None):
        self.outputs, self.graph, self.rerun = outputs, graph, rerun

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:  # emulation: the same call, results copied into the static outputs
            _copy_into(self.outputs, self.rerun())


class GraphedLearner(Learner):
    """A Learner whose `act` (for `num_envs` states) and update parts run as CUDA graphs; see the module
    docstring. Off CUDA (or not `enabled`) it is the eager Learner, bit for bit."""

    def __init__(self, agent: Agent, num_envs: int, enabled: bool = True, warmup_iters: int = 3,
                 emulate: bool = False):
        super().__init__(agent)
        self.num_envs = int(num_envs)
        self.warmup_iters = max(1, int(warmup_iters))
        if emulate:
            self.mode = "emulate"
        elif enabled and graphs_supported(agent.device):
            self.mode = "cuda"
        else:
            self.mode = "eager"
        self._pool = torch.cuda.graph_pool_handle() if self.mode == "cuda" else None
        self._updates: dict[Parts, _Captured] = {}
        self._acts: dict[bool, tuple[torch.Tensor, _Captured]] = {}
        self._binding: tuple[Any, ...] | None = None
        self.captures = 0  # graphs captured so far (re-captures included)

    def __repr__(self) -> str:
        return (f"GraphedLearner({type(self.agent).__name__}, mode={self.mode!r}, num_envs={self.num_envs}, "
                f"update graphs={sorted(self._updates)}, act graphs={sorted(self._acts)})")

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """The states act() is captured for: [num_envs, obs_dim], or [S, num_envs, obs_dim] for S seeds."""
        seeds = getattr(self.agent, "seeds", None)
        lead = () if seeds is None else (seeds,)
        return (*lead, self.num_envs, self.agent.obs_dim)

    @property
    def graphed(self) -> bool:
        return self.mode != "eager"

    # ------------------------------------------------------------------------------------------ acting
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """The agent's action for `obs` [num_envs, obs_dim]; other batch sizes, or draws from an explicit
        `generator` (a graph replays the global generator's stream), run eagerly."""
        if self.mode == "eager" or generator is not None or tuple(obs.shape) != self.obs_shape:
            return self.agent.act(obs, explore, generator)
        static_obs, captured = self._acts.get(explore) or self._capture_act(obs, explore)
        static_obs.copy_(obs)
        captured.replay()
        return captured.outputs.clone()  # the static output is overwritten by the next replay

    # ------------------------------------------------------------------------------------------ updates
    def _run(self, parts: Parts, replay: Sampler) -> Metrics:
        """The update of `parts` replayed (captured on first use). Graphed, the returned tensors are static: the
        next replay of the same parts overwrites them."""
        if self.mode == "eager":
            return super()._run(parts, replay)
        self._bind(replay)
        captured = self._updates.get(parts)
        if captured is None:
            captured = self._updates[parts] = self._capture_update(replay, parts)
        captured.replay()
        return dict(captured.outputs)

    def capture(self, replay: Sampler, obs: torch.Tensor | None = None) -> None:
        """Capture now every `Parts` the agent's schedule can reach (and act(explore=True) for `obs`), so no
        capture happens later inside a timed or latency-sensitive stretch. A no-op when eager."""
        if self.mode == "eager":
            return
        self._bind(replay)
        for parts in self.agent.reachable_parts():
            if parts not in self._updates:
                self._updates[parts] = self._capture_update(replay, parts)
        if obs is not None and True not in self._acts:
            if tuple(obs.shape) != self.obs_shape:
                raise ValueError(f"obs must be {list(self.obs_shape)}, got {tuple(obs.shape)}")
            self._capture_act(obs, explore=True)

    # ------------------------------------------------------------------------------------------ internals
    def _bind(self, replay: Sampler) -> None:
        """Update graphs hold the addresses of the replay storage, the optimiser state and the lr tensors. A
        checkpoint restore (Optimizer.load_state_dict) replaces the latter two: then re-capture."""
        opts = list(self.agent.optimizers().values())
        lrs = [g["lr"] for o in opts for g in o.param_groups if torch.is_tensor(g["lr"])]  # floats: no address
        b = self._binding
        if (b is not None and b[0] is replay and len(b[1]) == len(opts) and len(b[2]) == len(lrs)
                and all(s is o.state for s, o in zip(b[1], opts)) and all(x is y for x, y in zip(b[2], lrs))):
            return
        self._updates.clear()
        self._binding = (replay, [o.state for o in opts], lrs)

    def _capture_act(self, obs: torch.Tensor, explore: bool) -> tuple[torch.Tensor, _Captured]:
        static_obs = torch.empty(self.obs_shape, device=self.agent.device)
        static_obs.copy_(obs)  # warm up on real states
        captured = self._capture(lambda: self.agent.act(static_obs, explore), f"act(explore={explore})")
        self._acts[explore] = (static_obs, captured)
        return static_obs, captured

    def _capture_update(self, replay: Sampler, parts: Parts) -> _Captured:
        if len(replay) == 0:
            raise RuntimeError("cannot capture an update on an empty replay buffer: add transitions first")
        return self._capture(lambda: self.agent.update_step(self.agent.draw_batch(replay), parts), f"update{parts}",
                             replay)

    def _capture(self, fn: Callable[[], Any], what: str, replay: Any = None) -> _Captured:
        """Warm up `fn`, capture it, and leave the agent (and the RNG, and what it writes in `replay`) exactly as
        found."""
        snapshot = Snapshot(self.agent, replay)
        self.captures += 1
        try:
            if self.mode == "emulate":
                for _ in range(self.warmup_iters):
                    fn()
                return _Captured(fn(), rerun=fn)
            device = self.agent.device
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(self.warmup_iters):
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self._pool):
                    outputs = fn()
            except Exception as e:
                raise RuntimeError(f"CUDA-graph capture of {what} failed ({type(e).__name__}: {e}); run with "
                                   "CUDA graphs disabled to use the eager path") from e
            return _Captured(outputs, graph=graph)
        finally:
            snapshot.restore(self.agent)

