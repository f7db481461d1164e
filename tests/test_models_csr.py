"""CSRAutoencoder (csae_engine/models/csr.py): the pre-bias, the squared-error loss, the tied decoder, AuxK without
the pre-bias counted twice; each against a hand-written computation at tiny shapes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import csae_engine as ce
from conftest import csr_model, manual_code, manual_z, unit


def test_csr_encode_and_decode_subtract_and_add_the_pre_bias():
    model = csr_model(tied=False)
    x = F.normalize(torch.randn(6, 10), dim=1)
    idx, val = model.encode_tensor(x)
    dense = manual_code(manual_z(model, x), 3, nonneg=True)
    assert (val >= 0).all()
    torch.testing.assert_close(torch.zeros(6, 40, dtype=torch.float64).scatter_(1, idx, val.double()), dense,
                               atol=1e-5, rtol=1e-5)
    expected = dense @ model.W_dec.detach().double() + model.b_pre.detach().double()
    torch.testing.assert_close(model.decode_tensor(idx, val).double(), expected, atol=1e-5, rtol=1e-5)
    # the numpy API agrees, and records the decoder bias
    codes = model.encode(x.numpy(), value_dtype=np.float32)
    np.testing.assert_allclose(model.decode(codes), expected.numpy(), atol=1e-5)
    assert codes.is_nonnegative and model.decoder_bias is model.b_pre and not model.signed
    assert ce.CompresSAE(8, 32, 4).decoder_bias is None and ce.CompresSAE(8, 32, 4).signed


def test_csr_loss_is_squared_error_at_k_and_4k():
    model = csr_model()
    x = F.normalize(torch.randn(6, 10), dim=1)
    loss, cos_k = model(x)[:2]
    z = manual_z(model, x)
    recon = lambda k: manual_code(z, k, True) @ model.W_enc.double().T + model.b_pre.double()
    err = lambda k: ((x.double() - recon(k)) ** 2).sum(dim=1).mean()
    assert loss.item() == pytest.approx((err(3) + err(12) / 8).item(), abs=1e-5)
    torch.testing.assert_close(cos_k.double(), F.cosine_similarity(recon(3), x.double(), dim=1), atol=1e-5, rtol=1e-5)


def test_tied_decoder_is_the_encoder_transpose_and_stays_so():
    X = unit(np.random.default_rng(0), 300, 10)
    model = ce.train(X, h=40, k=3, variant="csr", steps=8, batch_size=64, lr=1e-2, progress=False)
    assert model.tied and "W_dec" not in dict(model.named_parameters())
    assert torch.equal(model.W_dec, model.W_enc.T)
    torch.testing.assert_close(model.W_enc.norm(dim=0), torch.ones(40))  # unit decoder directions
    assert not torch.equal(model.b_pre, torch.zeros(10)), "the pre-bias is learned"
    untied = ce.train(X, h=40, k=3, variant="csr", tied=False, steps=8, batch_size=64, lr=1e-2, progress=False)
    assert "W_dec" in dict(untied.named_parameters()) and not torch.allclose(untied.W_dec, untied.W_enc.T)
    torch.testing.assert_close(untied.W_dec.norm(dim=1), torch.ones(40))


def test_encode_with_smaller_k_is_a_prefix_for_csr():
    X = unit(np.random.default_rng(3), 40, 10)
    model = csr_model(h=64, k=8)
    full = model.encode(X)
    for k in (1, 3, 8):
        short = model.encode(X, k=k)
        np.testing.assert_array_equal(short.indices, full.indices[:, :k])
        np.testing.assert_array_equal(short.values, full.values[:, :k])
    assert (full.values[:, :-1] >= full.values[:, 1:]).all()


def test_aux_loss_value_counts_the_pre_bias_once():
    model = csr_model(tied=False)
    x = F.normalize(torch.randn(7, 10), dim=1)
    x_hat = model(x).x_hat
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.arange(0, 40, 3)] = True
    aux = model.aux_loss(x, x_hat, dead, 4)
    z = manual_z(model, x)
    z_dead = z.masked_fill(~dead, float("-inf"))  # only dead latents compete
    code_aux = manual_code(z_dead, 4, nonneg=True).nan_to_num(0.0)
    residual = x.double() - (manual_code(z, 3, True) @ model.W_dec.double() + model.b_pre.double())
    expected = ((residual - code_aux @ model.W_dec.double()) ** 2).sum(dim=1).mean()
    assert aux.item() == pytest.approx(expected.item(), abs=1e-5)
    double_counted = ((residual - code_aux @ model.W_dec.double() - model.b_pre.double()) ** 2).sum(dim=1).mean()
    assert abs(double_counted.item() - expected.item()) > 1e-2, "the test must tell the two apart"
