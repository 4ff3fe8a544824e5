"""DPMD as its authors run it now ("DPMD v2", docs/algorithms.md §13): per-state self-normalised weights over N
fresh particles of each current state, and a temperature held to a KL budget.

Source: the authors' repository github mahaitongdae/diffusion_policy_online_rl, `relax/algorithm/
dpmdv2_fix12345.py` (commit 8a4ba2b) with its network `relax/network/diffv4.py`, the training script
`scripts/train_mujoco_1m.py` (defaults) and their latest sweeps `scripts/run_fix12345_bellman_sweep.sh`,
`run_fix12345_bon_noise_n4_ub_sweep.sh` (commits 36d12e8, 94a8b72: ReLU-linear weights, KL budget 1.5, the
bootstrap's and the particles' policy the EMA one). Each of the authors' named fixes is a setting here:

- x_T ~ `dpmd2_start_std`·N(0, I): 1, the fixed chain ("Bug #5"; the published DPMD draws 0.5·N(0, I)).
- Each particle's denoising noise and diffusion time are its own draws ("Bug #4"): fastrsm draws every particle
  independently in every algorithm, so there is no setting that would share them.
- The policy step: N = `dpmd2_particles` actions per **current** state s from the EMA policy (`dpmd2_policy`),
  each plus the exploration noise σ and clipped to [−1, 1] (the latest file's "Bug #6" fix), scored by the target
  critics; weighed per state (`dpmd2_weights`):
    `lse`          w = N·softmax_N(Q/α)                                   (strictly_normalized_logsumexp)
    `relu_linear`  w = relu((Q − v)/α), v per state such that mean_N w = 1 (strictly_normalized_relu_linear)
    `relu_square`  w = relu((Q − v)/α)², v per state such that mean_N w = 1 (strictly_normalized_relu_square)
  and the loss is mean over states and particles of w·‖ε_θ(a_t, s, t) − ε‖². Q is raw here (no running
  normalisation): α, learned, sets the scale.
- α = exp(log α) learned from a KL budget: loss α·(κ + H(w) − log N), H the entropy of one state's normalised
  weights (mean over states), κ = `dpmd2_kl`; log α floored at log `dpmd2_alpha_min`. `learn_alpha` false holds
  α at alpha_init.
- The exploration noise σ = exp(log σ) is a parameter of its own, pulled from `dpmd2_noise_init` toward
  `dpmd2_noise_target` by Adam (lr `dpmd2_lr_noise`) on (σ − target)², one step every `alpha_every` updates (the
  update's "alpha" part carries it). `dpmd2_learn_noise` false holds σ at the target.
- Acting: N = `particles` candidates from the EMA policy, each plus σ·N(0, I) and clipped, the best by the
  online critics; evaluation and deployment without the noise. The bootstrap's a' the same without noise, from
  the policy `dpmd2_bootstrap` names, valued by the target critics.

Differences, chosen: the authors step α on every gradient update (the weights are computed on every update, the
policy stepped every second); here α steps with the policy, where the weights are computed (every
`policy_delay` updates), which halves the particle chains an update costs. Not carried: the latest file's
best-of-4 acting and its two-sided weight clip with a negative-weight penalty (bon_noise_n4_ub).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..backend import Ops
from ..diffusion import DiffusionPolicy, q_sample, randn
from ..losses import kl_alpha_loss, weight_entropy
from ..replay import Batch
from ..settings import Config, Need
from .base import Parts, gradient_step, make_adam
from .diffusion_agent import DiffusionAgent, DiffusionSettings

DPMD2_WEIGHTS = ("lse", "relu_linear", "relu_square")
DPMD2_POLICIES = ("ema", "online")


@dataclass
class DPMD2Settings(DiffusionSettings):
    dpmd2_weights: str = "relu_linear"  # lse, relu_linear, relu_square (the module docstring)
    dpmd2_particles: int = 0  # N actions per current state that the policy step weighs; 0 = `particles`
    dpmd2_policy: str = "ema"  # the policy the weighed particles come from: ema (the authors' default) or online
    dpmd2_bootstrap: str = "ema"  # the policy of the bootstrap's a': ema (their latest sweeps) or online
    dpmd2_kl: float = 1.5  # κ, the KL budget of the weights against uniform (their latest sweeps)
    dpmd2_alpha_min: float = 1e-6
    dpmd2_start_std: float = 1.0  # x_T ~ start_std·N(0, I); the published DPMD's 0.5 is "Bug #5"
    dpmd2_learn_noise: bool = True
    dpmd2_noise_init: float = 0.5
    dpmd2_noise_target: float = 0.1
    dpmd2_lr_noise: float = 7e-3

    # The authors' training script (train_mujoco_1m.py) with the paper's networks: α₀ 1e-4 (their init_alpha),
    # Adam 3e-4 on log α, the noise clock every 1250 updates, β scale 1, the policy lr decaying 3e-4 -> 3e-5 over
    # policy steps 250k-750k, N = 32 for acting, the bootstrap and the weighed particles.
    # `small` keeps the preset's half-size networks and compresses the clocks tenfold (a 100k run should see the
    # noise anneal a 1M run sees): a fastrsm choice, not the authors'.
    presets = {
        "paper": dict(alpha_init=1e-4, lr_alpha=3e-4, alpha_every=1250, beta_scale=1.0, lr_decay_start=250_000,
                      lr_decay_end=750_000, lr_policy_end=3e-5),
        "small": dict(alpha_init=1e-4, lr_alpha=3e-3, alpha_every=125),
        "smoke": dict(alpha_init=1e-2, lr_alpha=3e-3, alpha_every=50, dpmd2_noise_init=0.3),
    }
    help = {"dpmd2_weights": "lse, relu_linear or relu_square: per-state weights over the current state's "
                             "particles (docs/algorithms.md §13)"}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.dpmd2_weights in DPMD2_WEIGHTS,
             f"unknown dpmd2-weights {cfg.dpmd2_weights!r}; choose one of {', '.join(DPMD2_WEIGHTS)}")
        for name in ("dpmd2_policy", "dpmd2_bootstrap"):
            need(getattr(cfg, name) in DPMD2_POLICIES,
                 f"{name.replace('_', '-')} must be one of {', '.join(DPMD2_POLICIES)}, got {getattr(cfg, name)!r}")
        need(cfg.dpmd2_particles == 0 or cfg.dpmd2_particles >= 2,
             f"dpmd2-particles must be 0 (= particles) or >= 2, got {cfg.dpmd2_particles}")
        for name in ("dpmd2_alpha_min", "dpmd2_start_std", "dpmd2_noise_init", "dpmd2_noise_target",
                     "dpmd2_lr_noise"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(math.isfinite(cfg.dpmd2_kl) and cfg.dpmd2_kl >= 0, f"dpmd2-kl must be >= 0, got {cfg.dpmd2_kl}")


# -- the per-state weights: q [..., N] (one state's particles on the last axis), alpha broadcastable to q[..., :1]


def lse_weights(q: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """N·softmax_N(q/α): self-normalised, one state's weights sum to N."""
    return torch.softmax(q / alpha, dim=-1) * q.shape[-1]


