"""fastrsm.graphs (CUDA-graph capture of act and update) and the `fastrsm-bench` entry point.

On CPU: the wrapper's eager path is plain `agent.update` / `agent.act`, bit for bit; the capture bookkeeping
(warm-up with snapshot/restore, one graph per distinct Parts the agent's schedule names, lr writes, static
outputs, re-capture after a checkpoint restore) is checked in emulation mode, which re-runs each captured call
eagerly at "replay" and must then match the eager agent bit for bit too. `-m gpu`: real CUDA graphs against
the eager agent, with the torch and triton backends."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import BackendError, make_ops, resolve_backend
from fastrsm.bench import main as bench_main
from fastrsm.config import make_config
from fastrsm.graphs import GraphedLearner
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer
from fastrsm.seeds import SeedReplay
from fastrsm.utils import seed_everything

ALGOS = ["dpmd", "sdac", "sac", "td3", "qsm", "qvpo", "dpmd2", "dipo"]
ALL_PARTS = [("critic",), ("critic", "policy"), ("critic", "policy", "alpha")]
# distinct update shapes each algorithm's schedule takes at the tiny config (one graph each): SAC and TD3 have a
# policy delay and no separate α clock (SAC's α steps with the policy); QSM and QVPO update everything every time
N_SHAPES = {"dpmd": 3, "sdac": 3, "sac": 2, "td3": 2, "qsm": 1, "qvpo": 1, "dpmd2": 3, "dipo": 1}
DETERMINISTIC_EVAL = {"sac", "td3"}  # their evaluation action draws no noise
S, A, E = 5, 2, 3  # obs dim, action dim, envs




def tiny_cfg(algo: str, device: str, hidden: int = 16, **kw):
    # alpha_every=4 and policy_delay=2: updates 1..4 take every Parts value (critic; +policy; critic; +policy+alpha).
    # The lr decays over the first updates, so a wrong schedule under capture would show.
    settings = dict(algo=algo, device=device, batch_size=16, sac_policy_delay=2, hidden=hidden, particles=4,
                    diffusion_steps=3, reverse_samples=4, alpha_every=4, lr_decay_start=0, lr_decay_end=3)
    return make_config("smoke", {**settings, **kw})


def build(algo: str, cfg, device: str, backend: str = "torch"):
    seed_everything(0)  # same seed, same initial weights
    return make_agent(algo, S, A, cfg, torch.device(device), make_ops(backend, device))


def filled_replay(device: str, batch: int = 16, rows: int = 64) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    rb = ReplayBuffer(128, S, A, device, batch)
    rb.add(rng.standard_normal((rows, S)), rng.uniform(-1, 1, (rows, A)), rng.standard_normal(rows),
           rng.standard_normal((rows, S)), rng.random(rows) < 0.1)
    return rb


def full_state(agent) -> dict[str, torch.Tensor]:
    """Parameters, buffers, optimiser state, lr tensors and extra state, flattened."""
    out = {f"m.{k}": v for k, v in agent.state_dict().items()}
    for name, opt in agent.optimizers().items():
        for i, p in enumerate(opt.param_groups[0]["params"]):
            for k, v in opt.state.get(p, {}).items():
                out[f"o.{name}.{i}.{k}"] = torch.as_tensor(v)
        out[f"o.{name}.lr"] = torch.as_tensor(opt.param_groups[0]["lr"])
    for k, v in agent.extra_state().items():
        for kk, vv in v.items():
            out[f"x.{k}.{kk}"] = vv
    return out


def assert_same_state(a, b, atol: float = 0.0, rtol: float = 0.0) -> None:
    sa, sb = full_state(a), full_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")
    assert (a.updates, a.policy_updates) == (b.updates, b.policy_updates)


def run_updates(update, n: int, seed: int = 1) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    return [{k: float(v) for k, v in update().items()} for _ in range(n)]


# --------------------------------------------------------------------------------------------- CPU


def test_parts_follow_the_host_counters():
    """The one schedule (Agent.next_parts): the parts each update runs, from the agent's counters."""
    cfg = tiny_cfg("dpmd", "cpu")
    agent = build("dpmd", cfg, "cpu")
    seen = []
    for u in range(8):
        agent.updates, agent.policy_updates = u, u // 2
        seen.append(agent.next_parts())
    c, cp, cpa = ("critic",), ("critic", "policy"), ("critic", "policy", "alpha")
    assert seen == [c, cp, c, cpa] * 2
    assert agent.reachable_parts() == [c, cp, cpa]
    assert build("dpmd", tiny_cfg("dpmd", "cpu", policy_delay=1, alpha_every=1), "cpu").reachable_parts() == [cpa]


