"""The CSR variant (non-negative codes, pre-bias, tied decoder), AuxK, the contrastive pairs term, 8-bit codes in the
model, adaptive k; each against a hand-written computation at tiny shapes."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import csae_engine as ce
from csae_engine import kernels
from csae_engine.cli import main
from csae_engine.model import CSR, new_model
from conftest import unit


def csr_model(d=10, h=40, k=3, tied=True, seed=1):
    """A CSR model with non-zero biases, so that the bias terms are exercised."""
    model = CSR(d, h, k, seed=seed, tied=tied)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.b_enc.copy_(torch.randn(h, generator=g) * 0.1)
        model.b_pre.copy_(torch.randn(d, generator=g) * 0.3)
    return model


def manual_z(model, x):
    """Pre-activations in float64: (x - b_pre) @ W_enc + b_enc, b_pre zero for CompresSAE."""
    b_pre = model.decoder_bias.detach().double() if model.decoder_bias is not None else 0
    return (x.double() - b_pre) @ model.W_enc.detach().double() + model.b_enc.detach().double()


def manual_code(z, k, nonneg):
    """Dense (B, h) code: the k largest z then ReLU (nonneg), or the k largest |z| signed."""
    keep = (z if nonneg else z.abs()).argsort(dim=1, descending=True)[:, :k]
    vals = z.gather(1, keep)
    return torch.zeros_like(z).scatter_(1, keep, vals.clamp_min(0) if nonneg else vals)


# the TopK/ReLU op

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


# the CSR model

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
    loss, cos_k, _ = model.loss(x)
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


@pytest.mark.parametrize("tied", [True, False])
def test_csr_save_load_round_trip_is_exact(tmp_path, tied):
    model = csr_model(tied=tied)
    model.save(tmp_path / "m.csae")
    back = ce.load_model(tmp_path / "m.csae")
    assert isinstance(back, CSR) and back.tied == tied and not back.signed
    assert {n: p for n, p in model.named_parameters()}.keys() == {n: p for n, p in back.named_parameters()}.keys()
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(back.named_parameters())[name]), name
    from safetensors import safe_open
    with safe_open(tmp_path / "m.csae", framework="pt") as f:
        cfg = json.loads(f.metadata()["csae_engine"])
    assert cfg["variant"] == "csr" and cfg["signed"] is False and cfg["tied"] == tied
    X = unit(np.random.default_rng(0), 10, 10)
    a, b = model.encode(X), back.encode(X)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)


def test_old_compressae_file_without_signed_still_loads(tmp_path):
    model = ce.CompresSAE(12, 48, 4, seed=2)
    old_cfg = {"format_version": 1, "variant": "compressae", "d": 12, "h": 48, "k": 4}  # as written before CSR
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, tmp_path / "old.csae",
              metadata={"csae_engine": json.dumps(old_cfg)})
    back = ce.load_model(tmp_path / "old.csae")
    assert type(back) is ce.CompresSAE and back.signed and back.config()["signed"] is True
    assert torch.equal(back.W_dec, model.W_dec)


@pytest.mark.parametrize("config, message", [
    ({"signed": True}, "signed=True, but csr codes are non-negative"),
    ({"tied": "yes"}, "needs tied true or false"),
    ({"tied": False}, "do not match"),  # a tied file's weights lack W_dec
])
def test_inconsistent_csr_files_are_refused(tmp_path, config, message):
    model = csr_model()
    cfg = dict(model.config(), **config)
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, tmp_path / "bad.csae",
              metadata={"csae_engine": json.dumps(cfg)})
    with pytest.raises(ValueError, match=message):
        ce.load_model(tmp_path / "bad.csae")


# AuxK

@pytest.mark.parametrize("variant", ["csr", "compressae"])
def test_aux_loss_trains_only_dead_latents_from_a_detached_residual(variant):
    model = csr_model(tied=False) if variant == "csr" else ce.CompresSAE(10, 40, 3, seed=1)
    x = F.normalize(torch.randn(8, 10), dim=1)
    _, _, top, _, x_hat = model._forward(x)
    assert x_hat.requires_grad
    dead = torch.ones(40, dtype=torch.bool)
    dead[top.unique()] = False  # the latents the main path uses are alive
    aux = model.aux_loss(x, x_hat, dead, 4)
    model.zero_grad()
    aux.backward()
    assert (model.W_dec.grad[~dead] == 0).all(), "no gradient through the residual into the main path"
    assert (model.W_enc.grad[:, ~dead] == 0).all() and (model.b_enc.grad[~dead] == 0).all()
    assert model.W_dec.grad[dead].abs().sum() > 0 and model.W_enc.grad[:, dead].abs().sum() > 0


def test_aux_loss_value_counts_the_pre_bias_once():
    model = csr_model(tied=False)
    x = F.normalize(torch.randn(7, 10), dim=1)
    _, _, _, _, x_hat = model._forward(x)
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


def test_aux_loss_value_for_compressae_uses_the_unit_scale_residual():
    model = ce.CompresSAE(10, 40, 3, seed=1)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)
    x = F.normalize(torch.randn(7, 10), dim=1)
    _, _, _, _, x_hat = model._forward(x)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:20] = True
    aux = model.aux_loss(x, x_hat, dead, 5)
    z = manual_z(model, x)
    z_dead = z.masked_fill(~dead, 0.0)  # |z| = 0 never beats a dead latent here
    x_hat_ref = manual_code(z, 3, False) @ model.W_dec.double()
    norm = x_hat_ref.norm(dim=1, keepdim=True)
    e_hat = manual_code(z_dead, 5, False) @ model.W_dec.double()
    expected = ((x.double() - x_hat_ref / norm - e_hat / norm) ** 2).sum(dim=1).mean()
    assert aux.item() == pytest.approx(expected.item(), abs=1e-5)


def test_aux_loss_is_zero_without_dead_latents():
    model = csr_model()
    x = F.normalize(torch.randn(4, 10), dim=1)
    _, _, _, _, x_hat = model._forward(x)
    aux = model.aux_loss(x, x_hat, torch.zeros(40, dtype=torch.bool), 4)
    assert aux.item() == 0 and not aux.requires_grad
    assert model.aux_loss(x, x_hat, torch.ones(40, dtype=torch.bool), 0).item() == 0


def clustered(rng, n=1200, d=16, centers=48):
    """Unit rows around 48 random centres: more structure than the few latents left alive can hold."""
    C = unit(rng, centers, d)
    X = (C[rng.integers(0, centers, n)] + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", ["compressae", "csr"])
def test_auxk_revives_latents_forced_dead(variant):
    # 10 latents start with a zero encoder column: nothing selects them, so without AuxK they get no gradient
    # and stay dead. Observed with AuxK: 7 of 10 fire again (CompresSAE, h=24), 10 of 10 (CSR, untied, h=32).
    X = clustered(np.random.default_rng(0))
    h = 24 if variant == "compressae" else 32
    revived = {}
    for aux_k in (0, 10):
        model = new_model(variant, 16, h, 2, seed=0, tied=False if variant == "csr" else None)
        with torch.no_grad():
            model.W_enc[:, :10] = 0
            if variant == "csr":  # positive but never in the top k: alive latents start well above
                model.b_enc[10:] += 0.5
                model.b_enc[:10] = 1e-3
        assert (model.encode(X).latent_counts()[:10] == 0).all()
        ce.train(X, model=model, steps=200, lr=1e-2, batch_size=100, dead_window=300, aux_k=aux_k, progress=False)
        revived[aux_k] = int((model.encode(X).latent_counts()[:10] > 0).sum())
        if aux_k:
            assert any("aux" in row for row in model.history) and model.history[-1]["dead"] < 10 / h
    assert revived[0] == 0
    assert revived[10] >= (4 if variant == "compressae" else 7), revived


def test_csr_defaults_to_auxk_and_compressae_does_not():
    X = unit(np.random.default_rng(0), 400, 12)
    csr = ce.train(X, h=48, k=3, variant="csr", steps=12, batch_size=100, dead_window=200, progress=False)
    assert csr.default_aux_k == max(2 * 3, 12 // 2)
    sae = ce.CompresSAE(12, 48, 3)
    with torch.no_grad():
        sae.W_enc[:, :20] = 0
    ce.train(X, model=sae, steps=12, batch_size=100, dead_window=200, progress=False)
    assert not any("aux" in row for row in sae.history)
    assert ce.CompresSAE(384, 4096, 32).default_aux_k == 192


# the contrastive term

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


def test_training_with_pairs_brings_pairs_together():
    rng = np.random.default_rng(0)
    X = unit(rng, 600, 16)
    Q = unit(rng, 200, 16)
    D = (Q + unit(rng, 200, 16) * 0.8).astype(np.float32)  # a noisy copy: the pair is findable, not trivial
    kw = dict(h=64, k=4, variant="csr", steps=60, batch_size=100, lr=1e-2, progress=False)
    plain = ce.train(X, **kw)
    paired = ce.train(X, pairs=(Q, D), pairs_weight=1.0, **kw)
    ncl = [row["ncl"] for row in paired.history]
    assert np.mean(ncl[-3:]) < np.mean(ncl[:2])

    def pair_cos(model):
        cq, cd = model.encode(Q).to_csr(), model.encode(D).to_csr()
        dots = np.asarray(cq.multiply(cd).sum(axis=1)).ravel()
        return float((dots / np.sqrt(cq.multiply(cq).sum(axis=1).A1 * cd.multiply(cd).sum(axis=1).A1)).mean())
    assert pair_cos(paired) > pair_cos(plain) + 0.05


@pytest.mark.parametrize("pairs, message", [
    ("not a pair", "pairs must be a \\(queries, docs\\) pair"),
    ((np.ones((5, 8)), np.ones((4, 8))), "same shape"),
    ((np.ones((5, 9)), np.ones((5, 9))), "d=9 columns, the model expects d=8"),
    ((np.ones((1, 8)), np.ones((1, 8))), "at least 2 rows"),
    ((np.ones(8), np.ones(8)), "2-D"),
])
def test_bad_pairs_are_refused(pairs, message):
    X = unit(np.random.default_rng(0), 50, 8)
    with pytest.raises(ValueError, match=message):
        ce.train(X, h=32, k=2, steps=1, pairs=pairs, progress=False)


def test_pairs_with_nan_are_refused_by_row():
    X = unit(np.random.default_rng(0), 50, 8)
    Q, D = unit(np.random.default_rng(1), 6, 8), unit(np.random.default_rng(2), 6, 8)
    D[4, 2] = np.nan
    with pytest.raises(ValueError, match="pairs docs row 4 holds NaN"):
        ce.train(X, h=32, k=2, steps=1, pairs=(Q, D), progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "sparse"}, "variant must be one of \\('compressae', 'csr'\\), got 'sparse'"),
    ({"tau": 0.0}, "tau must be a positive number"),
    ({"tau": -0.2}, "tau must be a positive number"),
    ({"aux_k": -1}, "aux_k must be an int in 0..h=32"),
    ({"aux_k": 33}, "aux_k must be an int in 0..h=32"),
    ({"aux_weight": -1.0}, "aux_weight must be a number >= 0"),
    ({"pairs_weight": float("nan")}, "pairs_weight must be a number >= 0"),
    ({"init": "zeros"}, "init must be one of \\('transpose', 'random'\\)"),
    ({"variant": "csr", "tied": True, "init": "random"}, "init must be 'transpose'"),
    ({"tied": True}, "tied decoders are a CSR option"),
])
def test_bad_training_options_are_refused(kwargs, message):
    X = unit(np.random.default_rng(0), 50, 8)
    with pytest.raises(ValueError, match=message):
        ce.train(X, h=32, k=2, steps=1, progress=False, **kwargs)


def test_continuing_a_model_with_another_variant_is_refused():
    X = unit(np.random.default_rng(0), 50, 8)
    with pytest.raises(ValueError, match="variant='csr' but the given model is 'compressae'"):
        ce.train(X, model=ce.CompresSAE(8, 32, 2), variant="csr", steps=1, progress=False)


def test_random_init_draws_an_encoder_apart_from_the_decoder():
    a, b = ce.CompresSAE(16, 64, 4, seed=3), ce.CompresSAE(16, 64, 4, seed=3, init="random")
    assert torch.equal(a.W_enc, a.W_dec.T) and torch.equal(a.W_dec, b.W_dec)
    assert not torch.allclose(b.W_enc, b.W_dec.T)
    torch.testing.assert_close(b.W_enc.norm(dim=0), torch.ones(64))


# 8-bit codes from the models

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


# the shell

def test_cli_trains_csr_with_pairs_and_encodes_uint8(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = unit(rng, 300, 12, np.float16)
    np.save(tmp_path / "items.npy", X)
    np.savez(tmp_path / "pairs.npz", queries=unit(rng, 40, 12), docs=unit(rng, 40, 12))
    assert main(["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--variant", "csr",
                 "--h", "64", "--k", "4", "--steps", "10", "--batch-size", "64", "--pairs", str(tmp_path / "pairs.npz"),
                 "--tau", "0.5"]) == 0
    model = ce.load_model(tmp_path / "m.csae")
    assert isinstance(model, CSR) and model.tied
    assert main(["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz"),
                 "--values", "uint8"]) == 0
    codes = ce.load_codes(tmp_path / "c.npz")
    assert codes.values.dtype == np.uint8 and codes.is_nonnegative
    assert "10 bytes/item" in capsys.readouterr().out  # 4 x (uint8 index + uint8 value) + float16 scale


def test_cli_reports_bad_pairs_files(tmp_path, capsys):
    np.save(tmp_path / "items.npy", unit(np.random.default_rng(0), 50, 8))
    np.savez(tmp_path / "wrong.npz", q=np.ones((3, 8)))
    args = ["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--steps", "1", "--pairs"]
    assert main(args + [str(tmp_path / "wrong.npz")]) == 2
    assert "lacks arrays ['docs', 'queries']" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "missing.npz")]) == 2
    assert "no such pairs file" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "items.npy")]) == 2
    assert "holds one array" in capsys.readouterr().err
