import numpy as np
import pytest
import torch
import torch.nn.functional as F

import csae_engine as ce
from csae_engine import kernels
from conftest import unit


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


def test_multi_k_loss_value_matches_hand_computation():
    torch.manual_seed(4)
    model = ce.CompresSAE(d=10, h=40, k=3, seed=1)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)
    x = F.normalize(torch.randn(6, 10), dim=1)
    loss, cos_k, _ = model.loss(x)
    z = x.double() @ model.W_enc.double() + model.b_enc.double()

    def recon(k):
        keep = z.abs().argsort(dim=1, descending=True)[:, :k]
        return torch.zeros_like(z).scatter_(1, keep, z.gather(1, keep)) @ model.W_dec.double()

    cos = lambda a: F.cosine_similarity(a, x.double(), dim=1)
    expected = (1 - cos(recon(3))).mean() + (1 - cos(recon(12))).mean() / 8
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(cos_k.double(), cos(recon(3)), atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_selected_latents():
    torch.manual_seed(5)
    model = ce.CompresSAE(d=8, h=64, k=2)
    x = F.normalize(torch.randn(3, 8), dim=1)
    loss, _, _ = model.loss(x)
    loss.backward()
    idx, _ = model.encode_tensor(x, model.k_multi)
    selected = torch.zeros(64, dtype=torch.bool)
    selected[idx.reshape(-1)] = True
    assert (~selected).sum() > 30
    assert (model.W_enc.grad[:, ~selected] == 0).all()
    assert (model.b_enc.grad[~selected] == 0).all()
    assert (model.W_dec.grad[~selected] == 0).all()
    assert model.W_enc.grad[:, selected].abs().sum() > 0 and model.W_dec.grad[selected].abs().sum() > 0


def test_radial_gradient_removed_and_decoder_rows_stay_unit_norm():
    rng = np.random.default_rng(0)
    X = unit(rng, 500, 12)
    model = ce.train(X, h=48, k=4, steps=25, batch_size=64, lr=1e-2, progress=False)
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(48))
    x = torch.from_numpy(X[:32])
    model.zero_grad()
    model.loss(x)[0].backward()
    model.remove_radial_grad_()
    radial = (model.W_dec.grad * model.W_dec).sum(dim=1)
    assert radial.abs().max() < 1e-6 * max(1.0, model.W_dec.grad.abs().max().item())


def test_same_seed_same_model_on_cpu():
    X = unit(np.random.default_rng(1), 300, 16)
    a = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=3, progress=False)
    b = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=3, progress=False)
    c = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=4, progress=False)
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name]), name
    assert not torch.equal(a.W_dec, c.W_dec)


def test_encode_decode_shapes_dtypes_and_bytes():
    X = unit(np.random.default_rng(2), 70, 20)
    model = ce.CompresSAE(d=20, h=300, k=6)
    codes = model.encode(X, batch_size=32)
    assert codes.indices.shape == (70, 6) and codes.indices.dtype == np.uint16
    assert codes.values.dtype == np.float16 and codes.bytes_per_item == 6 * 4
    assert ce.CompresSAE(d=20, h=256, k=6).encode(X).indices.dtype == np.uint8
    assert ce.CompresSAE(d=20, h=70000, k=6).encode(X[:3]).indices.dtype == np.uint32
    X_hat = model.decode(codes)
    assert X_hat.shape == (70, 20) and X_hat.dtype == np.float32
    # decode matches the dense product of the codes with the decoder
    dense = codes.to_csr().toarray() @ model.W_dec.detach().numpy()
    np.testing.assert_allclose(X_hat, dense, atol=1e-5)
    # encoding is batch-size invariant and scale invariant (rows are normalised)
    other = model.encode(X * 3.0, batch_size=7, value_dtype=np.float32)
    np.testing.assert_array_equal(other.indices, codes.indices)
    np.testing.assert_allclose(other.values, codes.values, atol=2e-3)


def test_encode_with_smaller_k_is_a_prefix_of_the_full_code():
    X = unit(np.random.default_rng(3), 40, 16)
    model = ce.CompresSAE(d=16, h=128, k=8)
    full, short = model.encode(X), model.encode(X, k=3)
    np.testing.assert_array_equal(short.indices, full.indices[:, :3])
    np.testing.assert_array_equal(full.truncate(3).indices, short.indices)


def test_inputs_from_memmap_and_path(tmp_path):
    X = unit(np.random.default_rng(4), 60, 12, np.float16)
    path = tmp_path / "x.npy"
    np.save(path, X)
    model = ce.CompresSAE(d=12, h=64, k=4)
    a = model.encode(X)
    b = model.encode(str(path))
    c = model.encode(np.load(path, mmap_mode="r"))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, c.indices)
    trained = ce.train(path, h=64, k=4, steps=3, batch_size=16, progress=False)
    assert trained.d == 12


@pytest.mark.parametrize("bad, message", [
    ("nan", r"row 5 holds NaN or Inf"),
    ("inf", r"row 5 holds NaN or Inf"),
    ("zero", r"row 5 is all zeros"),
])
def test_bad_rows_are_refused_by_row(bad, message):
    X = unit(np.random.default_rng(5), 30, 8)
    X[5] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    model = ce.CompresSAE(d=8, h=32, k=4)
    with pytest.raises(ValueError, match=message):
        model.encode(X, batch_size=4)
    with pytest.raises(ValueError, match=message):
        ce.train(X, h=32, k=4, steps=2, batch_size=30, progress=False)


@pytest.mark.parametrize("X, message", [
    (np.zeros((0, 8), np.float32), "empty"),
    (np.ones((4, 9), np.float32), "d=9 columns, the model expects d=8"),
    (np.ones(8, np.float32), "2-D"),
    (np.ones((4, 8), np.int32), "floats"),
])
def test_bad_arrays_are_refused(X, message):
    with pytest.raises(ValueError, match=message):
        ce.CompresSAE(d=8, h=32, k=4).encode(X)


@pytest.mark.parametrize("k, message", [(33, r"k must be in 1..h=32"), (0, r"k must be in 1..h"), (-2, r"k must be in 1..h")])
def test_bad_k_is_refused(k, message):
    with pytest.raises(ValueError, match=message):
        ce.CompresSAE(d=8, h=32, k=k)
    with pytest.raises(ValueError, match=message):
        ce.CompresSAE(d=8, h=32, k=4).encode(np.ones((2, 8), np.float32), k=k)


def test_bad_training_arguments_are_refused():
    X = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="steps"):
        ce.train(X, h=16, k=2, steps=0)
    with pytest.raises(ValueError, match="lr"):
        ce.train(X, h=16, k=2, lr=-1.0)
    with pytest.raises(ValueError, match="k must be in"):
        ce.train(X, h=16, k=17)
