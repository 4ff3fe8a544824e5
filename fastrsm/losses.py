"""The losses of docs/algorithms.md §4–6, written as the math reads. These are the references: kernels and captured
graphs must compute the same numbers.

Conventions: ‖·‖² sums over action dimensions; losses average over the batch of states (the last batch axis:
with a leading seed axis, S agents at once, each loss is [S], every seed's own mean; fastrsm.seeds).
`weighted_sm_loss`, the core of SDAC and DPMD-softmax, is defined beside its fused kernel
(kernels/reference.py) and re-exported here.
"""

from __future__ import annotations

import math

import torch

from .diffusion import Schedule, q_sample
from .kernels.reference import weighted_sm_loss
from .nets import EpsilonNet

# ---------------------------------------------------------------- diffusion (score-matching) losses


def dsm_loss(eps_net: EpsilonNet, sched: Schedule, s: torch.Tensor, a0: torch.Tensor,
             t: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Plain denoising score matching on samples a0 of the target: mean_b ‖ε_θ(a_t, s, t) − ε‖²."""
    B = a0.shape[0]
    t = torch.randint(0, sched.T, (B,), device=a0.device) if t is None else t
    eps = torch.randn_like(a0) if eps is None else eps
    return ((eps_net(q_sample(sched, a0, t, eps), s, t) - eps) ** 2).sum(-1).mean()


def normalize_q(q: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, public_code: bool = False) -> torch.Tensor:
    """Q̃ = (Q − m)/σ. `public_code=True` reproduces the authors' `q - running_mean / running_std`, which by
    operator precedence is Q − m/σ."""
    if public_code:
        return q - mean / std
    return (q - mean) / std


def state_advantage(q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(Q − mean_k Q)/(std_k Q + eps) over the last axis, the K candidate actions of one state: which action is
    better *at this state*, in units of this state's own spread. The running batch statistics of `normalize_q`
    mostly measure how states differ (on Hopper the between-state std of Q is ~100× the within-state std;
    bench/LEARNING.md), so weights built on them barely tell one state's actions apart."""
    return (q - q.mean(-1, keepdim=True)) / (q.std(-1, keepdim=True) + eps)


def dpmd_weights(q: torch.Tensor, lambda_: torch.Tensor | float, mean: torch.Tensor, std: torch.Tensor,
                 clip: float = 3.0, public_code: bool = False) -> torch.Tensor:
    """w = exp(clip(Q̃, −c, c) / λ): the mirror-descent reweighting of DPMD (no gradient)."""
    return torch.exp(normalize_q(q, mean, std, public_code).clamp(-clip, clip) / lambda_).detach()


def dpmd_loss(eps_pred: torch.Tensor, eps: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L_DPMD = mean_b w_b ‖ε_θ(a_t, s, t) − ε‖²; eps_pred, eps: [B, A], w: [B]."""
    return (w * ((eps_pred - eps) ** 2).sum(-1)).mean(-1)


def sdac_reverse_samples(sched: Schedule, a_t: torch.Tensor, t: torch.Tensor, K: int,
                         eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K samples of φ_{0|t}(a_0|a_t) = N(a_t/√ᾱ_t, (1−ᾱ_t)/ᾱ_t I): a_0^k = (a_t − √(1−ᾱ_t) ε^k)/√ᾱ_t, clipped.

    a_t: [B, A], t: [B] -> (a0 [B, K, A] in [-1, 1], eps [B, K, A])."""
    A = a_t.shape[-1]
    eps = torch.randn(*a_t.shape[:-1], K, A, device=a_t.device, dtype=a_t.dtype) if eps is None else eps
    c1 = sched.sqrt_1m_abar[t][..., None, None]
    c0 = sched.sqrt_abar[t][..., None, None]
    a0 = ((a_t.unsqueeze(-2) - c1 * eps) / c0).clamp(-1.0, 1.0)
    return a0, eps


def sdac_reverse_samples_truncated(sched: Schedule, a_t: torch.Tensor, t: torch.Tensor, K: int
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """K samples of φ_{0|t}(a_0|a_t) truncated to the action box [-1, 1] (FlowRL's SDAC), by the inverse CDF,
    instead of clipping (which piles mass on the box's faces); ε^k is the noise that maps a_0^k to a_t.

    a_t: [..., B, A], t: [..., B] -> (a0 [..., B, K, A] in [-1, 1], eps [..., B, K, A])."""
    A = a_t.shape[-1]
    c1 = sched.sqrt_1m_abar[t][..., None, None]
    c0 = sched.sqrt_abar[t][..., None, None]
    mu, sd = a_t.unsqueeze(-2) / c0, c1 / c0  # φ_{0|t} = N(a_t/√ᾱ, (1−ᾱ)/ᾱ)
    lo, hi = torch.special.ndtr((-1.0 - mu) / sd), torch.special.ndtr((1.0 - mu) / sd)
    u = lo + (hi - lo) * torch.rand(*a_t.shape[:-1], K, A, device=a_t.device, dtype=a_t.dtype)
    z = torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7))
    a0 = (mu + sd * z).clamp(-1.0, 1.0)  # the clamp only guards the float rounding of a far tail
    eps = (a_t.unsqueeze(-2) - c0 * a0) / c1
    return a0, eps


def sdac_loss(eps_pred: torch.Tensor, eps_k: torch.Tensor, q: torch.Tensor,
              lambda_: torch.Tensor | float) -> torch.Tensor:
    """L_SDAC = mean_b Σ_k softmax_k(q_bk/λ) ‖ε_θ(a_t, s, t) − ε^k‖²; eps_pred [B, A], eps_k [B, K, A], q [B, K].

    Its gradient in ε_θ is 2(ε_θ − Σ_k w_k ε^k)/B: the network regresses onto the Q-weighted noise."""
    return weighted_sm_loss(eps_pred, eps_k, q / lambda_)


# ---------------------------------------------------------------- critic


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float,
              reward_scale: float) -> torch.Tensor:
    """r·scale + γ(1 − terminated)·Q'(s', a'). Truncation is not termination: only `terminated` cuts the bootstrap."""
    return (reward_scale * reward + gamma * (1.0 - terminated) * next_q).detach()


