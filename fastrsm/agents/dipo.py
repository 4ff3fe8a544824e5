"""DIPO, diffusion policy with action gradient (Yang et al., "Policy Representation via Diffusion Probability Model
for Reinforcement Learning", arXiv 2305.13122), a diffusion-policy baseline: the replay's actions are moved uphill
on the critics, and the diffusion policy is fitted to the moved actions by plain denoising.

Facts from the JAX DIPO of the `relax` library (the code base docs/algorithms.md §12 reads the comparison set from;
e.g. github lzqw/FLAME relax/algorithm/dipo.py and relax/network/dipo.py at 53cd50c) and the paper:
- critic: twin critics, a' one chain sample of the *target* policy at s' (no added noise), y = r + γ(1−d)·min
  Q'(s', a'); Adam 3e-4 on each critic with its gradient clipped to global norm 2.0 (optax.clip_by_global_norm,
  each critic's own: fastrsm clips each member of the twin, and each seed, by its own norm);
- action gradient, on every update, with the critics just updated: the stored actions a of the drawn rows (a second,
  writable copy of the replay's actions, the "diffusion buffer") take 20 Adam steps (lr 0.03, a fresh Adam state
  each update) on −Σ min(Q1, Q2)(s, a), the actions' gradient clipped to global norm 0.2 over the batch before each
  step and the actions clamped to [−1, 1] after it; the moved actions are written back into that copy, so a row
  drawn again continues from where it was left;
- policy: the unweighted denoising loss mean ‖ε_θ(√ᾱ_t a + √(1−ᾱ_t) ε, s, t) − ε‖² on the moved actions at their
  states, t uniform; Adam 3e-4, the gradient clipped to global norm 2.0; the target policy and target critics
  Polyak 0.005 on every update (relax's `policy_target_delay` 1);
- acting: one chain sample of the online policy, x_T ~ N(0, I); relax's network: T = 100 on the VP schedule, and
  its deterministic action is one chain sample (the `paper` preset's entry: 100 steps, vp, `particles` 1).
relax's MuJoCo script overrides some of its class defaults (30 action steps, action norm 0.16, the target policy
every 2 updates); the defaults here are the class's (the authors' PyTorch code scales the action norm with the
action dimension instead, ratio × A).

Differences, chosen: the exploring action adds `dipo_explore_noise`·N(0, I) (0.1) to the chain sample, clipped to the
box (relax acts with the chain sample alone: `--dipo-explore-noise 0`); evaluation is DiffusionBaseline's best of
`particles` chain samples by the online critics, no added noise (one sample at `particles` 1, relax's); the
diffusion rows are the TD batch's rows (relax samples its diffusion buffer apart from the TD batch: both are
uniform draws of the same rows, so one draw serves both); the target critics take their Polyak step after the policy
step, as every fastrsm agent's.

Where the moved actions live: `ReplayBuffer.writable_actions()`, a copy of the action column made on the first
DIPO draw (`draw_batch` -> `sample_rows`) and saved in the replay's state_dict (`writable_action`), so a resumed
run continues from the moved actions. The critics keep learning from the actions taken (the `action` column): the
reward and next state belong to those. Supports: the seed axis (`--seeds`; every clip is per seed), `--backend
compile` (the action steps unroll into the update's one graph; the write-back is an index_copy_ into the replay's
copy, an input the compiled update mutates in place: no cost that grows with the buffer) and CUDA graphs (the
write-back is a device op on the copy's fixed storage; graph warm-ups undo their writes with the agent's state,
fastrsm.graphs.Snapshot via `written_in_replay`; checked in emulation on a CPU, not yet on a GPU). A sampler without
rows (a fixed batch in tests and benchmarks: fastrsm.learner.OneBatch) is updated on as it is: its actions are
moved and fitted, and nothing is written back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..backend import Ops
from ..diffusion import DiffusionPolicy, q_sample
from ..replay import Batch, RowBatch
from ..settings import AlgoSettings, Config, Need
from .base import frozen_copy, global_norm_scale, gradient_step, noisy_action, polyak
from .diffusion_agent import DiffusionBaseline

# Adam's constants for the action steps (optax.adam's defaults, as relax builds it)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass
class DIPOSettings(AlgoSettings):
    dipo_action_steps: int = 20  # Adam steps on the stored actions per update
    dipo_action_lr: float = 0.03  # their learning rate
    dipo_action_grad_norm: float = 0.2  # the actions' gradient is clipped to this global norm (0: no clip)
    dipo_grad_norm: float = 2.0  # the critics' and the policy's gradients likewise (0: no clip)
    dipo_explore_noise: float = 0.1  # σ of the acting noise added to one chain sample (relax: none)

    # relax's DIPO network: T = 100 on its Gaussian diffusion's VP schedule; its deterministic action is one chain
    # sample
    presets = {"paper": dict(diffusion_steps=100, schedule="vp", particles=1)}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.dipo_action_steps >= 0, f"dipo-action-steps must be >= 0, got {cfg.dipo_action_steps}")
        for name in ("dipo_action_lr", "dipo_action_grad_norm", "dipo_grad_norm", "dipo_explore_noise"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v >= 0, f"{name.replace('_', '-')} must be >= 0, got {v}")


def action_gradient(critic: torch.nn.Module, obs: torch.Tensor, action: torch.Tensor, steps: int, lr: float,
                    max_norm: float, seeds: int | None = None) -> torch.Tensor:
    """DIPO's action gradient: `steps` Adam steps (lr, a fresh state) on the actions to maximise min(Q1, Q2)(s, a),
    i.e. descend −Σ_rows min Q; before each step the actions' gradient is clipped to global norm `max_norm` over the
    batch (each seed's batch by its own norm; 0: no clip), after it the actions are clamped to [−1, 1]. obs [(S,) B,
    obs_dim], action [(S,) B, A] -> the moved actions, detached. The critic's weights get no gradient."""
    b1, b2 = ADAM_BETAS
    a = action.detach()
    m, v = torch.zeros_like(a), torch.zeros_like(a)
    models = 0 if seeds is None else 1
    for k in range(1, steps + 1):
        a = a.requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(-critic.min_q(obs, a).sum(), a)
        if max_norm > 0:
            scale = global_norm_scale([g], max_norm, models)
            g = g * scale.reshape(scale.shape + (1,) * (g.dim() - models))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        # bias-corrected, eps outside the square root: optax's (and torch's) Adam
        step = lr * (m / (1 - b1 ** k)) / ((v / (1 - b2 ** k)).sqrt() + ADAM_EPS)
        a = (a.detach() - step).clamp(-1.0, 1.0)
    return a.detach()


