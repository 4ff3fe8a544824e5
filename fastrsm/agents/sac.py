"""SAC, the baseline (docs/algorithms.md §5): tanh-Gaussian actor, twin critics, automatic entropy tuning
(H_target = −|A|)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backend import Ops
from ..losses import sac_actor_loss, sac_alpha_loss, sac_target
from ..nets import GaussianActor
from ..settings import AlgoSettings, Config, Need
from .base import Agent, Parts, gradient_step, log_alpha_param, make_adam


@dataclass
class SACSettings(AlgoSettings):
    sac_alpha_init: float = math.e  # log α₀ = 1, the authors' SAC baseline
    sac_policy_delay: int = 1  # the authors' SAC: actor, α and targets on every gradient update
    lr_sac_alpha: float = 3e-4

    help = {"sac_policy_delay": "1 = the authors' SAC baseline the paper compares against; 2 = TD3-style"}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.sac_policy_delay > 0, f"sac-policy-delay must be a positive integer, got {cfg.sac_policy_delay}")
        for name in ("sac_alpha_init", "lr_sac_alpha"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")


class SAC(Agent):
    algo = "sac"
    about = "Soft Actor-Critic, the authors' relax baseline (Haarnoja et al., 2018, arXiv 1801.01290)"
    Settings = SACSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.actor = GaussianActor(obs_dim, act_dim, cfg.hidden, cfg.layers, seeds).to(device)
        self.opt_pi = make_adam(self.actor.parameters(), cfg.lr_policy, device, self.compiled)
        self.log_alpha = log_alpha_param(cfg.sac_alpha_init, device, seeds)
        self.opt_alpha = make_adam([self.log_alpha], cfg.lr_sac_alpha, device, self.compiled)
        self.target_entropy = -float(act_dim)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.actor(obs, deterministic=not explore, generator=generator)[0]

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        a2, logp2 = self.actor(next_obs)
        return sac_target(self.critic_target.min_q(next_obs, a2), logp2, self.per_seed(self.alpha, logp2)), None

    def policy_step(self, batch, reuse: None) -> dict[str, torch.Tensor]:
        a, logp = self.actor(batch.obs)
        q = self.critic.min_q(batch.obs, a)
        loss = sac_actor_loss(q, logp, self.per_seed(self.alpha, logp))
        # into the actor's weights only: ∂Q/∂a is needed, the critic's weight gradients are not
        gradient_step(self.opt_pi, self.total(loss), inputs=list(self.actor.parameters()))
        metrics = {"loss_pi": loss.detach(), "entropy": -logp.detach().mean(-1)}
        if self.cfg.learn_alpha:
            loss_a = sac_alpha_loss(self.per_seed(self.log_alpha, logp), logp, self.target_entropy)
            gradient_step(self.opt_alpha, self.total(loss_a))
            metrics["loss_alpha"] = loss_a.detach()
        return metrics

    def parts_for(self, updates: int) -> Parts:
        """The authors' SAC baseline updates the actor, α and the targets on every gradient update
        (sac_policy_delay = 1); a delay > 1 gives the TD3-style variant."""
        return ("critic", "policy") if (updates + 1) % self.cfg.sac_policy_delay == 0 else ("critic",)

    def schedule_period(self) -> int:
        return self.cfg.sac_policy_delay

    def alpha_step(self) -> dict[str, torch.Tensor]:
        return {}  # SAC tunes α with every policy step

