"""The one training loop, for a single run and for a group of seeds trained in one process (`--seeds`).

A single run is the group of one seed: the same loop, logging, evaluation, checkpoints, signals, NaN guard,
progress bar and pace advice serve both. What differs is only where the per-seed things live: a single run's agent
and replay have no seed axis and its run directory is RUN_DIR itself; a group's agent and replay are stacked over S
seeds (fastrsm.seeds) and each seed has an ordinary run directory GROUP_DIR/seed_<s>/ (fastrsm.group).

Read top to bottom, one vector step is: act, step the envs, the updates it earns (fastrsm.loop.vector_step, the
body the benchmarks time too), then at intervals: the NaN guard, a train.csv row, an evaluation (on its own envs
and its own random stream, so the evaluation cadence never moves training), and a checkpoint. Env episodes are
cut (as truncations, so the bootstrap is kept) at every checkpoint, where the training envs are re-created with a
seed derived from the checkpoint's index: a checkpoint is then a complete description of the run, and `--resume`
from a checkpoint taken every `checkpoint_every` steps continues bit for bit as the uninterrupted run does.

Divergence: a seed whose loss, Q or parameters go non-finite is frozen (it acts with zeros, its checkpoints keep
its last good state, its summary says `diverged`) while the others continue; a run exits 3 once every seed has
diverged. Exit codes are fastrsm.cli's (0, 2, 3, 4, 130, 143)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import loop, onpolicy
from .agents import make_agent
from .agents.base import Agent
from .backend import make_ops, resolve_backend
from .cli import EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_SIGINT, EXIT_SIGTERM
from .compiled import CompiledLearner
from .config import Config
from .envs import evaluate_episodes, make_vec_env
from .graphs import GraphedLearner
from .group import GROUP_FILE, SeedEnvs, finite_seeds, seed_dir, write_group_summary
from .learner import Learner
from .loop import Diverged, LoopState, StopSignals, env_seed, eval_seed
from .profiling import enable_nvtx, nvtx_range
from .replay import ReplayBuffer
from .runlog import RunLog
from .seeds import SeedReplay, align_frozen, load_seeds, seed_checkpoint
from .utils import DiskFullError, atomic_write_json, resolve_device, rng_state, seed_everything, set_rng_state

# On a CPU, a run whose measured pace puts its end further away than this gets one line of advice.
SLOW_RUN_SECONDS = 2 * 3600.0
PACE_UPDATES = (100, 400)  # the pace is measured between these update counts (after start-up costs)


def make_learner(agent: Agent, backend: str, cuda_graphs: bool = False, num_envs: int = 1) -> Learner:
    """The learner of a resolved `backend`: compiled for 'compile', CUDA-graphed on CUDA when `cuda_graphs`,
    else eager."""
    if backend == "compile":
        return CompiledLearner(agent)
    if cuda_graphs and agent.device.type == "cuda":
        return GraphedLearner(agent, num_envs)
    return Learner(agent)


class _Pace:
    """Measures steps/s between two update counts; on a CPU, if the run would take long, says so once."""

    def __init__(self, cfg: Config, device: torch.device, enabled: bool):
        self.cfg, self.enabled = cfg, enabled and device.type == "cpu"
        self._start: tuple[float, int] | None = None

    def __call__(self, updates: int, env_steps: int) -> None:
        if not self.enabled or updates < PACE_UPDATES[0]:
            return
        if self._start is None:
            self._start = (time.perf_counter(), env_steps)
        elif updates >= PACE_UPDATES[1]:
            self.enabled = False
            dt = time.perf_counter() - self._start[0]
            sps = (env_steps - self._start[1]) / max(dt, 1e-9)
            eta = (self.cfg.total_steps - env_steps) / max(sps, 1e-9)
            if eta > SLOW_RUN_SECONDS:
                print(f"fastrsm-train: {sps:.0f} env steps/s on this CPU: about {_duration(eta)} to finish "
                      f"{self.cfg.total_steps} steps; a GPU (--device cuda) is much faster, or try --preset smoke "
                      "for a quick run. Continuing.", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                desc="env steps", mininterval=1.0, disable=None if enabled else True)


class Seeds:
    """The per-seed side of a run: S seeds' configs, run logs and states, and how to reach seed i's part of the
    agent and the replay. `group` False: one seed, its agent and replay without a seed axis."""

    def __init__(self, cfg: Config, run_dir: str, seeds: list[int] | None):
        self.group = seeds is not None
        self.seeds = list(seeds) if seeds is not None else [cfg.seed]
        self.S = len(self.seeds)
        self.cfgs = [dataclasses.replace(cfg, seed=s) for s in self.seeds]
        self.dirs = [seed_dir(run_dir, s) for s in self.seeds] if self.group else [run_dir]
        self.logs = [RunLog(d) for d in self.dirs]
        self.best = [-math.inf] * self.S
        self.frozen = [False] * self.S
        self.messages = [""] * self.S
        self.ep_returns: list[list[float]] = [[] for _ in self.seeds]

    def live(self) -> list[int]:
        return [i for i in range(self.S) if not self.frozen[i]]

    def agent_state(self, agent: Any, i: int) -> dict:
        return seed_checkpoint(agent, i) if self.group else agent.checkpoint()

    def replay_state(self, rb: Any, i: int) -> dict:
        return rb.state_dict(i) if self.group else rb.state_dict()

    def load_replay(self, rb: Any, i: int, state: dict) -> None:
        if self.group:
            rb.load_state_dict(i, state)
        else:
            rb.load_state_dict(state)


def _make_envs(sd: Seeds, segment: int) -> SeedEnvs:
    # seed s's block is made exactly as a single run with seed s makes its envs
    return SeedEnvs([make_vec_env(c.env_id, c.num_envs, env_seed(c, segment), c.env_backend) for c in sd.cfgs])


def _build_agent(cfg: Config, sd: Seeds, obs_dim: int, act_dim: int, device: torch.device, ops: Any) -> Any:
    """A single run's agent from its seed; a group's stacked agent whose seed s starts from exactly the weights a
    single run with seed s starts from. Leaves the global generator seeded from the first seed."""
    if not sd.group:
        seed_everything(cfg.seed)
        return make_agent(cfg.algo, obs_dim, act_dim, cfg, device, ops)
    singles = []
    for c in sd.cfgs:
        seed_everything(c.seed)
        singles.append(make_agent(c.algo, obs_dim, act_dim, c, device, ops).checkpoint())
    agent = make_agent(cfg.algo, obs_dim, act_dim, cfg, device, ops, seeds=sd.S)
    load_seeds(agent, singles)
    # one torch/numpy generator for the group, its draws disjoint [S, ...] slices: no seed's random numbers are
    # another's, but a grouped seed's stream is not its single run's (an independent sample, not a bitwise replay)
    seed_everything(sd.seeds[0])
    return agent


class SeedActor:
    """What fastrsm.loop.vector_step needs of a learner, on [S·E, obs] rows (seed-major): a group's agent (`seeds`
    S) takes them as [S, E, obs], and a frozen (diverged) seed acts with zeros; `seeds` None: a single run's rows
    as they are."""

    def __init__(self, learner: Learner, seeds: int | None, frozen: list[bool]):
        self.learner, self.seeds, self.frozen = learner, seeds, frozen

    def act(self, obs: torch.Tensor, explore: bool = True) -> torch.Tensor:
        if self.seeds is None:
            return self.learner.act(obs, explore)
        a = self.learner.act(obs.reshape(self.seeds, -1, obs.shape[-1]), explore)
        if any(self.frozen):
            a = a.clone()
            a[torch.tensor(self.frozen, device=a.device)] = 0.0
        return a.reshape(-1, a.shape[-1])

    def update(self, replay: Any) -> dict[str, torch.Tensor]:
        return self.learner.update(replay)


def evaluate(actor: SeedActor, sd: Seeds, index: int, device: torch.device) -> list[list[float]]:
    """Evaluation `index`: every seed's `eval_episodes` episodes on its own eval envs (seeded as its single run
    seeds them), all seeds in one batched pass, deterministic policy. The policy's draws (best-of-N particles) come
    from a generator of their own, seeded by the evaluation's index: the training stream is untouched, so the
    evaluation cadence does not move training, and an evaluation is reproducible."""
    E = sd.cfgs[0].eval_episodes
    env = SeedEnvs([make_vec_env(c.env_id, E, eval_seed(c, index), c.env_backend) for c in sd.cfgs])
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(eval_seed(sd.cfgs[0], index))

            def policy(obs: np.ndarray) -> np.ndarray:
                return actor.act(torch.as_tensor(obs, device=device), explore=False).cpu().numpy()

            # one episode per sub-env (quota 1), so returns[s·E:(s+1)·E] are seed s's, as its single run's are
            returns = evaluate_episodes(env, policy, E * sd.S)
    finally:
        env.close()
    return [[float(r) for r in returns[s * E:(s + 1) * E]] for s in range(sd.S)]


def _restore(agent: Any, rb: Any, sd: Seeds, ckpts: list[dict]) -> tuple[LoopState, dict]:
    """Load the checkpoints of every seed; returns the loop state and the RNG state to continue from.

    A group whose seed diverged resumes with that seed still frozen: its checkpoint holds its last good state
    (older than the others'), so its counters are aligned to a live seed's before stacking, and the loop state and
    RNG come from a live seed."""
    steps = [c["loop"]["env_steps"] for c in ckpts]
    ref = ckpts[int(np.argmax(steps))]
    group = ref.get("group") or {}
    frozen = group.get("frozen")
    if not isinstance(frozen, list) or len(frozen) != len(ckpts):  # a seed behind the others stopped at a NaN
        frozen = [s < max(steps) for s in steps]
    messages = group.get("messages") or [""] * len(ckpts)
    if sd.group:
        states = [align_frozen(c["agent"], ref["agent"]) if frozen[i] else c["agent"] for i, c in enumerate(ckpts)]
        load_seeds(agent, states)
    else:
        agent.restore(ckpts[0]["agent"])
    for i, c in enumerate(ckpts):
        if c.get("replay") is not None:
            sd.load_replay(rb, i, c["replay"])
        sd.logs[i].restore_rows(c["rows"])
        sd.best[i] = c["loop"]["best_return"]
        sd.frozen[i] = bool(frozen[i])
        if frozen[i]:
            sd.messages[i] = messages[i] or "non-finite loss, Q or parameter before the resume; seed frozen"
    loop_state = {k: v for k, v in ref["loop"].items() if k in {f.name for f in dataclasses.fields(LoopState)}}
    return LoopState(**{**loop_state, "best_return": -math.inf}), ref["rng"]


def _record_resume(path: str, config: dict, record: dict) -> None:
    """config.json (or group.json) says what the run now runs with, and keeps a record of each resume: the file
    that fastrsm-eval, load_policy, fastrsm-plot and the next `--resume` read."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    data["config"] = config
    data["resumes"] = [*data.get("resumes", []), record]
    atomic_write_json(path, data)


def run(cfg: Config, run_dir: str, seeds: list[int] | None = None, ckpts: list[dict] | None = None,
        argv: list[str] | None = None, progress: bool = True, changed: dict[str, tuple[Any, Any]] | None = None,
        wrap_replay: Callable[[Any], Any] | None = None, unused: list[str] | None = None) -> int:
    """Train `cfg` (one seed, or `seeds` in one process under the group directory `run_dir`) and return the exit
    code. With `ckpts` (one loaded checkpoint per seed), continue from them; `changed` (the settings the resume
    changed, old and new) goes into config.json's record of resumes. `wrap_replay` lets a test stand
    between the loop and the replay buffer (e.g. to feed a NaN); the library itself never uses it. `unused`: settings
given that the algorithm does not read, recorded in config.json."""
    sd = Seeds(cfg, run_dir, seeds)
    resume = ckpts is not None
    device = resolve_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    enable_nvtx(device)
    backend = resolve_backend(cfg.backend, device)
    ops = make_ops(backend, device, cfg.chain_precision, cfg.chain_noise)

    envs = _make_envs(sd, 0)
    agent = _build_agent(cfg, sd, envs.obs_dim, envs.act_dim, device, ops)
    obs_dim, act_dim = envs.obs_dim, envs.act_dim
    # the loop's family: an on-policy agent (PPO, DPPO) learns from rollouts (fastrsm.onpolicy) and keeps no replay
    on_policy = bool(getattr(agent, "on_policy", False))
    rb: Any = (None if on_policy else
               SeedReplay(sd.S, cfg.buffer_size, obs_dim, act_dim, device, cfg.batch_size) if sd.group
               else ReplayBuffer(cfg.buffer_size, obs_dim, act_dim, device, cfg.batch_size))
    st = LoopState()

    extra = {"group": os.path.abspath(run_dir), "group_seeds": sd.seeds} if sd.group else {}
    if resume:
        st, rng = _restore(agent, rb, sd, ckpts)
        ckpts.clear()  # the caller's list too: the loaded checkpoints (and their replay rows) are not kept alive
        set_rng_state(rng)
        envs.close()
        envs = _make_envs(sd, st.segment)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "env_step": st.env_steps, "argv": list(argv or []),
                  "changed": {k: list(v) for k, v in (changed or {}).items()}}
        for log, c in zip(sd.logs, sd.cfgs):
            log.tensorboard(purge_step=st.env_steps)
            _record_resume(os.path.join(log.path, "config.json"),
                           {**c.to_dict(), "backend_resolved": backend, **extra}, record)
        if sd.group:
            _record_resume(os.path.join(run_dir, GROUP_FILE), cfg.to_dict(), record)
    else:
        os.makedirs(run_dir, exist_ok=True)
        for log, c in zip(sd.logs, sd.cfgs):
            log.create({**c.to_dict(), "backend_resolved": backend, **extra,
                        **({"unused_settings": unused} if unused else {})}, device, argv,
                       env=envs.blocks[0].describe())
        if sd.group:
            atomic_write_json(os.path.join(run_dir, GROUP_FILE), {"seeds": sd.seeds, "config": cfg.to_dict(),
                                                                  "argv": list(argv or [])})
    # evaluations and checkpoints due from here on (the intervals may have changed on resume)
    st.evals_done = st.env_steps // cfg.eval_every
    checkpoints_done = st.env_steps // cfg.checkpoint_every

    def checkpoint() -> None:
        """Every live seed's latest checkpoint (a frozen seed keeps its last good one); cuts the env segment."""
        nonlocal envs, obs
        st.wall_time = time.perf_counter() - t_start
        st.segment += 1
        envs.close()
        envs = _make_envs(sd, st.segment)
        obs = envs.reset()
        group = {"seeds": sd.seeds, "frozen": list(sd.frozen), "messages": list(sd.messages)} if sd.group else None
        for i in sd.live():
            replay_state = sd.replay_state(rb, i) if cfg.save_replay and rb is not None else None
            state = {"agent": sd.agent_state(agent, i), "replay": replay_state,
                     "loop": {**vars(st), "best_return": sd.best[i]}, "rows": sd.logs[i].rows_state(),
                     "rng": rng_state(), "config": sd.cfgs[i].to_dict()}
            if group is not None:
                state["group"] = group
            sd.logs[i].save_checkpoint(state, "latest")

    def check() -> None:
        """The NaN guard (one host sync): freeze a seed that went non-finite; stop when none is left."""
        ok = finite_seeds(agent, metrics)
        if not sd.group and not ok[0]:
            loop.check_finite(agent, metrics, st.env_steps)  # raises Diverged naming the value
        for i in sd.live():
            if not ok[i]:
                sd.frozen[i] = True
                sd.messages[i] = (f"non-finite loss, Q or parameter at env step {st.env_steps}; seed frozen, the "
                                  f"last good checkpoint is kept in {sd.logs[i].path}")
                print(f"fastrsm-train: seed {sd.seeds[i]}: {sd.messages[i]}", file=sys.stderr)
        if not sd.live():
            raise Diverged("every seed diverged")

    def log_row() -> None:
        nonlocal t_log, steps_log
        now = time.perf_counter()
        sps = (st.env_steps - steps_log) / max(now - t_log, 1e-9)
        t_log, steps_log = now, st.env_steps
        host = {k: v.detach().float().cpu() for k, v in {**metrics, **agent.logged()}.items()}
        for i in sd.live():
            row = {"step": st.env_steps, "updates": agent.updates, "steps_per_s": sps, "wall_time": now - t_start,
                   "episode_return": float(np.mean(sd.ep_returns[i])) if sd.ep_returns[i] else float("nan")}
            row.update({k: float(v.reshape(sd.S, -1)[i, 0]) for k, v in host.items()})
            sd.logs[i].log_train(row)
            sd.ep_returns[i].clear()
        postfix.update(sps=f"{sps:.0f}")
        bar.set_postfix(postfix, refresh=False)

    def evaluate_now() -> bool:
        """Evaluate every live seed; keep each one's best; True when every live seed reached stop_return."""
        if metrics:
            check()
        with nvtx_range("evaluate"):
            returns = evaluate(actor, sd, st.evals_done, device)
        st.evals_done = st.env_steps // cfg.eval_every
        for i in sd.live():
            row = sd.logs[i].log_eval(st.env_steps, returns[i])
            if row["return_mean"] > sd.best[i]:  # saved before `latest`, which must carry the new best
                sd.best[i] = row["return_mean"]
                sd.logs[i].save_checkpoint({"agent": sd.agent_state(agent, i), "config": sd.cfgs[i].to_dict(),
                                            "step": st.env_steps}, "best")
        postfix["eval"] = " ".join(f"{sd.logs[i].eval_rows[-1]['return_mean']:.1f}" for i in sd.live())
        return all(sd.best[i] >= cfg.stop_return for i in sd.live())

    learner: Any = (onpolicy.OnPolicyLearner(agent, backend) if on_policy
                    else make_learner(agent, backend, cfg.cuda_graphs, cfg.num_envs))
    actor = SeedActor(learner, sd.S if sd.group else None, sd.frozen)
    replay = rb if wrap_replay is None or rb is None else wrap_replay(rb)
    obs = envs.reset()
    metrics: dict[str, torch.Tensor] = {}
    t_start = time.perf_counter() - st.wall_time
    t_log, steps_log = time.perf_counter(), st.env_steps
    next_log = (st.env_steps // cfg.log_every + 1) * cfg.log_every
    next_check = st.env_steps + cfg.nan_check_every if cfg.nan_check_every else math.inf
    bar = _progress_bar(cfg.total_steps, st.env_steps, progress)
    postfix: dict[str, str] = {"eval": " ".join(f"{log.eval_rows[-1]['return_mean']:.1f}" if log.eval_rows else "-"
                                                for log in sd.logs)}
    pace = _Pace(cfg, device, enabled=not resume)
    compile_said = False
    status, code, message = "crashed", 1, ""
    E = cfg.num_envs

    with StopSignals() as stop:
        try:
            while st.env_steps < cfg.total_steps:
                # -- act, step the envs, learn: one vector step, or one rollout and its update
                before = st.env_steps
                if on_policy:
                    obs, ended = onpolicy.rollout_update(cfg, envs, learner, obs, st, metrics, device)
                else:
                    res = loop.vector_step(cfg, envs, actor, replay, obs, st, metrics, device)
                    obs, ended = res.next_obs, zip(np.flatnonzero(res.done), res.episode_returns)
                for k, r in ended:
                    sd.ep_returns[k // E].append(float(r))
                pace(agent.updates, st.env_steps)
                if st.env_steps >= next_check:
                    next_check += cfg.nan_check_every
                    check()
                # -- log
                if st.env_steps >= next_log:
                    next_log += cfg.log_every
                    log_row()
                    compile_said = loop.announce_compile(learner, compile_said)
                # -- evaluate, checkpoint
                end = st.env_steps >= cfg.total_steps
                reached = False
                if end or st.env_steps >= (st.evals_done + 1) * cfg.eval_every:
                    reached = evaluate_now()
                if end or reached or st.env_steps >= (checkpoints_done + 1) * cfg.checkpoint_every:
                    checkpoints_done = st.env_steps // cfg.checkpoint_every
                    checkpoint()
                bar.set_postfix(postfix, refresh=False)
                bar.update(st.env_steps - before)
                if reached:
                    who = "every seed" if sd.group else "the run"
                    message = f"{who} reached stop-return {cfg.stop_return:g} by env step {st.env_steps}"
                    break
                if stop.signum is not None:
                    checkpoint()
                    status = "interrupted"
                    code = EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
                    message = f"stopped by signal {signal.Signals(stop.signum).name} at env step {st.env_steps}; " \
                              f"resume with: fastrsm-train --resume {run_dir}"
                    break
            if status == "crashed":  # the loop ended normally (or on stop-return), not by a signal
                status, code = "finished", 0
        except Diverged as e:
            kept = "each seed's last good checkpoint is kept" if sd.group else f"the last good checkpoint is kept " \
                                                                              f"in {run_dir}"
            status, code, message = "diverged", EXIT_DIVERGED, f"{e}; {kept}"
        except DiskFullError as e:
            status, code = "disk_full", EXIT_NO_SPACE
            message = (f"{e}; the previous version of every file is intact — free some space, then resume with: "
                       f"fastrsm-train --resume {run_dir}")
        finally:
            bar.close()
            wall = time.perf_counter() - t_start
            extra = {"backend": backend, "compile_seconds": learner.compile_seconds or None}
            summaries = []
            for i in range(sd.S):
                seed_status = "diverged" if sd.frozen[i] else status
                try:
                    summaries.append(sd.logs[i].write_summary(sd.cfgs[i], st.env_steps, wall,
                                                              st.env_steps / max(wall, 1e-9), seed_status,
                                                              sd.messages[i] or message, extra=extra))
                except DiskFullError:  # the disk is still full: the message below is what the user gets
                    best = sd.best[i] if math.isfinite(sd.best[i]) else None
                    summaries.append({"seed": sd.seeds[i], "status": seed_status, "best_return": best})
                sd.logs[i].close()
            envs.close()
            if sd.group:
                write_group_summary(run_dir, cfg, sd.seeds, summaries, status, wall, st.env_steps, extra)
    if message:
        print(f"fastrsm-train: {message}", file=sys.stderr)
    if sd.group:
        print(f"fastrsm-train: {status}: seeds {sd.seeds}, {st.env_steps} env steps each in {wall:.1f}s; "
              f"group dir {run_dir}", file=sys.stderr)
    else:
        best = summaries[0]["best_return"]
        print(f"fastrsm-train: {status}: {st.env_steps} env steps in {wall:.1f}s; best eval return "
              f"{'n/a' if best is None else f'{best:.1f}'}; run dir {run_dir}", file=sys.stderr)
    return code
