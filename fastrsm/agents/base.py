"""What every agent shares: twin critics with Polyak targets, the TD update, optimiser plumbing, and the one
update schedule.

An update is made of *parts* (the critic step always; the policy step with its EMA/target updates, and the
temperature step, periodically). Which parts the next update runs is decided here, on the host, from the
agent's counters (`next_parts`), and nowhere else: `update_step(batch, parts)` then runs exactly those parts
as a pure function of device tensors (no `.item()`, no host branching on values), so fastrsm.learner can
run it eagerly, compiled or as one CUDA graph per distinct `Parts`. An algorithm with another periodic step
overrides `parts_for` (and `update_step`); the learner needs no change."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..backend import Ops
from ..diffusion import randn
from ..losses import critic_loss, td_target
from ..nets import TwinQ
from ..profiling import nvtx_range
from ..replay import Batch
from ..settings import AlgoSettings, Config

# The names of the parts one update runs, in order, e.g. ("critic",), ("critic", "policy", "alpha").
# Hashable: fastrsm.graphs keeps one captured graph per distinct value.
Parts = tuple[str, ...]


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def make_adam(params, lr: float, device: torch.device, compiled: bool = False) -> torch.optim.Adam:
    # On CUDA the learning rate is a device tensor and the optimiser capturable, so that a captured update
    # graph sees schedule changes (written in place) without re-capture. Compiled on a CPU, the lr is a tensor
    # too (a float would be a guard: every schedule change would recompile) and Adam is fused (one kernel).
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), capturable=True)
    if compiled:
        opt = torch.optim.Adam(params, lr=torch.tensor(lr), fused=True)
        prepare_traced_adam(opt)
        return opt
    return torch.optim.Adam(params, lr=lr)


def prepare_traced_adam(opt: torch.optim.Adam) -> None:
    """Create a fused Adam's state and its parameters' gradients now (zeros, as its first step would), so that
    `gradient_step` can be traced into one graph from the first update on: no lazy initialisation, and no
    gradient that is None on the first call and a tensor after it (each would be a guard and a recompile)."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not opt.state[p]:
                opt.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                    exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                    exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
            if p.grad is None:
                p.grad = torch.zeros_like(p)


@torch.no_grad()
def _traced_adam_step(opt: torch.optim.Adam) -> None:
    """Adam's step (Kingma & Ba, with torch's bias corrections and eps outside the square root) in elementwise
    tensor ops that dynamo traces and inductor fuses, on the optimiser's own state. `Optimizer.step` breaks the
    graph before and after every step, and `_fused_adam_` with a tensor lr has no meta kernel to trace; the lr
    stays a tensor so that schedule changes need no recompilation."""
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            st, g = opt.state[p], p.grad
            if wd:
                g = g.add(p, alpha=wd)
            st["step"].add_(1)
            st["exp_avg"].lerp_(g, 1 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias1 = 1 - beta1 ** st["step"]
            bias2_sqrt = (1 - beta2 ** st["step"]).sqrt()
            p.sub_(lr / bias1 * st["exp_avg"] / (st["exp_avg_sq"].sqrt() / bias2_sqrt + eps))


def _traceable(opt: torch.optim.Optimizer) -> bool:
    d = opt.defaults
    return (isinstance(opt, torch.optim.Adam) and bool(d.get("fused")) and not d.get("amsgrad")
            and not d.get("maximize") and not d.get("decoupled_weight_decay"))


def global_norm_scale(tensors: list[torch.Tensor], max_norm: float, models: int = 0) -> torch.Tensor:
    """The factor max_norm / max(‖g‖, max_norm) that clips the global norm of `tensors` to `max_norm` (optax's
    clip_by_global_norm). The first `models` axes of every tensor index independent models (the seed axis, the
    critics' ensemble axis): each gets its own norm and factor, shaped [*those axes], so that one seed's or one
    critic's gradient never scales another's."""
    sq = torch.stack([t.square().flatten(models).sum(-1) for t in tensors]).sum(0)
    return max_norm / sq.sqrt().clamp_min(max_norm)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, models: int = 0) -> None:
    """Clip the gradients of `params` in place to global norm `max_norm`, per model (`global_norm_scale`)."""
    grads = [p.grad for p in params if p.grad is not None]
    scale = global_norm_scale(grads, max_norm, models)
    for g in grads:
        g.mul_(scale.reshape(scale.shape + (1,) * (g.dim() - models)))