def critic_loss(q_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the twin critics of the mean squared TD error; q_pred: [2, B], target: [B] (seeds: [2, S, B],
    [S, B] -> [S])."""
    return ((q_pred - target.unsqueeze(0)) ** 2).mean(-1).sum(0)


# ---------------------------------------------------------------- temperature (DPMD / SDAC)


def noise_entropy(log_alpha: torch.Tensor, act_dim: int, explore_std: float = 0.1) -> torch.Tensor:
    """H ≈ ½·d·log(2πe·σ²) with σ = explore_std·α: the exploration noise stands in for the policy's entropy."""
    log_sigma = math.log(explore_std) + log_alpha
    return act_dim * (0.5 * math.log(2 * math.pi * math.e) + log_sigma)


def alpha_loss(log_alpha: torch.Tensor, entropy: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """−log α · (−H + H_target), with H held constant."""
    return -log_alpha * (-entropy.detach() + target_entropy)


# ---------------------------------------------------------------- SAC


def sac_actor_loss(q: torch.Tensor, logp: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E[α log π(a|s) − min Q(s, a)]."""
    return (alpha.detach() * logp - q).mean(-1)


def sac_alpha_loss(log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """−E[log α · (log π + H_target)]; drives the policy entropy to H_target = −|A|."""
    return -(log_alpha * (logp.detach() + target_entropy)).mean(-1)


def sac_target(next_q: torch.Tensor, next_logp: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Soft value of the next state: min Q' − α log π."""
    return next_q - alpha.detach() * next_logp



# ---------------------------------------------------------------- DSAC-T distributional critic (DACER, DACER2)
# Read from DACER's official code (github happy-yan/DACER-Diffusion-with-Online-RL, relax/algorithm/dacer.py).


def dsac_targets(reward: torch.Tensor, terminated: torch.Tensor, next_mean: torch.Tensor, next_std: torch.Tensor,
                 z: torch.Tensor, gamma: float, reward_scale: float, z_clip: float = 3.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, y_s): y = r·scale + γ(1−term)·min(μ1', μ2'), and the sampled target y_s = r·scale + γ(1−term)·(μ' +
    σ'·clip(z, ±z_clip)) from the target member with the smaller mean. next_mean, next_std: [2, B]; z: [B]."""
    pick = next_mean[0] < next_mean[1]
    mu, sigma = torch.where(pick, next_mean[0], next_mean[1]), torch.where(pick, next_std[0], next_std[1])
    sample = mu + sigma * z.clamp(-z_clip, z_clip)
    y = td_target(reward, terminated, next_mean.min(dim=0).values, gamma, reward_scale)
    y_s = td_target(reward, terminated, sample, gamma, reward_scale)
    return y, y_s


@torch.no_grad()
def dsac_std_ema(m: torch.Tensor, std: torch.Tensor, rate: float) -> torch.Tensor:
    """Per-critic EMA of the batch-mean σ, in place: the first batch (m < 0, the sentinel −1) sets it, then
    m ← rate·new + (1 − rate)·m. m: [2], std: [2, B]. Branch-free so a CUDA graph can hold it."""
    new = std.mean(-1)
    m.copy_(torch.where(m < 0, new, torch.lerp(m, new, rate)))
    return m


def dsac_critic_loss(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor, y_s: torch.Tensor, m: torch.Tensor,
                     eps: float = 0.1, bound: float = 3.0) -> torch.Tensor:
    """DSAC-T's m-weighted loss, summed over the members (their parameters are disjoint, so each gets its own
    gradient). mean, std: [2, B]; y, y_s: [B]; m: [2] (already updated with this batch).

    y_b = sg(μ + clip(y_s − μ, ±bound·m)), σ̄ = sg(max(σ, 0)),
    L_i = −(m_i² + ε)·mean_b[ μ·sg(y − μ)/(σ̄² + ε) + σ·((sg μ − y_b)² − σ̄²)/(σ̄³ + ε) ]."""
    m = m.detach().unsqueeze(-1)
    y, y_s = y.unsqueeze(0), y_s.unsqueeze(0)
    mu_sg = mean.detach()
    y_b = (mu_sg + torch.maximum(torch.minimum(y_s - mu_sg, bound * m), -bound * m)).detach()
    s_sg = std.detach().clamp(min=0)
    per = mean * (y - mu_sg) / (s_sg**2 + eps) + std * ((mu_sg - y_b) ** 2 - s_sg**2) / (s_sg**3 + eps)
    return (-(m.squeeze(-1) ** 2 + eps) * per.mean(-1)).sum()


# ---------------------------------------------------------------- PPO / DPPO (docs/algorithms.md, PPO and DPPO)


def gae(reward: torch.Tensor, value: torch.Tensor, next_value: torch.Tensor, terminated: torch.Tensor,
        truncated: torch.Tensor, valid: torch.Tensor, gamma: float, lambda_: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438) over a rollout [T, E].

    δ_t = r_t + γ·(1 − terminated_t)·V(s_{t+1}) − V(s_t), A_t = δ_t + γλ·(1 − done_t)·A_{t+1}.
    `next_value[t]` is V of the observation step t returned: on a truncated step that is the episode's true last
    observation (fastrsm.envs keeps it), so a truncation bootstraps from it while a termination does not; either
    ends the recursion. A row with `valid` False is an auto-reset step (no transition): its advantage is 0, and the
    step before it always ended an episode, so nothing flows across it. Returns (advantages, returns = A + V)."""
    keep = (~terminated).to(value.dtype)
    carry = (~(terminated | truncated)).to(value.dtype)
    ok = valid.to(value.dtype)
    delta = (reward + gamma * keep * next_value - value) * ok
    adv = torch.zeros_like(value)
    last = torch.zeros_like(value[0])
    for t in reversed(range(value.shape[0])):
        last = delta[t] + gamma * lambda_ * carry[t] * last * ok[t]
        adv[t] = last
    return adv, adv + value


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the rows where `mask` is 1 (x and mask broadcast; at least one row is assumed)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_advantage(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A − mean) / (std + 1e-8) over the valid rows of a minibatch (CleanRL's per-minibatch normalisation; the
    std is the unbiased one, as torch's default)."""
    n = mask.sum().clamp_min(2.0)
    mean = (adv * mask).sum() / mask.sum().clamp_min(1.0)
    std = (((adv - mean) ** 2 * mask).sum() / (n - 1)).sqrt()
    return (adv - mean) / (std + 1e-8)


def clipped_surrogate(logratio: torch.Tensor, adv: torch.Tensor, clip: float | torch.Tensor) -> torch.Tensor:
    """PPO's clipped objective as a loss, per row: −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A), ρ = exp(log π − log π_old)
    (Schulman et al. 2017, arXiv 1707.06347, eq. 7)."""
    ratio = logratio.exp()
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip))


def value_loss(v: torch.Tensor, returns: torch.Tensor, old_v: torch.Tensor, clip: float | None) -> torch.Tensor:
    """½(V − R)² per row; with `clip`, ½·max((V − R)², (V_old + clip(V − V_old, ±clip) − R)²) (CleanRL's clip_vloss)."""
    unclipped = (v - returns) ** 2
    if clip is None:
        return 0.5 * unclipped
    clipped = (old_v + (v - old_v).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped)


# ---------------------------------------------------------------- a temperature held to a KL budget (DPMD2; DPMD and
# SDAC with alpha_mode=kl)
def weight_entropy(w: torch.Tensor) -> torch.Tensor:
    """H of one state's weights normalised to a distribution over its N particles, Σ −p log p ([...])."""
    p = w / w.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(-1)


def kl_alpha_loss(log_alpha: torch.Tensor, entropy: torch.Tensor, kl: float, particles: int) -> torch.Tensor:
    """α·(κ + H − log N), H averaged over states: its gradient in α is positive (α falls, the weights sharpen)
    while the weights are closer to uniform than the KL budget κ allows."""
    return log_alpha.exp() * (kl + entropy.mean(-1).detach() - math.log(particles))


def logit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H of softmax(logits) over the last axis (one state's candidates), Σ −p log p, [...]."""
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)