def test_graphs_ask_the_agent_for_its_schedule():
    """A new periodic part needs no change in graphs.py: the wrapper replays whatever parts the agent names."""
    cfg = tiny_cfg("sac", "cpu")
    rb = filled_replay("cpu")
    agent = build("sac", cfg, "cpu")
    seen: list = []

    def parts_for(updates):  # an invented schedule: the policy every third update only
        return ("critic", "policy") if updates % 3 == 2 else ("critic",)

    agent.parts_for = parts_for
    original = agent.update_step
    agent.update_step = lambda batch, parts: (seen.append(parts), original(batch, parts))[1]
    fast = GraphedLearner(agent, E, emulate=True)
    for _ in range(6):
        fast.update(rb)
    replayed = [p for p in seen[-6:]]
    assert agent.updates == 6 and agent.policy_updates == 2
    assert sorted(fast._updates) == [("critic",), ("critic", "policy")]
    assert ("critic", "policy") in replayed


@pytest.mark.parametrize("algo", ALGOS)
def test_eager_wrapper_is_agent_update(algo):
    """Off CUDA the wrapper runs the eager agent: same parameters, counters and metrics, bit for bit."""
    cfg = tiny_cfg(algo, "cpu")
    rb, rb_fast = filled_replay("cpu"), filled_replay("cpu")  # one each: DIPO writes into its replay
    plain, wrapped = build(algo, cfg, "cpu"), build(algo, cfg, "cpu")
    fast = GraphedLearner(wrapped, E, enabled=True)
    assert fast.mode == "eager" and not fast.graphed
    m_plain = run_updates(lambda: Learner(plain).update(rb), 6)
    m_fast = run_updates(lambda: fast.update(rb_fast), 6)
    assert m_plain == m_fast
    assert_same_state(plain, wrapped)
    assert fast.agent.updates == 6 and fast.agent is wrapped


@pytest.mark.parametrize("algo", ALGOS)
def test_emulated_capture_matches_eager(algo):
    """Warm-up + restore, one graph per Parts value, lr written before each replay, static
    outputs: the emulated graphs must reproduce the eager run exactly, with no re-capture along the way."""
    cfg = tiny_cfg(algo, "cpu")
    rb, rb_fast = filled_replay("cpu"), filled_replay("cpu")  # one each: DIPO writes into its replay
    plain, graphed = build(algo, cfg, "cpu"), build(algo, cfg, "cpu")
    fast = GraphedLearner(graphed, E, emulate=True)
    m_plain = run_updates(lambda: Learner(plain).update(rb), 9)
    m_fast = run_updates(lambda: fast.update(rb_fast), 9)
    assert [sorted(m) for m in m_plain] == [sorted(m) for m in m_fast]
    assert m_plain == m_fast
    assert_same_state(plain, graphed)
    # SAC: α inside its policy step; TD3: no α; QSM: the policy on every update
    every = [("critic", "policy")]
    expected = {"sac": [("critic",), ("critic", "policy")], "td3": [("critic",), ("critic", "policy")],
                "qsm": every, "qvpo": every, "dipo": every}.get(algo, ALL_PARTS)
    assert sorted(fast._updates) == sorted(expected) == sorted(graphed.reachable_parts())
    assert fast.captures == len(expected)
    # Static outputs: one Parts value's metrics are the same tensors every time, refreshed in place.
    parts, m = [], []
    for _ in range(4):
        parts.append(graphed.next_parts())
        m.append(fast.update(rb_fast))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (m[i]["loss_q"] is m[j]["loss_q"]) == (parts[i] == parts[j]), (parts[i], parts[j])


