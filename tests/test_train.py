"""Training (csae_engine/training/): the loop, its schedule, AuxK and the pairs term in a run, TrainConfig and its
checks, train_step."""
import copy

import numpy as np
import pytest
import torch

import csae_engine as ce
from csae_engine.models import new_model
from csae_engine.training import DEFAULT_AUX_WEIGHT, lr_factor, train_step
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
    factors = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
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


def test_same_seed_same_model_on_cpu():
    X = unit(np.random.default_rng(1), 300, 16)
    a = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=3, progress=False)
    b = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=3, progress=False)
    c = ce.train(X, h=64, k=4, steps=15, batch_size=50, seed=4, progress=False)
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name]), name
    assert not torch.equal(a.W_dec, c.W_dec)


def test_bad_training_arguments_are_refused():
    X = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="steps"):
        ce.train(X, h=16, k=2, steps=0)
    with pytest.raises(ValueError, match="lr"):
        ce.train(X, h=16, k=2, lr=-1.0)
    with pytest.raises(ValueError, match="k must be in"):
        ce.train(X, h=16, k=17)


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


def test_train_options_follow_the_error_rule():
    X = unit(np.random.default_rng(0), 50, 8)
    for name, wrong_type in (("k", 2.0), ("steps", 3.0), ("batch_size", "64"), ("h", True)):
        with pytest.raises(TypeError, match=name):
            ce.train(X, progress=False, **{"h": 32, "k": 2, "steps": 1, name: wrong_type})
    for name in ("k", "steps", "batch_size", "h"):
        with pytest.raises(ValueError, match=name):
            ce.train(X, progress=False, **{"h": 32, "k": 2, "steps": 1, name: 0})
    with pytest.raises(TypeError, match="'stpes'"):
        ce.train(X, h=32, k=2, stpes=10)
    with pytest.raises(TypeError, match="lr"):
        ce.TrainConfig(lr="fast")
    with pytest.raises(ValueError, match="warmup"):
        ce.TrainConfig(warmup=1.5)
    with pytest.raises(TypeError, match="aux_k"):
        ce.TrainConfig(aux_k=1.5)


def test_a_config_and_keywords_train_the_same_model():
    X = unit(np.random.default_rng(1), 200, 12)
    cfg = ce.TrainConfig(h=48, k=3, steps=6, batch_size=40, seed=2)
    a = ce.train(X, config=cfg, progress=False)
    b = ce.train(X, h=48, k=3, steps=6, batch_size=40, seed=2, progress=False)
    c = ce.train(X, 48, config=ce.TrainConfig(k=3, steps=6, batch_size=10), batch_size=40, seed=2, progress=False)
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name]), name
        assert torch.equal(p, dict(c.named_parameters())[name]), name
    with pytest.raises(TypeError, match="TrainConfig"):
        ce.train(X, config={"steps": 6})


def test_train_step_adds_the_weighted_terms_and_keeps_the_decoder_on_the_sphere():
    torch.manual_seed(0)
    model = ce.CSRAutoencoder(10, 40, 3, seed=1, tied=False)
    x = torch.nn.functional.normalize(torch.randn(16, 10), dim=1)
    q, d = (torch.nn.functional.normalize(torch.randn(6, 10), dim=1) for _ in range(2))
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::2] = True
    before = copy.deepcopy(model)
    fwd = before(x)
    aux, ncl = before.aux_loss(x, fwd.x_hat, dead, 4), before.contrastive_loss(q, d, 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = train_step(model, opt, x, dead=dead, aux_k=4, pairs=(q, d), pairs_weight=0.3, tau=0.5)
    assert set(out.terms) == {"aux", "ncl"}
    assert out.terms["aux"].item() == pytest.approx(aux.item()) and out.terms["ncl"].item() == pytest.approx(ncl.item())
    assert out.loss.item() == pytest.approx((fwd.loss + DEFAULT_AUX_WEIGHT * aux + 0.3 * ncl).item(), rel=1e-6)
    assert torch.equal(out.indices, fwd.indices) and not out.values.requires_grad
    assert not torch.equal(model.W_dec, before.W_dec)
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(40))
    plain = train_step(model, opt, x)
    assert plain.terms == {}
