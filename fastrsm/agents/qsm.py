"""QSM, Q-score matching (Psenka et al., ICML 2024, arXiv 2312.11752), a diffusion-policy baseline of the paper's
comparison set: the ε-network is regressed onto the critic's action gradient instead of a reweighted noise.

Facts from FlowRL (github typoverflow/flow-rl, flowrl/agent/online/qsm.py at 21aff39 and
examples/online/config/mujoco/algo/qsm.yaml at 180c29a):
- critic: a' one chain sample of the current policy at s' (no noise), y = r + γ(1−d)·min Q'(s', a'); target
  critics Polyak 0.005 on every update;
- policy, on every update: a_t = √ᾱ_t a + √(1−ᾱ_t) ε at the replay action a, t uniform; g = ∇_a mean(Q'_1, Q'_2)(s,
  a_t) from the *target* critics; target ε̂ = −√(1−ᾱ_t)·g / (temp·(mean|g| + 1e-6)), the mean over the whole
  batch; loss mean ‖ε_θ(a_t, s, t) − ε̂‖²; temp 0.1;
- acting: exploring, one chain sample + 0.1·N(0, I); evaluating, the best of 10 (`particles`) samples by
  min(Q1, Q2) of the online critics; x_T ~ N(0, I); no EMA policy; 20 steps, cosine schedule (the `paper`
  preset's entry).
Differences, chosen: the exploring action is clipped to the action box (FlowRL leaves it to the env); the target
critics take their Polyak step after the policy step, as every fastrsm agent's (FlowRL: before it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion import q_sample
from ..replay import Batch
from ..settings import AlgoSettings, Config, Need
from .base import noisy_action
from .diffusion_agent import DiffusionBaseline


@dataclass
class QSMSettings(AlgoSettings):
    qsm_temp: float = 0.1  # the score target's temperature
    qsm_explore_noise: float = 0.1  # σ of the acting noise added to one chain sample
    # the evaluation's best-of-N is the common `particles` (so load_policy's particles= works alike for all)

    presets = {"paper": dict(diffusion_steps=20, schedule="cosine", particles=10)}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(math.isfinite(cfg.qsm_temp) and cfg.qsm_temp > 0,
             f"qsm-temp must be a positive number, got {cfg.qsm_temp}")
        need(math.isfinite(cfg.qsm_explore_noise) and cfg.qsm_explore_noise >= 0,
             f"qsm-explore-noise must be >= 0, got {cfg.qsm_explore_noise}")


def score_target(grad_q: torch.Tensor, sqrt_1m_abar_t: torch.Tensor, temp: float, seeds: int | None = None
                 ) -> torch.Tensor:
    """ε̂ = −√(1−ᾱ_t)·∇_aQ / (temp·(mean|∇_aQ| + 1e-6)); the mean over the batch (over each seed's batch with a
    leading seed axis). grad_q [(S,) B, A], sqrt_1m_abar_t [(S,) B]."""
    scale = grad_q.abs().mean() if seeds is None else grad_q.abs().flatten(1).mean(1).view(-1, 1, 1)
    return -sqrt_1m_abar_t.unsqueeze(-1) * grad_q / (temp * (scale + 1e-6))


class QSM(DiffusionBaseline):
    algo = "qsm"
    about = "Q-score matching, as FlowRL runs it (Psenka et al., ICML 2024, arXiv 2312.11752)"
    Settings = QSMSettings

    def explore_noise(self, a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return noisy_action(a, self.cfg.qsm_explore_noise, generator)

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.critic_target.min_q(next_obs, self.sample_one(self.policy, next_obs)), None

    def policy_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        obs, action, sched = batch.obs, batch.action, self.policy.sched
        t = torch.randint(0, sched.T, action.shape[:-1], device=action.device)
        eps = torch.randn_like(action)
        a_t = q_sample(sched, action, t, eps).detach().requires_grad_()
        with torch.enable_grad():
            (grad_q,) = torch.autograd.grad(self.critic_target(obs, a_t).mean(0).sum(), a_t)
        target = score_target(grad_q, sched.sqrt_1m_abar[t], self.cfg.qsm_temp, self.seeds)
        eps_pred = self.policy.eps_net(a_t.detach(), obs, t)
        loss = ((eps_pred - target) ** 2).mean(dim=(-2, -1))  # [S] per seed, or a scalar
        return loss, {"eps_target_l1": self.seed_mean(target.abs())}
