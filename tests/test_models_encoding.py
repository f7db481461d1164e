"""models/encoding.py: the least-squares value refit and the encode paths built on it."""
import numpy as np
import pytest
import torch

import csae_engine as ce
from csae_engine.models.encoding import ValueRefit
from conftest import unit


def cosines(model, X, codes):
    X_hat = model.decode(codes)
    X = np.asarray(X, np.float32)
    return (X * X_hat).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(X_hat, axis=1))


def assert_refit_never_worse(model, X, k):
    plain = model.encode(X, k, value_dtype=np.float32)
    refit = model.encode(X, k, value_dtype=np.float32, refit=True)
    assert (np.sort(refit.indices, 1) == np.sort(plain.indices, 1)).all(), "the support stays the encoder's"
    before, after = cosines(model, X, plain), cosines(model, X, refit)
    assert (after >= before - 1e-5).all(), f"refit lowered cos on {int((after < before - 1e-5).sum())} rows"
    return before, after


@pytest.mark.parametrize("k", [1, 8, 40])
def test_refit_never_lowers_the_cosine_on_random_rows(k):
    rng = np.random.default_rng(k)
    model = ce.CompresSAE(32, 128, 8, seed=k, init="random")
    before, after = assert_refit_never_worse(model, unit(rng, 400, 32), k)
    assert after.mean() > before.mean() + 0.01, "an untrained encoder's values are far from the best ones"


def test_refit_never_lowers_the_cosine_on_real_rows(wordnet):
    X = np.asarray(wordnet["docs"][:3000], np.float32)
    model = ce.train(X, h=512, k=16, steps=40, batch_size=512, progress=False)
    before, after = assert_refit_never_worse(model, X, 24)
    assert after.mean() > before.mean()


def test_refit_solves_the_least_squares_problem():
    rng = np.random.default_rng(3)
    model = ce.CompresSAE(16, 64, 5, seed=0)
    x = torch.from_numpy(unit(rng, 6, 16))
    idx, _ = model.encode_tensor(x, 5)
    got_idx, got = ValueRefit(model)(x, idx)
    W = model.W_dec.detach().double().numpy()
    for row in range(6):
        want, *_ = np.linalg.lstsq(W[got_idx[row].numpy()].T, x[row].double().numpy(), rcond=None)
        np.testing.assert_allclose(got[row].numpy(), want, atol=1e-4)
    assert (got.abs()[:, :-1] >= got.abs()[:, 1:]).all(), "strongest first"


def test_refit_needs_signed_codes():
    with pytest.raises(ValueError, match="signed codes"):
        ce.CSRAutoencoder(8, 32, 4).encode(np.ones((2, 8), np.float32), refit=True)


def test_pursuit_refits_each_support_it_grows(wordnet):
    X = np.asarray(wordnet["docs"][:2000], np.float32)
    model = ce.train(X, h=256, k=8, steps=40, batch_size=256, progress=False)
    fit = ValueRefit(model)
    x = torch.from_numpy(X[:300] / np.linalg.norm(X[:300], axis=1, keepdims=True))
    with torch.no_grad():
        idx, val = fit.pursuit(x, 12)
        again_idx, again_val = fit(x, idx)
        first = (x @ fit.W.T).abs().argmax(dim=1)
    assert idx.shape == (300, 12) and all(len(set(row.tolist())) == 12 for row in idx), "12 distinct latents"
    assert (idx == first[:, None]).any(dim=1).all(), "the most correlated latent is always chosen"
    torch.testing.assert_close(again_idx, idx)
    torch.testing.assert_close(again_val, val, atol=1e-5, rtol=1e-4)  # the values are the support's LS values
    pursued = model.encode(X[:300], bytes_per_item=40, support="pursuit")
    encoded = model.encode(X[:300], bytes_per_item=40)
    assert pursued.k == encoded.k
    assert cosines(model, X[:300], pursued).mean() > cosines(model, X[:300], encoded).mean() + 0.005


def test_support_is_checked():
    X = unit(np.random.default_rng(0), 20, 16)
    model = ce.CompresSAE(16, 64, 4)
    with pytest.raises(ValueError, match="support must be one of"):
        model.encode(X, bytes_per_item=32, support="lasso")
    with pytest.raises(ValueError, match="needs refit=True"):
        model.encode(X, bytes_per_item=32, support="pursuit", refit=False)
    with pytest.raises(ValueError, match="give bytes_per_item too"):
        model.encode(X, support="pursuit")
    with pytest.raises(ValueError, match="support must be one of"):
        ce.Engine(model).build(X, support="lasso")