def gradient_step(opt: torch.optim.Optimizer, loss: torch.Tensor,
                  inputs: list[torch.Tensor] | None = None, max_norm: float = 0.0, models: int = 0) -> None:
    """One gradient step of `opt` on `loss`: zero the gradients, backward (into `inputs` only, when given: e.g. the
    actor's weights when the loss runs through the critic), step. `max_norm` > 0 clips the gradients of `opt`'s
    parameters to that global norm first, per model along their first `models` axes (`clip_grad_norm`). With the
    fused Adam of a compiled CPU run the step is `_traced_adam_step`, so that dynamo traces the whole update as one
    graph (fastrsm.compiled)."""
    if _traceable(opt):
        # Optimizer.zero_grad is skipped by dynamo (a graph break); the gradients exist (prepare_traced_adam)
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.zero_()
        _backward(loss, inputs)
        if max_norm > 0:
            clip_grad_norm([p for g in opt.param_groups for p in g["params"]], max_norm, models)
        _traced_adam_step(opt)
        return
    opt.zero_grad(set_to_none=False)
    _backward(loss, inputs)
    if max_norm > 0:
        clip_grad_norm([p for g in opt.param_groups for p in g["params"]], max_norm, models)
    opt.step()


def _backward(loss: torch.Tensor, inputs: list[torch.Tensor] | None) -> None:
    if inputs is None:  # dynamo traces `backward()` but not `backward(inputs=None)`
        loss.backward()
    else:
        loss.backward(inputs=inputs)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


