"""DPMD, Diffusion Policy Mirror Descent (docs/algorithms.md §5): π_new ∝ π_old·exp(Q/λ) by Q-weighted denoising.

a_0 are the current policy's best-of-N actions at s' with the exploration noise (the very actions drawn for the
critic target; gradient stopped); w = exp(clip((Q − m)/σ, −3, 3)/λ), Q from the freshly updated critic, with
running m, σ; λ = α. The running statistics are updated on every gradient update (as the authors' code does),
not only on policy steps. `dpmd_weights=softmax` uses all N particles of each state with
w = N·softmax_k(clip((Q − m)/σ, −3, 3)/λ) instead: normalised by the same statistics, because raw Q/λ at MuJoCo
Q scales (hundreds) puts all the weight on the argmax particle. `dpmd_weights=advantage` (not the paper's) takes
the same per-state softmax over the particles' advantage in their own state's units, clip((Q − mean_k Q)/std_k Q)
/λ: the batch statistics σ are dominated by differences between states, so with them the particles of one state
get nearly equal weights (bench/LEARNING.md, Hopper). `dpmd_particle_noise` (with softmax or advantage) adds the
exploration noise to the particles before they are weighed, and scores them with the critic just updated: the
weights then compare actions that differ by the noise (0.1·α), not by the policy's own spread alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..backend import Ops
from ..diffusion import q_sample
from ..losses import dpmd_loss, dpmd_weights, logit_entropy, normalize_q, state_advantage
from ..replay import Batch
from ..settings import Config, Need, settings_of
from .diffusion_agent import DiffusionAgent, NextActions, RSMSettings

DPMD_WEIGHTS = ("exp", "softmax", "advantage")


@dataclass
class DPMDSettings(RSMSettings):
    # exp = exp(clip(q_norm)/lambda); softmax = K*softmax_k(clip(q_norm)/lambda) over a state's particles;
    # advantage = the same softmax of clip((q - mean_k q)/std_k q)/lambda (see the module docstring)
    dpmd_weights: str = "exp"
    # softmax/advantage only: weigh the particles with the exploration noise added (and their Q under the critic
    # just updated) instead of the bare chain samples, so the candidates of one state differ by more than the
    # critic's noise (bench/LEARNING.md, Hopper: the bare particles are 0.04 apart)
    dpmd_particle_noise: bool = False
    q_norm_rate: float = 0.001
    q_clip: float = 3.0
    q_norm_eps: float = 0.0  # (Q − m)/(σ + eps); FlowRL adds 1e-6
    public_code_norm: bool = False  # reproduce the public code's `q - mean / std` precedence bug

    # FlowRL (github typoverflow/flow-rl, examples/online/config/mujoco/algo/dpmd.yaml): temp 0.1, ε-network 2×256
    presets = {"flowrl": dict(alpha_init=0.1, layers=2)}
    help = {**RSMSettings.help,
            "public_code_norm": "reproduce the public DPMD's q - mean / std precedence bug (constant weights)"}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(cfg.dpmd_weights in DPMD_WEIGHTS,
             f"unknown dpmd_weights {cfg.dpmd_weights!r}; choose one of {', '.join(DPMD_WEIGHTS)}")
        need(not cfg.dpmd_particle_noise or cfg.dpmd_weights in ("softmax", "advantage"),
             "dpmd-particle-noise weighs a state's particles: it needs dpmd-weights softmax or advantage, "
             f"not {cfg.dpmd_weights!r}")
        for name in ("q_norm_rate", "q_clip"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(cfg.q_norm_eps >= 0, f"q-norm-eps must be >= 0, got {cfg.q_norm_eps}")
        dpmd_run = isinstance(settings_of(cfg.algo), type) and issubclass(settings_of(cfg.algo), DPMDSettings)
        need(not dpmd_run or cfg.alpha_mode != "kl" or cfg.dpmd_weights == "softmax",
             "alpha-mode kl holds one state's weights to a KL budget: it needs dpmd-weights softmax (per-state "
             f"weights of raw Q), not {cfg.dpmd_weights!r}")


class RunningMeanStd:
    """EMA of the batch mean and std of Q, as device tensors (updated in place) so an update can be graphed."""

    def __init__(self, rate: float = 0.001, device: torch.device | str = "cpu", shape: tuple[int, ...] = ()):
        self.rate = rate  # shape (S,): one statistic per seed, of that seed's batch (the last axis of q)
        self.mean = torch.zeros(shape, device=device)
        self.std = torch.ones(shape, device=device)

    @torch.no_grad()
    def update(self, q: torch.Tensor) -> None:
        self.mean.lerp_(q.mean(-1), self.rate)
        self.std.lerp_(q.std(-1), self.rate)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.mean.copy_(sd["mean"])
        self.std.copy_(sd["std"])


class DPMDReuse(NamedTuple):
    """What DPMD's critic step hands its policy step."""

    drawn: NextActions
    q: torch.Tensor  # [B] min Q of a_0 = a' under the critic just updated
    mean: torch.Tensor  # the running statistics before this batch (the weights use earlier batches only)
    std: torch.Tensor


