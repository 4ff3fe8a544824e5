"""DACER / DACER2 under fastrsm.graphs: the schedule's three Parts values are captured once each and replay the
eager agent exactly (emulated on the CPU; real CUDA graphs with `-m gpu`). Nothing in graphs.py knows these
algorithms: their entropy/α part and the gradient through the chain are ordinary device work in `update_step`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_graphs import E, S, assert_same_state, build, filled_replay, run_updates, tiny_cfg

from fastrsm.graphs import GraphedLearner
from fastrsm.learner import Learner

DACER_ALGOS = ["dacer", "dacer2"]
# dacer_alpha_every 4, policy_delay 2, counting from update 0: critic+policy+alpha, critic, critic+policy, ...
DACER_PARTS = [("critic", "policy", "alpha"), ("critic",), ("critic", "policy")]
SMALL = dict(dacer_alpha_every=4, dacer_entropy_samples=16, dacer_gmm_iters=10)


@pytest.mark.parametrize("algo", DACER_ALGOS)
def test_emulated_capture_matches_eager(algo):
    cfg = tiny_cfg(algo, "cpu", **SMALL)
    rb = filled_replay("cpu")
    plain, graphed = build(algo, cfg, "cpu"), build(algo, cfg, "cpu")
    fast = GraphedLearner(graphed, E, emulate=True)
    m_plain = run_updates(lambda: Learner(plain).update(rb), 9)
    m_fast = run_updates(lambda: fast.update(rb), 9)
    assert m_plain == m_fast
    assert_same_state(plain, graphed)
    assert sorted(fast._updates) == sorted(DACER_PARTS) == sorted(graphed.reachable_parts())
    assert fast.captures == 3
    assert "entropy" in m_plain[0] and "loss_pi" in m_plain[0]


@pytest.mark.gpu
@pytest.mark.parametrize("algo", DACER_ALGOS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_graphed_update_matches_eager_gpu(algo, backend):
    """Real CUDA graphs: the update with the backward through the chain, ∇_a Q (DACER2) and the batched GMM EM
    captured, replaying the eager agent (tolerance as tests/test_graphs.py's GPU test)."""
    if backend == "triton":
        pytest.importorskip("triton")
    cfg = tiny_cfg(algo, "cuda", hidden=32, **SMALL)
    rb = filled_replay("cuda")
    plain, graphed = build(algo, cfg, "cuda", backend), build(algo, cfg, "cuda", backend)
    fast = GraphedLearner(graphed, E, enabled=True)
    assert fast.mode == "cuda"
    m_plain = run_updates(lambda: Learner(plain).update(rb), 9)
    m_fast = run_updates(lambda: fast.update(rb), 9)
    assert sorted(fast._updates) == sorted(DACER_PARTS) and fast.captures == 3
    assert_same_state(plain, graphed, atol=1e-5, rtol=1e-4)
    for mp, mf in zip(m_plain, m_fast):
        assert mp.keys() == mf.keys()
        np.testing.assert_allclose([mf[k] for k in mp], [mp[k] for k in mp], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("algo", DACER_ALGOS)
def test_graphed_act_matches_eager_gpu(algo):
    agent = build(algo, tiny_cfg(algo, "cuda", hidden=32, **SMALL), "cuda")
    fast = GraphedLearner(agent, E, enabled=True)
    obs = torch.randn(E, S, device="cuda")
    for explore in (True, False):
        torch.manual_seed(7)
        ref = agent.act(obs, explore)
        torch.manual_seed(7)
        got = fast.act(obs, explore)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
