"""Train the authors' public DPMD (github mahaitongdae/diffusion_policy_online_rl, package `relax`) on a
gymnasium task (default Pendulum-v1 at fastrsm's `smoke` sizes), for the side-by-side runs against fastrsm.

Nothing of the authors' code is copied here: their package is imported from a checkout given with
`--authors` (never committed to fastrsm). The network and the algorithm are built as their
`scripts/train_mujoco.py --alg dpmd` builds them (mish, noise_scale 0.1, beta_schedule_scale 0.8, their
`DPMD(lr, alpha_lr, delay_alpha_update, lr_schedule_end)`); the loop follows their `OffPolicyTrainer`
(uniform-random warm-up into the replay, then one env step with `get_action` — EMA policy, best-of-N,
noise 0.1·α, not clipped — and one `update` per step) and their evaluator (the EMA policy's
deterministic best-of-N action, clipped to [-1, 1]). Their trainer itself is not reused: it needs wandb,
tensorboard and a subprocess evaluator fed with pickled policies.

Variants (each a *runtime* source patch of their `relax/algorithm/dpmd.py`, checked to apply exactly once):
  --fix-precedence      `q_min - running_mean / running_std` -> `(q_min - running_mean) / running_std`
  --single-critic-step  drop the first of the two identical critic Adam steps per update

Usage (one core, as docs/authors_code.md says for timing):
  taskset -c 1 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python bench/authors_train.py --authors /path/to/checkout --seed 1 --out runs/authors-s1 [--fix-precedence]
Writes OUT/eval.csv (step, return_mean, return_std, alpha, weights statistics) and OUT/summary.json.

Resumable: after every evaluation, and on SIGTERM/SIGINT (at the next env step), the whole run state is written
atomically to OUT/resume.pkl — their train state (`algo.state`), the replay (arrays, pointer, sampling RNG), both
envs' RNGs, the MuJoCo state of the episode in progress, the counters and the metric accumulators. The same
command with `--resume` continues from it: eval.csv is cut back to the checkpoint's step, so no row is lost or
written twice, and the JAX keys are derived from the step number, so a resumed run repeats the uninterrupted
one (checked: Pendulum-v1 stopped by --stop-at, Hopper-v4 by a SIGTERM mid-episode; identical eval.csv). A
non-MuJoCo env (Pendulum) has its state restored through `unwrapped.state`; any other starts a fresh episode at
the resume, recorded in summary.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import math
import os
import pickle
import signal
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, help="path to a checkout of the authors' repository")
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--total-steps", type=int, default=15_000, help="env steps, warm-up included (as fastrsm)")
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--diffusion-steps", type=int, default=5)
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=2_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    # their train_mujoco.py defaults
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-schedule-end", type=float, default=3e-5)
    p.add_argument("--alpha-lr", type=float, default=7e-3)
    p.add_argument("--delay-alpha-update", type=int, default=250)
    p.add_argument("--noise-scale", type=float, default=0.1)
    p.add_argument("--beta-schedule-scale", type=float, default=0.8)
    # DPMD constructor defaults the script does not override
    p.add_argument("--reward-scale", type=float, default=0.2)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--fix-precedence", action="store_true")
    p.add_argument("--single-critic-step", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pkl (same other arguments)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="checkpoint and exit after this many env steps (as a SIGTERM would; for checking resume)")
    return p.parse_args(argv)


RESUMED_ARGS = ("resume", "stop_at", "total_steps")  # may differ between a run and its resume


def time_limit(env):
    """The TimeLimit wrapper inside `env` (gymnasium 1.x wrappers do not forward private attributes), or None."""
    while env is not None:
        if hasattr(env, "_elapsed_steps"):
            return env
        env = getattr(env, "env", None)
    return None


def env_state(env) -> dict:
    """What continues the episode in progress: MuJoCo's qpos/qvel (or a classic-control `state`), the time
    limit's step count and the env's RNG."""
    u = env.unwrapped
    tl = time_limit(env)
    out = {"np_random": u.np_random.bit_generator.state, "elapsed": None if tl is None else tl._elapsed_steps}
    if hasattr(u, "set_state") and hasattr(u, "data"):
        out["mujoco"] = (u.data.qpos.copy(), u.data.qvel.copy())
    elif hasattr(u, "state"):
        out["state"] = pickle.loads(pickle.dumps(u.state))
    return out


def restore_env_state(env, st: dict) -> bool:
    """Put `env_state`'s output back into an env that was reset; False if the episode could not be restored."""
    u = env.unwrapped
    u.np_random.bit_generator.state = st["np_random"]
    if st["elapsed"] is not None:
        time_limit(env)._elapsed_steps = st["elapsed"]
    if "mujoco" in st:
        u.set_state(*st["mujoco"])
    elif "state" in st:
        u.state = st["state"]
    else:
        return False
    return True


