"""`fastrsm-train --seeds 0-4`: S independent seeds trained in one process, as one batched computation.

The S agents are one agent built with `seeds=S` (fastrsm.seeds): stacked weights, batched matmuls, per-seed α,
statistics and losses; seed s starts from exactly the weights a single run with seed s starts from. The envs
are S × num_envs sub-envs stepped as one vector env (`SeedEnvs`): seed s's block is made exactly as a single run
with seed s makes its envs (fastrsm.loop.env_seed, envs.sub_env_seeds), re-created at the same checkpoint
boundaries. The replay is one device tensor per field, [S, capacity, ...] (fastrsm.seeds.SeedReplay). The loop
body is fastrsm.loop.vector_step, the one a single run uses.

Output: GROUP_DIR/group.json (the seeds and the shared config), GROUP_DIR/summary.json (every seed's status and
best return, their mean ± std), and one ordinary run directory per seed, GROUP_DIR/seed_<s>/ (config.json with
its own seed, train.csv, eval.csv, summary.json, checkpoints/{latest,best}.pt in a single run's format), which
fastrsm-eval and fastrsm-plot read as any other run. `--resume GROUP_DIR` resumes all seeds.

What is shared: the host-side counters (every seed takes the same number of env steps and updates) and one
torch/numpy generator, whose draws are disjoint [S, ...] slices: no seed's random numbers are another's, but a
seed's stream is not the one its single run would draw, so a grouped seed is an independent sample of the same
experiment, not a bitwise replay of the single run.

Divergence: a seed whose loss, Q or parameters go non-finite is frozen (its actions are zero from then on, its
checkpoints keep its last good state, its summary says `diverged`) while the others continue; NaNs cannot
cross seeds (every op is per seed). The group exits 3 only when every seed has diverged."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import torch

from . import loop
from .agents import make_agent
from .backend import make_ops, resolve_backend
from .cli import EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_SIGINT, EXIT_SIGTERM
from .config import Config
from .envs import StepResult, VecEnv, evaluate_episodes, make_vec_env
from .loop import LoopState, StopSignals, env_seed, eval_seed
from .runlog import RunLog, load_checkpoint
from .seeds import SeedReplay, load_seeds, seed_checkpoint
from .utils import DiskFullError, atomic_write_json, resolve_device, rng_state, seed_everything, set_rng_state

GROUP_FILE = "group.json"


def seed_dir(group_dir: str, seed: int) -> str:
    return os.path.join(group_dir, f"seed_{seed}")


def is_group_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, GROUP_FILE))


def group_seeds(group_dir: str) -> list[int]:
    """The seeds a group's group.json lists, in its order; ValueError if it is missing or unreadable."""
    try:
        with open(os.path.join(group_dir, GROUP_FILE), encoding="utf-8") as f:
            seeds = json.load(f)["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{group_dir}: no readable {GROUP_FILE} ({e})") from None
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{group_dir}: {GROUP_FILE} has no list of integer seeds")
    return seeds


def seed_dirs(path: str) -> list[str]:
    """A run's per-seed run directories: a group's seed_* directories in group.json's order, or [path] itself
    for a single-seed run. The one place that knows the layout, for fastrsm-eval, the sweep and bench scripts."""
    if not is_group_dir(path):
        return [path]
    return [seed_dir(path, s) for s in group_seeds(path)]


class SeedEnvs:
    """S VecEnvs (one per seed, each made as its single run makes it) stepped as one of S × E sub-envs, rows
    seed-major. With EnvPool every block steps in its own threads between step_async and step_wait."""

    def __init__(self, blocks: list[VecEnv]):
        self.blocks = blocks
        self.obs_dim, self.act_dim = blocks[0].obs_dim, blocks[0].act_dim
        self.max_episode_steps = blocks[0].max_episode_steps
        self.num_envs = sum(b.num_envs for b in blocks)
        self._cuts = np.cumsum([b.num_envs for b in blocks])[:-1]

    def reset(self) -> np.ndarray:
        return np.concatenate([b.reset() for b in self.blocks])

    def step_async(self, action: np.ndarray) -> None:
        for b, a in zip(self.blocks, np.split(action, self._cuts)):
            b.step_async(a)

    def step_wait(self) -> StepResult:
        rs = [b.step_wait() for b in self.blocks]
        return StepResult(*(np.concatenate([getattr(r, f.name) for r in rs])
                            for f in dataclasses.fields(StepResult)))

    def step(self, action: np.ndarray) -> StepResult:
        self.step_async(action)
        return self.step_wait()

    def close(self) -> None:
        for b in self.blocks:
            b.close()