def relu_linear_weights(q: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """relu((q − v)/α) with v per state such that the N weights sum to N (mean 1).

    Sorted descending, x_1 ≥ … ≥ x_N: with the top k active, Σ_{i≤k} (x_i − v) = N·α gives v_k = (c_k − N·α)/k
    (c_k the top-k sum), valid while x_k ≥ v_k, i.e. while the excess c_k − k·x_k ≤ N·α (which grows with k); the
    largest such k is the active set."""
    N = q.shape[-1]
    x, _ = torch.sort(q, dim=-1, descending=True)
    c = x.cumsum(-1)
    k = torch.arange(1, N + 1, device=q.device, dtype=q.dtype)
    budget = N * torch.as_tensor(alpha, dtype=q.dtype, device=q.device)
    k_star = ((c - k * x) <= budget).sum(-1, keepdim=True).clamp(min=1)
    v = (c.gather(-1, k_star - 1) - budget) / k_star.to(q.dtype)
    return torch.relu((q - v) / alpha)


def relu_square_weights(q: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """relu((q − v)/α)² with v per state such that the N weights sum to N (mean 1).

    With the top k active, Σ_{i≤k} (x_i − v)² = N·α² is a quadratic in v whose smaller root below x_k is
    v_k = (c_k − √(c_k² − k(d_k − N·α²)))/k (c_k, d_k the top-k sums of x and x²); k is the largest for which the
    energy at v = x_k, Σ_{i≤k} (x_i − x_k)², stays within N·α²."""
    N = q.shape[-1]
    x, _ = torch.sort(q, dim=-1, descending=True)
    c, d = x.cumsum(-1), (x * x).cumsum(-1)
    k = torch.arange(1, N + 1, device=q.device, dtype=q.dtype)
    budget = N * torch.as_tensor(alpha, dtype=q.dtype, device=q.device) ** 2
    energy = d - 2 * x * c + k * x * x
    k_star = (energy <= budget).sum(-1, keepdim=True).clamp(min=1)
    c1, d1, kf = c.gather(-1, k_star - 1), d.gather(-1, k_star - 1), k_star.to(q.dtype)
    v = (c1 - torch.sqrt((c1 * c1 - kf * (d1 - budget)).clamp(min=0.0))) / kf
    return torch.relu((q - v) / alpha) ** 2


WEIGHTS = {"lse": lse_weights, "relu_linear": relu_linear_weights, "relu_square": relu_square_weights}




class DPMD2(DiffusionAgent):
    algo = "dpmd2"
    about = ("DPMD as its authors run it now: per-state weights over fresh particles, a KL-held temperature "
             "(their repository's dpmdv2_fix12345; the method: Ma et al., ICML 2025, arXiv 2502.00361)")
    Settings = DPMD2Settings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds, x_T_scale=cfg.dpmd2_start_std)
        start = cfg.dpmd2_noise_init if cfg.dpmd2_learn_noise else cfg.dpmd2_noise_target
        shape = () if seeds is None else (seeds,)
        self.log_noise = torch.nn.Parameter(torch.full(shape, math.log(start), device=device))
        self.opt_noise = make_adam([self.log_noise], cfg.dpmd2_lr_noise, device, self.compiled)
        self.log_alpha_floor = math.log(cfg.dpmd2_alpha_min)

    @property
    def noise_std(self) -> torch.Tensor:
        return self.log_noise.detach().exp()

    def logged(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha, "noise_std": self.noise_std}

    def _policy(self, which: str) -> DiffusionPolicy:
        return self.policy_ema if which == "ema" else self.policy

    @torch.no_grad()
    def noisy_particles(self, policy: DiffusionPolicy, obs: torch.Tensor, particles: int, std: Any,
                        critic: torch.nn.Module, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """N chain samples per state, each plus std·N(0, I) and clipped, and their min Q under `critic`:
        [(S,) B, N, A] and [(S,) B, N]."""
        cand = self.ops.sample(policy.eps_net, policy.sched, obs, particles, x_T_scale=policy.x_T_scale,
                               generator=generator)
        if torch.is_tensor(std) or std > 0:
            z = randn(cand.shape, device=cand.device, dtype=cand.dtype, generator=generator)
            cand = (cand + self.per_seed(std, cand) * z).clamp(-1.0, 1.0)
        s = obs.unsqueeze(-2).expand(*obs.shape[:-1], particles, obs.shape[-1])
        return cand, critic.min_q(s, cand)

    @torch.no_grad()
    def select(self, policy: DiffusionPolicy, obs: torch.Tensor, particles: int, std: Any,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The best of `particles` noisy candidates by the online critics, [(S,) B, A]."""
        cand, q = self.noisy_particles(policy, obs, particles, std, self.critic, generator)
        idx = q.argmax(-1, keepdim=True).unsqueeze(-1).expand(*q.shape[:-1], 1, cand.shape[-1])
        return cand.gather(-2, idx).squeeze(-2)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        if explore:
            return self.select(self.policy_ema, obs, self.cfg.train_particles or self.cfg.particles, self.noise_std,
                               generator)
        return self.select(self.policy_ema, obs, self.cfg.particles, 0.0, generator)

    @torch.no_grad()
    def next_action_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        a2 = self.select(self._policy(self.cfg.dpmd2_bootstrap), next_obs,
                         self.cfg.target_particles or self.cfg.particles, 0.0)
        return self.critic_target.min_q(next_obs, a2), None

    def weights(self, q: torch.Tensor) -> torch.Tensor:
        """The per-state weights of the run's form, [(S,) B, N]."""
        return WEIGHTS[self.cfg.dpmd2_weights](q, self.per_seed(self.alpha, q))

    def policy_loss(self, batch: Batch, reuse: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        obs, sched = batch.obs, self.policy.sched
        N = self.cfg.dpmd2_particles or self.cfg.particles
        cand, q = self.noisy_particles(self._policy(self.cfg.dpmd2_policy), obs, N, self.noise_std,
                                       self.critic_target)
        w = self.weights(q)  # no gradient: cand and q are drawn under no_grad
        t = torch.randint(0, sched.T, cand.shape[:-1], device=obs.device)
        eps = torch.randn_like(cand)
        s = obs.unsqueeze(-2).expand(*obs.shape[:-1], N, obs.shape[-1])
        eps_pred = self.policy.eps_net(q_sample(sched, cand, t, eps), s, t)
        per = ((eps_pred - eps) ** 2).sum(-1) * w  # [(S,) B, N]
        loss = per.mean((-2, -1))
        entropy = weight_entropy(w)
        return loss, {"w_max": w.max(-1).values.mean(-1), "w_entropy": entropy.mean(-1), "_entropy": entropy}

    def policy_step(self, batch: Batch, reuse: Any) -> dict[str, torch.Tensor]:
        loss, metrics = self.policy_loss(batch, reuse)
        gradient_step(self.opt_pi, self.total(loss))
        entropy = metrics.pop("_entropy")
        if self.cfg.learn_alpha:  # the KL-held temperature, on this step's weights
            N = self.cfg.dpmd2_particles or self.cfg.particles
            a_loss = kl_alpha_loss(self.log_alpha, entropy, self.cfg.dpmd2_kl, N)
            gradient_step(self.opt_alpha, self.total(a_loss))
            with torch.no_grad():
                self.log_alpha.clamp_(min=self.log_alpha_floor)
            metrics["loss_alpha"] = a_loss.detach()
        return {"loss_pi": loss.detach(), **metrics}

    def parts_for(self, updates: int) -> Parts:
        # the "alpha" part is the noise clock here; α itself steps with the policy
        parts: Parts = ("critic",)
        if (updates + 1) % self.cfg.policy_delay == 0:
            parts += ("policy",)
        if self.cfg.dpmd2_learn_noise and (updates + 1) % self.cfg.alpha_every == 0:
            parts += ("alpha",)
        return parts

    def alpha_step(self) -> dict[str, torch.Tensor]:
        loss = (self.log_noise.exp() - self.cfg.dpmd2_noise_target) ** 2
        gradient_step(self.opt_noise, self.total(loss))
        return {"loss_noise": loss.detach()}
