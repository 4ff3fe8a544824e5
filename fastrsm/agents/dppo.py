"""DPPO, diffusion policy policy optimisation (Ren et al. 2024, arXiv 2409.00588): the denoising chain is an
inner MDP whose every step is a Gaussian, so a sampled chain x_K → … → x_0 has a log-probability per step and PPO's
clipped objective applies to each fine-tuned step, with the environment's advantage discounted by
γ_denoise^(K − k − 1) at step k (the last step undiscounted) and a clip ε_k that grows from `dppo_clip_base` at the
first fine-tuned step to `clip_coef` at the last.

DPPO fine-tunes a pre-trained diffusion policy (its first T − K steps run the frozen pre-trained network, the last
K a trained copy). The paper compared against trains it from scratch online, as FlowRL's dppo.py does: fastrsm
starts from a randomly initialised network and by default fine-tunes every step (`dppo_ft_steps` 0 = T); a
smaller K keeps the first T − K steps on a frozen copy of the initial network, DPPO's structure.

Sources (facts and values, not code): DPPO's `model/diffusion/diffusion_ppo.py`, `diffusion_vpg.py` and
`cfg/gym/finetune/hopper-v2/ft_ppo_diffusion_mlp.yaml` (irom-princeton/dppo at cc7234ad): the step std floored at
0.1 when sampling and when scoring, noise clipped to ±3, x̂_0 and the final action clipped to ±1, per-element
log-probabilities clamped to [−5, 2] and averaged over the action's dimensions, γ_denoise 0.99; FlowRL's
`flowrl/agent/online/dppo.py` and `examples/online/config/hb_onpolicy/algo/dppo.yaml` (typoverflow/flow-rl at
2e5fcc17): from scratch, every step fine-tuned, minibatches of whole chains with the loss averaged over their
steps, the run's shape (16 envs × 128 steps, 4 minibatches, 4 epochs, T = 10 cosine, lr 3e-4, clip 0.1, grad clip
1). docs/algorithms.md, "PPO and DPPO", lists what differs."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..backend import Ops
from ..diffusion import Schedule, randn
from ..losses import clipped_surrogate, masked_mean, normalize_advantage, value_loss
from ..nets import EpsilonNet, mlp
from ..settings import Config, Need
from .base import gradient_step, make_adam
from .onpolicy_base import Metrics, OnPolicyAgent, OnPolicySettings

LOGPROB_RANGE = (-5.0, 2.0)  # DPPO clamps every element's log-probability here, old and new alike


@dataclass
class DPPOSettings(OnPolicySettings):
    dppo_ft_steps: int = 0  # K, the fine-tuned (last) denoising steps; 0 = all T (training from scratch)
    dppo_min_sampling_std: float = 0.1  # floor of a step's std when exploring (DPPO's min_sampling_denoising_std)
    dppo_min_logprob_std: float = 0.1  # floor of a step's std in its log-probability (min_logprob_denoising_std)
    dppo_gamma_denoising: float = 0.99  # the chain's discount of the advantage
    dppo_clip_base: float = 0.1  # ε at the first fine-tuned step; = clip-coef: one ε for every step (FlowRL)
    dppo_clip_rate: float = 3.0  # the exponential rate of ε from dppo-clip-base to clip-coef over the steps
    dppo_randn_clip: float = 3.0  # each step's noise is clipped to ± this

    help = {"dppo_ft_steps": "fine-tuned denoising steps K (the chain's last K); 0 = all diffusion-steps",
            "dppo_clip_base": "the clip at the first fine-tuned step (DPPO's clip_ploss_coef_base); equal to "
                              "clip-coef: one clip for every step"}
    presets = {
        # FlowRL's from-scratch run (hb_onpolicy/algo/dppo.yaml at 2e5fcc17): 16 envs x 128 steps, 4 minibatches
        # of whole chains, 4 epochs, T = 10 on the (unscaled) cosine schedule, lr 3e-4 for both networks, clip 0.1,
        # gradient clip 1, a 256x3 Mish ε-network with a 32-d time embedding, a 256x4 Mish critic; no value clip,
        # no entropy, no lr annealing (none of them in FlowRL's DPPO)
        "paper": dict(num_envs=16, rollout_steps=128, num_minibatches=4, update_epochs=4, diffusion_steps=10,
                      schedule="cosine", beta_scale=1.0, hidden=256, layers=3, time_dim=32, critic_layers=4,
                      critic_activation="mish", lr_policy=3e-4, lr_q=3e-4, clip_coef=0.1, dppo_clip_base=0.1,
                      grad_norm=1.0, clip_vloss=False, anneal_lr=False, eval_every=20_480,
                      checkpoint_every=20_480, log_every=2_048),
        "small": dict(num_envs=16, rollout_steps=128, num_minibatches=4, update_epochs=4, diffusion_steps=10,
                      schedule="cosine", beta_scale=1.0, hidden=128, layers=2, time_dim=16, critic_layers=3,
                      lr_policy=3e-4, lr_q=3e-4, clip_coef=0.1, dppo_clip_base=0.1, grad_norm=1.0,
                      clip_vloss=False, anneal_lr=False, eval_every=20_480, checkpoint_every=20_480,
                      log_every=2_048, total_steps=1_000_000),
        # tests/test_dppo.py's learning test (InvertedPendulum)
        "smoke": dict(num_envs=8, rollout_steps=128, num_minibatches=4, update_epochs=10, diffusion_steps=5,
                      schedule="cosine", beta_scale=1.0, hidden=64, layers=2, critic_layers=2, lr_policy=1e-3,
                      lr_q=1e-3, clip_coef=0.1, dppo_clip_base=0.1, grad_norm=1.0, clip_vloss=False,
                      anneal_lr=False, eval_every=8_192, checkpoint_every=8_192, log_every=1_024,
                      total_steps=100_000),
    }

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(0 <= cfg.dppo_ft_steps <= cfg.diffusion_steps,
             f"dppo-ft-steps must be in [0, diffusion-steps = {cfg.diffusion_steps}], got {cfg.dppo_ft_steps}")
        for name in ("dppo_min_sampling_std", "dppo_min_logprob_std", "dppo_clip_base", "dppo_randn_clip"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        need(0 < cfg.dppo_gamma_denoising <= 1,
             f"dppo-gamma-denoising must be in (0, 1], got {cfg.dppo_gamma_denoising}")
        need(math.isfinite(cfg.dppo_clip_rate), f"dppo-clip-rate must be a number, got {cfg.dppo_clip_rate}")


def step_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """DPPO's log-probability of one denoising step: log N(x_next; mean, std²) per element, clamped to [−5, 2],
    averaged over the action's dimensions: [..., A] -> [...]."""
    z = (x_next - mean) / std
    lp = -0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi)
    return lp.clamp(*LOGPROB_RANGE).mean(-1)


