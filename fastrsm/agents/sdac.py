"""SDAC, Soft Diffusion Actor-Critic (docs/algorithms.md §5): π* ∝ exp(Q/λ) through the reverse-sampling trick.

a_t ~ h_t is the current policy's (exploring) best-of-N action at s' noised to a random level t (`sdac_anchor`
policy, the authors' relax code) or the replay batch's action at s noised (`replay`, FlowRL's); K reverse samples
a_0^k ~ φ_{0|t}(·|a_t), clipped to [-1, 1] or drawn truncated to it (`sdac_reverse`), are scored by Q, and
ε_θ(a_t, s, t) regresses onto Σ_k softmax_k(q_k/λ)·ε^k with logits q·(sdac_q_scale/α)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion import q_sample
from ..losses import logit_entropy, sdac_reverse_samples, sdac_reverse_samples_truncated
from ..replay import Batch
from ..settings import Config, Need
from .diffusion_agent import DiffusionAgent, NextActions, RSMSettings

SDAC_ANCHORS = ("policy", "replay")
SDAC_REVERSE = ("clip", "truncnorm")


@dataclass
class SDACSettings(RSMSettings):
    reverse_samples: int = 64  # K, the samples of phi_{0|t}
    sdac_q_scale: float = 5.0  # SDAC logits are sdac_q_scale * q / alpha
    sdac_anchor: str = "policy"  # h_t: the policy's action at s' noised (policy) or the replay action at s (replay)
    sdac_reverse: str = "clip"  # reverse samples a_0^k clipped to [-1, 1] (clip) or from a truncated normal

    # FlowRL (github typoverflow/flow-rl, examples/online/config/mujoco/algo/sdac.yaml): temp 0.05 (per task
    # 0.01–0.2 in scripts/mujoco/sdac.sh), K = 500 from a truncated normal around the replay action
    presets = {"flowrl": dict(alpha_init=0.05, sdac_q_scale=1.0, layers=3, reverse_samples=500, sdac_anchor="replay",
                              sdac_reverse="truncnorm")}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.reverse_samples > 0, f"reverse-samples must be a positive integer, got {cfg.reverse_samples}")
        need(math.isfinite(cfg.sdac_q_scale) and cfg.sdac_q_scale > 0,
             f"sdac-q-scale must be a positive number, got {cfg.sdac_q_scale}")
        for name, allowed in (("sdac_anchor", SDAC_ANCHORS), ("sdac_reverse", SDAC_REVERSE)):
            need(getattr(cfg, name) in allowed,
                 f"unknown {name.replace('_', '-')} {getattr(cfg, name)!r}; choose one of {', '.join(allowed)}")


class SDAC(DiffusionAgent):
    algo = "sdac"
    about = "Soft Diffusion Actor-Critic, reweighted score matching (Ma et al., ICML 2025, arXiv 2502.00361)"
    Settings = SDACSettings

    def policy_loss(self, batch: Batch, drawn: NextActions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sched, K, cfg = self.policy.sched, self.cfg.reverse_samples, self.cfg
        if cfg.sdac_anchor == "replay":
            s, a = batch.obs, batch.action
        else:
            s, a = batch.next_obs, drawn.action  # [B, A] (seeds: [S, B, A] here and a leading S below)
        t = torch.randint(0, sched.T, a.shape[:-1], device=s.device)
        a_t = q_sample(sched, a, t, torch.randn_like(a))
        with torch.no_grad():
            sampler = sdac_reverse_samples_truncated if cfg.sdac_reverse == "truncnorm" else sdac_reverse_samples
            a0k, eps_k = sampler(sched, a_t, t, K)
            q = self.critic.min_q(s.unsqueeze(-2).expand(*s.shape[:-1], K, s.shape[-1]), a0k)  # [B, K]
            logits = q * self.per_seed(cfg.sdac_q_scale / self.alpha, q)
        eps_pred = self.policy.eps_net(a_t, s, t)
        loss = self.ops.sm_loss(eps_pred, eps_k, logits)
        metrics = {"w_max": torch.softmax(logits, -1).max(-1).values.mean(-1)}
        if self.kl_alpha:  # the weights' entropy per state, for α (DiffusionAgent.policy_step)
            metrics.update(_w_entropy=logit_entropy(logits), _candidates=K)
        return loss, metrics