@pytest.mark.parametrize("algo", ALGOS)
def test_act_eager_and_emulated(algo):
    cfg = tiny_cfg(algo, "cpu")
    agent = build(algo, cfg, "cpu")
    obs = torch.randn(E, S)
    for fast in (GraphedLearner(agent, E, enabled=False), GraphedLearner(agent, E, emulate=True)):
        for explore in (True, False):
            torch.manual_seed(5)
            ref = agent.act(obs, explore)
            torch.manual_seed(5)
            got = fast.act(obs, explore)
            assert got.shape == (E, A) and got.abs().max() <= 1.0
            assert torch.equal(got, ref)
        other = torch.randn(E + 2, S)  # another batch size runs eagerly, without a capture
        assert fast.act(other).shape == (E + 2, A)
    assert sorted(fast._acts) == [False, True]
    returned = fast.act(obs)
    fast.act(obs)
    assert not torch.equal(returned, fast.act(obs))  # a copy, not the static output, is handed back


def test_restore_triggers_recapture():
    """A checkpoint restore replaces the optimisers' state tensors; graphs holding the old ones are re-captured."""
    cfg = tiny_cfg("dpmd", "cpu")
    rb = filled_replay("cpu")
    plain, graphed = build("dpmd", cfg, "cpu"), build("dpmd", cfg, "cpu")
    fast = GraphedLearner(graphed, E, emulate=True)
    run_updates(lambda: Learner(plain).update(rb), 4)
    run_updates(lambda: fast.update(rb), 4)
    ckpt = plain.checkpoint()
    # Optimizer.load_state_dict adopts the checkpoint's tensors: each agent gets its own copy.
    plain.restore(copy.deepcopy(ckpt))
    fast.agent.restore(copy.deepcopy(ckpt))
    before = fast.captures
    m_plain = run_updates(lambda: Learner(plain).update(rb), 4, seed=2)
    m_fast = run_updates(lambda: fast.update(rb), 4, seed=2)
    assert fast.captures == before + 3
    assert m_plain == m_fast
    assert_same_state(plain, graphed)