def clip_schedule(K: int, clip: float, base: float, rate: float) -> torch.Tensor:
    """ε_k for the fine-tuned steps k = 0..K−1 (k = 0 the noisiest): base + (clip − base)·(e^{rate·k/(K−1)} − 1)
    / (e^{rate} − 1); one step: clip."""
    if K == 1:
        return torch.tensor([clip], dtype=torch.float32)
    frac = torch.arange(K, dtype=torch.float64) / (K - 1)
    if rate == 0:
        eps = base + (clip - base) * frac
    else:
        eps = base + (clip - base) * (torch.exp(rate * frac) - 1) / math.expm1(rate)
    return eps.to(torch.float32)


class DPPO(OnPolicyAgent):
    algo = "dppo"
    about = ("DPPO, PPO over every Gaussian denoising step of a diffusion policy, trained from scratch online "
             "(Ren et al., 2024, arXiv 2409.00588)")
    Settings = DPPOSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.T = cfg.diffusion_steps
        self.K = cfg.dppo_ft_steps or self.T
        self.eps_net = EpsilonNet(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.time_dim).to(device)
        # the first T − K steps run a frozen copy of the initial network (DPPO's pre-trained base)
        self.eps_base = copy.deepcopy(self.eps_net).requires_grad_(False) if self.K < self.T else None
        self.opt_pi = make_adam(self.eps_net.parameters(), cfg.lr_policy, device, self.compiled)
        sched = Schedule.build(cfg.schedule, self.T, cfg.beta_scale, device)
        for name in ("sqrt_abar", "sqrt_1m_abar", "post_c0", "post_ct", "post_std"):
            self.register_buffer(name, getattr(sched, name), persistent=False)
        # fine-tuned step k (k = 0 the first, noisiest) is chain index i = K − 1 − k (index 0 is the last step)
        self.register_buffer("ft_index", torch.arange(self.K - 1, -1, -1, device=device), persistent=False)
        self.register_buffer("discount", torch.tensor([cfg.dppo_gamma_denoising ** (self.K - 1 - k)
                                                       for k in range(self.K)], device=device), persistent=False)
        self.register_buffer("clip_k", clip_schedule(self.K, cfg.clip_coef, cfg.dppo_clip_base,
                                                     cfg.dppo_clip_rate).to(device), persistent=False)

    def make_value(self) -> nn.Module:
        cfg = self.cfg
        return mlp(self.obs_dim, cfg.hidden, cfg.critic_layers or cfg.layers, 1, activation=cfg.critic_activation)

    def step_mean(self, net: nn.Module, x: torch.Tensor, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The mean of the reverse step from chain index i (x = x_{i+1} in the paper's numbering): the DDPM posterior
        mean around x̂_0 clipped to ±1. i: integer tensor broadcastable to x's rows."""
        eps = net(x, s, i)
        col = (lambda t: t[i].unsqueeze(-1))
        x0 = ((x - col(self.sqrt_1m_abar) * eps) / col(self.sqrt_abar)).clamp(-1.0, 1.0)
        return col(self.post_c0) * x0 + col(self.post_ct) * x

    def policy_act(self, obs: torch.Tensor, explore: bool, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the chain from x_T ~ N(0, I). Exploring: every step's std is floored at dppo_min_sampling_std and
        its noise clipped to ±dppo_randn_clip; the last K + 1 chain states are returned to store. Evaluating
        (DPPO's deterministic sampling): the DDPM's own std, and no noise at the last step."""
        B, A, cfg = obs.shape[0], self.act_dim, self.cfg
        x = randn((B, A), device=obs.device, dtype=obs.dtype, generator=generator)
        chain = [x] if self.K == self.T else []
        for i in reversed(range(self.T)):
            net = self.eps_net if i < self.K or self.eps_base is None else self.eps_base
            idx = torch.full((B,), i, device=obs.device, dtype=torch.long)
            mean = self.step_mean(net, x, obs, idx)
            z = randn((B, A), device=obs.device, dtype=obs.dtype, generator=generator)
            if explore:
                std = self.post_std[i].clamp_min(cfg.dppo_min_sampling_std)
                x = mean + std * z.clamp(-cfg.dppo_randn_clip, cfg.dppo_randn_clip)
            else:
                x = mean + self.post_std[i].clamp_min(1e-3) * z if i > 0 else mean
            if i == 0:
                x = x.clamp(-1.0, 1.0)
            if i <= self.K:  # step K's output is the first fine-tuned step's input
                chain.append(x)
        return x, torch.stack(chain, dim=1)  # [B, A], [B, K + 1, A]

    def log_prob(self, obs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Per row and fine-tuned step: log π(x_{k+1} | x_k, s) of the stored chain [B, K + 1, A] -> [B, K]."""
        B, K = obs.shape[0], self.K
        s = obs.unsqueeze(1).expand(B, K, obs.shape[-1])
        i = self.ft_index.unsqueeze(0).expand(B, K)
        mean = self.step_mean(self.eps_net, sample[:, :-1], s, i)
        std = self.post_std[i].clamp_min(self.cfg.dppo_min_logprob_std).unsqueeze(-1)
        return step_log_prob(sample[:, 1:], mean, std)

    def minibatch_step(self, mb: dict[str, torch.Tensor]) -> Metrics:
        cfg, mask = self.cfg, mb["mask"]
        adv = normalize_advantage(mb["adv"], mask) if cfg.norm_adv else mb["adv"]
        logratio = self.log_prob(mb["obs"], mb["sample"]) - mb["old_logp"]
        per_step = clipped_surrogate(logratio, adv.unsqueeze(-1) * self.discount, self.clip_k)  # [B, K]
        loss_pg = masked_mean(per_step.mean(-1), mask)  # averaged over the steps, as both sources do
        gradient_step(self.opt_pi, loss_pg, max_norm=cfg.grad_norm)
        v = self.value(mb["obs"]).squeeze(-1)
        loss_v = masked_mean(value_loss(v, mb["ret"], mb["old_v"], cfg.clip_coef if cfg.clip_vloss else None), mask)
        gradient_step(self.opt_v, cfg.vf_coef * loss_v, max_norm=cfg.grad_norm)
        with torch.no_grad():
            ratio = logratio.exp()
            m = mask.unsqueeze(-1).expand_as(ratio)
            return {"loss_pi": loss_pg.detach(), "loss_v": loss_v.detach(),
                    "approx_kl": masked_mean((ratio - 1) - logratio, m),
                    "clipfrac": masked_mean(((ratio - 1).abs() > self.clip_k).to(ratio.dtype), m),
                    "ratio_mean": masked_mean(ratio, m), "v_mean": masked_mean(v.detach(), mask)}
