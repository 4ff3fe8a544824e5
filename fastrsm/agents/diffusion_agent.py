"""What DPMD and SDAC share (docs/algorithms.md §3, §4, §6): the diffusion policy and its EMA copy, best-of-N acting,
the bootstrap with the current policy's best-of-N action at s', and the temperature α. Also `best_of_n`, which
every diffusion agent acts with, and `DiffusionBaseline`, the shape FlowRL's diffusion baselines (QSM, QVPO) share.

One reverse chain per update serves both the critic target and the policy loss: the best-of-N actions drawn
at s' for the bootstrap are also the a_0 (DPMD) or the anchor of h_t (SDAC) of the policy step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..backend import Ops
from ..diffusion import X_T_SCALE, DiffusionPolicy, randn
from ..losses import alpha_loss, kl_alpha_loss, noise_entropy
from ..replay import Batch
from ..settings import AlgoSettings, Config, Need
from .base import (
    Agent,
    Parts,
    frozen_copy,
    gradient_step,
    linear_decay,
    log_alpha_param,
    make_adam,
    polyak,
    set_lr,
)


@dataclass
class DiffusionSettings(AlgoSettings):
    """What DPMD and SDAC share: the temperature's start and rate, the exploration noise, the particle counts."""

    alpha_init: float = 5.0
    lr_alpha: float = 7e-3
    explore_std: float = 0.1  # exploration noise std: explore_std * alpha (alpha_mode kl: explore_std)
    train_particles: int = 0  # N of the exploring action during training; 0 = `particles` (FlowRL: 1)
    target_particles: int = 0  # N of the bootstrap's a' (also DPMD's a_0 / SDAC's anchor); 0 = `particles`

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        for name in ("alpha_init", "lr_alpha"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(cfg.explore_std >= 0, f"explore-std must be >= 0, got {cfg.explore_std}")
        for name in ("train_particles", "target_particles"):
            need(getattr(cfg, name) >= 0, f"{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")


ALPHA_MODES = ("noise", "kl")
LOG_ALPHA_FLOOR = math.log(1e-6)  # alpha_mode kl: α may shrink with the critic's scale, never to zero


@dataclass
class RSMSettings(DiffusionSettings):
    """DPMD's and SDAC's temperature: the authors' anneal, or held to a KL budget on the per-state weights."""

    # noise: the authors' α, stepped every alpha_every updates toward the target entropy of the exploration noise
    #   N(0, (explore_std·α)²) — an open-loop anneal, the same on every task;
    # kl: α steps with every policy step so that one state's weights over its candidates (DPMD: the bootstrap's
    #   particles at s′, softmax/advantage weights; SDAC: the K reverse samples) sit alpha_kl nats from uniform,
    #   and the exploration noise is explore_std itself, not tied to α (α then carries the critic's units)
    alpha_mode: str = "noise"
    alpha_kl: float = 0.5  # κ, alpha_mode kl: the weights' KL budget against uniform, in nats

    help = {"alpha_mode": "noise (the authors' anneal of alpha) or kl (alpha held to a KL budget on one state's "
                          "weights; noise = explore-std; docs/algorithms.md §6)",
            "alpha_kl": "alpha-mode kl: the weights' KL budget against uniform, in nats"}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.alpha_mode in ALPHA_MODES,
             f"unknown alpha-mode {cfg.alpha_mode!r}; choose one of {', '.join(ALPHA_MODES)}")
        need(math.isfinite(cfg.alpha_kl) and cfg.alpha_kl > 0, f"alpha-kl must be a positive number, got "
             f"{cfg.alpha_kl}")


class NextActions(NamedTuple):
    """What the critic step's bootstrap drew at s' and the policy step reuses (no second reverse chain)."""

    action: torch.Tensor  # [B, A] the best-of-N action a' with exploration noise, clipped
    particles: torch.Tensor  # [B, N, A] every candidate of the chain
    q_particles: torch.Tensor  # [B, N] their min(Q1, Q2) under the online critic