def test_bench_cpu_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench_main(["--preset", "smoke", "--device", "cpu", "--updates", "3", "--env-steps", "20",
                       "--warmup-updates", "1", "--act-calls", "2", "--fill", "256", "--backends", "torch,graphs",
                       "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = {r["backend"]: r for r in data["results"]}
    assert rows["torch"]["status"] == "ok"
    assert rows["torch"]["update_ms"] > 0 and rows["torch"]["env_steps_per_s"] > 0 and rows["torch"]["act_ms"] > 0
    assert rows["graphs"]["status"] == "n/a (needs CUDA)" and rows["graphs"]["update_ms"] is None
    assert data["device_type"] == "cpu" and data["config"]["algo"] == "dpmd" and data["env_only_steps_per_s"] > 0
    assert "update ms" in capsys.readouterr().out


def test_bench_interleaved_rounds(tmp_path, capsys):
    """--rounds: every backend set up once, then measured in turn each round; medians and per-round ratios."""
    out = tmp_path / "bench.json"
    code = bench_main(["--preset", "smoke", "--device", "cpu", "--updates", "2", "--env-steps", "10",
                       "--warmup-updates", "1", "--act-calls", "2", "--fill", "256", "--backends", "torch,graphs,torch",
                       "--rounds", "3", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in rows] == ["torch", "graphs", "torch"]
    for r in (rows[0], rows[2]):
        assert r["status"] == "ok" and len(r["rounds"]) == 3
        assert r["env_steps_per_s"] == pytest.approx(float(np.median([x["env_steps_per_s"] for x in r["rounds"]])))
        assert r["update_ms"] == pytest.approx(float(np.median([x["update_ms"] for x in r["rounds"]])))
    ratios = [b["env_steps_per_s"] / a["env_steps_per_s"] for a, b in zip(rows[0]["rounds"], rows[2]["rounds"])]
    assert rows[2]["env_steps_ratio"] == pytest.approx(float(np.median(ratios)))
    assert rows[1]["status"] == "n/a (needs CUDA)" and rows[1]["env_steps_ratio"] is None
    assert "interleaved rounds" in capsys.readouterr().out


def test_bench_usage_errors(capsys):
    assert bench_main(["--device", "cpu", "--backends", "torch,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert bench_main(["--device", "cpu", "--preset", "smoke", "--rounds", "0"]) == 2
    assert bench_main(["--device", "cpu", "--preset", "smoke", "--fill", "3"]) == 2


# --------------------------------------------------------------------------------------------- GPU


def _gpu_backends() -> list[str]:
    names = ["torch"]
    try:
        resolve_backend("triton", "cuda")
        names.append("triton")
    except BackendError:
        pass
    return names


GPU_CASES = [(a, b) for a in ALGOS for b in ("torch", "triton")]


def _gpu_setup(algo: str, backend: str):
    if backend not in _gpu_backends():
        pytest.skip("triton is not installed")
    cfg = tiny_cfg(algo, "cuda", hidden=32)  # the fused chain needs a hidden width that is a multiple of 16
    return cfg, filled_replay("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("algo,backend", GPU_CASES)
def test_graphed_update_matches_eager_gpu(algo, backend):
    """Same initial state, same RNG seed: a graph replays the eager kernels with the same Philox offsets, so the
    results should agree to the last bit; the tolerance (atol 1e-6, rtol 1e-5) leaves room for a different
    cuBLAS algorithm choice under capture and nothing more — a wrong lr, counter or stale tensor is >> 1e-4."""
    cfg, rb = _gpu_setup(algo, backend)
    rb_fast = filled_replay("cuda")  # one each: DIPO writes into its replay
    plain, graphed = build(algo, cfg, "cuda", backend), build(algo, cfg, "cuda", backend)
    fast = GraphedLearner(graphed, E, enabled=True)
    assert fast.mode == "cuda"
    m_plain = run_updates(lambda: Learner(plain).update(rb), 9)
    m_fast = run_updates(lambda: fast.update(rb_fast), 9)
    expected = graphed.reachable_parts()
    assert len(expected) == N_SHAPES[algo]
    assert sorted(fast._updates) == sorted(expected) and fast.captures == len(expected)
    assert_same_state(plain, graphed, atol=1e-6, rtol=1e-5)
    for mp, mf in zip(m_plain, m_fast):
        assert mp.keys() == mf.keys()
        np.testing.assert_allclose([mf[k] for k in mp], [mp[k] for k in mp], rtol=1e-5, atol=1e-6)
    # The graphs keep working after a checkpoint restore (re-captured against the new optimiser state).
    ckpt = plain.checkpoint()
    plain.restore(copy.deepcopy(ckpt))
    fast.agent.restore(copy.deepcopy(ckpt))
    run_updates(lambda: Learner(plain).update(rb), 4, seed=2)
    run_updates(lambda: fast.update(rb_fast), 4, seed=2)
    assert fast.captures == 2 * len(expected)  # every shape captured again after the restore
    assert_same_state(plain, graphed, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("algo,backend", GPU_CASES)
def test_graphed_act_matches_eager_gpu(algo, backend):
    cfg, rb = _gpu_setup(algo, backend)
    agent = build(algo, cfg, "cuda", backend)
    fast = GraphedLearner(agent, E, enabled=True)
    obs = torch.randn(E, S, device="cuda")
    for _ in range(2):  # before and after updates: replays read the current weights and alpha
        for explore in (True, False):
            torch.manual_seed(7)
            ref = agent.act(obs, explore)
            torch.manual_seed(7)
            got = fast.act(obs, explore)
            again = fast.act(obs, explore)  # the generator moved on: fresh noise
            torch.manual_seed(7)
            replayed = fast.act(obs, explore)
            assert got.shape == (E, A) and got.device.type == "cuda" and got.abs().max() <= 1.0
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
            assert torch.equal(replayed, got)  # re-seeding reproduces a replay exactly
            if explore or algo not in DETERMINISTIC_EVAL:
                assert not torch.equal(again, got)
        for _ in range(4):
            fast.update(rb)
    assert sorted(fast._acts) == [False, True]


@pytest.mark.gpu
def test_bench_gpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    code = bench_main(["--preset", "smoke", "--device", "cuda", "--updates", "5", "--env-steps", "20",
                       "--warmup-updates", "2", "--act-calls", "3", "--fill", "512", "--json", str(out)])
    data = json.loads(out.read_text())
    rows = {r["backend"]: r for r in data["results"]}
    for name in ("torch", "graphs", "triton"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["update_ms"] > 0 and rows[name]["peak_mem_mb"] > 0
    assert rows["graphs"]["graphs_captured"] >= 3
    assert code == 0 or rows["compile"]["status"].startswith("error")


def _seed_group(algo: str, device: str, seeds: int = 3):
    """A `seeds`-seed agent and its replay (rows differ per seed), as a `--seeds` run holds them."""
    cfg = tiny_cfg(algo, device, hidden=32)
    seed_everything(0)
    agent = make_agent(algo, S, A, cfg, torch.device(device), make_ops("torch", device), seeds=seeds)
    rng = np.random.default_rng(0)
    rb = SeedReplay(seeds, 128, S, A, device, 16)
    rows = seeds * 64
    rb.add(rng.standard_normal((rows, S)), rng.uniform(-1, 1, (rows, A)), rng.standard_normal(rows),
           rng.standard_normal((rows, S)), rng.random(rows) < 0.1)
    return agent, rb


def _check_seed_group(algo: str, device: str, emulate: bool) -> None:
    plain, rb = _seed_group(algo, device)
    graphed, rb_fast = _seed_group(algo, device)  # one replay each: DIPO writes into its replay
    fast = GraphedLearner(graphed, E, enabled=True, emulate=emulate)
    assert fast.mode == ("emulate" if emulate else "cuda")

    def run(update) -> list[dict[str, list[float]]]:  # metrics are per seed here
        torch.manual_seed(1)
        return [{k: torch.as_tensor(v).flatten().tolist() for k, v in update().items()} for _ in range(9)]

    m_plain, m_fast = run(lambda: Learner(plain).update(rb)), run(lambda: fast.update(rb_fast))
    assert fast.captures == N_SHAPES[algo]
    assert_same_state(plain, graphed, atol=1e-6, rtol=1e-5)
    for mp, mf in zip(m_plain, m_fast):
        assert mp.keys() == mf.keys()
        np.testing.assert_allclose([mf[k] for k in mp], [mp[k] for k in mp], rtol=1e-5, atol=1e-6)
    obs = torch.randn(3, E, S, device=device)
    torch.manual_seed(7)
    ref = plain.act(obs, True)
    torch.manual_seed(7)
    torch.testing.assert_close(fast.act(obs, True), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("algo", ["dpmd", "sac", "td3", "dipo"])
def test_emulated_seed_group_matches_eager(algo):
    """The capture bookkeeping with a seed axis (a --seeds group), on the CPU."""
    _check_seed_group(algo, "cpu", emulate=True)


@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["dpmd", "sac", "td3", "dipo"])
def test_graphed_seed_group_matches_eager_gpu(algo):
    """A --seeds group under CUDA graphs (the default on CUDA) is the eager group: same state after every update
    shape has been captured and replayed, and acting replays too."""
    _check_seed_group(algo, "cuda", emulate=False)
