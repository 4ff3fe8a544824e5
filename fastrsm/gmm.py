"""DACER's entropy estimate (docs/algorithms.md §10): fit a K-component full-covariance Gaussian mixture to the actions
the policy draws at each state, and take H = −Σ_k w_k log w_k + Σ_k w_k·(½d(1 + log 2π) + ½ logdet Σ_k), averaged over
states (DACER code, relax/algorithm/dacer.py `estimate_entropy`; an upper bound on the mixture's entropy, equal to it
when the components do not overlap).

The official code fits one scikit-learn `GaussianMixture` per state on the host. `gmm_entropy` fits all states at
once with EM in torch: a fixed number of iterations, no host synchronisation (Cholesky via `cholesky_ex`), so it
runs inside a captured CUDA graph. It follows scikit-learn's recipe: k-means initialisation (here seeded by
farthest points and a fixed number of Lloyd steps), `reg_covar` = 1e-6 added to each covariance, the
stopping rule tol = 1e-3 on the mean log-likelihood (per state, by freezing its fit), and a floor of
10·machine-eps on the component counts. `sklearn_gmm_entropy` is the official estimator, for the
`dacer_entropy=sklearn` setting and the agreement test (scikit-learn is an optional extra:
`pip install -e .[dacer]`)."""

from __future__ import annotations

import math

import torch


def _log_gauss(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """log N(x_n; μ_k, L_k L_kᵀ) for x [B, n, d], mean [B, K, d], chol [B, K, d, d] -> [B, K, n]."""
    d = x.shape[-1]
    diff = (x.unsqueeze(1) - mean.unsqueeze(2)).transpose(-1, -2)  # [B, K, d, n]
    z = torch.linalg.solve_triangular(chol, diff, upper=False)
    half_logdet = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # [B, K]
    return -0.5 * (z**2).sum(-2) - half_logdet.unsqueeze(-1) - 0.5 * d * math.log(2 * math.pi)


def _one_hot(idx: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, n] indices -> [B, K, n] one-hot, by comparison (F.one_hot checks its input's range on the host)."""
    return (idx.unsqueeze(1) == torch.arange(K, device=idx.device).view(1, K, 1)).to(dtype)


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights [B, K], means [B, K, d], covariances [B, K, d, d] from responsibilities resp [B, K, n]."""
    n, d = x.shape[1], x.shape[2]
    nk = resp.sum(-1) + 10 * torch.finfo(x.dtype).eps
    mean = resp @ x / nk.unsqueeze(-1)
    diff = x.unsqueeze(1) - mean.unsqueeze(2)  # [B, K, n, d]
    cov = (resp.unsqueeze(-1) * diff).transpose(-1, -2) @ diff / nk[..., None, None]
    cov = cov + reg * torch.eye(d, dtype=x.dtype, device=x.device)
    return nk / n, mean, cov


def fit_gmm(x: torch.Tensor, components: int = 3, iters: int = 100, kmeans_iters: int = 10, reg: float = 1e-6,
            tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched EM: x [B, n, d] -> (weights [B, K], means [B, K, d], covariances [B, K, d, d]).

    Computed in float64 (the actions sit on the box faces, where covariances are near-singular)."""
    x = x.to(torch.float64)
    B, n, d = x.shape
    K = components
    # k-means init: one random point per state, then farthest points (k-means++ without its sampling, which
    # would need a multinomial draw per state), then Lloyd steps; hard assignments start EM
    first = torch.randint(0, n, (B, 1, 1), device=x.device).expand(-1, 1, d)
    centres = torch.gather(x, 1, first)
    for _ in range(K - 1):
        far = torch.cdist(x, centres).min(-1).values.argmax(-1)  # [B]
        centres = torch.cat([centres, torch.gather(x, 1, far.view(B, 1, 1).expand(-1, 1, d))], dim=1)
    for _ in range(kmeans_iters):
        onehot = _one_hot(torch.cdist(x, centres).argmin(-1), K, x.dtype)  # [B, K, n]
        counts = onehot.sum(-1, keepdim=True)
        # an emptied cluster keeps its centre
        centres = torch.where(counts > 0, onehot @ x / counts.clamp(min=1), centres)
    resp = _one_hot(torch.cdist(x, centres).argmin(-1), K, x.dtype)
    w, mean, cov = _m_step(x, resp, reg)
    # scikit-learn stops a fit once the mean log-likelihood moves by less than `tol`; here each state's fit is
    # frozen from then on (branch-free, so the loop length is fixed and no value is read on the host)
    lower = torch.full((B,), -torch.inf, dtype=x.dtype, device=x.device)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(iters):
        chol, _ = torch.linalg.cholesky_ex(cov)  # no error check: no host sync (reg keeps cov positive definite)
        logp = _log_gauss(x, mean, chol) + w.log().unsqueeze(-1)
        new_lower = torch.logsumexp(logp, dim=1).mean(-1)
        w2, mean2, cov2 = _m_step(x, torch.softmax(logp, dim=1), reg)
        keep = done
        w = torch.where(keep[:, None], w, w2)
        mean = torch.where(keep[:, None, None], mean, mean2)
        cov = torch.where(keep[:, None, None, None], cov, cov2)
        done = done | ((new_lower - lower).abs() < tol)
        lower = torch.where(keep, lower, new_lower)
    return w, mean, cov


def mixture_entropy_bound(w: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """H = −Σ w log w + Σ w·(½d(1 + log 2π) + ½ logdet Σ_k), per state: w [B, K], cov [B, K, d, d] -> [B]."""
    d = cov.shape[-1]
    # ½ logdet Σ = Σ log diag(L): Cholesky without its error check, so no host sync under a CUDA graph
    half_logdet = torch.diagonal(torch.linalg.cholesky_ex(cov)[0], dim1=-2, dim2=-1).log().sum(-1)
    gauss = 0.5 * d * (1 + math.log(2 * math.pi)) + half_logdet
    return -(w * w.log()).sum(-1) + (w * gauss).sum(-1)


def gmm_entropy(actions: torch.Tensor, components: int = 3, iters: int = 100) -> torch.Tensor:
    """Mean over states of the GMM entropy estimate; actions [B, n, d] -> scalar (float32)."""
    w, _, cov = fit_gmm(actions, components, iters)
    return mixture_entropy_bound(w, cov).mean().to(torch.float32)


def sklearn_gmm_entropy(actions: torch.Tensor, components: int = 3) -> torch.Tensor:
    """The official estimator: one scikit-learn GaussianMixture per state (full covariance, random_state 42, as
    DACER's code), on the host. Needs scikit-learn (`pip install -e .[dacer]`)."""
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        raise ImportError("dacer_entropy=sklearn needs scikit-learn: pip install -e '.[dacer]'") from None
    x = actions.detach().to("cpu", torch.float64).numpy()
    ws, covs = [], []
    for a in x:
        g = GaussianMixture(n_components=components, covariance_type="full", random_state=42).fit(a)
        ws.append(torch.from_numpy(g.weights_))
        covs.append(torch.from_numpy(g.covariances_))
    h = mixture_entropy_bound(torch.stack(ws), torch.stack(covs)).mean()
    return h.to(device=actions.device, dtype=torch.float32)