@torch.no_grad()
def best_of_n(agent: Agent, policy: DiffusionPolicy, obs: torch.Tensor, noise_std: torch.Tensor | float,
              particles: int, generator: torch.Generator | None = None, critic: torch.nn.Module | None = None
              ) -> NextActions:
    """Draw N = `particles` chain samples per state from `policy`, score them with min(Q1, Q2) of `critic` (the
    agent's online critic by default), keep the argmax (plus noise_std·N(0, I)); every draw from `generator`
    (None: torch's global generator)."""
    N = particles
    cand = agent.ops.sample(policy.eps_net, policy.sched, obs, N, x_T_scale=policy.x_T_scale, generator=generator)
    q = (critic or agent.critic).min_q(obs.unsqueeze(-2).expand(*obs.shape[:-1], N, obs.shape[-1]), cand)
    noise = randn(*obs.shape[:-1], agent.act_dim, device=obs.device, generator=generator)
    if agent.seeds is None:
        action, _ = agent.ops.best_of_n(q, cand, noise, noise_std)
    else:  # selection is row-wise: the seed axis folds into the rows, each seed's noise scaled by its own std
        noise = agent.per_seed(noise_std, noise) * noise
        action, _ = agent.ops.best_of_n(q.flatten(0, 1), cand.flatten(0, 1), noise.flatten(0, 1), 1.0)
        action = action.view(noise.shape)
    return NextActions(action, cand, q)