class SeedActor:
    """The loop's view of the S-seed agent: act on [S·E, obs] rows (seed-major) as [S, E, obs]; a frozen
    (diverged) seed acts with zeros. `update(replay)` and every other attribute are the wrapped agent's."""

    def __init__(self, fast: Any, seeds: int, frozen: list[bool]):
        self.fast, self.seeds, self.frozen = fast, seeds, frozen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fast, name)

    def act(self, obs: torch.Tensor, explore: bool = True) -> torch.Tensor:
        S = self.seeds
        a = self.fast.act(obs.reshape(S, -1, obs.shape[-1]), explore)
        if any(self.frozen):
            a = a.clone()
            a[torch.tensor(self.frozen, device=a.device)] = 0.0
        return a.reshape(-1, a.shape[-1])

    def update(self, replay: Any) -> dict[str, torch.Tensor]:
        return self.fast.update(replay)


def finite_seeds(agent: Any, metrics: dict[str, torch.Tensor]) -> list[bool]:
    """Per seed: are all its logged losses / Q values and all its parameters finite (one host sync)."""
    S = agent.seeds
    oks = [torch.isfinite(v.float().reshape(S, -1)).all(-1) for v in metrics.values() if torch.is_tensor(v)]
    oks += [torch.isfinite(p.reshape(S, -1)).all(-1) for p in agent.parameters()]
    return torch.stack(oks).all(0).tolist()


def evaluate_seeds(agent: SeedActor, cfgs: list[Config], index: int, device: torch.device) -> list[list[float]]:
    """Every seed on its own eval envs (seeded as its single run seeds them), all S in one batched pass."""
    E = cfgs[0].eval_episodes
    env = SeedEnvs([make_vec_env(c.env_id, E, eval_seed(c, index), c.env_backend) for c in cfgs])
    try:
        def policy(obs: np.ndarray) -> np.ndarray:
            return agent.act(torch.as_tensor(obs, device=device), explore=False).cpu().numpy()

        # one episode per sub-env (quota 1), so returns[s·E:(s+1)·E] are seed s's, as its single run's are
        returns = evaluate_episodes(env, policy, E * len(cfgs))
    finally:
        env.close()
    return [[float(r) for r in returns[s * E:(s + 1) * E]] for s in range(len(cfgs))]


