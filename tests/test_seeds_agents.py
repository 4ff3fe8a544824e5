"""Many seeds in one agent (fastrsm.seeds): each seed's slice of the batched update is the single-seed update, and
nothing crosses seeds.

Equivalence: two single agents a, b and the 2-seed agent holding their weights are fed the same batches and the
same random numbers (a tape records every torch.randn / randn_like / randint draw of a's and b's updates, and
serves their stack to the 2-seed agent, whose draws are [S, *single shape]). Tolerance: fp32, rtol 1e-5 and
atol 1e-6 after three updates: the batched matmuls (baddbmm) sum in another order than nn.Linear's addmm, so
bitwise equality is not expected, only rounding-level agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.backend import make_ops
from fastrsm.config import make_config
from fastrsm.learner import Learner, OneBatch
from fastrsm.replay import Batch
from fastrsm.seeds import load_seeds, parse_seeds, seed_checkpoint, stack_checkpoints

OBS, ACT = 5, 3
RTOL, ATOL = 1e-5, 1e-6


def _cfg(algo: str, **over):
    return make_config("smoke", {"algo": algo, "hidden": 16, "particles": 5, "diffusion_steps": 3,
                                 "reverse_samples": 7, "batch_size": 9, "policy_delay": 1, "alpha_every": 1, **over})


def _batch(gen: torch.Generator, B: int = 9) -> Batch:
    return Batch(torch.randn(B, OBS, generator=gen), torch.rand(B, ACT, generator=gen) * 2 - 1,
                 torch.randn(B, generator=gen), torch.randn(B, OBS, generator=gen),
                 (torch.rand(B, generator=gen) < 0.2).float())


def _stack_batches(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(x) for x in zip(*batches)))


class Tape:
    """Records the random draws of single agents; replays their stack (leading seed axis) to a batched agent."""

    def __init__(self, monkeypatch):
        self.real = {n: getattr(torch, n) for n in ("randn", "randn_like", "randint", "rand")}
        self.tapes: list[list[torch.Tensor]] = []
        self.mode = "off"
        for name in self.real:
            monkeypatch.setattr(torch, name, self._make(name))

    def record(self) -> None:
        self.tapes.append([])
        self.mode = "record"

    def replay(self) -> None:
        self.mode, self.pos = "replay", 0

    def _make(self, name):
        real = self.real[name]

        def fn(*args, **kw):
            out = real(*args, **kw)
            if self.mode == "record":
                self.tapes[-1].append(out.clone())
            elif self.mode == "replay":
                parts = [t[self.pos] for t in self.tapes]
                self.pos += 1
                want = torch.stack(parts)
                assert out.shape == want.shape, (name, out.shape, want.shape)
                out = want.to(out.dtype)
            return out

        return fn


def _singles_and_group(algo: str, backend: str = "torch", **over):
    cfg = _cfg(algo, **over)
    ops = make_ops(backend, "cpu")
    singles = []
    for s in range(2):
        torch.manual_seed(100 + s)
        singles.append(make_agent(algo, OBS, ACT, cfg, torch.device("cpu"), ops))
    group = make_agent(algo, OBS, ACT, cfg, torch.device("cpu"), ops, seeds=2)
    load_seeds(group, [a.checkpoint() for a in singles])
    return singles, group


def _assert_tree_close(got, want, exact: bool = False, path: str = ""):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for k in want:
            _assert_tree_close(got[k], want[k], exact, f"{path}/{k}")
    elif isinstance(want, (list, tuple)):
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_tree_close(g, w, exact, f"{path}/{i}")
    elif torch.is_tensor(want):
        if exact:
            assert torch.equal(got, want), path
        else:
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=path)
    else:
        assert got == want, path


CASES = [("dpmd", {}), ("dpmd", {"dpmd_weights": "softmax"}), ("dpmd", {"dpmd_weights": "advantage"}), ("sdac", {}),
         ("sac", {}), ("td3", {}), ("qsm", {}), ("qvpo", {}), ("dpmd2", {}),
         ("dpmd2", {"dpmd2_weights": "relu_square"}), ("dpmd2", {"dpmd2_weights": "lse"}),
         ("dipo", {}), ("dipo", {"dipo_grad_norm": 0.01})]  # a clip that acts: each seed by its own norm
# the triton backend under the interpreter (tests/conftest.py); SAC and TD3 have no fused kernel
BACKEND_CASES = [("torch", a, o) for a, o in CASES] + [
    ("triton", a, o) for a, o in CASES if a not in ("sac", "td3", "qsm", "qvpo", "dipo")] + [
    ("torch", "dpmd", {"dpmd_weights": "advantage", "dpmd_particle_noise": True})]


@pytest.mark.parametrize("backend, algo, over", BACKEND_CASES)
def test_each_seed_of_the_batched_update_is_its_single_update(monkeypatch, backend, algo, over):
    singles, group = _singles_and_group(algo, backend, **over)
    gen = torch.Generator().manual_seed(7)
    tape = Tape(monkeypatch)
    for _ in range(3):
        batches = [_batch(gen) for _ in singles]
        tape.tapes = []
        metrics = []
        for agent, batch in zip(singles, batches):
            tape.record()
            metrics.append(Learner(agent).update(OneBatch(batch)))
        tape.replay()
        m = Learner(group).update(OneBatch(_stack_batches(batches)))
        assert tape.pos == len(tape.tapes[0])  # the batched update drew exactly what each single one drew
        tape.mode = "off"
        assert m.keys() == metrics[0].keys()
        for k in m:  # every metric is per seed: [S]
            torch.testing.assert_close(m[k], torch.stack([mm[k] for mm in metrics]), rtol=1e-4, atol=1e-5, msg=k)
    for s, agent in enumerate(singles):
        _assert_tree_close(seed_checkpoint(group, s), agent.checkpoint())
    # acting: the same obs and noise give the same actions, [S, B, A]
    obs = [torch.randn(4, OBS) for _ in singles]
    tape.tapes = []
    acts = []
    for agent, o in zip(singles, obs):
        tape.record()
        acts.append(agent.act(o))
    tape.replay()
    got = group.act(torch.stack(obs))
    tape.mode = "off"
    torch.testing.assert_close(got, torch.stack(acts), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("algo, over", CASES)
def test_perturbing_one_seed_changes_no_other_seed_bit_for_bit(algo, over):
    _, g1 = _singles_and_group(algo, **over)
    _, g2 = _singles_and_group(algo, **over)
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        a, b = _batch(gen), _batch(gen)
        a2 = Batch(*(x + 0.5 if x.is_floating_point() and i != 4 else x for i, x in enumerate(a)))
        torch.manual_seed(step)
        Learner(g1).update(OneBatch(_stack_batches([a, b])))
        torch.manual_seed(step)
        Learner(g2).update(OneBatch(_stack_batches([a2, b])))
    _assert_tree_close(seed_checkpoint(g2, 1), seed_checkpoint(g1, 1), exact=True)
    with pytest.raises(AssertionError):  # ...while seed a did change
        _assert_tree_close(seed_checkpoint(g2, 0), seed_checkpoint(g1, 0), exact=True)


def test_group_checkpoint_round_trips_through_seed_checkpoints():
    singles, group = _singles_and_group("dpmd")
    gen = torch.Generator().manual_seed(1)
    Learner(group).update(OneBatch(_stack_batches([_batch(gen), _batch(gen)])))
    ck = group.checkpoint()
    again = stack_checkpoints([seed_checkpoint(group, s) for s in range(2)])
    _assert_tree_close(again, ck, exact=True)
    singles[1].restore(seed_checkpoint(group, 1))  # an ordinary checkpoint: a single agent loads it
    assert torch.equal(singles[1].log_alpha, group.log_alpha[1])


@pytest.mark.parametrize("text, seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("2", [2]),
                                         ("0-1, 5", [0, 1, 5])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", " ", "a", "0-", "3-1", "1,,2", "0,1,1", "0-2,2", "-1", "1.5"])
def test_parse_seeds_refuses_bad_input(text):
    from fastrsm.config import ConfigError
    with pytest.raises(ConfigError):
        parse_seeds(text)


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chain_with_a_seed_axis_matches_each_seeds_reference_chain(seeds, backend):
    """The stacked chain (S = 1 and S = 3, a leading seed axis) equals, seed by seed, the reference chain of that
    seed's single network fed the same x_T and noise."""
    from fastrsm.diffusion import Schedule, reverse_chain
    from fastrsm.nets import EpsilonNet

    torch.manual_seed(0)
    B, N, T, H = 3, 4, 4, 16
    stacked = EpsilonNet(OBS, ACT, hidden=H, layers=2, seeds=seeds)
    singles = [EpsilonNet(OBS, ACT, hidden=H, layers=2) for _ in range(seeds)]
    for k, net in enumerate(singles):
        net.load_state_dict({n: p[k] for n, p in stacked.state_dict().items()})
    sched = Schedule.build("linear", T)
    s = torch.randn(seeds, B, OBS)
    x_T = 0.5 * torch.randn(seeds, B * N, ACT)
    noise = torch.randn(seeds, T, B * N, ACT).transpose(0, 1)
    got = make_ops(backend, "cpu").chain(stacked, sched, s, x_T, noise)
    assert got.shape == (seeds, B * N, ACT)
    for k, net in enumerate(singles):
        want = reverse_chain(net, sched, s[k], x_T[k], noise[:, k])
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-5)


