"""DACER2 ("Enhanced DACER Algorithm with High Diffusion Efficiency", arXiv 2505.23426; docs/algorithms.md
§10): DACER with T = 5 and an auxiliary Q-gradient-field loss, L_π = L_q + η·L_g.

No official code is public; what the abstract and reviews say is the shape of L_g: at each diffusion step the
network output at (s, a_t, t) is regressed onto the normalised action gradient of Q, ∇_a Q/‖∇_a Q‖, times a
temporal weight w(t) that is exponential in t. Every choice the record leaves open is a setting:

- η (`dacer2_eta`, default 0.05): the paper reports 1.0 or 0.01 depending on the task; 0.05 is a third-party
  PyTorch adaptation's (docs/algorithms.md §10), taken with that adaptation's w(t) as the one complete set of numbers.
- w(t) = exp(slope·t + bias) (`dacer2_w_slope` 0.4, `dacer2_w_bias` −1.8, the same third party's), with t = 1..T
  the paper's step index (fastrsm's index i is t − 1): our choice of unit, so large-noise steps (large t) get
  the larger target, as the paper's description says ("early steps remove large noise, late steps refine").
- the sign for an ε-network (`dacer2_sign`): the score is ∇ log p = −ε/√(1−ᾱ_t), so a field that moves a_t up
  Q has ε pointing down it: ε* = −w(t)·ĝ ("descent", default, derived). "ascent" (ε* = +w(t)·ĝ) is the
  flow-matching velocity form carried over literally.
- where ∇_a Q is taken (`dacer2_grad_at`): "chain" (default) at the on-chain a_t of the same reverse pass the
  policy loss differentiates (clipped to the action box, where the critic has data); "forward" at
  a_t = √ᾱ_t·a_0 + √(1−ᾱ_t)·ε, the forward-noised final action of that chain.
- ∇_a Q is of min(μ1, μ2) (the policy loss's Q), normalised per sample with a floor of 1e-6 on the norm; the
  network's input a_t is detached, so L_g trains the network as a regression at each step and does not add a
  second path through earlier steps; L_g = mean over states and steps of ‖ε_θ(a_t, s, t) − ε*‖² (summed over
  action dimensions, as fastrsm's score-matching losses)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion import q_sample, sample_chain
from ..settings import Config, Need
from .dacer import DACER, DACERSettings


def temporal_weight(t: torch.Tensor, slope: float, bias: float) -> torch.Tensor:
    """w(t) = exp(slope·t + bias), t the paper's step index 1..T."""
    return torch.exp(slope * t.to(torch.float32) + bias)


def q_field_target(grad_q: torch.Tensor, w: torch.Tensor, sign: str) -> torch.Tensor:
    """ε* = ∓w(t)·∇Q/‖∇Q‖ ('descent': minus, the ε-network's convention); grad_q [..., A], w [...]."""
    unit = grad_q / grad_q.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    s = -1.0 if sign == "descent" else 1.0
    return s * w.unsqueeze(-1) * unit


def q_field_loss(eps_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_g = mean over rows of ‖ε_θ − ε*‖²; eps_pred, target: [..., A]."""
    return ((eps_pred - target.detach()) ** 2).sum(-1).mean()


DACER2_SIGNS = ("descent", "ascent")
DACER2_GRAD_AT = ("chain", "forward")


@dataclass
class DACER2Settings(DACERSettings):
    dacer2_eta: float = 0.05  # weight η of the Q-gradient-field loss
    dacer2_w_slope: float = 0.4  # w(t) = exp(dacer2_w_slope·t + dacer2_w_bias), t = 1..T the paper's step
    dacer2_w_bias: float = -1.8
    dacer2_sign: str = "descent"  # descent: ε* = −w(t)·∇Q/‖∇Q‖ (the score is −ε/√(1−ᾱ)); ascent: +w(t)·∇Q/‖∇Q‖
    dacer2_grad_at: str = "chain"  # chain: ∇Q at the on-chain a_t; forward: at a_t = forward-noised final action

    presets = {"small": dict(schedule="vp", diffusion_steps=5)}  # DACER's, with its own five steps

    @staticmethod
    def check(cfg: Config, need: Need) -> None:
        for name, choices in (("dacer2_sign", DACER2_SIGNS), ("dacer2_grad_at", DACER2_GRAD_AT)):
            v = getattr(cfg, name)
            need(v in choices, f"unknown {name.replace('_', '-')} {v!r}; choose one of {', '.join(choices)}")
        need(math.isfinite(cfg.dacer2_eta) and cfg.dacer2_eta >= 0, f"dacer2-eta must be >= 0, got {cfg.dacer2_eta}")
        need(math.isfinite(cfg.dacer2_w_slope) and math.isfinite(cfg.dacer2_w_bias), "dacer2-w-* must be finite")


class DACER2(DACER):
    Settings = DACER2Settings
    algo = "dacer2"
    about = "DACER with a Q-gradient-field loss and 5 steps (DACER-v2, arXiv 2505.23426)"

    def policy_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, T, B = self.cfg, self.policy.T, obs.shape[0]
        # a_steps [T, B, A]: a_steps[i] is the on-chain a_t that step index i denoises
        x0, a_steps = sample_chain(self.policy.eps_net, self.policy.sched, obs, x_T_scale=self.policy.x_T_scale,
                                   grad=True, return_steps=True)
        a = self.add_noise(x0)
        loss_q = -self.critic.min_q(obs, a).mean()  # backward stops at the policy's weights (DACER.policy_step)
        # the points of the field, one row per (step, state)
        idx = torch.arange(T, device=obs.device).repeat_interleave(B)  # [T·B] step index i
        if cfg.dacer2_grad_at == "forward":
            a_t = q_sample(self.policy.sched, x0.detach().repeat(T, 1), idx, torch.randn(T * B, self.act_dim,
                                                                                        device=obs.device))
        else:
            a_t = a_steps.detach().reshape(T * B, self.act_dim)
        s_rep = obs.repeat(T, 1)
        with torch.enable_grad():  # ∂Q/∂a at the field's points only: autograd.grad leaves the weights' grads be
            a_q = a_t.clamp(-1.0, 1.0).requires_grad_(True)
            (grad_q,) = torch.autograd.grad(self.critic.min_q(s_rep, a_q).sum(), a_q)
        target = q_field_target(grad_q, temporal_weight(idx + 1, cfg.dacer2_w_slope, cfg.dacer2_w_bias),
                                cfg.dacer2_sign)
        loss_g = q_field_loss(self.policy.eps_net(a_t, s_rep, idx), target)
        return loss_q + cfg.dacer2_eta * loss_g, {"loss_pi_q": loss_q.detach(), "loss_pi_g": loss_g.detach()}
