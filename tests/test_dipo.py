"""DIPO against hand computations: the action gradient's Adam steps (with the gradient-norm clip, the clamp, the min
of the twin critics, per seed), the denoising loss and its gradient, the network gradient clips, the write-back of
the moved actions into the replay (ReplayBuffer and SeedReplay, through state_dict), the bootstrap and acting; the
compiled and (emulated) CUDA-graph updates against the eager one, replays included; a resumed run equals a straight
one with the moved actions in its checkpoint."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastrsm.agents import make_agent
from fastrsm.agents.base import clip_grad_norm
from fastrsm.agents.dipo import action_gradient, denoising_loss
from fastrsm.backend import compiler_available, make_ops
from fastrsm.config import ConfigError, make_config
from fastrsm.diffusion import Schedule
from fastrsm.graphs import GraphedLearner
from fastrsm.learner import Learner, OneBatch
from fastrsm.replay import Batch, ReplayBuffer, RowBatch
from fastrsm.seeds import SeedReplay

S, A = 5, 2
LR = 0.03


def _agent(seeds=None, **over):
    cfg = make_config("smoke", {"algo": "dipo", "device": "cpu", "hidden": 16, "batch_size": 8, "diffusion_steps": 3,
                                "particles": 4, **over})
    torch.manual_seed(0)
    return make_agent("dipo", S, A, cfg, torch.device("cpu"), make_ops(cfg.backend, "cpu"), seeds=seeds)


def _replay(n: int = 40, capacity: int = 64, batch: int = 8) -> ReplayBuffer:
    rb = ReplayBuffer(capacity, S, A, "cpu", batch)
    g = np.random.default_rng(0)
    rb.add(g.normal(size=(n, S)), g.uniform(-1, 1, (n, A)), g.normal(size=n), g.normal(size=(n, S)),
           g.random(n) < 0.2, np.ones(n, bool))
    return rb


class KnownQ(torch.nn.Module):
    """Q1(a) = −((a₀ − 0.5)² + (a₁ + 0.25)²), Q2(a) = 0.3·a₀ − 0.1·a₁ − 2, whatever the state."""

    def min_q(self, obs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        q1 = -((a[..., 0] - 0.5) ** 2 + (a[..., 1] + 0.25) ** 2)
        q2 = 0.3 * a[..., 0] - 0.1 * a[..., 1] - 2.0
        return torch.minimum(q1, q2)


# row 0: Q1 < Q2 (far from Q1's peak); row 1: Q2 < Q1; row 2: Q2 < Q1 at the box's corner (the clamp acts)
A0 = torch.tensor([[-1.0, 1.0], [0.4, -0.2], [0.99, -0.99]])


def _grad_of_minus_min_q(a: torch.Tensor) -> torch.Tensor:
    """∇_a of −Σ min Q for the rows of A0 by hand: −∇Q1 = 2(a − (0.5, −0.25)) on row 0, −∇Q2 = (−0.3, 0.1) else."""
    g = torch.tensor([[-0.3, 0.1]]).repeat(a.shape[0], 1)
    g[0] = 2 * (a[0] - torch.tensor([0.5, -0.25]))
    return g


def _adam_by_hand(a: torch.Tensor, steps: int, max_norm: float, lr: float) -> torch.Tensor:
    m, v = torch.zeros_like(a), torch.zeros_like(a)
    for k in range(1, steps + 1):
        g = _grad_of_minus_min_q(a)
        norm = g.norm().item()
        if max_norm > 0 and norm > max_norm:
            g = g * (max_norm / norm)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        a = (a - lr * (m / (1 - 0.9 ** k)) / ((v / (1 - 0.999 ** k)).sqrt() + 1e-8)).clamp(-1, 1)
    return a


def test_one_action_step_moves_each_coordinate_by_lr_uphill_and_clamps():
    obs = torch.zeros(3, S)
    got = action_gradient(KnownQ(), obs, A0, steps=1, lr=LR, max_norm=0.2)
    # Adam's first step is lr·sign(g) whatever the clip's scale; ascent on min Q: row 0 climbs Q1 towards
    # (0.5, −0.25), rows 1 and 2 climb Q2 (+a₀, −a₁); row 2 leaves the box and is clamped back to its corner
    want = torch.tensor([[-1.0 + LR, 1.0 - LR], [0.4 + LR, -0.2 - LR], [1.0, -1.0]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_two_action_steps_by_hand_with_the_clip():
    # lr 0.3: a step long enough for row 0's gradient (and with it the batch's norm) to shrink by a fifth, so that the
    # clip, which rescales each step's gradient by its own 0.2/‖g‖, changes Adam's ratio of moments visibly
    obs, lr = torch.zeros(3, S), 0.3
    got = action_gradient(KnownQ(), obs, A0, steps=2, lr=lr, max_norm=0.2)
    torch.testing.assert_close(got, _adam_by_hand(A0, 2, 0.2, lr), rtol=0, atol=1e-6)
    unclipped = action_gradient(KnownQ(), obs, A0, steps=2, lr=lr, max_norm=0.0)
    torch.testing.assert_close(unclipped, _adam_by_hand(A0, 2, 0.0, lr), rtol=0, atol=1e-6)
    assert (got - unclipped).abs().max() > 1e-3
    assert got.abs().max() <= 1.0


def test_action_steps_clip_each_seed_by_its_own_norm():
    obs, lr = torch.zeros(2, 3, S), 0.3
    other = torch.tensor([[0.4, -0.2], [0.1, 0.0], [-0.3, 0.2]])  # Q2's rows: a constant gradient, norm √0.3
    both = torch.stack([A0, other])
    got = action_gradient(KnownQ(), obs, both, steps=3, lr=lr, max_norm=0.2, seeds=2)
    torch.testing.assert_close(got[0], action_gradient(KnownQ(), obs[0], A0, 3, lr, 0.2))
    torch.testing.assert_close(got[1], action_gradient(KnownQ(), obs[1], other, 3, lr, 0.2))
    joint = action_gradient(KnownQ(), obs.flatten(0, 1), both.flatten(0, 1), 3, lr, 0.2).view(2, 3, A)
    assert (joint[0] - got[0]).abs().max() > 1e-4  # one norm over both seeds would have scaled seed 0 otherwise


def test_action_gradient_leaves_the_critic_without_gradient():
    agent = _agent()
    obs, a = torch.randn(6, S), torch.rand(6, A) * 2 - 1
    moved = action_gradient(agent.critic, obs, a, steps=3, lr=LR, max_norm=0.2)
    assert not moved.requires_grad and moved.abs().max() <= 1
    assert all(p.grad is None for p in agent.critic.parameters())
    # uphill: min Q at the moved actions is higher than at the start, row by row, for a small step
    with torch.no_grad():
        assert (agent.critic.min_q(obs, moved) > agent.critic.min_q(obs, a)).float().mean() > 0.5


def test_denoising_loss_and_gradient_by_hand():
    sched = Schedule.build("linear", 4, 0.8)
    W = torch.tensor([[0.5, -1.0], [2.0, 0.25]], requires_grad=True)
    policy = SimpleNamespace(sched=sched, eps_net=lambda a_t, s, t: a_t @ W.T)  # ε_θ(a_t) = W a_t
    obs = torch.zeros(3, S)
    a = torch.tensor([[0.2, -0.4], [1.0, 0.0], [-0.6, 0.8]])
    t = torch.tensor([0, 3, 1])
    eps = torch.tensor([[1.0, 0.0], [-0.5, 0.5], [0.25, -2.0]])
    loss = denoising_loss(policy, obs, a, t, eps)
    a_t = sched.sqrt_abar[t][:, None] * a + sched.sqrt_1m_abar[t][:, None] * eps
    err = a_t @ W.detach().T - eps
    torch.testing.assert_close(loss, (err ** 2).sum() / 6)
    (g,) = torch.autograd.grad(loss, W)
    torch.testing.assert_close(g, 2 / 6 * err.T @ a_t)  # ∂/∂W of mean ‖W a_t − ε‖²


def test_clip_grad_norm_per_model():
    p = torch.nn.Parameter(torch.zeros(2, 3))
    q = torch.nn.Parameter(torch.zeros(2, 1))
    p.grad = torch.tensor([[3.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    q.grad = torch.tensor([[4.0], [0.1]])
    clip_grad_norm([p, q], 1.0, models=1)  # model 0's norm is 5 -> scaled by 1/5; model 1's is under 1: kept
    torch.testing.assert_close(p.grad, torch.tensor([[0.6, 0.0, 0.0], [0.1, 0.0, 0.0]]))
    torch.testing.assert_close(q.grad, torch.tensor([[0.8], [0.1]]))
    clip_grad_norm([p, q], 0.5)  # one global norm over everything
    total = math.sqrt(0.36 + 0.01 + 0.64 + 0.01)
    torch.testing.assert_close(q.grad, torch.tensor([[0.8], [0.1]]) * 0.5 / total)


def test_update_clips_each_critic_and_the_policy():
    agent = _agent(dipo_grad_norm=1e-3)  # far below the gradients' norms: every clip acts
    Learner(agent).update(_replay())
    for p in agent.critic.parameters():  # [2, ...]: the twin's members are clipped apart
        assert p.grad.shape[0] == 2
    norms = torch.stack([p.grad.square().flatten(1).sum(1) for p in agent.critic.parameters()]).sum(0).sqrt()
    torch.testing.assert_close(norms, torch.full((2,), 1e-3))
    pol = torch.stack([p.grad.square().sum() for p in agent.policy.parameters()]).sum().sqrt()
    torch.testing.assert_close(pol, torch.tensor(1e-3))


def test_policy_step_fits_the_moved_actions_and_writes_them_back():
    agent = _agent()
    rb = _replay()
    actions_before = rb.action.clone()
    torch.manual_seed(3)
    batch = agent.draw_batch(rb)
    assert isinstance(batch, RowBatch)
    torch.testing.assert_close(batch.kept(), batch.action)  # nothing written yet: the copy is the actions
    want = action_gradient(agent.critic, batch.obs, batch.kept(), 20, LR, 0.2)
    torch.manual_seed(4)
    t = torch.randint(0, agent.policy.sched.T, (8,))
    eps = torch.randn(8, A)
    want_loss = denoising_loss(agent.policy, batch.obs, want, t, eps)
    critic_before = [p.clone() for p in agent.critic.parameters()]
    torch.manual_seed(4)
    m = agent.policy_step(batch, None)
    torch.testing.assert_close(m["loss_pi"], want_loss)
    assert all(torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters()))
    drawn = sorted(set(batch.rows.tolist()))
    torch.testing.assert_close(rb.writable_action[drawn], want[[batch.rows.tolist().index(r) for r in drawn]])
    assert not torch.equal(rb.writable_action[drawn], rb.action[drawn])  # they moved
    others = [r for r in range(64) if r not in drawn]
    assert torch.equal(rb.writable_action[others], rb.action[others])  # every other row untouched
    assert torch.equal(rb.action, actions_before)  # the critics' column keeps the actions taken
    # the next draw of a written row starts from the moved action
    again = rb.sample_rows()
    torch.testing.assert_close(again.kept(), rb.writable_action[again.rows])


def test_written_actions_survive_state_dict_and_new_rows_start_as_taken():
    agent, rb = _agent(), _replay(capacity=50)
    for _ in range(3):
        Learner(agent).update(rb)
    moved = rb.writable_action[:40].clone()
    assert not torch.equal(moved, rb.action[:40])
    state = rb.state_dict()
    assert torch.equal(state["writable_action"], moved)
    other = ReplayBuffer(50, S, A, "cpu", 8)
    other.load_state_dict(state)
    assert torch.equal(other.writable_action[:40], moved) and torch.equal(other.action[:40], rb.action[:40])
    g = np.random.default_rng(1)
    other.add(g.normal(size=(15, S)), g.uniform(-1, 1, (15, A)), g.normal(size=15), g.normal(size=(15, S)),
              np.zeros(15, bool))  # wraps: rows 40..49 and 0..4
    assert torch.equal(other.writable_action[40:], other.action[40:])
    assert torch.equal(other.writable_action[:5], other.action[:5])
    assert torch.equal(other.writable_action[5:40], moved[5:])
    # a state from a run that never wrote makes no copy; a copy made later starts as the actions
    plain = ReplayBuffer(50, S, A, "cpu", 8)
    plain.load_state_dict(_replay(capacity=50).state_dict())
    assert plain.writable_action is None and "writable_action" not in plain.state_dict()
    assert torch.equal(plain.writable_actions(), plain.action)


def test_seed_replay_writes_each_seed_in_its_own_slice():
    rb = SeedReplay(2, 16, S, A, "cpu", 4)
    g = np.random.default_rng(0)
    rb.add(g.normal(size=(2, 10, S)), g.uniform(-1, 1, (2, 10, A)), g.normal(size=(2, 10)), g.normal(size=(2, 10, S)),
           np.zeros((2, 10), bool))
    batch = rb.sample_rows()
    assert batch.rows.shape == (2, 4) and (batch.rows[0] < 16).all() and (batch.rows[1] >= 16).all()
    torch.testing.assert_close(batch.kept(), batch.action)
    new = torch.full((2, 4, A), 0.5)
    new[1] = -0.5
    batch.write(new)
    idx = batch.rows - torch.tensor([[0], [16]])
    for s, val in ((0, 0.5), (1, -0.5)):
        rows = sorted(set(idx[s].tolist()))
        assert (rb.writable_action[s, rows] == val).all()
        rest = [r for r in range(10) if r not in rows]
        assert torch.equal(rb.writable_action[s, rest], rb.action[s, rest])
    state = rb.state_dict(1)
    other = SeedReplay(2, 16, S, A, "cpu", 4)
    other.load_state_dict(1, state)
    assert torch.equal(other.writable_action[1, :10], rb.writable_action[1, :10])
    assert torch.equal(other.writable_action[0], other.action[0])  # seed 0 loaded nothing: its own (zero) rows


def test_a_fixed_batch_is_updated_on_with_nothing_written():
    agent = _agent()
    batch = _replay().sample()
    m = Learner(agent).update(OneBatch(batch))
    assert torch.isfinite(m["loss_pi"]) and m["action_shift"] > 0


def test_bootstrap_is_one_target_policy_sample_under_the_target_critics():
    agent = _agent()
    with torch.no_grad():  # targets that differ from the online networks, so that a mix-up shows
        for prm in [*agent.policy_target.parameters(), *agent.critic_target.parameters()]:
            prm.add_(0.3 * torch.randn_like(prm))
    s2 = torch.randn(4, S)
    torch.manual_seed(7)
    got, _ = agent.next_action_value(s2)
    torch.manual_seed(7)
    a2 = agent.policy_target.sample(s2, 1).squeeze(-2)
    torch.testing.assert_close(got, agent.critic_target.min_q(s2, a2))


def test_acting_one_noisy_sample_exploring_best_of_n_evaluating():
    agent = _agent(particles=6, dipo_explore_noise=0.3)
    obs = torch.randn(5, S)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    a = agent.act(obs, explore=True, generator=gen())
    g = gen()
    x0 = agent.policy.sample(obs, 1, generator=g).squeeze(-2)
    z = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(a, (x0 + 0.3 * z).clamp(-1, 1))
    det = agent.act(obs, explore=False, generator=gen())
    cand = agent.policy.sample(obs, 6, generator=gen())
    q = agent.critic.min_q(obs.unsqueeze(1).expand(5, 6, S), cand)
    torch.testing.assert_close(det, cand[torch.arange(5), q.argmax(1)])


def test_update_moves_the_target_policy_by_polyak():
    agent = _agent()
    before = [p.clone() for p in agent.policy_target.parameters()]
    Learner(agent).update(_replay())
    tau = agent.cfg.tau
    for b, p, t in zip(before, agent.policy.parameters(), agent.policy_target.parameters()):
        torch.testing.assert_close(t, b + tau * (p - b))


def _same(agent_a, rb_a, agent_b, rb_b, atol=0.0, rtol=0.0):
    for (k, v), w in zip(agent_a.state_dict().items(), agent_b.state_dict().values()):
        torch.testing.assert_close(w, v, atol=atol, rtol=rtol, msg=k)
    torch.testing.assert_close(rb_b.writable_action, rb_a.writable_action, atol=atol, rtol=rtol)


def test_emulated_graphs_equal_eager_replay_included():
    """Graph warm-ups run updates that write into the replay: the snapshot must undo those writes too."""
    eager, rb_e = _agent(), _replay()
    graphed, rb_g = _agent(), _replay()
    fast = GraphedLearner(graphed, 3, emulate=True)
    for learner, rb in ((Learner(eager), rb_e), (fast, rb_g)):
        torch.manual_seed(1)
        for _ in range(5):
            learner.update(rb)
    assert fast.captures == 1
    _same(eager, rb_e, graphed, rb_g)


@pytest.mark.skipif(not compiler_available(), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_update_equals_eager_in_one_graph_replay_included():
    import torch._inductor.config as inductor

    from fastrsm.compiled import _TRACE_BACKWARD, CompiledLearner

    over = dict(dipo_action_steps=2, backend="compile")  # two steps: the unrolled loop compiles sooner
    eager, rb_e = _agent(**{**over, "backend": "torch"}), _replay()
    compiled, rb_c = CompiledLearner(_agent(**over)), _replay()
    if _TRACE_BACKWARD:  # explain runs the update: on an agent of its own
        other = _agent(**over)
        with torch._dynamo.config.patch(**_TRACE_BACKWARD):
            update = torch._dynamo.explain(lambda b: other.update_step(b, ("critic", "policy")))
            ex = update(other.draw_batch(_replay()))
        assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(r.reason)[:200] for r in ex.break_reasons]
    with inductor.patch(fallback_random=True):  # the same random stream as eager
        for learner, rb in ((Learner(eager), rb_e), (compiled, rb_c)):
            torch.manual_seed(1)
            for _ in range(3):
                learner.update(rb)
    assert not torch.equal(rb_c.writable_action[:40], rb_c.action[:40])  # the compiled update wrote back
    _same(eager, rb_e, compiled.agent, rb_c, atol=1e-5, rtol=1e-4)


def test_resumed_run_equals_straight_run_with_the_moved_actions_checkpointed(tmp_path):
    from fastrsm.train import main

    tiny = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet", "--algo", "dipo",
            "--warmup-steps", "100", "--eval-every", "150", "--checkpoint-every", "150", "--eval-episodes", "2",
            "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "50",
            "--dipo-action-steps", "5"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*tiny, "--total-steps", "450", "--run-dir", str(straight)]) == 0
    assert main([*tiny, "--total-steps", "300", "--run-dir", str(split)]) == 0
    ckpt = torch.load(os.path.join(split, "checkpoints", "latest.pt"), weights_only=False)
    replay = ckpt["replay"]
    assert replay["writable_action"].shape == replay["action"].shape
    assert not torch.equal(replay["writable_action"], replay["action"])
    assert main(["--resume", str(split), "--total-steps", "450", "--quiet"]) == 0
    assert (straight / "eval.csv").read_text() == (split / "eval.csv").read_text()
    a = torch.load(os.path.join(straight, "checkpoints", "latest.pt"), weights_only=False)
    b = torch.load(os.path.join(split, "checkpoints", "latest.pt"), weights_only=False)
    assert all(torch.equal(a["agent"]["modules"][k], v) for k, v in b["agent"]["modules"].items())
    assert torch.equal(a["replay"]["writable_action"], b["replay"]["writable_action"])


@pytest.mark.parametrize("over, needle", [({"dipo_action_steps": -1}, "dipo-action-steps"),
                                          ({"dipo_action_lr": -0.1}, "dipo-action-lr"),
                                          ({"dipo_action_grad_norm": math.nan}, "dipo-action-grad-norm"),
                                          ({"dipo_grad_norm": -1}, "dipo-grad-norm"),
                                          ({"dipo_explore_noise": -1}, "dipo-explore-noise")])
def test_bad_settings_are_refused(over, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("smoke", {"algo": "dipo", **over})


def test_paper_preset_entry():
    cfg = make_config("paper", {"algo": "dipo"})
    assert (cfg.diffusion_steps, cfg.schedule, cfg.particles) == (100, "vp", 1)
    assert (cfg.dipo_action_steps, cfg.dipo_action_lr, cfg.dipo_action_grad_norm, cfg.dipo_grad_norm) == \
        (20, 0.03, 0.2, 2.0)
    assert (cfg.lr_q, cfg.lr_policy, cfg.tau) == (3e-4, 3e-4, 0.005)


def test_batch_fields_are_shared():
    assert RowBatch._fields[:5] == Batch._fields  # code that reads a Batch reads a RowBatch