class DiffusionBaseline(Agent):
    """A diffusion policy trained on every update, as FlowRL's baselines are: x_T ~ N(0, I), no EMA policy, no
    temperature; explores with one chain sample (`explore_noise`, the subclass adds its noise), evaluates and
    deploys with the best of `particles` by the online critics. A subclass gives `policy_loss(batch)` and the
    bootstrap."""

    x_T_scale = 1.0

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.policy = DiffusionPolicy(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.time_dim, cfg.diffusion_steps,
                                      cfg.schedule, cfg.beta_scale, seeds, self.x_T_scale).to(device)
        self.opt_pi = make_adam(self.policy.parameters(), cfg.lr_policy, device, self.compiled)

    def deploy_particles(self) -> int:
        return self.cfg.particles

    def sample_one(self, policy: DiffusionPolicy, obs: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
        """One chain sample per state, [(S,) B, A], through the backend's chain."""
        return self.ops.sample(policy.eps_net, policy.sched, obs, 1, x_T_scale=policy.x_T_scale,
                               generator=generator).squeeze(-2)

    def explore_noise(self, a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return a  # no added noise unless the algorithm adds some

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        if not explore:
            return best_of_n(self, self.policy, obs, 0.0, self.cfg.particles, generator).action
        return self.explore_noise(self.sample_one(self.policy, obs, generator), generator)

    def policy_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def policy_step(self, batch: Batch, reuse: Any) -> dict[str, torch.Tensor]:
        loss, metrics = self.policy_loss(batch)
        gradient_step(self.opt_pi, self.total(loss))
        return {"loss_pi": loss.detach(), **metrics}

    def parts_for(self, updates: int) -> Parts:
        return ("critic", "policy")  # the policy and the targets on every update

    def schedule_period(self) -> int:
        return 1

    def alpha_step(self) -> dict[str, torch.Tensor]:
        return {}  # no temperature


class DiffusionAgent(Agent):
    Settings = DiffusionSettings
    # x_T ~ 0.5·N(0, I), as the DPMD/SDAC authors' published code draws it
    x_T_scale = X_T_SCALE

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None, x_T_scale: float | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        if x_T_scale is not None:
            self.x_T_scale = x_T_scale
        self.policy = DiffusionPolicy(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.time_dim, cfg.diffusion_steps,
                                      cfg.schedule, cfg.beta_scale, seeds, self.x_T_scale).to(device)
        self.policy_ema = frozen_copy(self.policy)  # acts and evaluates (docs/algorithms.md §3)
        self.opt_pi = make_adam(self.policy.parameters(), cfg.lr_policy, device, self.compiled)
        self.log_alpha = log_alpha_param(cfg.alpha_init, device, seeds)
        self.opt_alpha = make_adam([self.log_alpha], cfg.lr_alpha, device, self.compiled)
        self.target_entropy = cfg.target_entropy_per_dim * act_dim

    @property
    def kl_alpha(self) -> bool:
        """α held to a KL budget on the per-state weights (alpha_mode kl; DPMD and SDAC)."""
        return issubclass(self.Settings, RSMSettings) and self.cfg.alpha_mode == "kl"

    @property
    def exploration_std(self) -> torch.Tensor | float:
        """The std of the Gaussian added to the exploring action (and to the bootstrap's a′): explore_std·α, or
        explore_std alone where α is held to a KL budget (its scale is then the critic's, not the action's)."""
        return self.cfg.explore_std if self.kl_alpha else self.cfg.explore_std * self.alpha

    def best_of_n(self, policy: DiffusionPolicy, obs: torch.Tensor, noise_std: torch.Tensor | float,
                  particles: int = 0, generator: torch.Generator | None = None) -> NextActions:
        """`best_of_n` with this agent's critic, N = `particles` or the run's N."""
        return best_of_n(self, policy, obs, noise_std, particles or self.cfg.particles, generator)

    def deploy_particles(self) -> int:
        return self.cfg.particles  # evaluation and deployment: best of N, no added noise

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        if explore:  # training: train_particles (FlowRL: one chain sample) and the exploration noise
            return self.best_of_n(self.policy_ema, obs, self.exploration_std,
                                  self.cfg.train_particles, generator).action
        return self.best_of_n(self.policy_ema, obs, 0.0, generator=generator).action

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, NextActions]:
        # a' comes from the acting sampler, exploration noise included (as in the authors' code): the noise
        # smooths the bootstrap and keeps DPMD's regression target from collapsing onto one action per state.
        # Unlike that code we clip a' to the action box, where the critic has data.
        drawn = self.best_of_n(self.policy, next_obs, self.exploration_std, self.cfg.target_particles)
        return self.critic_target.min_q(next_obs, drawn.action), drawn

    def policy_loss(self, batch: Batch, reuse: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss given the batch and what the critic step drew at its next states s' (`NextActions`,
        or a subclass's own)."""
        raise NotImplementedError

    def schedule(self) -> None:
        # counted in policy-optimiser steps, as optax counts its own updates in the authors' code
        set_lr(self.opt_pi, linear_decay(self.policy_updates, self.cfg.lr_decay_start, self.cfg.lr_decay_end,
                                         self.cfg.lr_policy, self.cfg.lr_policy_end))

    def policy_step(self, batch, reuse: Any) -> dict[str, torch.Tensor]:
        # The policy is trained at the batch's next states s': that is where the bootstrap already drew the
        # policy's actions, so the loss reuses them instead of running a second reverse chain at s.
        loss, metrics = self.policy_loss(batch, reuse)
        gradient_step(self.opt_pi, self.total(loss))
        entropy, candidates = metrics.pop("_w_entropy", None), metrics.pop("_candidates", None)
        if self.kl_alpha and self.cfg.learn_alpha:  # α on this step's weights (alpha_mode kl)
            a_loss = kl_alpha_loss(self.log_alpha, entropy, self.cfg.alpha_kl, candidates)
            gradient_step(self.opt_alpha, self.total(a_loss))
            with torch.no_grad():
                self.log_alpha.clamp_(min=LOG_ALPHA_FLOOR)
            metrics["loss_alpha"] = a_loss.detach()
            metrics["w_entropy"] = entropy.mean(-1)
        return {"loss_pi": loss.detach(), **metrics}

    def parts_for(self, updates: int) -> Parts:
        if not self.kl_alpha:
            return super().parts_for(updates)
        # alpha_mode kl: α steps inside the policy step, so there is no separate "alpha" part
        return ("critic", "policy") if (updates + 1) % self.cfg.policy_delay == 0 else ("critic",)

    def after_policy_step(self) -> None:
        polyak(self.policy_ema, self.policy, self.cfg.tau)

    def alpha_step(self) -> dict[str, torch.Tensor]:
        entropy = noise_entropy(self.log_alpha, self.act_dim, self.cfg.explore_std)
        loss = alpha_loss(self.log_alpha, entropy, self.target_entropy)
        gradient_step(self.opt_alpha, self.total(loss))
        return {"loss_alpha": loss.detach()}
