"""Agent.restore keeps how each optimiser was built for its backend (fastrsm.agents.base.load_optimizer): a run
begun eager and resumed compiled (the campaign's Hopper DPMD group did this) must get the compiled build back — a
tensor lr and a fused Adam — with the learned state and the lr's value from the checkpoint; and the reverse."""

from __future__ import annotations

import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.base import set_lr
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.replay import Batch

OBS, ACT, B = 5, 2, 8


def _agent(algo: str, backend: str):
    cfg = make_config("smoke", {"algo": algo, "device": "cpu", "hidden": 16, "particles": 4, "diffusion_steps": 3,
                                "reverse_samples": 4, "batch_size": B, "policy_delay": 1, "alpha_every": 1})
    return make_agent(algo, OBS, ACT, cfg, torch.device("cpu"), make_ops(backend, "cpu"))


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g), torch.zeros(B))


def _trained(algo: str, backend: str):
    agent = _agent(algo, backend)
    for i in range(2):
        agent.update_step(_batch(i), agent.next_parts())
        agent.advance(agent.next_parts())
    for o in agent.optimizers().values():
        set_lr(o, 1.25e-4)  # a decayed lr: its value must survive the restore
    return agent


@pytest.mark.parametrize("algo", ["dpmd", "sac"])
@pytest.mark.parametrize("src,dst", [("torch", "compile"), ("compile", "torch")])
def test_restore_keeps_the_resuming_backends_optimiser_build(algo, src, dst):
    ckpt = _trained(algo, src).checkpoint()
    agent = _agent(algo, dst)
    agent.restore(ckpt)
    compiled = dst == "compile"
    for name, opt in agent.optimizers().items():
        saved = ckpt["optimizers"][name]
        for g in opt.param_groups:
            assert torch.is_tensor(g["lr"]) == compiled, name
            assert float(g["lr"]) == pytest.approx(1.25e-4)
            assert bool(g.get("fused")) == compiled, name
        # the learned moments and counters came across unchanged
        for idx, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                assert torch.equal(v.float(), saved["state"][idx][k].float()), (name, k)
        # and the optimiser still steps (a fused Adam refuses mismatched step counters)
    agent.update_step(_batch(7), agent.next_parts())
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_restore_rejects_a_checkpoint_with_other_param_groups():
    ckpt = _trained("sac", "torch").checkpoint()
    name = next(iter(ckpt["optimizers"]))
    ckpt["optimizers"][name]["param_groups"] = ckpt["optimizers"][name]["param_groups"] * 2
    with pytest.raises(ValueError):
        _agent("sac", "torch").restore(ckpt)


@pytest.mark.parametrize("algo", ["dpmd", "sac"])
def test_compiled_resume_of_a_checkpoint_written_before_any_update(algo):
    """A run checkpoints during its warm-up, before its first update: the eager Adam has no state yet. The
    compiled agent's traced Adam step reads its state, so restoring must create it again (zeros, as the first
    step would) — and the update must then equal an eager agent's first update."""
    ckpt = _agent(algo, "torch").checkpoint()
    assert ckpt["optimizers"] and all(not o["state"] for o in ckpt["optimizers"].values())  # no Adam state saved
    compiled, eager = _agent(algo, "compile"), _agent(algo, "torch")
    compiled.restore(ckpt)
    eager.restore(ckpt)
    for agent in (compiled, eager):
        torch.manual_seed(3)
        agent.update_step(_batch(9), agent.next_parts())
    for pc, pe in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-5, atol=1e-6)
