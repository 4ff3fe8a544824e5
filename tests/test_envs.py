"""The environment layer on real MuJoCo / classic-control tasks, for both back-ends.

InvertedPendulum's observation is its full MuJoCo state (qpos, qvel), so a plain gymnasium copy can be put
in any observed state and stepped by hand: that checks every stored transition against the true dynamics,
whichever back-end produced it.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from fastrsm.envs import (
    EnvIdError,
    StepResult,
    VecEnv,
    check_env_id,
    evaluate_episodes,
    make_vec_env,
    resolve_backend,
)

BACKENDS = ("envpool", "gymnasium")
PENDULUM = "InvertedPendulum-v4"  # terminates once |angle| > 0.2; actions in [-3, 3]
RESET_NOISE = 0.01  # InvertedPendulum's reset noise: every coordinate within +-0.01 of 0


@pytest.fixture(scope="module")
def mirror():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        env = gym.make(PENDULUM)
    env.reset(seed=0)
    yield env.unwrapped
    env.close()


def true_next_obs(mirror, obs: np.ndarray, torque: float) -> np.ndarray:
    mirror.set_state(obs[:2].astype(np.float64), obs[2:].astype(np.float64))
    return mirror.step(np.array([torque]))[0]


def run(env: VecEnv, action: np.ndarray, steps: int) -> tuple[list[np.ndarray], list[StepResult]]:
    """`steps` steps with a constant action; returns the observations acted on and the results."""
    obs = env.reset()
    seen, results = [], []
    for _ in range(steps):
        seen.append(obs)
        results.append(env.step(action))
        obs = results[-1].next_obs
    return seen, results


def check_transitions(mirror, env: VecEnv, seen, results, action: np.ndarray) -> None:
    """Every valid row is a true dynamics step from the observation acted on; every invalid row is a
    reset observation that the next transition starts from."""
    torques = env.scale_action(action)[:, 0]
    for obs, res in zip(seen, results):
        assert res.next_obs.dtype == np.float32 and res.next_obs.shape == (env.num_envs, env.obs_dim)
        assert res.reward.dtype == np.float32
        for i in range(env.num_envs):
            if res.valid[i]:
                np.testing.assert_allclose(res.next_obs[i], true_next_obs(mirror, obs[i], torques[i]),
                                           atol=1e-4, rtol=1e-4)
            else:
                assert np.all(np.abs(res.next_obs[i]) <= RESET_NOISE + 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_termination(backend, mirror):
    # A full push either way tips the pole past 0.2 rad in three steps.
    action = np.array([[1.0], [-1.0]], dtype=np.float32)
    with make_vec_env(PENDULUM, 2, seed=3, backend=backend) as env:
        assert env.backend == backend
        seen, results = run(env, action, 9)
    assert seen[0].dtype == np.float32
    check_transitions(mirror, env, seen, results, action)
    ends = [t for t, r in enumerate(results) if r.done.any()]
    assert ends == [2, 6]  # 3 real steps, the reset step, 3 real steps
    for t in ends:
        end, after = results[t], results[t + 1]
        assert end.valid.all() and end.terminated.all() and not end.truncated.any()
        # The true last state (pole beyond the healthy range), not a reset observation.
        assert np.all(np.abs(end.next_obs[:, 1]) > 0.2)
        np.testing.assert_array_equal(end.episode_returns, [3.0, 3.0])
        np.testing.assert_array_equal(end.episode_lengths, [3, 3])
        assert not after.valid.any()
        np.testing.assert_array_equal(after.reward, 0.0)
        assert not after.done.any() and len(after.episode_returns) == 0
        assert results[t + 2].valid.all()
    for r in results[:2]:
        assert r.valid.all() and not r.done.any() and len(r.episode_returns) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation(backend, mirror):
    action = np.zeros((2, 1), dtype=np.float32)  # balanced enough to survive the short limit
    with make_vec_env(PENDULUM, 2, seed=5, backend=backend, max_episode_steps=4) as env:
        assert env.max_episode_steps == 4
        seen, results = run(env, action, 7)
    check_transitions(mirror, env, seen, results, action)
    end, after = results[3], results[4]
    assert end.valid.all() and end.truncated.all() and not end.terminated.any()
    # The bootstrap state is the 4th step's state, the continuation of the episode, not a reset.
    np.testing.assert_allclose(end.next_obs, seen[3], atol=0.05)
    assert not np.allclose(end.next_obs, after.next_obs)
    np.testing.assert_array_equal(end.episode_lengths, [4, 4])
    np.testing.assert_array_equal(end.episode_returns, [4.0, 4.0])
    assert not after.valid.any() and not after.done.any()
    np.testing.assert_array_equal(after.reward, 0.0)
    assert all(not r.done.any() for r in results[:3] + results[4:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeding_is_reproducible(backend):
    action = np.full((2, 1), 0.3, dtype=np.float32)

    def trace(seed: int) -> np.ndarray:
        with make_vec_env(PENDULUM, 2, seed=seed, backend=backend) as env:
            seen, results = run(env, action, 5)
        return np.stack(seen + [results[-1].next_obs])

    a, b, c = trace(1), trace(1), trace(2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0, 0], a[0, 1])  # sub-envs are seeded apart
    # Neighbouring seeds share no sub-env stream (plain seed + i would make c's env 0 a's env 1).
    for i in range(2):
        for j in range(2):
            assert not np.allclose(a[0, i], c[0, j])
    big = trace(2**40)  # beyond EnvPool's int32 seeds: folded, still deterministic
    np.testing.assert_array_equal(big, trace(2**40))


@pytest.mark.parametrize("backend", BACKENDS)
def test_action_scaling_pendulum(backend):
    """Pendulum-v1 (bounds +-2): action 1 is torque 2, clipping included; checked against gymnasium."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = gym.make("Pendulum-v1").unwrapped
    ref.reset(seed=0)
    with make_vec_env("Pendulum-v1", 4, seed=0, backend=backend) as env:
        np.testing.assert_array_equal(env.action_low, [-2.0])
        np.testing.assert_array_equal(env.action_high, [2.0])
        assert env.action_low.dtype == np.float32
        action = np.array([[1.0], [-1.0], [0.0], [7.0]], dtype=np.float32)
        np.testing.assert_allclose(env.scale_action(action)[:, 0], [2.0, -2.0, 0.0, 2.0])
        obs = env.reset()
        res = env.step(action)
    for i, torque in enumerate([2.0, -2.0, 0.0, 2.0]):
        cos, sin, thdot = obs[i].astype(np.float64)
        ref.state = np.array([np.arctan2(sin, cos), thdot])
        expected, reward, *_ = ref.step(np.array([torque]))
        np.testing.assert_allclose(res.next_obs[i], expected, atol=1e-5)
        np.testing.assert_allclose(res.reward[i], reward, rtol=1e-5)