def test_chain_in_kernel_noise_with_a_seed_axis():
    """In-kernel Philox draws: a stacked network of one seed draws exactly what the single network draws for the
    same Philox seed; with S = 2 identical networks the two seeds get different numbers (disjoint offsets)."""
    from fastrsm.kernels import fused_chain

    from fastrsm.diffusion import Schedule
    from fastrsm.nets import EpsilonNet

    torch.manual_seed(0)
    B, N, T, H = 2, 3, 3, 16
    sched = Schedule.build("linear", T)
    single = EpsilonNet(OBS, ACT, hidden=H, layers=2)
    for S in (1, 2):
        stacked = EpsilonNet(OBS, ACT, hidden=H, layers=2, seeds=S)
        stacked.load_state_dict({n: p.unsqueeze(0).expand(S, *p.shape) for n, p in single.state_dict().items()})
        s = torch.randn(B, OBS)
        want = fused_chain(single, sched, s, None, None, seed=123, particles=N)
        got = fused_chain(stacked, sched, s.expand(S, B, OBS), None, None, seed=123, particles=N)
        assert got.shape == (S, B * N, ACT)
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-6)
        if S == 2:
            assert not torch.allclose(got[0], got[1])


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("per_k", [False, True])
def test_sm_loss_with_a_seed_axis_matches_the_reference(seeds, per_k):
    """The fused weighted loss over [S, B, ...] in one launch: each seed's loss and gradient equal the reference
    on that seed's slice (the gradient of the sum over seeds is each seed's own)."""
    from fastrsm.kernels import fused_weighted_sm_loss

    from fastrsm.losses import weighted_sm_loss

    torch.manual_seed(0)
    B, K, A = 5, 7, 3
    tgt = torch.randn(seeds, B, K, A)
    logits = torch.randn(seeds, B, K) * 3
    pred = torch.randn(seeds, B, K, A) if per_k else torch.randn(seeds, B, A)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    got = fused_weighted_sm_loss(p1, tgt, logits)
    assert got.shape == (seeds,)
    want = torch.stack([weighted_sm_loss(p2[k], tgt[k], logits[k]) for k in range(seeds)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    w = torch.arange(1.0, seeds + 1)  # a different weight per seed: the backward scales each seed's rows alone
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["dpmd", "sac"])
def test_graphed_agent_captures_the_s_seed_act_and_update(algo):
    """fastrsm.graphs with an S-seed agent (emulated capture on CPU): act is captured for [S, E, obs] and the
    replayed updates equal the eager ones bit for bit."""
    from fastrsm.graphs import GraphedLearner
    from fastrsm.seeds import SeedReplay

    cfg = _cfg(algo)
    ops = make_ops("torch", "cpu")
    agents = []
    for _ in range(2):
        torch.manual_seed(0)
        agents.append(make_agent(algo, OBS, ACT, cfg, torch.device("cpu"), ops, seeds=2))
    rb = SeedReplay(2, 64, OBS, ACT, "cpu", cfg.batch_size)
    g = np.random.default_rng(0)
    n = 2 * 30
    rb.add(g.normal(size=(n, OBS)), g.uniform(-1, 1, (n, ACT)), g.normal(size=n), g.normal(size=(n, OBS)),
           g.random(n) < 0.1, np.ones(n, bool))
    fast = GraphedLearner(agents[1], 3, emulate=True)
    obs = torch.randn(2, 3, OBS)
    fast.capture(rb, obs)
    assert True in fast._acts and fast.obs_shape == (2, 3, OBS)
    torch.manual_seed(5)
    for _ in range(3):
        Learner(agents[0]).update(rb)
    a0 = agents[0].act(obs)
    torch.manual_seed(5)
    for _ in range(3):
        fast.update(rb)
    a1 = fast.act(obs)
    assert a1.shape == (2, 3, ACT)
    torch.testing.assert_close(a1, a0, rtol=0, atol=0)
    _assert_tree_close(agents[1].checkpoint(), agents[0].checkpoint(), exact=True)
