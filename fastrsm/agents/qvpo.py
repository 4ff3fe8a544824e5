"""QVPO, Q-weighted variational policy optimisation (Ding et al., NeurIPS 2024, arXiv 2405.16173), a
diffusion-policy baseline of the paper's comparison set: a denoising loss on each state's best sampled action,
weighted by its advantage, plus uniform random actions as an entropy term.

Facts from FlowRL (github typoverflow/flow-rl, flowrl/agent/online/qvpo.py at 21aff39 and
examples/online/config/mujoco/algo/qvpo.yaml at 180c29a):
- critic: a' the best of `num_behavior_samples` (2; 4 on HalfCheetah, 1 on Hopper) chain samples of the *target*
  policy at s' by min(Q'_1, Q'_2) of the target critics; y = r + γ(1−d)·min Q'(s', a');
- policy, on every update: 64 chain samples per state from the current policy, scored by the mean of the two
  critics; the best one is the training action, its weight Q_best − mean_N Q (≥ 0, the advantage over the
  samples); 10 uniform random actions per state join with weight entropy_coef (0.01) × that state's weight; loss
  mean of weight·‖ε_θ(a_t, s, t) − ε‖² over all rows;
- Polyak 0.005 of the policy and critic targets on every update; x_T ~ N(0, I); 20 steps, cosine schedule;
- acting: exploring, one chain sample of the current policy, no added noise; evaluating, the best of 32 by
  min(Q1, Q2) of the online critics (the common `particles`; the `paper` preset's entry sets FlowRL's 20 steps,
  cosine schedule and 32).
Differences, chosen: the random actions are uniform on the action box [−1, 1] (FlowRL's `jax.random.uniform`
draws them on [0, 1), half the box; the QVPO paper's entropy term is uniform over the action space); the policy
is scored by the critics just updated (FlowRL: the critics before this update's step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backend import Ops
from ..diffusion import q_sample
from ..replay import Batch
from ..settings import AlgoSettings, Config, Need
from .base import frozen_copy, polyak
from .diffusion_agent import DiffusionBaseline, best_of_n


@dataclass
class QVPOSettings(AlgoSettings):
    qvpo_train_samples: int = 64  # chain samples per state the policy step picks the best of
    qvpo_behavior_samples: int = 2  # N of the bootstrap's best-of-N from the target policy
    qvpo_entropy_coef: float = 0.01  # weight of the random actions, relative to the state's own weight
    qvpo_random_actions: int = 10  # uniform random actions per state (the entropy term)

    presets = {"paper": dict(diffusion_steps=20, schedule="cosine", particles=32)}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        for name in ("qvpo_train_samples", "qvpo_behavior_samples"):
            v = getattr(cfg, name)
            need(v > 0, f"{name.replace('_', '-')} must be a positive integer, got {v}")
        need(cfg.qvpo_random_actions >= 0, f"qvpo-random-actions must be >= 0, got {cfg.qvpo_random_actions}")
        need(cfg.qvpo_entropy_coef >= 0, f"qvpo-entropy-coef must be >= 0, got {cfg.qvpo_entropy_coef}")


def best_sample_and_weight(cand: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each state's best candidate and its advantage over the candidates: cand [..., N, A], q [..., N] ->
    (a_best [..., A], Q_best − mean_N Q [...])."""
    idx = q.argmax(-1)
    best = torch.take_along_dim(cand, idx[..., None, None], dim=-2).squeeze(-2)
    return best, q.max(-1).values - q.mean(-1)


class QVPO(DiffusionBaseline):
    algo = "qvpo"
    about = "Q-weighted variational policy optimisation, as FlowRL runs it (Ding et al., 2024, arXiv 2405.16173)"
    Settings = QVPOSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.policy_target = frozen_copy(self.policy)

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        a2 = best_of_n(self, self.policy_target, next_obs, 0.0, self.cfg.qvpo_behavior_samples,
                       critic=self.critic_target).action
        return self.critic_target.min_q(next_obs, a2), None

    def policy_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, p, N, obs = self.cfg, self.policy, self.cfg.qvpo_train_samples, batch.obs
        with torch.no_grad():
            cand = self.ops.sample(p.eps_net, p.sched, obs, N, x_T_scale=p.x_T_scale)  # [(S,) B, N, A]
            q = self.critic(obs.unsqueeze(-2).expand(*obs.shape[:-1], N, obs.shape[-1]), cand).mean(0)
            action, weight = best_sample_and_weight(cand, q)
            states = obs
            if cfg.qvpo_random_actions:
                k = cfg.qvpo_random_actions
                rand_states = obs.repeat_interleave(k, dim=-2)
                rand_actions = torch.rand(*rand_states.shape[:-1], self.act_dim, device=obs.device) * 2 - 1
                states = torch.cat([obs, rand_states], dim=-2)
                action = torch.cat([action, rand_actions], dim=-2)
                weight = torch.cat([weight, cfg.qvpo_entropy_coef * weight.repeat_interleave(k, dim=-1)], dim=-1)
            t = torch.randint(0, p.sched.T, action.shape[:-1], device=obs.device)
            eps = torch.randn_like(action)
            a_t = q_sample(p.sched, action, t, eps)
        err = (p.eps_net(a_t, states, t) - eps) ** 2
        loss = (weight.unsqueeze(-1) * err).mean(dim=(-2, -1))  # [S] per seed, or a scalar
        n_best = obs.shape[-2]
        return loss, {"w_mean": self.seed_mean(weight[..., :n_best], seed_dim=0)}

    def after_policy_step(self) -> None:
        polyak(self.policy_target, self.policy, self.cfg.tau)  # the critics' targets: the base, at the same time
