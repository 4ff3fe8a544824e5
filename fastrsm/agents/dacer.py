"""DACER (Wang et al., NeurIPS 2024, arXiv 2405.15177; docs/algorithms.md §10), the baseline that backpropagates
the policy gradient through the whole reverse chain, which RSM avoids.

Facts from the official JAX code (github happy-yan/DACER-Diffusion-with-Online-RL, relax/algorithm/dacer.py,
relax/network/dacer.py):
- acting: one chain sample, x_T ~ N(0, I), plus exp(log α)·λ_n·N(0, I), clipped to [−1, 1]; evaluation drops the
  added noise (the chain's own noise stays). No best-of-N.
- critic: DSAC-T's twin distributional critics (fastrsm.losses.dsac_*), no entropy term in the target; the
  bootstrap action is drawn like an acting action (noise included) from the current policy.
- policy: L_π = mean(−min(μ1, μ2)(s, a_θ(s))), gradient through every chain step, the noise and the clip;
  on updates 0, 2, 4, ... (`step % delay_update == 0`), with the critic targets.
- α: on updates 0, 10 000, 20 000, ... 200 actions per batch state, the GMM entropy estimate (fastrsm.gmm),
  loss −log α·(−H + H_target), H_target = −0.9·d, Adam 0.03. α enters only as the noise scale.

Differences, chosen: the official code computes every loss from the parameters at the start of the update (a
functional JAX step); here the entropy/α part runs first (on the policy before this update, as there), then the
critic, then the policy against the critic just updated (as every fastrsm agent does). The official
initialisation is log α₀ = 1.2 ("1.2 or 1.7" in relax/network/dacer.py); docs/algorithms.md §10 says log 3
(α₀ = 3), the `dacer_alpha_init` setting.

The policy gradient needs a differentiable chain. Ops' chains (the fused Triton kernel in particular) are
forward-only, so the policy step runs the library's chain, fastrsm.diffusion.sample_chain, with grad=True
(autograd through every step). Acting, the bootstrap and the entropy samples run without gradient through
`ops.chain` (fused on a GPU), on x_T and step noise drawn with torch whatever `chain_noise` says."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backend import Ops
from ..diffusion import DiffusionPolicy, sample_chain
from ..gmm import gmm_entropy, sklearn_gmm_entropy
from ..losses import alpha_loss, dsac_critic_loss, dsac_std_ema, dsac_targets
from ..nets import DistributionalTwinQ
from ..replay import Batch
from ..settings import AlgoSettings, Config, ConfigError, Need
from .base import Agent, Parts, gradient_step, make_adam, noisy_action

DACER_ENTROPY = ("torch", "sklearn")


@dataclass
class DACERSettings(AlgoSettings):
    dacer_noise: float = 0.1  # λ_n: acting noise std is exp(log α)·λ_n (0.15 on Humanoid/HalfCheetah)
    dacer_alpha_init: float = 3.0  # α₀ (log α₀ = log 3)
    lr_dacer_alpha: float = 0.03
    dacer_alpha_every: int = 10_000  # gradient updates between GMM entropy estimates / α steps (update 0 too)
    dacer_entropy: str = "torch"  # torch = batched EM (graph-capturable); sklearn = the official per-state fit
    dacer_entropy_samples: int = 200  # actions drawn per state for the GMM fit
    dacer_gmm_components: int = 3
    dacer_gmm_iters: int = 100  # EM iterations of the torch fit (scikit-learn's max_iter)
    dsac_std_rate: float = 0.005  # EMA rate of the critics' batch-mean σ (the official code uses τ)
    dsac_bound: float = 3.0  # the sampled target is bounded to μ ± dsac_bound·m
    dsac_eps: float = 0.1

    # At the small preset's sizes DACER keeps what defines it (docs/algorithms.md §10): the VP schedule and its own
    # α₀ 3; it acts with one chain sample (no best-of-N) whatever `particles` says. (α₀ 1, DPMD/SDAC's starting
    # noise, was tried on InvertedDoublePendulum: the policy saturated at the action bound on 98 % of states instead
    # of 69 %, the same returns; bench/LEARNING.md.)
    presets = {"small": dict(schedule="vp")}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.dacer_entropy in DACER_ENTROPY,
             f"unknown dacer-entropy {cfg.dacer_entropy!r}; choose one of {', '.join(DACER_ENTROPY)}")
        for name in ("dacer_alpha_every", "dacer_entropy_samples", "dacer_gmm_components", "dacer_gmm_iters"):
            v = getattr(cfg, name)
            need(v > 0, f"{name.replace('_', '-')} must be a positive integer, got {v}")
        for name in ("dacer_alpha_init", "lr_dacer_alpha", "dsac_std_rate", "dsac_bound", "dsac_eps"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(cfg.dsac_std_rate <= 1, f"dsac-std-rate must be in (0, 1], got {cfg.dsac_std_rate}")
        need(math.isfinite(cfg.dacer_noise) and cfg.dacer_noise >= 0,
             f"dacer-noise must be >= 0, got {cfg.dacer_noise}")


class DACER(Agent):
    algo = "dacer"
    about = "diffusion actor-critic, gradient through the chain (Wang et al., NeurIPS 2024, arXiv 2405.15177)"
    Settings = DACERSettings
    supports_seeds = False  # its distributional critic and GMM entropy fit have no seed axis yet
    x_T_scale = 1.0  # x_T ~ N(0, I), as DACER's p_sample (not DPMD/SDAC's 0.5·N)

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 x_T_scale: float | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops)
        if x_T_scale is not None:
            self.x_T_scale = x_T_scale
        if cfg.dacer_entropy == "sklearn" and device.type == "cuda" and cfg.cuda_graphs:
            raise ConfigError("dacer-entropy sklearn runs on the host and cannot be captured in a CUDA graph; "
                              "use --dacer-entropy torch or --cuda-graphs false")
        self.policy = DiffusionPolicy(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.time_dim, cfg.diffusion_steps,
                                      cfg.schedule, cfg.beta_scale, x_T_scale=self.x_T_scale).to(device)
        self.opt_pi = make_adam(self.policy.parameters(), cfg.lr_policy, device, self.compiled)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.dacer_alpha_init), device=device))
        self.opt_alpha = make_adam([self.log_alpha], cfg.lr_dacer_alpha, device, self.compiled)
        self.target_entropy = cfg.target_entropy_per_dim * act_dim  # −0.9·d, as DACER
        # per-critic EMA m of the batch-mean σ; −1 = not yet set (the first batch sets it), as the official code
        self.register_buffer("q_std_ema", torch.full((2,), -1.0, device=device))
        self.register_buffer("entropy", torch.zeros((), device=device))  # the last GMM estimate (a metric)

    def make_critic(self) -> torch.nn.Module:
        # DSAC-T's distributional twin, in place of the base's TwinQ
        cfg = self.cfg
        return DistributionalTwinQ(self.obs_dim, self.act_dim, cfg.hidden, cfg.critic_layers or cfg.layers,
                                   activation=cfg.critic_activation).to(self.device)

    # -- the chain
    def add_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """a = clip(x_0 + exp(log α)·λ_n·N(0, I), −1, 1); differentiable in x_0 (α held constant)."""
        return noisy_action(x0, self.alpha * self.cfg.dacer_noise, generator)

    @torch.no_grad()
    def sample(self, s: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """One chain sample per state [B, A] (plus the exploration noise when `explore`), without autograd."""
        x_T, noise = self.policy.draw_chain_inputs(s.shape[0], s.device, generator)
        x0 = self.ops.chain(self.policy.eps_net, self.policy.sched, s, x_T, noise)
        return self.add_noise(x0, generator) if explore else x0

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(obs, explore, generator)

    # -- the schedule: DACER counts from update 0 (`step % delay == 0`)
    def parts_for(self, updates: int) -> Parts:
        parts: Parts = ("critic",)
        if updates % self.cfg.policy_delay == 0:
            parts += ("policy",)
        if updates % self.cfg.dacer_alpha_every == 0:
            parts += ("alpha",)
        return parts

    def schedule_period(self) -> int:
        return math.lcm(self.cfg.policy_delay, self.cfg.dacer_alpha_every)

    # -- the update
    def update_step(self, batch: Batch, parts: Parts) -> dict[str, torch.Tensor]:
        metrics: dict[str, torch.Tensor] = {}
        if "alpha" in parts:  # the entropy of the policy as it is before this update, as the official code
            metrics.update(self.entropy_alpha_step(batch.obs))
        metrics.update(super().update_step(batch, tuple(p for p in parts if p != "alpha")))
        return metrics

    def critic_step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], None]:
        cfg = self.cfg
        with torch.no_grad():
            a2 = self.sample(batch.next_obs, explore=True)
            next_mean, next_std = self.critic_target(batch.next_obs, a2)
            z = torch.randn_like(batch.reward)
            y, y_s = dsac_targets(batch.reward, batch.terminated, next_mean, next_std, z, cfg.gamma,
                                  cfg.reward_scale, cfg.dsac_bound)
        mean, std = self.critic(batch.obs, batch.action)
        dsac_std_ema(self.q_std_ema, std.detach(), cfg.dsac_std_rate)  # m first: the loss reads this batch's m
        loss = dsac_critic_loss(mean, std, y, y_s, self.q_std_ema, cfg.dsac_eps, cfg.dsac_bound)
        gradient_step(self.opt_q, loss)
        return {"loss_q": loss.detach(), "q_mean": mean.detach().mean(), "q_std": std.detach().mean(),
                "q_std_ema": self.q_std_ema.mean()}, None

    def policy_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = sample_chain(self.policy.eps_net, self.policy.sched, obs, x_T_scale=self.policy.x_T_scale, grad=True)
        a = self.add_noise(x0)
        return -self.critic.min_q(obs, a).mean(), {}

    def policy_step(self, batch: Batch, reuse: None) -> dict[str, torch.Tensor]:
        loss, metrics = self.policy_loss(batch.obs)
        # ∂Q/∂a flows back into the chain, and backward stops at the policy's weights (the critic's get no
        # gradient). Not by switching off the critic's requires_grad: traced into one graph (torch.compile with
        # the backward traced, fastrsm.compiled) that toggling left the policy with no gradient at all, so its
        # weights did not move (measured on DACER2, 2026-12-02, c6ef060); backward(inputs=...) traces as eager runs.
        gradient_step(self.opt_pi, loss, inputs=list(self.policy.parameters()))
        return {"loss_pi": loss.detach(), **metrics}

    def alpha_step(self) -> dict[str, torch.Tensor]:
        return {}  # DACER's α step needs the batch's states: `entropy_alpha_step`, run from `update_step`

    def entropy_alpha_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, self.cfg.dacer_entropy_samples
        with torch.no_grad():
            acts = self.sample(obs.repeat_interleave(n, dim=0), explore=True).reshape(obs.shape[0], n, self.act_dim)
            if cfg.dacer_entropy == "sklearn":
                h = sklearn_gmm_entropy(acts, cfg.dacer_gmm_components)
            else:
                h = gmm_entropy(acts, cfg.dacer_gmm_components, cfg.dacer_gmm_iters)
            self.entropy.copy_(h)
        loss = alpha_loss(self.log_alpha, self.entropy, self.target_entropy)
        gradient_step(self.opt_alpha, loss)
        return {"loss_alpha": loss.detach(), "entropy": self.entropy.clone(), "alpha": self.alpha}
