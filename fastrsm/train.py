"""`fastrsm-train`: the online training loop (CleanRL-style: read it top to bottom).

Environment episodes are cut (as truncations, so the bootstrap is kept) at every checkpoint boundary, where
the training envs are re-created with a seed derived from the boundary's index. That makes a checkpoint a
complete description of the run: `--resume` continues bit-for-bit where an uninterrupted run would be.
Exit codes are fastrsm.cli's (0, 2, 3, 4, 130, 143)."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import loop
from .agents import make_agent
from .backend import make_ops, resolve_backend
from .cli import EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_SIGINT, EXIT_SIGTERM, prepare_train, run_main
from .config import Config
from .envs import make_vec_env
from .evaluate import evaluate_agent
from .loop import Diverged, LoopState, StopSignals, check_finite, env_seed, eval_seed
from .profiling import enable_nvtx, nvtx_range
from .replay import ReplayBuffer
from .runlog import RunLog, load_checkpoint
from .utils import DiskFullError, resolve_device, rng_state, seed_everything, set_rng_state

# On a CPU, a run whose measured pace puts its end further away than this gets one line of advice.
SLOW_RUN_SECONDS = 2 * 3600.0
PACE_UPDATES = (100, 400)  # the pace is measured between these update counts (after start-up costs)


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


def train(cfg: Config, run_dir: str, resume: bool = False, argv: list[str] | None = None,
          progress: bool = True, ckpt: dict | None = None,
          wrap_replay: Callable[[ReplayBuffer], Any] | None = None) -> int:
    """Train and return the exit code. With `resume`, continue from `ckpt` (already loaded, e.g. by the CLI's
    validation) or from RUN_DIR/checkpoints/latest.pt. `wrap_replay` lets a test stand between the loop and
    the replay buffer (e.g. to feed a NaN); the library itself never uses it."""
    device = resolve_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    enable_nvtx(device)
    backend = resolve_backend(cfg.backend, device, updates=int(cfg.total_steps * cfg.utd))
    ops = make_ops(backend, device, cfg.chain_precision, cfg.chain_noise)
    log = RunLog(run_dir)
    seed_everything(cfg.seed)

    envs = make_vec_env(cfg.env_id, cfg.num_envs, env_seed(cfg, 0), cfg.env_backend)
    obs_dim, act_dim = envs.obs_dim, envs.act_dim
    agent = make_agent(cfg.algo, obs_dim, act_dim, cfg, device, ops)
    rb = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim, device, cfg.batch_size)
    st = LoopState()

    if resume:
        if ckpt is None:
            ckpt = load_checkpoint(os.path.join(run_dir, "checkpoints", "latest.pt"))
        agent.restore(ckpt["agent"])
        if ckpt.get("replay") is not None:
            rb.load_state_dict(ckpt["replay"])
        st = LoopState(**ckpt["loop"])
        log.restore_rows(ckpt["rows"])
        set_rng_state(ckpt["rng"])
        envs.close()
        envs = make_vec_env(cfg.env_id, cfg.num_envs, env_seed(cfg, st.segment), cfg.env_backend)
        log.tensorboard(purge_step=st.env_steps)
    else:
        log.create({**cfg.to_dict(), "backend_resolved": backend}, device, argv, env=envs.describe())

    def checkpoint() -> None:
        state = {"agent": agent.checkpoint(), "replay": rb.state_dict() if cfg.save_replay else None,
                 "loop": vars(st).copy(), "rows": log.rows_state(), "rng": rng_state(), "config": cfg.to_dict()}
        log.save_checkpoint(state, "latest")

    def new_segment() -> np.ndarray:
        nonlocal envs
        st.segment += 1
        envs.close()
        envs = make_vec_env(cfg.env_id, cfg.num_envs, env_seed(cfg, st.segment), cfg.env_backend)
        return envs.reset()

    # CUDA graphs on CUDA, whole-function torch.compile with the compile backend, else the agent itself
    fast = loop.training_agent(agent, cfg, backend)
    replay = rb if wrap_replay is None else wrap_replay(rb)

    obs = envs.reset()
    metrics: dict[str, torch.Tensor] = {}
    ep_returns: list[float] = []
    t_start = time.perf_counter() - st.wall_time
    t_log, steps_log = time.perf_counter(), st.env_steps
    next_log = (st.env_steps // cfg.log_every + 1) * cfg.log_every
    next_check = st.env_steps + cfg.nan_check_every if cfg.nan_check_every else math.inf
    bar = _progress_bar(cfg.total_steps, st.env_steps, progress)
    postfix: dict[str, str] = {"eval": _last_eval(log)}
    pace = _Pace(cfg, device, enabled=not resume)
    compile_said = False
    status, code, message = "crashed", 1, ""

    with StopSignals() as stop:
        try:
            while st.env_steps < cfg.total_steps:
                # -- act, step the envs, learn (fastrsm.loop: the one loop body the benchmarks time too)
                res = loop.vector_step(cfg, envs, fast, replay, obs, st, metrics, device)
                obs = res.next_obs
                ep_returns.extend(float(r) for r in res.episode_returns)
                pace(agent.updates, st.env_steps)

                if st.env_steps >= next_check:
                    next_check += cfg.nan_check_every
                    check_finite(agent, metrics, st.env_steps)

                # -- log
                if st.env_steps >= next_log:
                    next_log += cfg.log_every
                    now = time.perf_counter()
                    sps = (st.env_steps - steps_log) / max(now - t_log, 1e-9)
                    t_log, steps_log = now, st.env_steps
                    row = {"step": st.env_steps, "updates": agent.updates, "alpha": float(agent.alpha),
                           "steps_per_s": sps, "wall_time": now - t_start,
                           "episode_return": float(np.mean(ep_returns)) if ep_returns else float("nan")}
                    row.update({k: float(v) for k, v in metrics.items()})
                    ep_returns.clear()
                    log.log_train(row)
                    postfix.update(alpha=f"{row['alpha']:.3g}", sps=f"{sps:.0f}")
                    compile_said = loop.announce_compile(fast, compile_said)
                    bar.set_postfix(postfix, refresh=False)

                # -- evaluate + checkpoint at boundaries
                boundary = st.env_steps >= (st.evals_done + 1) * cfg.eval_every or st.env_steps >= cfg.total_steps
                if boundary:
                    if metrics:
                        check_finite(agent, metrics, st.env_steps)
                    with nvtx_range("evaluate"):
                        returns = evaluate_agent(agent, cfg, cfg.eval_episodes, eval_seed(cfg, st.evals_done), device)
                    row = log.log_eval(st.env_steps, returns)
                    st.evals_done = st.env_steps // cfg.eval_every
                    if row["return_mean"] > st.best_return:  # before `latest`, which must carry the new best
                        st.best_return = row["return_mean"]
                        log.save_checkpoint({"agent": agent.checkpoint(), "config": cfg.to_dict(),
                                             "step": st.env_steps}, "best")
                    st.wall_time = time.perf_counter() - t_start
                    obs = new_segment()
                    checkpoint()
                    postfix["eval"] = _last_eval(log)
                    bar.set_postfix(postfix, refresh=False)
                    if row["return_mean"] >= cfg.stop_return:
                        message = f"reached stop-return {cfg.stop_return:g} at env step {st.env_steps}"
                        break

                bar.update(cfg.num_envs)
                if stop.signum is not None:
                    st.wall_time = time.perf_counter() - t_start
                    obs = new_segment()
                    checkpoint()
                    status = "interrupted"
                    code = EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
                    message = f"stopped by signal {signal.Signals(stop.signum).name} at env step {st.env_steps}; " \
                              f"resume with: fastrsm-train --resume {run_dir}"
                    break
            if status == "crashed":  # the loop ended normally (or on stop-return), not by a signal
                status, code = "finished", 0
        except Diverged as e:
            status, code, message = "diverged", EXIT_DIVERGED, f"{e}; the last good checkpoint is kept in {run_dir}"
        except DiskFullError as e:
            status, code = "disk_full", EXIT_NO_SPACE
            message = (f"{e}; the previous version of every file is intact — free some space, then resume with: "
                       f"fastrsm-train --resume {run_dir}")
        finally:
            bar.close()
            wall = time.perf_counter() - t_start
            try:
                summary = log.write_summary(cfg, st.env_steps, wall, st.env_steps / max(wall, 1e-9), status,
                                            message, extra={"backend": backend,
                                                            "compile_seconds": getattr(fast, "compile_seconds", None)})
            except DiskFullError:  # the disk is still full: the message below is what the user gets
                summary = {"best_return": st.best_return if math.isfinite(st.best_return) else None}
            log.close()
            envs.close()
    if message:
        print(f"fastrsm-train: {message}", file=sys.stderr)
    best = summary["best_return"]
    print(f"fastrsm-train: {status}: {st.env_steps} env steps in {wall:.1f}s; best eval return "
          f"{'n/a' if best is None else f'{best:.1f}'}; run dir {run_dir}", file=sys.stderr)
    return code


def _last_eval(log: RunLog) -> str:
    return f"{log.eval_rows[-1]['return_mean']:.1f}" if log.eval_rows else "-"


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, *a, **kw):
        pass

    def close(self):
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                desc="env steps", mininterval=1.0, disable=None)


def main(argv: list[str] | None = None, wrap_replay: Callable[[ReplayBuffer], Any] | None = None) -> int:
    plan = None

    def prepare() -> int:
        nonlocal plan
        plan = prepare_train(argv)
        return 0

    code = run_main("fastrsm-train", prepare)
    if plan is None:
        return code
    if plan.seeds is not None:  # --seeds: S seeds in one process
        from .group import train_group

        return train_group(plan.cfg, plan.seeds, plan.run_dir, resume=plan.resume_group,
                           argv=sys.argv if argv is None else ["fastrsm-train", *argv], progress=plan.progress)
    return train(plan.cfg, plan.run_dir, resume=plan.ckpt is not None,
                 argv=sys.argv if argv is None else ["fastrsm-train", *argv], progress=plan.progress, ckpt=plan.ckpt,
                 wrap_replay=wrap_replay)


if __name__ == "__main__":
    sys.exit(main())