class DPMD(DiffusionAgent):
    algo = "dpmd"
    about = "Diffusion Policy Mirror Descent, reweighted score matching (Ma et al., ICML 2025, arXiv 2502.00361)"
    Settings = DPMDSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None, x_T_scale: float | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds, x_T_scale)
        self.q_stats = RunningMeanStd(cfg.q_norm_rate, device, () if seeds is None else (seeds,))

    def critic_step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], DPMDReuse]:
        metrics, drawn = super().critic_step(batch)
        with torch.no_grad():  # Q of the (noisy) a' under the critic just updated; statistics on every update
            q = self.critic.min_q(batch.next_obs, drawn.action)
            if self.cfg.dpmd_particle_noise:  # π_old as the behaviour that acts: the chain's draws plus the noise
                cand = drawn.particles
                noise_std = self.per_seed(self.exploration_std, cand)
                noisy = (cand + noise_std * torch.randn_like(cand)).clamp(-1.0, 1.0)
                obs = batch.next_obs.unsqueeze(-2).expand(*cand.shape[:-1], batch.next_obs.shape[-1])
                drawn = drawn._replace(particles=noisy, q_particles=self.critic.min_q(obs, noisy))
            mean, std = self.q_stats.mean.clone(), self.q_stats.std.clone()
            self.q_stats.update(q)
        metrics["q_run_mean"] = self.q_stats.mean.clone()
        return metrics, DPMDReuse(drawn, q, mean, std)

    def policy_loss(self, batch: Batch, reuse: DPMDReuse) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sched, cfg, next_obs = self.policy.sched, self.cfg, batch.next_obs
        # seeds: every tensor has a leading S; α and the statistics are [S], shaped by per_seed to broadcast
        lam, mean, std = (self.per_seed(x, reuse.drawn.q_particles) for x in (self.alpha, reuse.mean, reuse.std))
        std = std + cfg.q_norm_eps
        if cfg.dpmd_weights in ("softmax", "advantage"):
            cand, q = reuse.drawn.particles, reuse.drawn.q_particles  # [B, N, A], [B, N]
            N = cand.shape[-2]
            t = torch.randint(0, sched.T, cand.shape[:-1], device=next_obs.device)
            eps = torch.randn_like(cand)
            a_t = q_sample(sched, cand, t, eps)
            s = next_obs.unsqueeze(-2).expand(*next_obs.shape[:-1], N, next_obs.shape[-1])
            eps_pred = self.policy.eps_net(a_t, s, t)
            if self.kl_alpha:  # raw Q: α follows the critic's scale, so neither normalising nor clipping is needed
                logits = q / lam  # (they would flatten one state's differences, and α would chase them to 0)
            else:
                score = state_advantage(q) if cfg.dpmd_weights == "advantage" else normalize_q(
                    q, mean, std, cfg.public_code_norm)
                logits = score.clamp(-cfg.q_clip, cfg.q_clip) / lam
            w_max = torch.softmax(logits, -1).flatten(-2).max(-1).values * N
            metrics = {"w_max": w_max}
            if self.kl_alpha:  # the weights' entropy per state, for α (DiffusionAgent.policy_step)
                metrics.update(_w_entropy=logit_entropy(logits.detach()), _candidates=N)
            return self.ops.sm_loss(eps_pred, eps, logits), metrics
        a0 = reuse.drawn.action
        lam, mean, std = (x if self.seeds is None else x.squeeze(-1) for x in (lam, mean, std))  # against [S, B]
        w = dpmd_weights(reuse.q, lam, mean, std, cfg.q_clip, cfg.public_code_norm)
        t = torch.randint(0, sched.T, a0.shape[:-1], device=next_obs.device)
        eps = torch.randn_like(a0)
        eps_pred = self.policy.eps_net(q_sample(sched, a0, t, eps), next_obs, t)
        return dpmd_loss(eps_pred, eps, w), {"w_mean": w.mean(-1), "w_std": w.std(-1)}

    def extra_state(self) -> dict:
        return {"q_stats": self.q_stats.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.q_stats.load_state_dict(state["q_stats"])
