"""kernels/sm_loss.py against fastrsm.losses.weighted_sm_loss (the reference): loss and gradient, shared
prediction (SDAC) and one per particle (DPMD-softmax), under the interpreter on CPU or natively on CUDA."""

import pytest
import torch

pytest.importorskip("triton")

from fastrsm.kernels.sm_loss import FusedWeightedSMLoss, _launch, fused_weighted_sm_loss, reference  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")




def inputs(B, K, A, per_k, scale=3.0, seed=0, device=DEV, dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(seed)
    pred = torch.randn(*((B, K, A) if per_k else (B, A)), device=device, generator=g).to(dtype)
    tgt = torch.randn(B, K, A, device=device, generator=g).to(dtype)
    logits = scale * torch.randn(B, K, device=device, generator=g)
    return pred.requires_grad_(True), tgt, logits


def loss_and_grad(fn, pred, tgt, logits, grad_out=1.0):
    pred = pred.detach().clone().requires_grad_(True)
    loss = fn(pred, tgt, logits)
    loss.backward(torch.tensor(grad_out, device=loss.device))
    return loss.detach(), pred.grad


def check(pred, tgt, logits, grad_out=1.0, atol=1e-5, rtol=1e-5):
    loss, grad = loss_and_grad(fused_weighted_sm_loss, pred, tgt, logits, grad_out)
    loss_r, grad_r = loss_and_grad(reference, pred, tgt, logits, grad_out)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_r, atol=atol, rtol=rtol)
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    torch.testing.assert_close(grad, grad_r, atol=atol, rtol=rtol)


# (B, K, A): one row, K = 1, K = 65 (past a power of two), B = 257, A = 1, 3, 17, the paper's K = 64 / A = 8.
SHAPES = [(1, 1, 1), (1, 65, 3), (257, 65, 17), (7, 64, 8), (3, 5, 17)]


@pytest.mark.parametrize("B,K,A", SHAPES)
def test_shared_prediction_sdac(B, K, A):
    check(*inputs(B, K, A, per_k=False), grad_out=1.7)


@pytest.mark.parametrize("B,K,A", [(1, 1, 1), (3, 65, 3), (257, 3, 17), (5, 64, 8)])
def test_per_particle_prediction_dpmd(B, K, A):
    check(*inputs(B, K, A, per_k=True), grad_out=0.3)


@pytest.mark.parametrize("per_k", [False, True])
@pytest.mark.parametrize("block_k", [1, 4, 16])
def test_online_logsumexp_across_chunks(per_k, block_k):
    """Force many K-chunks: the running max / sum rescaling is what is under test."""
    pred, tgt, logits = inputs(4, 37, 5, per_k, scale=20.0)
    loss, grad = _launch(pred, tgt, logits, need_grad=True, block_k=block_k)
    loss_r, grad_r = loss_and_grad(reference, pred, tgt, logits)
    torch.testing.assert_close(loss, loss_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_r, atol=1e-5, rtol=1e-5)


def test_extreme_and_infinite_logits():
    pred, tgt, logits = inputs(4, 9, 3, per_k=False)
    logits = logits * 1e4  # a plain exp would overflow
    logits[1, :4] = float("-inf")  # the first chunks of a row may be all -inf
    logits[2, 5] = float("-inf")
    check(pred, tgt, logits)
    loss, grad = _launch(pred, tgt, logits, need_grad=True, block_k=2)
    loss_r, grad_r = loss_and_grad(reference, pred, tgt, logits)
    torch.testing.assert_close(loss, loss_r)
    torch.testing.assert_close(grad, grad_r)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_broadcast_prediction_b1a():
    pred, tgt, logits = inputs(3, 6, 4, per_k=False)
    loss, grad = loss_and_grad(fused_weighted_sm_loss, pred.detach().unsqueeze(1), tgt, logits)
    loss_r, grad_r = loss_and_grad(reference, pred.detach().unsqueeze(1), tgt, logits)
    torch.testing.assert_close(loss, loss_r)
    torch.testing.assert_close(grad, grad_r)


def test_sdac_gradient_is_regression_onto_weighted_target():
    """docs/algorithms.md §5: ∇ = 2(ε_θ − Σ_k w_k ε^k)/B."""
    pred, tgt, logits = inputs(5, 8, 3, per_k=False)
    _, grad = loss_and_grad(fused_weighted_sm_loss, pred, tgt, logits)
    w = torch.softmax(logits, -1)
    torch.testing.assert_close(grad, 2 * (pred.detach() - (w.unsqueeze(-1) * tgt).sum(1)) / 5)


def test_no_grad_paths_and_constant_logits():
    pred, tgt, logits = inputs(3, 4, 2, per_k=False)
    with torch.no_grad():
        torch.testing.assert_close(fused_weighted_sm_loss(pred, tgt, logits), reference(pred, tgt, logits))
    loss = fused_weighted_sm_loss(pred.detach(), tgt, logits)
    assert not loss.requires_grad
    logits = logits.clone().requires_grad_(True)
    pred = pred.detach().clone().requires_grad_(True)
    (2 * fused_weighted_sm_loss(pred, tgt, logits)).backward()
    assert logits.grad is None  # the weights are targets, not learned through this loss
    _, grad_r = loss_and_grad(reference, pred, tgt, logits.detach(), 2.0)
    torch.testing.assert_close(pred.grad, grad_r)


def test_gradients_accumulate_like_autograd():
    pred, tgt, logits = inputs(3, 4, 2, per_k=True)
    p = pred.detach().clone().requires_grad_(True)
    (fused_weighted_sm_loss(p, tgt, logits) + 3 * fused_weighted_sm_loss(p, tgt, logits)).backward()
    _, grad_r = loss_and_grad(reference, pred, tgt, logits, 4.0)
    torch.testing.assert_close(p.grad, grad_r)


def test_shape_errors():
    pred, tgt, logits = inputs(3, 4, 2, per_k=False)
    with pytest.raises(ValueError, match="logits"):
        fused_weighted_sm_loss(pred, tgt, logits[:, :3])
    with pytest.raises(ValueError, match="eps_pred"):
        fused_weighted_sm_loss(pred[:, :1], tgt, logits)
    with pytest.raises(ValueError, match="eps_pred"):
        fused_weighted_sm_loss(torch.randn(3, 3, 2, device=DEV), tgt, logits)
    assert FusedWeightedSMLoss.apply(pred, tgt, logits).shape == ()


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("per_k", [False, True])
@pytest.mark.parametrize("A", [8, 17])
def test_paper_shapes_gpu(A, per_k):
    check(*inputs(256, 64, A, per_k, device=torch.device("cuda")), grad_out=0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("per_k", [False, True])
def test_bf16_inputs_gpu(per_k):
    """bf16 predictions/targets (autocast): loaded and reduced in fp32, so only the inputs' rounding differs."""
    pred, tgt, logits = inputs(256, 64, 17, per_k, device=torch.device("cuda"), dtype=torch.bfloat16)
    loss, grad = loss_and_grad(fused_weighted_sm_loss, pred, tgt, logits)
    loss_r, grad_r = loss_and_grad(reference, pred.float(), tgt.float(), logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, loss_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad.float(), grad_r, atol=1e-3, rtol=1e-2)
