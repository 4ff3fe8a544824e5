"""What the on-policy agents (PPO, DPPO) share: their settings, the rollout they learn from, running observation and
reward normalisation, the value network, and the PPO update schedule (GAE over the rollout, then several epochs of
shuffled minibatches). An algorithm supplies how it draws an action (`explore`), the log-probability of what it
drew (`log_prob`) and its minibatch loss (`minibatch_step`). The loop that collects the rollout is
fastrsm.onpolicy; the run around it (evaluation, checkpoints, signals, logs) is fastrsm.runner's, as for every
algorithm.

Sources (facts and default values only): CleanRL `cleanrl/ppo_continuous_action.py` (vwxyzjn/cleanrl), FlowRL
`flowrl/agent/online/ppo.py` (typoverflow/flow-rl at 34bf5646) and `dppo.py` (at 2e5fcc17), DPPO's own
`model/diffusion/diffusion_ppo.py` (irom-princeton/dppo at cc7234ad); docs/algorithms.md, "PPO and DPPO"."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backend import Ops
from ..losses import gae
from ..normalize import ObsNormalizer, RewardScaler
from ..settings import AlgoSettings, Config, Need, settings_of
from .base import checkpoint_state, make_adam, restore_state, set_lr

Metrics = dict[str, torch.Tensor]


@dataclass
class OnPolicySettings(AlgoSettings):
    """The rollout and the PPO update of every on-policy algorithm (CleanRL's names; its MuJoCo defaults)."""

    rollout_steps: int = 2048  # vector steps per rollout (CleanRL num_steps); a rollout is num_envs × this
    num_minibatches: int = 32  # minibatches per epoch; must divide num_envs × rollout_steps
    update_epochs: int = 10  # passes over each rollout
    gae_lambda: float = 0.95
    clip_coef: float = 0.2  # ε of the clipped ratio
    clip_vloss: bool = True  # CleanRL's clipped value loss (around the rollout's values, by clip_coef)
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    grad_norm: float = 0.5  # global gradient-norm clip of each network's step (0: none)
    norm_obs: bool = True  # running observation normalisation (gymnasium's NormalizeObservation, clip ±10)
    norm_reward: bool = True  # running reward scaling (gymnasium's NormalizeReward, clip ±10)
    norm_adv: bool = True  # advantages normalised per minibatch
    anneal_lr: bool = True  # learning rates decay linearly to 0 over total_steps (CleanRL)
    target_kl: float = 0.0  # > 0: stop an update's epochs once the approximate KL of an epoch exceeds it

    help = {"rollout_steps": "on-policy (ppo, dppo): vector steps per rollout; a rollout is num-envs x this",
            "num_minibatches": "on-policy: minibatches per epoch; must divide num-envs x rollout-steps",
            "anneal_lr": "on-policy: linear decay of the learning rates to 0 over total-steps (a resume that "
                         "changes total-steps stretches what is left of it)"}

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        for name in ("rollout_steps", "num_minibatches", "update_epochs"):
            v = getattr(cfg, name)
            need(v > 0, f"{name.replace('_', '-')} must be a positive integer, got {v}")
        for name in ("clip_coef", "vf_coef"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a positive number, got {v}")
        for name in ("ent_coef", "grad_norm", "target_kl"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and v >= 0, f"{name.replace('_', '-')} must be >= 0, got {v}")
        need(0 <= cfg.gae_lambda <= 1, f"gae-lambda must be in [0, 1], got {cfg.gae_lambda}")
        own = settings_of(cfg.algo)
        if own is not None and issubclass(own, OnPolicySettings):  # the rollout's shape: on-policy runs only
            rows = cfg.num_envs * cfg.rollout_steps
            need(rows % cfg.num_minibatches == 0,
                 f"num-minibatches {cfg.num_minibatches} does not divide the rollout of num-envs x rollout-steps = "
                 f"{cfg.num_envs} x {cfg.rollout_steps} = {rows} rows; pick a divisor of {rows}")


@dataclass
class Rollout:
    """`rollout_steps` vector steps of `num_envs` envs, as the update reads them ([T, E, ...]).

    obs holds T + 1 rows: obs[t] is what step t acted on and obs[t + 1] what it returned (on a step that ended an
    episode, its true last observation: the bootstrap of a truncation), each normalised with the statistics of the
    moment it was acted on. A row with `valid` False is an auto-reset step (fastrsm.envs): no transition, no loss."""

    obs: torch.Tensor  # [T + 1, E, obs_dim]
    sample: torch.Tensor  # [T, E, ...]: what the policy drew (PPO: the action; DPPO: its denoising chain)
    reward: torch.Tensor  # [T, E], scaled
    terminated: torch.Tensor  # [T, E] bool
    truncated: torch.Tensor  # [T, E] bool
    valid: torch.Tensor  # [T, E] bool


class OnPolicyAgent(nn.Module):
    """Base of PPO and DPPO: observation/reward normalisers, value network, counters, checkpoints, the update's
    epochs and minibatches. `on_policy` tells fastrsm.runner to collect rollouts (fastrsm.onpolicy) instead of
    stepping a replay."""

    algo = "onpolicy"
    about = ""
    Settings: type[AlgoSettings] = OnPolicySettings
    on_policy = True
    # one policy per process: the seed axis of fastrsm.seeds is not built for the rollout's normalisers
    supports_seeds = False
    seeds = None

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: torch.device, ops: Ops,
                 seeds: int | None = None):
        super().__init__()
        if seeds is not None:
            raise ValueError(f"{self.algo} has no multi-seed path")
        self.obs_dim, self.act_dim, self.cfg, self.device, self.ops = obs_dim, act_dim, cfg, device, ops
        self.compiled = ops.backend == "compile"
        self.obs_norm = ObsNormalizer(obs_dim, cfg.norm_obs).to(device)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma, cfg.norm_reward).to(device)
        self.value = self.make_value().to(device)
        self.opt_v = make_adam(self.value.parameters(), cfg.lr_q, device, self.compiled)
        self.updates = 0  # minibatch gradient steps so far
        self.iterations = 0  # rollouts learned from so far
        self.rollout_rows = cfg.num_envs * cfg.rollout_steps
        if self.rollout_rows % cfg.num_minibatches:
            raise ValueError(f"num-minibatches {cfg.num_minibatches} does not divide {self.rollout_rows} rows")

    # -- what an algorithm provides
    def make_value(self) -> nn.Module:
        """V(s) on normalised observations: [..., obs_dim] -> [..., 1]."""
        raise NotImplementedError

    def policy_act(self, obs: torch.Tensor, explore: bool, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action for the env [B, A], what to store in the rollout) on normalised observations."""
        raise NotImplementedError

    def log_prob(self, obs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """log π(sample | obs) per row (DPPO: per row and fine-tuned denoising step)."""
        raise NotImplementedError

    def minibatch_step(self, mb: dict[str, torch.Tensor]) -> Metrics:
        """One gradient step of the policy and of the value network on minibatch `mb` (`flat_rollout`'s rows)."""
        raise NotImplementedError

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_pi]

    # -- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions for raw observations (normalised here with the running statistics, which acting never moves)."""
        return self.policy_act(self.obs_norm(obs), explore, generator)[0]

    def deploy_particles(self) -> int | None:
        return None

    # -- the update
    def schedule(self) -> None:
        """CleanRL's annealing: lr·(1 − iteration / iterations) for this rollout, iterations = total_steps over the
        rollout's size."""
        if not self.cfg.anneal_lr:
            return
        iterations = max(1, self.cfg.total_steps // self.rollout_rows)
        frac = max(0.0, 1.0 - self.iterations / iterations)
        for opt in self.policy_optimizers():
            set_lr(opt, frac * self.cfg.lr_policy)
        set_lr(self.opt_v, frac * self.cfg.lr_q)

    @torch.no_grad()
    def flat_rollout(self, r: Rollout) -> dict[str, torch.Tensor]:
        """The rollout as [N = T·E] rows with what every minibatch needs: advantages and returns (GAE), the
        rollout's values and log-probabilities (the policy has not moved since it acted, so these are the acting
        policy's), and the valid-row mask."""
        cfg = self.cfg
        T, E = r.reward.shape
        v = self.value(r.obs).squeeze(-1)
        adv, ret = gae(r.reward, v[:-1], v[1:], r.terminated, r.truncated, r.valid, cfg.gamma, cfg.gae_lambda)
        obs = r.obs[:-1].reshape(T * E, -1)
        sample = r.sample.reshape(T * E, *r.sample.shape[2:])
        return {"obs": obs, "sample": sample, "old_logp": self.log_prob(obs, sample), "adv": adv.reshape(-1),
                "ret": ret.reshape(-1), "old_v": v[:-1].reshape(-1), "mask": r.valid.reshape(-1).to(v.dtype)}

    def learn(self, r: Rollout, step: Callable[[dict[str, torch.Tensor]], Metrics] | None = None) -> Metrics:
        """`update_epochs` passes over the rollout in `num_minibatches` shuffled minibatches (the shuffle draws from
        torch's global generator, saved in every checkpoint); `step`: the minibatch step to run (compiled or not),
        default `minibatch_step`. Returns the last minibatch's metrics and the rollout's statistics."""
        cfg = self.cfg
        step = step or self.minibatch_step
        self.schedule()
        flat = self.flat_rollout(r)
        n = flat["adv"].shape[0]
        metrics: Metrics = {}
        for _ in range(cfg.update_epochs):
            kls = []
            for idx in torch.randperm(n, device=self.device).view(cfg.num_minibatches, -1):
                metrics = step({k: v[idx] for k, v in flat.items()})
                kls.append(metrics["approx_kl"])
                self.updates += 1
            if cfg.target_kl > 0 and float(torch.stack(kls).mean()) > cfg.target_kl:
                break
        self.iterations += 1
        mask = flat["mask"]
        ret, old_v = flat["ret"], flat["old_v"]
        var_ret = ((ret - (ret * mask).sum() / mask.sum()) ** 2 * mask).sum() / mask.sum()
        var_err = ((ret - old_v - ((ret - old_v) * mask).sum() / mask.sum()) ** 2 * mask).sum() / mask.sum()
        metrics["explained_var"] = 1 - var_err / var_ret.clamp_min(1e-8)
        metrics["reward_scaled_mean"] = (r.reward * r.valid).sum() / r.valid.sum().clamp_min(1)
        return metrics

    # -- what the runner reads
    def logged(self) -> Metrics:
        return {}

    def parameters_finite(self) -> torch.Tensor:
        norms = torch._foreach_norm([p for p in self.parameters()])
        return torch.isfinite(torch.stack(norms)).all()

    # -- checkpoints (the normalisers' statistics are buffers: in `modules`, so load_policy gets them)
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def checkpoint(self) -> dict[str, Any]:
        return checkpoint_state(self, ("updates", "iterations"))

    def restore(self, ckpt: dict[str, Any], weights_only: bool = False) -> None:
        restore_state(self, ckpt, weights_only, ("updates", "iterations"))