class _EchoEnv(gym.Env):
    """Observes the action it received (so scaling is visible exactly); ends when action[0] hits its top."""

    def __init__(self) -> None:
        self.action_space = gym.spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 3.0]), dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), dtype=np.float64)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.array([-1.0, -1.0, self.np_random.uniform()]), {}

    def step(self, action):
        self._t += 1
        obs = np.array([action[0], action[1], self._t], dtype=np.float64)
        return obs, float(self._t), bool(action[0] >= 1.0), False, {}


@pytest.fixture
def echo_id():
    env_id = "FastrsmEcho-v0"
    gym.register(env_id, entry_point=_EchoEnv, max_episode_steps=10)
    yield env_id
    del gym.envs.registry[env_id]


def test_gymnasium_only_id_falls_back_and_scales_asymmetric_bounds(echo_id):
    assert resolve_backend(echo_id) == "gymnasium"
    with make_vec_env(echo_id, 2, seed=0) as env:
        assert env.backend == "gymnasium" and env.act_dim == 2 and env.obs_dim == 3
        env.reset()
        res = env.step(np.array([[-1.0, -1.0], [0.0, 0.5]]))
        np.testing.assert_allclose(res.next_obs[:, :2], [[0.0, -1.0], [0.5, 2.0]])
        res = env.step(np.array([[2.0, 1.0], [0.0, 0.0]]))  # clipped to the top: env 0 terminates
        np.testing.assert_allclose(res.next_obs[0, :2], [1.0, 3.0])
        assert res.terminated.tolist() == [True, False]
        np.testing.assert_array_equal(res.episode_returns, [3.0])  # rewards 1 + 2
        np.testing.assert_array_equal(res.episode_lengths, [2])
        res = env.step(np.zeros((2, 2)))
        assert res.valid.tolist() == [False, True] and res.reward[0] == 0.0


