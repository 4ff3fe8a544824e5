"""PPO (Schulman et al. 2017, arXiv 1707.06347), the on-policy Gaussian baseline: CleanRL's continuous-action PPO
(vwxyzjn/cleanrl `cleanrl/ppo_continuous_action.py`: tanh MLPs 64x64 with orthogonal initialisation, a
state-independent log-std, clipped surrogate and clipped value loss, per-minibatch advantage normalisation, linear
learning-rate annealing, running observation and reward normalisation) on fastrsm's on-policy loop
(fastrsm.onpolicy). FlowRL's `flowrl/agent/online/ppo.py` (typoverflow/flow-rl at 34bf5646) differs in its
state-dependent log-std (`ppo_state_std`) and separate actor and critic optimisers, which fastrsm keeps too
(docs/algorithms.md, "PPO and DPPO")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..backend import Ops
from ..diffusion import randn
from ..losses import clipped_surrogate, masked_mean, normalize_advantage, value_loss
from ..settings import Config, Need
from .base import gradient_step, make_adam
from .onpolicy_base import Metrics, OnPolicyAgent, OnPolicySettings

LOG_STD_RANGE = (-5.0, 2.0)  # the state-dependent head's log σ is clamped here (fastrsm's choice)


@dataclass
class PPOSettings(OnPolicySettings):
    ppo_state_std: bool = False  # False: one learned log σ per action dimension (CleanRL); True: a head of the net
    ppo_log_std_init: float = 0.0  # CleanRL's zeros

    help = {"ppo_state_std": "false: a state-independent log-std (CleanRL); true: a state-dependent head (FlowRL)"}
    presets = {
        # CleanRL's MuJoCo defaults (ppo_continuous_action.py): 1 env x 2048 steps, 32 minibatches, 10 epochs,
        # lr 3e-4 annealed, 64x64 tanh nets, clip 0.2, 1M steps
        "paper": dict(num_envs=1, rollout_steps=2048, num_minibatches=32, update_epochs=10, hidden=64, layers=2,
                      lr_policy=3e-4, lr_q=3e-4, gamma=0.99, eval_every=20_480, checkpoint_every=20_480,
                      log_every=2_048),
        # MuJoCo on a CPU: the paper's update with 8 EnvPool envs x 256 steps (the same 2048-row rollout)
        "small": dict(num_envs=8, rollout_steps=256, num_minibatches=32, update_epochs=10, hidden=64, layers=2,
                      lr_policy=3e-4, lr_q=3e-4, eval_every=20_480, checkpoint_every=20_480, log_every=2_048,
                      total_steps=1_000_000),
        # tests/test_ppo.py's learning test (InvertedPendulum): 8 envs x 128 steps, 4 minibatches, faster lr
        "smoke": dict(num_envs=8, rollout_steps=128, num_minibatches=4, update_epochs=10, hidden=64, layers=2,
                      lr_policy=1e-3, lr_q=1e-3, eval_every=8_192, checkpoint_every=8_192, log_every=1_024,
                      total_steps=100_000, anneal_lr=False),
    }

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        need(math.isfinite(cfg.ppo_log_std_init), f"ppo-log-std-init must be a number, got {cfg.ppo_log_std_init}")


def ortho_mlp(in_dim: int, hidden: int, layers: int, out_dim: int, out_gain: float) -> nn.Sequential:
    """CleanRL's `layer_init`: tanh MLP, orthogonal weights (gain √2 hidden, `out_gain` last), zero biases."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        lin = nn.Linear(d, hidden)
        nn.init.orthogonal_(lin.weight, math.sqrt(2))
        nn.init.zeros_(lin.bias)
        mods += [lin, nn.Tanh()]
        d = hidden
    out = nn.Linear(d, out_dim)
    nn.init.orthogonal_(out.weight, out_gain)
    nn.init.zeros_(out.bias)
    mods.append(out)
    return nn.Sequential(*mods)


class GaussianPolicy(nn.Module):
    """N(μ(s), σ) over unbounded actions (the env clips to its box, as CleanRL's ClipAction wrapper does): σ is
    one learned vector (state_std False) or a second head of the MLP."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, state_std: bool, log_std_init: float):
        super().__init__()
        self.act_dim, self.state_std = act_dim, state_std
        self.net = ortho_mlp(obs_dim, hidden, layers, act_dim * (2 if state_std else 1), 0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        if state_std:
            self.log_std.requires_grad_(False)  # unused: the head gives log σ (kept so checkpoints share keys)
            with torch.no_grad():
                self.net[-1].bias[act_dim:].fill_(log_std_init)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ), each [..., A]."""
        out = self.net(s)
        if self.state_std:
            mean, log_std = out.split(self.act_dim, dim=-1)
            return mean, log_std.clamp(*LOG_STD_RANGE)
        return out, self.log_std.expand_as(out)


def gaussian_log_prob(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; μ, σ²I), summed over the action dimensions: [..., A] -> [...]."""
    z = (a - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class PPO(OnPolicyAgent):
    algo = "ppo"
    about = ("PPO, the on-policy Gaussian baseline, CleanRL's continuous-action PPO (Schulman et al., 2017, "
             "arXiv 1707.06347)")
    Settings = PPOSettings

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__(obs_dim, act_dim, cfg, device, ops, seeds)
        self.policy = GaussianPolicy(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.ppo_state_std,
                                     cfg.ppo_log_std_init).to(device)
        self.opt_pi = make_adam([p for p in self.policy.parameters() if p.requires_grad], cfg.lr_policy, device,
                                self.compiled)

    def make_value(self) -> nn.Module:
        return ortho_mlp(self.obs_dim, self.cfg.hidden, self.cfg.layers, 1, 1.0)

    def policy_act(self, obs: torch.Tensor, explore: bool, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.policy(obs)
        if not explore:
            return mean, mean
        a = mean + log_std.exp() * randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        return a, a

    def log_prob(self, obs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.policy(obs)
        return gaussian_log_prob(sample, mean, log_std)

    def minibatch_step(self, mb: dict[str, torch.Tensor]) -> Metrics:
        cfg, mask = self.cfg, mb["mask"]
        adv = normalize_advantage(mb["adv"], mask) if cfg.norm_adv else mb["adv"]
        mean, log_std = self.policy(mb["obs"])
        logratio = gaussian_log_prob(mb["sample"], mean, log_std) - mb["old_logp"]
        loss_pg = masked_mean(clipped_surrogate(logratio, adv, cfg.clip_coef), mask)
        entropy = masked_mean(gaussian_entropy(log_std), mask)
        gradient_step(self.opt_pi, loss_pg - cfg.ent_coef * entropy, max_norm=cfg.grad_norm)
        v = self.value(mb["obs"]).squeeze(-1)
        loss_v = masked_mean(value_loss(v, mb["ret"], mb["old_v"], cfg.clip_coef if cfg.clip_vloss else None), mask)
        gradient_step(self.opt_v, cfg.vf_coef * loss_v, max_norm=cfg.grad_norm)
        with torch.no_grad():
            ratio = logratio.exp()
            return {"loss_pi": loss_pg.detach(), "loss_v": loss_v.detach(), "entropy": entropy.detach(),
                    "approx_kl": masked_mean((ratio - 1) - logratio, mask),
                    "clipfrac": masked_mean(((ratio - 1).abs() > cfg.clip_coef).to(ratio.dtype), mask),
                    "v_mean": masked_mean(v.detach(), mask), "std_mean": log_std.detach().exp().mean()}