def denoising_loss(policy: DiffusionPolicy, obs: torch.Tensor, action: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """The plain DDPM loss mean ‖ε_θ(√ᾱ_t a + √(1−ᾱ_t) ε, s, t) − ε‖² (a scalar; with a seed axis [S], each seed's
    own mean); t [(S,) B] diffusion times, eps [(S,) B, A] ~ N(0, I)."""
    a_t = q_sample(policy.sched, action, t, eps)
    return ((policy.eps_net(a_t, obs, t) - eps) ** 2).mean(dim=(-2, -1))


class DIPO(DiffusionBaseline):
    algo = "dipo"
    about = "diffusion policy fitted to action-gradient-moved replay actions (Yang et al., 2023, arXiv 2305.13122)"
    Settings = DIPOSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.policy_target = frozen_copy(self.policy)
        self.max_grad_norm = cfg.dipo_grad_norm  # the critics' clip (the base's critic step reads it)

    def draw_batch(self, replay: Any) -> Batch | RowBatch:
        sample_rows = getattr(replay, "sample_rows", None)
        return replay.sample() if sample_rows is None else sample_rows()

    def written_in_replay(self, replay: Any) -> list[torch.Tensor]:
        writable = getattr(replay, "writable_actions", None)
        return [] if writable is None else [writable()]

    def explore_noise(self, a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return noisy_action(a, self.cfg.dipo_explore_noise, generator)

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.critic_target.min_q(next_obs, self.sample_one(self.policy_target, next_obs)), None

    def policy_step(self, batch: Batch | RowBatch, reuse: Any) -> dict[str, torch.Tensor]:
        cfg, rows = self.cfg, isinstance(batch, RowBatch)
        start = batch.kept() if rows else batch.action
        moved = action_gradient(self.critic, batch.obs, start, cfg.dipo_action_steps, cfg.dipo_action_lr,
                                cfg.dipo_action_grad_norm, self.seeds)
        if rows:
            batch.write(moved)  # the next draw of these rows starts from here
        t = torch.randint(0, self.policy.sched.T, moved.shape[:-1], device=moved.device)
        eps = torch.randn_like(moved)
        loss = denoising_loss(self.policy, batch.obs, moved, t, eps)
        gradient_step(self.opt_pi, self.total(loss), max_norm=cfg.dipo_grad_norm, models=int(self.seeds is not None))
        # how far this update moved the actions: mean |Δa| per dimension
        return {"loss_pi": loss.detach(), "action_shift": self.seed_mean((moved - start).abs())}

    def after_policy_step(self) -> None:
        polyak(self.policy_target, self.policy, self.cfg.tau)  # the critics' targets: the base, at the same time