def test_backend_resolution():
    assert resolve_backend("Ant-v4") == "envpool"
    assert resolve_backend("Ant-v5") == "envpool"
    # EnvPool 1.2 ships classic control too, so Pendulum-v1 does not fall back.
    assert resolve_backend("Pendulum-v1") == "envpool"
    assert resolve_backend("Pendulum-v1", "gymnasium") == "gymnasium"


@pytest.mark.parametrize("backend", ["auto", "envpool", "gymnasium"])
def test_unknown_id_lists_closest(backend):
    with pytest.raises(EnvIdError) as err:
        check_env_id("Antt-v4", backend)
    msg = str(err.value)
    assert "\n" not in msg and "'Antt-v4'" in msg and "closest: Ant-v4" in msg
    with pytest.raises(EnvIdError, match="closest: .*Hopper-v4"):
        make_vec_env("hoper-v4", 1, seed=0, backend=backend)


def test_unusable_envs_are_clear_errors():
    for backend in BACKENDS:
        with pytest.raises(EnvIdError, match="only continuous"):
            make_vec_env("CartPole-v1", 1, seed=0, backend=backend)
    with pytest.raises(EnvIdError, match="unknown env backend"):
        check_env_id("Ant-v4", "jax")
    with pytest.raises(EnvIdError, match="envpool"):
        check_env_id("Taxi-v4", "envpool")  # gymnasium has it, EnvPool does not


def test_no_construction_warnings_and_misuse_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = make_vec_env(PENDULUM, 1, seed=0, backend="gymnasium")
        env2 = make_vec_env("Pendulum-v1", 1, seed=0, backend="envpool")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((1, 1)))
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 1)))
    env.close()
    env2.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_episodes(backend):
    # 5 episodes over 2 sub-envs (quotas 3 and 2), episodes truncated at 6 steps.
    with make_vec_env(PENDULUM, 2, seed=0, backend=backend, max_episode_steps=6) as env:
        returns = evaluate_episodes(env, lambda obs: np.zeros((len(obs), 1)), episodes=5)
        np.testing.assert_array_equal(returns, np.full(5, 6.0))
        # Terminating episodes (3 steps each), more sub-envs than episodes.
        returns = evaluate_episodes(env, lambda obs: np.ones((len(obs), 1)), episodes=1)
        np.testing.assert_array_equal(returns, [3.0])


def test_eval_env_is_seeded_apart():
    from fastrsm.config import make_config
    from fastrsm.loop import env_seed, eval_seed

    cfg = make_config("smoke", {"env_id": PENDULUM})
    assert env_seed(cfg, 0) != eval_seed(cfg, 0)
    with make_vec_env(PENDULUM, 1, seed=env_seed(cfg, 0)) as train, \
            make_vec_env(PENDULUM, 1, seed=eval_seed(cfg, 0)) as ev:
        assert not np.allclose(train.reset(), ev.reset())
