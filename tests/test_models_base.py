"""TopKSAE (csae_engine/models/base.py): what every variant shares, the forward pass, the AuxK and contrastive terms,
decoder normalisation, the numpy encode/decode API and its input checks. Run on CompresSAE, or on both variants."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import csae_engine as ce
from conftest import csr_model, manual_code, manual_z, unit


def test_gradients_reach_only_selected_latents():
    torch.manual_seed(5)
    model = ce.CompresSAE(d=8, h=64, k=2)
    x = F.normalize(torch.randn(3, 8), dim=1)
    loss = model(x).loss
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
    model(x).loss.backward()
    model.remove_radial_grad_()
    radial = (model.W_dec.grad * model.W_dec).sum(dim=1)
    assert radial.abs().max() < 1e-6 * max(1.0, model.W_dec.grad.abs().max().item())


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


@pytest.mark.parametrize("variant", ["csr", "compressae"])
def test_aux_loss_trains_only_dead_latents_from_a_detached_residual(variant):
    model = csr_model(tied=False) if variant == "csr" else ce.CompresSAE(10, 40, 3, seed=1)
    x = F.normalize(torch.randn(8, 10), dim=1)
    out = model(x)
    top, x_hat = out.indices, out.x_hat
    assert x_hat.requires_grad
    dead = torch.ones(40, dtype=torch.bool)
    dead[top.unique()] = False  # the latents the main path uses are alive
    aux = model.aux_loss(x, x_hat, dead, 4)
    model.zero_grad()
    aux.backward()
    assert (model.W_dec.grad[~dead] == 0).all(), "no gradient through the residual into the main path"
    assert (model.W_enc.grad[:, ~dead] == 0).all() and (model.b_enc.grad[~dead] == 0).all()
    assert model.W_dec.grad[dead].abs().sum() > 0 and model.W_enc.grad[:, dead].abs().sum() > 0


def test_aux_loss_is_zero_without_dead_latents():
    model = csr_model()
    x = F.normalize(torch.randn(4, 10), dim=1)
    x_hat = model(x).x_hat
    aux = model.aux_loss(x, x_hat, torch.zeros(40, dtype=torch.bool), 4)
    assert aux.item() == 0 and not aux.requires_grad
    assert model.aux_loss(x, x_hat, torch.ones(40, dtype=torch.bool), 0).item() == 0


def test_contrastive_loss_matches_manual_infonce():
    model = csr_model(h=64, k=6)
    q = F.normalize(torch.randn(5, 10), dim=1)
    d = F.normalize(torch.randn(5, 10), dim=1)
    tau = 0.2
    loss = model.contrastive_loss(q, d, tau)
    cq = F.normalize(manual_code(manual_z(model, q), 6, True), dim=1)
    cd = F.normalize(manual_code(manual_z(model, d), 6, True), dim=1)
    sim = cq @ cd.T / tau
    expected = -(sim.diagonal() - torch.logsumexp(sim, dim=1)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert model.contrastive_loss(q, d, 1.0).item() != pytest.approx(loss.item(), abs=1e-3)
    # a copy of the positive doc elsewhere in the batch is not a negative
    d2 = d.clone()
    d2[3] = d2[1]
    loss2 = model.contrastive_loss(q, d2, tau)
    cd2 = F.normalize(manual_code(manual_z(model, d2), 6, True), dim=1)
    sim2 = cq @ cd2.T / tau
    sim2[1, 3] = sim2[3, 1] = float("-inf")
    assert loss2.item() == pytest.approx(-(sim2.diagonal() - torch.logsumexp(sim2, dim=1)).mean().item(), abs=1e-5)


def test_random_init_draws_an_encoder_apart_from_the_decoder():
    a, b = ce.CompresSAE(16, 64, 4, seed=3), ce.CompresSAE(16, 64, 4, seed=3, init="random")
    assert torch.equal(a.W_enc, a.W_dec.T) and torch.equal(a.W_dec, b.W_dec)
    assert not torch.allclose(b.W_enc, b.W_dec.T)
    torch.testing.assert_close(b.W_enc.norm(dim=0), torch.ones(64))


@pytest.mark.parametrize("variant, dtype", [("compressae", "int8"), ("csr", "uint8"), ("csr", "int8")])
def test_model_encodes_8bit_codes_that_decode_close_to_float(variant, dtype):
    X = unit(np.random.default_rng(4), 60, 10)
    model = csr_model(h=300, k=6) if variant == "csr" else ce.CompresSAE(10, 300, 6, seed=1)
    exact = model.encode(X, value_dtype=np.float32)
    q = model.encode(X, value_dtype=dtype, batch_size=16)
    assert q.values.dtype == np.dtype(dtype) and q.scales.dtype == np.float16
    assert q.bytes_per_item == 6 * (2 + 1) + 2
    np.testing.assert_array_equal(q.indices, exact.indices)
    step = q.scales.astype(np.float32)[:, None]
    assert (np.abs(q.float_values() - exact.values) <= step / 2 + 1e-7).all()
    np.testing.assert_allclose(model.decode(q), model.decode(exact.quantize(dtype)), atol=1e-6)
    np.testing.assert_allclose(q.to_csr().toarray(), exact.quantize(dtype).to_csr().toarray())
    dense_q = q.to_csr().toarray() @ model.W_dec.detach().numpy().astype(np.float64)
    bias = 0 if model.decoder_bias is None else model.decoder_bias.detach().numpy()
    np.testing.assert_allclose(model.decode(q), dense_q + bias, atol=1e-5)


@pytest.mark.parametrize("value_dtype, message", [
    ("int4", "value_dtype must be float16, float32, int8 or uint8"),
    (np.int16, "value_dtype must be float16, float32, int8 or uint8"),
    ("uint8", "uint8 values need non-negative codes"),
])
def test_bad_value_dtypes_are_refused(value_dtype, message):
    with pytest.raises(ValueError, match=message):
        ce.CompresSAE(8, 32, 4).encode(unit(np.random.default_rng(0), 5, 8), value_dtype=value_dtype)


def test_forward_returns_the_named_multi_k_output():
    model = ce.CompresSAE(d=10, h=40, k=3, seed=1)
    x = F.normalize(torch.randn(6, 10), dim=1)
    out = model(x)
    assert isinstance(out, ce.models.ForwardOutput)
    named = (out.loss, out.cos_k, out.indices, out.values, out.x_hat)
    assert len(out) == 5 and all(a is b for a, b in zip(named, out)), "fields in this order"
    assert out.loss.shape == () and out.loss.requires_grad and not out.cos_k.requires_grad
    assert out.indices.shape == out.values.shape == (6, 3) and out.x_hat.shape == (6, 10)
    idx, val = model.encode_tensor(x)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.values, val)
    torch.testing.assert_close(out.x_hat, model.decode_tensor(idx, val))
    torch.testing.assert_close(out.cos_k, F.cosine_similarity(out.x_hat, x, dim=1).detach())


def test_both_variants_are_topk_saes_and_the_base_is_abstract():
    sae, csr = ce.CompresSAE(8, 32, 4), ce.CSRAutoencoder(8, 32, 4)
    assert isinstance(sae, ce.TopKSAE) and isinstance(csr, ce.TopKSAE)
    assert not isinstance(csr, ce.CompresSAE) and not isinstance(sae, ce.CSRAutoencoder)
    assert repr(csr) == "CSRAutoencoder(d=8, h=32, k=4, tied=True)" and repr(sae) == "CompresSAE(d=8, h=32, k=4)"
    with pytest.raises(TypeError, match="abstract"):
        ce.TopKSAE(8, 32, 4)


def test_check_input_names_the_array_and_keeps_rows_as_they_are():
    model = ce.CompresSAE(d=8, h=32, k=4)
    X = 3 * unit(np.random.default_rng(0), 5, 8)
    assert model.check_input(X) is X
    with pytest.raises(ValueError, match="Q has d=9 columns, the model expects d=8"):
        model.check_input(np.ones((2, 9), np.float32), "Q")
