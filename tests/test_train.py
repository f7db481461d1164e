import numpy as np
import pytest
import torch

import csae_engine as ce
from csae_engine.train import _lr_factor
from conftest import unit

# Measured on the shared WordNet/MiniLM data: 300 steps of batch 512 (h=4096, k=32, lr 3e-3) reach a mean
# reconstruction cosine of 0.86 on 5,000 items, from 0.59 at initialisation; the bound leaves room for noise.
TRAINED_COS_BOUND = 0.83


def mean_cos(model, X):
    X = np.asarray(X, np.float32)
    X_hat = model.decode(model.encode(X))
    return float(((X * X_hat).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(X_hat, axis=1)).mean())


def test_training_on_real_data_lowers_loss_and_reconstructs(wordnet):
    docs = wordnet["docs"]
    sample = np.asarray(docs[::23][:5000])
    before = mean_cos(ce.CompresSAE(384, 4096, 32, seed=0), sample)
    model = ce.train(docs, h=4096, k=32, steps=300, batch_size=512, lr=3e-3, progress=False)
    losses = [row["loss"] for row in model.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:2])
    after = mean_cos(model, sample)
    assert after > TRAINED_COS_BOUND, f"reconstruction cosine {after:.3f} (before training {before:.3f})"
    assert after > before + 0.1


def test_dead_latents_are_tracked():
    X = unit(np.random.default_rng(0), 800, 16)
    model = ce.CompresSAE(d=16, h=64, k=4, seed=0)
    with torch.no_grad():
        model.W_enc[:, :10] = 0  # |z| = 0: these latents can never win the top k
    ce.train(X, model=model, steps=40, batch_size=100, dead_window=500, progress=False)
    assert model.history[-1]["dead"] >= 10 / 64
    codes = model.encode(X)
    assert (codes.latent_counts()[:10] == 0).all()


def test_learning_rate_schedule_warms_up_and_decays():
    factors = [_lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[50] == 1.0 and factors[80] == pytest.approx(1.0) and factors[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[80:], factors[81:]))


def test_training_continues_a_given_model_and_checks_its_dim():
    X = unit(np.random.default_rng(1), 200, 12)
    model = ce.train(X, h=32, k=3, steps=5, batch_size=50, progress=False)
    again = ce.train(X, model=model, steps=5, batch_size=50, progress=False)
    assert again is model
    with pytest.raises(ValueError, match="d=13 columns, the model expects d=12"):
        ce.train(unit(np.random.default_rng(2), 50, 13), model=model, steps=1)