# How an optimiser was built for its backend (make_adam), not what it learned: a checkpoint must not carry these
# from the backend that wrote it to the one that resumes it.
_BUILD_KEYS = ("capturable", "fused", "foreach", "differentiable")


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Optimizer.load_state_dict that keeps how `opt` was built. A plain load takes the saved groups whole, so a
    run begun eager and resumed compiled got back a float lr and an unfused Adam: every lr-schedule change then
    recompiled the step until dynamo's recompile limit sent it back to eager (and on CUDA a non-capturable Adam
    would break graph capture). The saved lr's value is kept, in the form (float, or tensor on its device) that
    `opt` was built with; the build flags are `opt`'s own, set before loading so the `step` counters land where
    they must (on the parameters' device when fused or capturable)."""
    saved = state.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(opt.param_groups):
        opt.load_state_dict(state)  # let torch's own check report the mismatch
        return
    groups = []
    for cur, old in zip(opt.param_groups, saved):
        g = dict(old)
        for k in _BUILD_KEYS:
            if k in cur:
                g[k] = cur[k]
        lr = float(old["lr"])
        g["lr"] = torch.tensor(lr, device=cur["lr"].device) if torch.is_tensor(cur["lr"]) else lr
        groups.append(g)
    opt.load_state_dict({**state, "param_groups": groups})
    if _traceable(opt):  # a checkpoint written before the first step has no Adam state; the traced step needs it
        prepare_traced_adam(opt)


def noisy_action(a: torch.Tensor, std: float | torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """clip(a + std·N(0, I), −1, 1): Gaussian exploration kept inside the action box; differentiable in `a`."""
    z = randn(a.shape, device=a.device, dtype=a.dtype, generator=generator)
    return (a + std * z).clamp(-1.0, 1.0)


def linear_decay(step: int, start: int, end: int, v0: float, v1: float) -> float:
    if step <= start:
        return v0
    if step >= end:
        return v1
    return v0 + (v1 - v0) * (step - start) / (end - start)


def checkpoint_state(agent: Any, counters: tuple[str, ...]) -> dict[str, Any]:
    """What every agent's checkpoint holds: its algo, modules, optimisers and the named integer counters."""
    return {"algo": agent.algo, "modules": agent.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
            **{c: getattr(agent, c) for c in counters}}


def restore_state(agent: Any, ckpt: dict[str, Any], weights_only: bool, counters: tuple[str, ...]) -> bool:
    """Load `checkpoint_state`'s part of `ckpt` into `agent`: the modules, and unless `weights_only` the optimisers
    and counters. A checkpoint of another algorithm is a ValueError. Returns whether the training state was loaded
    (the caller then loads its own extra state)."""
    if ckpt.get("algo") != agent.algo:
        raise ValueError(f"checkpoint is of algo {ckpt.get('algo')!r}, not {agent.algo!r}")
    agent.load_state_dict(ckpt["modules"])
    if weights_only:
        return False
    for k, o in agent.optimizers().items():
        load_optimizer(o, ckpt["optimizers"][k])
    for c in counters:
        setattr(agent, c, int(ckpt[c]))
    return True


class Agent(nn.Module):
    """Base: twin critics, their targets, counters and checkpointing. Subclasses add the policy."""

    algo = "base"
    about = ""  # one line: what the algorithm is and its source (--help, the unknown-algo error, README)
    Settings: type[AlgoSettings] = AlgoSettings  # the algorithm's own settings (fastrsm.config), none here
    on_policy = False  # True: fastrsm.runner collects rollouts for it (fastrsm.onpolicy), not a replay
    supports_seeds = True  # the seed axis of fastrsm.seeds (every parameter, statistic and input stacked over S)
    # fastrsm.compiled traces `backward()` into the update's graph (one graph per update); an agent whose update
    # does not compile equal to eager that way sets this False and keeps the graph breaks at backward()
    trace_backward = True
    # > 0: the critics' gradients are clipped to this global norm, each critic (and seed) by its own (DIPO's 2.0)
    max_grad_norm = 0.0

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__()
        self.obs_dim, self.act_dim, self.cfg, self.device = obs_dim, act_dim, cfg, device
        self.ops = ops  # the hot paths of the chosen backend (fastrsm.backend.make_ops), given by the caller
        # seeds=None: one agent, today's shapes. seeds=S: S independent agents in one (fastrsm.seeds): every
        # parameter, statistic and α has a leading seed axis, inputs are [S, B, ...], each loss is [S] (every
        # seed's own batch mean) and the gradient step uses their sum, so seed s's gradient is its own run's.
        # One Adam over the stacked parameters keeps the seeds independent: Adam is elementwise (its moments are
        # per element; the step count is the same for all seeds).
        self.seeds = seeds
        self.critic = self.make_critic()
        self.critic_target = frozen_copy(self.critic)
        self.compiled = ops.backend == "compile"  # whole-function torch.compile (fastrsm.compiled)
        self.opt_q = make_adam(self.critic.parameters(), cfg.lr_q, device, self.compiled)
        self.updates = 0  # gradient (critic) updates so far
        self.policy_updates = 0

    # -- the parts a subclass provides
    def make_critic(self) -> nn.Module:
        """The twin critics (with `min_q`); an algorithm with another critic (DACER's distributional one)
        overrides this, and the base builds its targets and optimiser the same way."""
        cfg = self.cfg
        return TwinQ(self.obs_dim, self.act_dim, cfg.hidden, cfg.critic_layers or cfg.layers, seeds=self.seeds,
                     activation=cfg.critic_activation).to(self.device)

    def deploy_particles(self) -> int | None:
        """The best-of-N candidates a deployed policy acts with (`load_policy` reports it); None: not best-of-N."""
        return None

    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions in [-1, 1] for `obs`; random draws from `generator` (None: torch's global generator)."""
        raise NotImplementedError

    def draw_batch(self, replay: Any) -> Any:
        """The batch the next update runs on (every learner draws it here): `replay.sample()`. An agent whose update
        writes into the replay draws one that says where its rows are (DIPO: `ReplayBuffer.sample_rows`)."""
        return replay.sample()

    def written_in_replay(self, replay: Any) -> list[torch.Tensor]:
        """The replay's tensors that this agent's update writes (none here): a warm-up that runs updates and then
        undoes them (graph capture, compiled capture: fastrsm.graphs.Snapshot) restores these too."""
        return []

    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """min Q'(s', a') of the bootstrap, and what the policy step can reuse of its computation."""
        raise NotImplementedError

    def policy_step(self, batch: Batch, reuse: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def alpha_step(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def logged(self) -> dict[str, torch.Tensor]:
        """Device values the run logs beside the update's metrics at each log interval (read there, one sync):
        the temperature of an agent that has one."""
        return {"alpha": self.alpha} if hasattr(self, "log_alpha") else {}

    # -- the seed axis (no-ops for a single agent)
    def per_seed(self, x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
        """A per-seed value x ([S]: α, running statistics) shaped to broadcast against `like` ([S, ...])."""
        if self.seeds is None or not torch.is_tensor(x):
            return x
        return x.reshape(x.shape + (1,) * (like.dim() - x.dim()))

    def seed_mean(self, x: torch.Tensor, seed_dim: int = 0) -> torch.Tensor:
        """A metric's mean: over everything (single agent), or over everything but the seed axis ([S])."""
        if self.seeds is None:
            return x.mean()
        return x.movedim(seed_dim, 0).reshape(self.seeds, -1).mean(-1)

    def total(self, loss: torch.Tensor) -> torch.Tensor:
        """What is differentiated: the loss itself, or the sum over seeds of each seed's own mean."""
        return loss if self.seeds is None else loss.sum()

    # -- the schedule: which parts each update runs (host side, the only place that decides it)
    def parts_for(self, updates: int) -> Parts:
        """The parts of the update that follows `updates` gradient updates: the policy (with the EMA and critic
        targets) every `policy_delay` updates, the temperature every `alpha_every` gradient updates (the authors
        test `step % 250` on their update counter; never with a fixed temperature, `learn_alpha` false)."""
        parts: Parts = ("critic",)
        if (updates + 1) % self.cfg.policy_delay == 0:
            parts += ("policy",)
        if self.cfg.learn_alpha and (updates + 1) % self.cfg.alpha_every == 0:
            parts += ("alpha",)
        return parts

    def next_parts(self) -> Parts:
        return self.parts_for(self.updates)

    def reachable_parts(self) -> list[Parts]:
        """Every distinct `Parts` a run can take, in order of first appearance (graphs capture them up front).
        The schedule is periodic in the counters; one period of it is simulated."""
        seen: list[Parts] = []
        for u in range(self.schedule_period()):
            parts = self.parts_for(u)
            if parts not in seen:
                seen.append(parts)
        return seen

    def schedule_period(self) -> int:
        """Updates after which `parts_for` repeats itself (a multiple of the true period is fine)."""
        return math.lcm(self.cfg.policy_delay, self.cfg.alpha_every)

    def advance(self, parts: Parts) -> None:
        """Count the update that ran `parts`."""
        self.updates += 1
        self.policy_updates += "policy" in parts

    def schedule(self) -> None:
        """Host-side schedules (learning rates) for the next update, from the counters, written in place into the
        optimisers' lr (device tensors on CUDA), so that a captured `update_step` reads them at replay."""

    # -- the update
    def critic_step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], Any]:
        with torch.no_grad():
            next_v, reuse = self.next_action_value(batch.next_obs)
            y = td_target(batch.reward, batch.terminated, next_v, self.cfg.gamma, self.cfg.reward_scale)
        q = self.critic(batch.obs, batch.action)
        loss = critic_loss(q, y)
        # the critics' parameters lead with [E] (seeds: [S, E]): a clip takes each member's own norm
        gradient_step(self.opt_q, self.total(loss), max_norm=self.max_grad_norm, models=1 + (self.seeds is not None))
        return {"loss_q": loss.detach(), "q_mean": self.seed_mean(q.detach(), seed_dim=1)}, reuse

    def update_step(self, batch: Batch, parts: Parts) -> dict[str, torch.Tensor]:
        """The device work of an update that runs `parts` (what a CUDA graph captures); reads no counter."""
        with nvtx_range("critic_update"):
            metrics, reuse = self.critic_step(batch)
        if "policy" in parts:
            with nvtx_range("policy_update"):
                metrics.update(self.policy_step(batch, reuse))
                polyak(self.critic_target, self.critic, self.cfg.tau)
                self.after_policy_step()
        if "alpha" in parts:
            with nvtx_range("alpha_update"):
                metrics.update(self.alpha_step())
        return metrics

    def after_policy_step(self) -> None:
        pass

    # -- checkpoints
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def checkpoint(self) -> dict:
        return {**checkpoint_state(self, ("updates", "policy_updates")), "extra": self.extra_state()}

    def restore(self, ckpt: dict, weights_only: bool = False) -> None:
        if restore_state(self, ckpt, weights_only, ("updates", "policy_updates")):
            self.load_extra_state(ckpt["extra"])

    def parameters_finite(self) -> torch.Tensor:
        """One device bool: are all parameters finite (a single reduction, read at intervals)."""
        norms = torch._foreach_norm([p for p in self.parameters()])
        return torch.isfinite(torch.stack(norms)).all()


def log_alpha_param(alpha0: float, device: torch.device, seeds: int | None = None) -> nn.Parameter:
    if seeds is not None:  # one α per seed
        return nn.Parameter(torch.full((seeds,), math.log(alpha0), device=device))
    return nn.Parameter(torch.tensor(math.log(alpha0), device=device))