def save_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


PRECEDENCE_OLD = "q_min - running_mean / running_std"
PRECEDENCE_NEW = "(q_min - running_mean) / running_std"
# the first of the two critic steps (the second is param_update(self.optim, q?_params, q?_grads, ...))
FIRST_CRITIC_STEP = [
    ("q1_update, q1_opt_state = self.optim.update(q1_grads, q1_opt_state)", "pass"),
    ("q2_update, q2_opt_state = self.optim.update(q2_grads, q2_opt_state)", "pass"),
    ("q1_params = optax.apply_updates(q1_params, q1_update)", "pass"),
    ("q2_params = optax.apply_updates(q2_params, q2_update)", "pass"),
]


def load_dpmd_module(authors: str, fix_precedence: bool, single_critic_step: bool):
    """Import their relax.algorithm.dpmd, optionally with a runtime patch of named lines of its source."""
    sys.path.insert(0, os.path.abspath(authors))
    name = "relax.algorithm.dpmd"
    if not (fix_precedence or single_critic_step):
        return importlib.import_module(name)
    import relax.algorithm  # noqa: F401  (the parent package)
    spec = importlib.util.find_spec(name)
    src = open(spec.origin, encoding="utf-8").read()
    subs = []
    if fix_precedence:
        subs.append((PRECEDENCE_OLD, PRECEDENCE_NEW))
    if single_critic_step:
        subs.extend(FIRST_CRITIC_STEP)
    for old, new in subs:
        n = src.count(old)
        if n != 1:
            raise SystemExit(f"patch target {old!r} found {n} times in {spec.origin}; this checkout differs")
        src = src.replace(old, new)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(src, spec.origin + " (patched)", "exec"), module.__dict__)
    return module


