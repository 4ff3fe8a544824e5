"""TD3 (Fujimoto et al., ICML 2018, arXiv 1802.09477), the deterministic actor-critic of the paper's comparison set.

Facts from FlowRL (github typoverflow/flow-rl, flowrl/agent/online/td3.py at 0af1dba and
examples/online/config/mujoco/algo/td3.yaml at 180c29a), the public code the paper's baselines come from:
- actor a = tanh(MLP(s)), ReLU, Adam 3e-4 for actor and critics; twin critics, target min over the two;
- target policy smoothing: a' = clip(π'(s') + clip(0.2·N(0, I), −0.5, 0.5), −1, 1);
- the actor and both targets (Polyak 0.005) on every second critic update, counted from update 0 (`n % 2 == 0`);
- actor loss −mean over *both* critics of Q(s, π(s)) (Fujimoto's paper uses Q1 alone);
- acting: clip(π(s) + 0.1·N(0, I), −1, 1) when exploring, π(s) when evaluating or deployed.
The critics here are fastrsm's shared TwinQ (`critic_activation`, Mish by default; `--critic-activation relu` is
FlowRL's), so the comparison set shares one critic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backend import Ops
from ..nets import DeterministicActor
from ..settings import CRITIC_ACTIVATIONS, AlgoSettings, Config, Need
from .base import Agent, Parts, frozen_copy, gradient_step, make_adam, noisy_action, polyak


@dataclass
class TD3Settings(AlgoSettings):
    td3_explore_noise: float = 0.1  # σ of the acting noise on the unit action range
    td3_target_noise: float = 0.2  # σ of the target policy smoothing
    td3_noise_clip: float = 0.5  # the smoothing noise is clipped to ±td3_noise_clip
    td3_policy_delay: int = 2  # the actor and the targets once every this many critic updates
    td3_actor_activation: str = "relu"

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        for name in ("td3_explore_noise", "td3_target_noise", "td3_noise_clip"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v >= 0, f"{name.replace('_', '-')} must be >= 0, got {v}")
        need(cfg.td3_policy_delay > 0, f"td3-policy-delay must be a positive integer, got {cfg.td3_policy_delay}")
        need(cfg.td3_actor_activation in CRITIC_ACTIVATIONS, f"unknown td3-actor-activation "
             f"{cfg.td3_actor_activation!r}; choose one of {', '.join(CRITIC_ACTIVATIONS)}")


def smoothed_target_action(actor_target_a: torch.Tensor, z: torch.Tensor, sigma: float, clip: float
                           ) -> torch.Tensor:
    """a' = clip(π'(s') + clip(σ·z, −clip, clip), −1, 1): TD3's target policy smoothing, z ~ N(0, I)."""
    return (actor_target_a + (sigma * z).clamp(-clip, clip)).clamp(-1.0, 1.0)


class TD3(Agent):
    algo = "td3"
    about = "twin delayed deterministic policy gradient, as FlowRL runs it (Fujimoto et al., 2018, arXiv 1802.09477)"
    Settings = TD3Settings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.actor = DeterministicActor(obs_dim, act_dim, cfg.hidden, cfg.layers, seeds,
                                        cfg.td3_actor_activation).to(device)
        self.actor_target = frozen_copy(self.actor)
        self.opt_pi = make_adam(self.actor.parameters(), cfg.lr_policy, device, self.compiled)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        a = self.actor(obs)
        if not explore:
            return a
        return noisy_action(a, self.cfg.td3_explore_noise, generator)

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        a_target = self.actor_target(next_obs)
        a2 = smoothed_target_action(a_target, torch.randn_like(a_target), self.cfg.td3_target_noise,
                                    self.cfg.td3_noise_clip)
        return self.critic_target.min_q(next_obs, a2), None

    def policy_step(self, batch, reuse: None) -> dict[str, torch.Tensor]:
        q = self.critic(batch.obs, self.actor(batch.obs))  # [2, (S,) B]
        loss = -q.mean(dim=(0, -1))  # the mean over both critics and the batch ([S] per seed)
        # into the actor's weights only: ∂Q/∂a is needed, the critics' weight gradients are not
        gradient_step(self.opt_pi, self.total(loss), inputs=list(self.actor.parameters()))
        return {"loss_pi": loss.detach()}

    def after_policy_step(self) -> None:
        polyak(self.actor_target, self.actor, self.cfg.tau)  # the critics' targets: the base, at the same time

    def parts_for(self, updates: int) -> Parts:
        return ("critic", "policy") if updates % self.cfg.td3_policy_delay == 0 else ("critic",)

    def schedule_period(self) -> int:
        return self.cfg.td3_policy_delay

    def alpha_step(self) -> dict[str, torch.Tensor]:
        return {}  # no temperature
