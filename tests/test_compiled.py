"""fastrsm.compiled: the whole act and each update compiled with torch.compile compute what the eager agent
computes, for a fixed seed (inductor told to draw its random numbers as eager PyTorch does)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import compiler_available
from fastrsm.compiled import CompiledLearner
from fastrsm.config import make_config
from fastrsm.learner import Learner
from fastrsm.replay import ReplayBuffer

pytestmark = pytest.mark.skipif(not compiler_available(), reason="torch.compile on CPU needs a C++ compiler")
S, A = 5, 2


def build(algo: str, seeds: int | None = None):
    """`algo`, or `algo:kl` for its temperature held to a KL budget (alpha_mode kl, DPMD with softmax weights)."""
    from fastrsm.backend import make_ops

    algo, _, mode = algo.partition(":")
    extra = {"alpha_mode": "kl", **({"dpmd_weights": "softmax"} if algo == "dpmd" else {})} if mode == "kl" else {}
    cfg = make_config("smoke", {**extra, "algo": algo, "device": "cpu", "hidden": 16, "particles": 4,
                                "diffusion_steps": 3, "reverse_samples": 4, "batch_size": 16, "policy_delay": 1,
                                "alpha_every": 1, "lr_decay_start": 0, "lr_decay_end": 3})
    torch.manual_seed(0)
    return make_agent(algo, S, A, cfg, torch.device("cpu"), make_ops("compile", "cpu"), seeds=seeds)


# dacer2: the chain backward and the GMM α step; seeds: the seed-stacked agent a --seeds group compiles
@pytest.mark.parametrize("algo,seeds", [("dpmd", None), ("sdac", None), ("sac", None), ("dacer2", None), ("td3", None),
                                        ("qsm", None), ("qvpo", None), ("dpmd2", None), ("dpmd", 2),
                                        ("sdac:kl", None), ("dpmd:kl", 2)])
def test_compiled_act_and_update_equal_eager(algo, seeds):
    import torch._inductor.config as inductor

    with inductor.patch(fallback_random=True):  # the same random stream as eager
        _compare(algo, seeds)


def _compare(algo: str, seeds: int | None) -> None:
    from fastrsm.seeds import SeedReplay

    rng = np.random.default_rng(0)
    lead = () if seeds is None else (seeds,)
    rb = ReplayBuffer(128, S, A, "cpu", 16) if seeds is None else SeedReplay(seeds, 128, S, A, "cpu", 16)
    rb.add(rng.standard_normal((*lead, 64, S)), rng.uniform(-1, 1, (*lead, 64, A)), rng.standard_normal((*lead, 64)),
           rng.standard_normal((*lead, 64, S)), rng.random((*lead, 64)) < 0.1)
    eager, compiled = build(algo, seeds), CompiledLearner(build(algo, seeds))
    assert isinstance(compiled.agent.opt_q.param_groups[0]["lr"], torch.Tensor)  # a tensor lr: no recompile
    out = []
    for agent in (eager, compiled):
        torch.manual_seed(1)
        raw = [agent.update(rb) if agent is compiled else Learner(agent).update(rb) for _ in range(4)]
        # every metric, per seed where it has a seed axis
        out.append([{f"{k}{i}": float(x) for k, v in m.items() for i, x in enumerate(v.detach().reshape(-1))}
                    for m in raw])
    for me, mc in zip(*out):
        assert me.keys() == mc.keys()
        np.testing.assert_allclose([mc[k] for k in me], [me[k] for k in me], rtol=2e-4, atol=1e-5)
    for pe, pc in zip(eager.parameters(), compiled.agent.parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-5)
    assert compiled.agent.updates == 4 and compiled.compile_seconds > 0
    obs = torch.randn(*lead, 3, S)
    torch.manual_seed(2)
    a_e = eager.act(obs, explore=False)
    torch.manual_seed(2)
    a_c = compiled.act(obs, explore=False)
    torch.testing.assert_close(a_c, a_e, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"), reason="torch < 2.12 breaks at backward")
@pytest.mark.parametrize("algo", ["dpmd", "sdac", "sac", "dacer", "dacer2", "td3", "qsm", "qvpo", "dpmd2"])
def test_every_update_is_one_graph(algo):
    """backward, the optimiser steps and the target/EMA updates trace into one graph per update: a graph break
    (Optimizer.step or zero_grad back in an agent, a requires_grad toggled on the critic) costs its per-graph
    overhead on every update, as large as the chain itself at smoke sizes (bench/RESULTS.md)."""
    from fastrsm.compiled import _TRACE_BACKWARD

    rng = np.random.default_rng(0)
    rb = ReplayBuffer(128, S, A, "cpu", 16)
    rb.add(rng.standard_normal((64, S)), rng.uniform(-1, 1, (64, A)), rng.standard_normal(64),
           rng.standard_normal((64, S)), rng.random(64) < 0.1)
    agent = build(algo)
    assert agent.trace_backward
    for parts in agent.reachable_parts():
        with torch._dynamo.config.patch(**_TRACE_BACKWARD):
            ex = torch._dynamo.explain(lambda b, parts=parts: agent.update_step(b, parts))(rb.sample())
        reasons = [str(r.reason)[:200] for r in ex.break_reasons]
        assert (ex.graph_count, ex.graph_break_count) == (1, 0), (parts, reasons)
