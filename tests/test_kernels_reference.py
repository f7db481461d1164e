"""The PyTorch reference ops (kernels/reference.py): TopK encode, signed and non-negative, and the sparse decode,
against hand-written computations at tiny shapes."""
import pytest
import torch
import torch.nn.functional as F

from csae_engine import kernels


def dense_reference_codes(x, W_enc, b_enc, k):
    """Top-k by |z| via a full sort in float64: the hand-written oracle."""
    z = (x.double() @ W_enc.double() + b_enc.double())
    order = z.abs().argsort(dim=1, descending=True)[:, :k]
    return order, z.gather(1, order)


def test_topk_keeps_largest_magnitudes_with_signs():
    torch.manual_seed(1)
    x = F.normalize(torch.randn(9, 13), dim=1)
    W, b = torch.randn(13, 37), torch.randn(37) * 0.1
    idx, val = kernels.topk_encode(x, W, b, 5)
    ref_idx, ref_val = dense_reference_codes(x, W, b, 5)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val.double(), ref_val, atol=1e-5, rtol=1e-5)
    assert (val < 0).any() and (val > 0).any(), "the test must exercise negative codes"
    assert (val.abs()[:, :-1] >= val.abs()[:, 1:]).all(), "strongest first"


def test_sparse_encoder_backward_matches_dense_autograd():
    torch.manual_seed(2)
    x = F.normalize(torch.randn(11, 7), dim=1)
    W = torch.randn(7, 23, requires_grad=True)
    b = torch.randn(23, requires_grad=True)
    idx, val = kernels.topk_encode(x, W, b, 4)
    weights = torch.randn(11, 4)
    (val * weights).sum().backward()
    W2, b2 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (torch.addmm(b2, x, W2).gather(1, idx) * weights).sum().backward()
    torch.testing.assert_close(W.grad, W2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_sparse_decode_equals_dense_product():
    torch.manual_seed(3)
    W_dec = torch.randn(31, 6)
    idx = torch.stack([torch.randperm(31)[:5] for _ in range(8)])
    val = torch.randn(8, 5)
    dense = torch.zeros(8, 31).scatter_(1, idx, val)
    torch.testing.assert_close(kernels.sparse_decode(idx, val, W_dec), dense @ W_dec)


def test_nonneg_topk_keeps_largest_preactivations_and_zeroes_negatives():
    torch.manual_seed(1)
    x = F.normalize(torch.randn(9, 13), dim=1)
    W, b = torch.randn(13, 37), torch.randn(37) * 0.1
    b[:30] -= 3.0  # most z negative: some rows have fewer than k positive entries
    idx, val = kernels.topk_encode(x, W, b, 8, nonneg=True)
    z = x.double() @ W.double() + b.double()
    ref_idx = z.argsort(dim=1, descending=True)[:, :8]
    assert torch.equal(idx, ref_idx), "the k largest z, not the largest |z|"
    torch.testing.assert_close(val.double(), z.gather(1, ref_idx).clamp_min(0), atol=1e-5, rtol=1e-5)
    assert (val >= 0).all() and (val == 0).any(), "the test must exercise negatives zeroed by ReLU"
    assert (z.gather(1, ref_idx) > 0).any()
    assert (val[:, :-1] >= val[:, 1:]).all(), "strongest first"
    # signed selection picks different latents here: large negative z
    assert not torch.equal(kernels.topk_encode(x, W, b, 8)[0], idx)


def test_nonneg_topk_backward_is_sparse_and_stops_at_relu():
    torch.manual_seed(2)
    x = F.normalize(torch.randn(11, 7), dim=1)
    W = torch.randn(7, 23, requires_grad=True)
    b = (torch.randn(23) - 1.0).requires_grad_()
    idx, val = kernels.topk_encode(x, W, b, 5, nonneg=True)
    assert (val == 0).any()
    weights = torch.randn(11, 5)
    (val * weights).sum().backward()
    W2, b2 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (torch.relu(torch.addmm(b2, x, W2).gather(1, idx)) * weights).sum().backward()
    torch.testing.assert_close(W.grad, W2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_nonneg_has_no_triton_kernel_and_bad_backends_are_refused():
    x, W, b = torch.randn(3, 4), torch.randn(4, 8), torch.zeros(8)
    with pytest.raises(NotImplementedError, match="no Triton kernel"):
        kernels.topk_encode(x, W, b, 2, backend="triton", nonneg=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.topk_encode(x, W, b, 2, backend="cuda", nonneg=True)
    a = kernels.topk_encode(x, W, b, 2, backend="auto", nonneg=True)
    t = kernels.topk_encode(x, W, b, 2, backend="torch", nonneg=True)
    assert torch.equal(a[0], t[0]) and torch.equal(a[1], t[1])