def train_group(cfg: Config, seeds: list[int], group_dir: str, resume: bool = False,
                argv: list[str] | None = None, progress: bool = False) -> int:
    """Train seeds `seeds` of `cfg` in one process under `group_dir`; returns the exit code."""
    S = len(seeds)
    cfgs = [dataclasses.replace(cfg, seed=s) for s in seeds]
    device = resolve_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # auto: on a CPU, compile a long run's act and update (the seed-stacked DPMD update of `small` at S = 4 ran
    # 1.9x faster compiled; bench/RESULTS.md), as a single run does
    backend = resolve_backend(cfg.backend, device, updates=int(cfg.total_steps * cfg.utd))
    ops = make_ops(backend, device, cfg.chain_precision, cfg.chain_noise)

    def make_envs(segment: int) -> SeedEnvs:
        return SeedEnvs([make_vec_env(c.env_id, c.num_envs, env_seed(c, segment), c.env_backend) for c in cfgs])

    envs = make_envs(0)
    obs_dim, act_dim = envs.obs_dim, envs.act_dim
    singles = []
    for c in cfgs:  # seed s starts from its single run's initial weights
        seed_everything(c.seed)
        singles.append(make_agent(c.algo, obs_dim, act_dim, c, device, ops).checkpoint())
    agent = make_agent(cfg.algo, obs_dim, act_dim, cfg, device, ops, seeds=S)
    load_seeds(agent, singles)
    del singles
    rb = SeedReplay(S, cfg.buffer_size, obs_dim, act_dim, device, cfg.batch_size)
    logs = [RunLog(seed_dir(group_dir, s)) for s in seeds]
    st = LoopState()
    best = [-math.inf] * S
    frozen = [False] * S
    seed_everything(seeds[0])  # the group's generator (see the module docstring)

    if resume:
        ckpts = [load_checkpoint(os.path.join(seed_dir(group_dir, s), "checkpoints", "latest.pt")) for s in seeds]
        load_seeds(agent, [c["agent"] for c in ckpts])
        for i, c in enumerate(ckpts):
            if c.get("replay") is not None:
                rb.load_state_dict(i, c["replay"])
            logs[i].restore_rows(c["rows"])
            best[i] = c["loop"]["best_return"]
            frozen[i] = bool(c.get("group", {}).get("frozen", False))
        st = LoopState(**{**ckpts[0]["loop"], "best_return": -math.inf})
        set_rng_state(ckpts[0]["rng"])
        envs.close()
        envs = make_envs(st.segment)
        del ckpts
    else:
        os.makedirs(group_dir, exist_ok=True)
        for log, c in zip(logs, cfgs):
            log.create({**c.to_dict(), "backend_resolved": backend, "group": os.path.abspath(group_dir),
                        "group_seeds": seeds}, device, argv, env=envs.blocks[0].describe())
        atomic_write_json(os.path.join(group_dir, GROUP_FILE), {"seeds": seeds, "config": cfg.to_dict(),
                                                                "argv": list(argv or [])})

    def checkpoint_seed(i: int) -> None:
        loop_state = {**vars(st), "best_return": best[i]}
        logs[i].save_checkpoint({"agent": seed_checkpoint(agent, i),
                                 "replay": rb.state_dict(i) if cfg.save_replay else None, "loop": loop_state,
                                 "rows": logs[i].rows_state(), "rng": rng_state(), "config": cfgs[i].to_dict(),
                                 "group": {"seeds": seeds, "frozen": frozen[i]}}, "latest")

    def new_segment() -> np.ndarray:
        nonlocal envs
        st.segment += 1
        envs.close()
        envs = make_envs(st.segment)
        return envs.reset()

    fast = SeedActor(loop.training_agent(agent, cfg, backend), S, frozen)  # compiled, CUDA-graphed or eager
    compile_said = False
    obs = envs.reset()
    metrics: dict[str, torch.Tensor] = {}
    ep_returns: list[list[float]] = [[] for _ in seeds]
    t_start = time.perf_counter() - st.wall_time
    t_log, steps_log = time.perf_counter(), st.env_steps
    next_log = (st.env_steps // cfg.log_every + 1) * cfg.log_every
    next_check = st.env_steps + cfg.nan_check_every if cfg.nan_check_every else math.inf
    status, code, message = "crashed", 1, ""
    messages = [""] * S
    E = cfg.num_envs

    def check() -> None:
        ok = finite_seeds(agent, metrics)
        for i in range(S):
            if not ok[i] and not frozen[i]:
                frozen[i] = True
                messages[i] = (f"non-finite loss, Q or parameter at env step {st.env_steps}; seed frozen, the last "
                               f"good checkpoint is kept in {logs[i].path}")
                print(f"fastrsm-train: seed {seeds[i]}: {messages[i]}", file=sys.stderr)
        if all(frozen):
            raise loop.Diverged("every seed diverged")

    with StopSignals() as stop:
        try:
            while st.env_steps < cfg.total_steps:
                res = loop.vector_step(cfg, envs, fast, rb, obs, st, metrics, device)
                obs = res.next_obs
                for i, r in zip(np.flatnonzero(res.done), res.episode_returns):
                    ep_returns[i // E].append(float(r))
                if st.env_steps >= next_check:
                    next_check += cfg.nan_check_every
                    check()
                if st.env_steps >= next_log:
                    next_log += cfg.log_every
                    now = time.perf_counter()
                    sps = (st.env_steps - steps_log) / max(now - t_log, 1e-9)
                    t_log, steps_log = now, st.env_steps
                    alpha = agent.alpha.tolist()
                    host = {k: v.detach().float().cpu() for k, v in metrics.items()}
                    for i in range(S):
                        if frozen[i]:
                            continue
                        row = {"step": st.env_steps, "updates": agent.updates, "alpha": alpha[i],
                               "steps_per_s": sps, "wall_time": now - t_start,
                               "episode_return": float(np.mean(ep_returns[i])) if ep_returns[i] else float("nan")}
                        row.update({k: float(v.reshape(S, -1)[i, 0]) for k, v in host.items()})
                        logs[i].log_train(row)
                        ep_returns[i].clear()
                    compile_said = loop.announce_compile(fast, compile_said)
                boundary = st.env_steps >= (st.evals_done + 1) * cfg.eval_every or st.env_steps >= cfg.total_steps
                if boundary:
                    if metrics:
                        check()
                    returns = evaluate_seeds(fast, cfgs, st.evals_done, device)
                    st.evals_done = st.env_steps // cfg.eval_every
                    for i in range(S):
                        if frozen[i]:
                            continue
                        row = logs[i].log_eval(st.env_steps, returns[i])
                        if row["return_mean"] > best[i]:
                            best[i] = row["return_mean"]
                            logs[i].save_checkpoint({"agent": seed_checkpoint(agent, i),
                                                     "config": cfgs[i].to_dict(), "step": st.env_steps}, "best")
                    st.wall_time = time.perf_counter() - t_start
                    obs = new_segment()
                    for i in range(S):
                        if not frozen[i]:
                            checkpoint_seed(i)
                    live = [best[i] for i in range(S) if not frozen[i]]
                    if live and min(live) >= cfg.stop_return:
                        message = f"every seed reached stop-return {cfg.stop_return:g} by env step {st.env_steps}"
                        break
                if stop.signum is not None:
                    st.wall_time = time.perf_counter() - t_start
                    obs = new_segment()
                    for i in range(S):
                        if not frozen[i]:
                            checkpoint_seed(i)
                    status = "interrupted"
                    code = EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
                    message = f"stopped by signal {signal.Signals(stop.signum).name} at env step {st.env_steps}; " \
                              f"resume with: fastrsm-train --resume {group_dir}"
                    break
            if status == "crashed":
                status, code = "finished", 0
        except loop.Diverged as e:
            status, code, message = "diverged", EXIT_DIVERGED, f"{e}; each seed's last good checkpoint is kept"
        except DiskFullError as e:
            status, code = "disk_full", EXIT_NO_SPACE
            message = f"{e}; free some space, then resume with: fastrsm-train --resume {group_dir}"
        finally:
            wall = time.perf_counter() - t_start
            summaries = []
            for i in range(S):
                seed_status = "diverged" if frozen[i] else status
                try:
                    summaries.append(logs[i].write_summary(cfgs[i], st.env_steps, wall, st.env_steps / max(wall, 1e-9),
                                                           seed_status, messages[i] or message))
                except DiskFullError:
                    summaries.append({"seed": seeds[i], "status": seed_status, "best_return": None})
                logs[i].close()
            envs.close()
            _write_group_summary(group_dir, cfg, seeds, summaries, status, wall, st.env_steps,
                                 {"backend": backend, "compile_seconds": getattr(fast, "compile_seconds", None)})
    if message:
        print(f"fastrsm-train: {message}", file=sys.stderr)
    print(f"fastrsm-train: {status}: seeds {seeds}, {st.env_steps} env steps each in {wall:.1f}s; "
          f"group dir {group_dir}", file=sys.stderr)
    return code


def _write_group_summary(group_dir: str, cfg: Config, seeds: list[int], summaries: list[dict], status: str,
                         wall: float, env_steps: int, extra: dict[str, Any] | None = None) -> None:
    bests = [s["best_return"] for s in summaries if s.get("best_return") is not None]
    out: dict[str, Any] = {
        "env_id": cfg.env_id, "algo": cfg.algo, "seeds": seeds, "status": status, "env_steps_per_seed": env_steps,
        "wall_time_s": round(wall, 3), "aggregate_steps_per_s": round(len(seeds) * env_steps / max(wall, 1e-9), 3),
        "best_return_mean": float(np.mean(bests)) if bests else None,
        "best_return_std": float(np.std(bests)) if bests else None,  # ddof 0, as fastrsm-plot's table
        "runs": [{"seed": sd, "dir": f"seed_{sd}", "status": s.get("status"), "best_return": s.get("best_return"),
                  "final_return": s.get("final_return")} for sd, s in zip(seeds, summaries)],
        **(extra or {}),
    }
    try:
        atomic_write_json(os.path.join(group_dir, "summary.json"), out)
    except DiskFullError:
        pass