def main(argv=None) -> int:
    args = parse_args(argv)
    dpmd_mod = load_dpmd_module(args.authors, args.fix_precedence, args.single_critic_step)  # before unpickling
    ckpt_path = os.path.join(args.out, "resume.pkl")
    ckpt = None
    if args.resume:
        if not os.path.isfile(ckpt_path):
            print(f"authors_train: --resume: no {ckpt_path} (start without --resume)", file=sys.stderr)
            return 2
        with open(ckpt_path, "rb") as fh:
            ckpt = pickle.load(fh)
        before = {k: v for k, v in ckpt["args"].items() if k not in RESUMED_ARGS}
        now = {k: v for k, v in vars(args).items() if k not in RESUMED_ARGS}
        if before != now:
            diff = {k: (before.get(k), now.get(k)) for k in set(before) | set(now) if before.get(k) != now.get(k)}
            print(f"authors_train: --resume with other settings than the run's: {diff}", file=sys.stderr)
            return 2
    elif os.path.exists(os.path.join(args.out, "eval.csv")):
        print(f"authors_train: {args.out} already holds a run; resume it with --resume or choose another --out",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)

    import gymnasium as gym
    import jax
    import jax.numpy as jnp
    import numpy as np
    from relax.buffer import TreeBuffer
    from relax.network.diffv2 import create_diffv2_net
    from relax.utils.experience import Experience
    from relax.utils.random_utils import seeding

    def create_env(name: str, seed: int, action_seed: int):
        # As their relax.env.create_env (not importable without their compiled spinlock extension): actions
        # in [-1, 1] mapped affinely onto the env's box (not clipped: the env clips), float32 observations,
        # a [-1, 1] action space seeded with action_seed for the random warm-up.
        env = gym.make(name)
        env.reset(seed=seed)
        low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)

        class Rescaled(gym.Wrapper):
            def __init__(self, e):
                super().__init__(e)
                self._action_space = gym.spaces.Box(-1, 1, e.action_space.shape, np.float32, seed=action_seed)

            def reset(self, **kw):
                o, i = self.env.reset(**kw)
                return o.astype(np.float32), i

            def step(self, a):
                a = (np.asarray(a, dtype=np.float64) + 1.0) * (high - low) / 2 + low
                o, r, te, tr, i = self.env.step(a.astype(self.env.action_space.dtype))
                return o.astype(np.float32), r, te, tr, i

        wrapped = Rescaled(env)
        return wrapped, env.observation_space.shape[0], env.action_space.shape[0]

    # seeds as their script derives them
    master_rng, _ = seeding(args.seed)
    env_seed, env_action_seed, eval_env_seed, buffer_seed, init_network_seed, train_seed = map(
        int, master_rng.integers(0, 2**32 - 1, 6))
    env, obs_dim, act_dim = create_env(args.env, env_seed, env_action_seed)
    eval_env, _, _ = create_env(args.env, eval_env_seed, 0)
    buffer = TreeBuffer.from_experience(obs_dim, act_dim, size=int(1e6), seed=buffer_seed)

    def mish(x):
        return x * jnp.tanh(jax.nn.softplus(x))

    sizes = [args.hidden] * args.layers
    agent, params = create_diffv2_net(jax.random.key(init_network_seed), obs_dim, act_dim, sizes, sizes, mish,
                                      num_timesteps=args.diffusion_steps, num_particles=args.particles,
                                      noise_scale=args.noise_scale, beta_schedule_scale=args.beta_schedule_scale)
    algo = dpmd_mod.DPMD(agent, params, lr=args.lr, alpha_lr=args.alpha_lr,
                         delay_alpha_update=args.delay_alpha_update, lr_schedule_end=args.lr_schedule_end,
                         reward_scale=args.reward_scale, tau=args.tau)
    algo.warmup(Experience.create_example(obs_dim, act_dim, args.batch_size))  # compile as their trainer does

    def evaluate() -> list[float]:
        rets = []
        for _ in range(args.eval_episodes):
            obs, _ = eval_env.reset()
            ret, done = 0.0, False
            while not done:
                # their evaluator: the saved (EMA) policy's deterministic action, clipped
                act = np.asarray(algo._get_deterministic_action(algo.get_policy_params_to_save(), obs)).clip(-1, 1)
                obs, r, term, trunc, _ = eval_env.step(act)
                ret += float(r)
                done = term or trunc
            rets.append(ret)
        return rets

    key = jax.random.key(train_seed)
    key, _warmup_key = jax.random.split(key)

    @jax.jit
    def iter_keys(step):
        return jax.random.split(jax.random.fold_in(key, step))

    fields = ["step", "updates", "return_mean", "return_std", "alpha", "q_weights_mean", "q_weights_std",
              "scale_q_std", "running_q_mean", "running_q_std", "q1_mean", "wall_time"]
    csv_path = os.path.join(args.out, "eval.csv")
    best, best_step = -math.inf, 0
    acc: dict[str, list[float]] = {}
    last: dict = {}
    obs, _ = env.reset()
    step = updates = 0
    next_eval = args.eval_every
    elapsed, fresh_episodes = 0.0, []
    if ckpt is None:
        f = open(csv_path, "w", newline="")
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
    else:  # the checkpoint's rows only: a row written after it (killed before the next save) is dropped
        with open(csv_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= ckpt["step"]]
        tmp = csv_path + ".tmp"
        with open(tmp, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=fields)
            wr.writeheader()
            wr.writerows(rows)
        os.replace(tmp, csv_path)
        f = open(csv_path, "a", newline="")
        w = csv.DictWriter(f, fieldnames=fields)
        algo.state = jax.device_put(ckpt["algo_state"])
        buf = ckpt["buffer"]
        for dst, src in zip(buffer.buffers, buf["buffers"]):
            dst[: buf["len"]] = src
        buffer.len, buffer.ptr, buffer.rng.bit_generator.state = buf["len"], buf["ptr"], buf["rng"]
        env.action_space.np_random.bit_generator.state = ckpt["action_space_rng"]
        obs = ckpt["obs"]
        if not restore_env_state(env, ckpt["env"]):
            obs, _ = env.reset()
            fresh_episodes = [*ckpt["fresh_episodes"], ckpt["step"]]
        else:
            fresh_episodes = list(ckpt["fresh_episodes"])
        restore_env_state(eval_env, ckpt["eval_env"])
        step, updates, next_eval = ckpt["step"], ckpt["updates"], ckpt["next_eval"]
        best, best_step, acc, last = ckpt["best"], ckpt["best_step"], ckpt["acc"], ckpt["last"]
        elapsed = ckpt["elapsed"]
        print(f"authors_train: resumed at env step {step} from {ckpt_path}", flush=True)

    def save() -> None:
        # the replay up to its fill (at most the run's env steps), not the 1e6-row arrays
        buf = {"buffers": [b[: buffer.len].copy() for b in buffer.buffers], "len": buffer.len, "ptr": buffer.ptr,
               "rng": buffer.rng.bit_generator.state}
        save_atomic(ckpt_path, {
            "args": vars(args), "step": step, "updates": updates, "next_eval": next_eval, "best": best,
            "best_step": best_step, "acc": acc, "last": last, "elapsed": elapsed + time.perf_counter() - t0,
            "algo_state": jax.device_get(algo.state), "buffer": buf, "obs": obs, "env": env_state(env),
            "eval_env": env_state(eval_env), "action_space_rng": env.action_space.np_random.bit_generator.state,
            "fresh_episodes": fresh_episodes})

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.perf_counter()
    while step < args.total_steps:
        if stop["signal"] or (args.stop_at is not None and step >= args.stop_at):
            save()
            f.close()
            why = stop["signal"] or f"--stop-at {args.stop_at}"
            print(f"authors_train: stopped ({why}) at env step {step}; continue with the same command and --resume",
                  flush=True)
            return 0 if stop["signal"] is None else 128 + int(getattr(signal, stop["signal"]))
        if len(buffer) < args.warmup:
            action = env.action_space.sample()
        else:
            sample_key, update_key = iter_keys(step)
            action = algo.get_action(sample_key, obs)
        next_obs, reward, term, trunc, info = env.step(action)
        buffer.add(Experience.create(obs, action, reward, term, trunc, next_obs, info))
        obs = env.reset()[0] if (term or trunc) else next_obs
        step += 1
        if len(buffer) >= args.warmup and step > args.warmup:
            info, _ = algo.update(update_key, buffer.sample(args.batch_size))
            updates += 1
            for k in ("q_weights_mean", "q_weights_std", "scale_q_std", "q1_mean"):
                acc.setdefault(k, []).append(info[k])
            last = info
        if step >= next_eval or step == args.total_steps:
            next_eval += args.eval_every
            rets = evaluate()
            row = {"step": step, "updates": updates, "return_mean": float(np.mean(rets)),
                   "return_std": float(np.std(rets)), "wall_time": round(elapsed + time.perf_counter() - t0, 1)}
            if updates:
                row.update({k: float(np.mean(v)) for k, v in acc.items()})
                row.update({k: last[k] for k in ("alpha", "running_q_mean", "running_q_std")})
            acc.clear()
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()})
            f.flush()
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            if row["return_mean"] > best:
                best, best_step = row["return_mean"], step
            save()  # after the row: a resume from here neither repeats nor loses it
    f.close()
    summary = {"best_return": best, "best_step": best_step, "wall_time": elapsed + time.perf_counter() - t0,
               "env_steps": step, "fresh_episodes_at_resume": fresh_episodes, "args": vars(args)}
    tmp = os.path.join(args.out, "summary.json.tmp")
    with open(tmp, "w") as g:
        json.dump(summary, g, indent=1)
    os.replace(tmp, os.path.join(args.out, "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
