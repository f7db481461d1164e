"""index/query.py: the lean query path (the C++ encoder of cpp/encode.h) against the model's torch path."""
import numpy as np
import pytest
import torch

import csae_engine as ce
from conftest import csr_model, unit
from csae_engine import _core
from csae_engine.index.query import SMALL_BATCH, QueryEncoder, int8_encoder, query_codes, query_rows

D, H, K = 43, 300, 16  # d not a multiple of 8: the C++ dot product's tail runs


def signed_model():
    model = ce.CompresSAE(D, H, K, seed=2, init="random")
    with torch.no_grad():
        model.b_enc.copy_(torch.randn(H, generator=torch.Generator().manual_seed(5)) * 0.1)
    return model


MODELS = {"compressae": signed_model, "csr tied": lambda: csr_model(D, H, K, tied=True),
          "csr untied": lambda: csr_model(D, H, K, tied=False)}


def strength(model, values):
    return np.abs(values) if model.signed else values


def assert_same_codes(model, idx, val, ref_idx, ref_val, atol=1e-5):
    """Values equal within float32 rounding; indices equal except where two entries tie within atol (then either
    order, or either of two boundary latents, is right)."""
    assert idx.dtype == np.int64 and val.dtype == np.float32 and idx.shape == ref_idx.shape
    assert idx.flags.c_contiguous and val.flags.c_contiguous
    np.testing.assert_allclose(val, ref_val, atol=atol)
    differ = idx != ref_idx
    gap = np.abs(strength(model, val) - strength(model, ref_val))
    assert (gap[differ] < atol).all(), f"latents differ away from a tie: rows {np.flatnonzero(differ.any(1))}"
    assert differ.mean() < 0.01, "ties are rare on random weights"


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("nq", [1, 7])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_small_batches_match_the_models_codes(kind, nq, dtype):
    model = MODELS[kind]().eval()
    Q = query_rows(model, unit(np.random.default_rng(nq), nq, D, dtype))
    idx, val = QueryEncoder(model, K).codes(Q)
    with torch.no_grad():  # the model's own codes, normalised here
        ref_idx, ref_val = model.encode_tensor(torch.from_numpy(Q))
    ref_val = (ref_val / ref_val.norm(dim=1, keepdim=True)).numpy()
    assert_same_codes(model, idx, val, ref_idx.numpy(), ref_val)
    np.testing.assert_allclose(np.linalg.norm(val, axis=1), 1, atol=1e-6)
    order = strength(model, val)
    assert (np.diff(order, axis=1) <= 0).all(), "strongest first"


@pytest.mark.parametrize("kind", MODELS)
def test_the_small_and_large_batch_paths_agree(kind):
    model = MODELS[kind]().eval()
    Q = query_rows(model, unit(np.random.default_rng(3), SMALL_BATCH + 9, D))
    encoder = QueryEncoder(model, K)
    big_idx, big_val = encoder.codes(Q)  # over SMALL_BATCH: torch
    parts = [encoder.codes(Q[s:s + 5]) for s in range(0, len(Q), 5)]  # the C++ encoder
    assert_same_codes(model, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                      big_idx, big_val)
    idx, val = encoder.codes(Q[:3], terms=4)
    assert idx.shape == (3, 4) and idx.flags.c_contiguous and val.flags.c_contiguous
    np.testing.assert_array_equal(idx, parts[0][0][:3, :4])


def test_a_csr_code_with_no_positive_entry_stays_zero():
    model = csr_model(D, H, K)
    with torch.no_grad():
        model.b_enc.fill_(-50.0)  # every z < 0: ReLU leaves nothing
    Q = query_rows(model, unit(np.random.default_rng(4), 3, D))
    idx, val = QueryEncoder(model, K).codes(Q)
    ref_idx, ref_val = query_codes(model, Q, K)
    assert not val.any() and not ref_val.any()
    np.testing.assert_array_equal(idx, ref_idx)  # the k largest (negative) z, largest first


def test_the_encoder_is_copied_once():
    model = signed_model()
    encoder = QueryEncoder(model, K)
    Q = query_rows(model, unit(np.random.default_rng(6), 2, D))
    first = encoder.codes(Q)
    with torch.no_grad():
        model.b_enc.add_(1.0)  # a model changed after the first search: the copy, not the model, encodes
    np.testing.assert_array_equal(encoder.codes(Q)[0], first[0])
    assert not np.array_equal(QueryEncoder(model, K).codes(Q)[0], first[0])


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("d", [D, 64])
def test_the_int8_pass_gives_the_float32_codes_bit_for_bit(kind, d):
    rng = np.random.default_rng(d)
    model = MODELS[kind]()
    W = model.W_enc.detach().T.float().contiguous().numpy()[:, :D]
    W = np.ascontiguousarray(np.pad(W, ((0, 0), (0, d - D))) + 0.01 * rng.standard_normal((H, d)), np.float32)
    W[7] = W[3]  # two latents that always tie, one of them with the opposite sign
    W[11] = -W[3]
    W[20] = 0  # a row of zeros: z = b
    b = model.encoder_bias().detach().float().numpy().copy()
    b[[7, 11]] = b[3]
    W8, bounds = int8_encoder(W)
    Q = unit(rng, 10, d)
    Q[4] = W[3] / np.linalg.norm(W[3])  # the tied latents among the strongest
    Q[9] = 0  # z = b
    for nq in (1, 3, 10):
        for threads in (1, 2):
            plain = _core.encode_queries(Q[:nq], W, b, K, not model.signed, 1)
            int8 = _core.encode_queries(Q[:nq], W, b, K, not model.signed, threads, W8, bounds)
            np.testing.assert_array_equal(int8[0], plain[0])
            np.testing.assert_array_equal(int8[1], plain[1])


def test_the_int8_copy_bounds_its_rounding():
    rng = np.random.default_rng(12)
    W = (rng.standard_normal((50, 43)) * rng.random((50, 1))).astype(np.float32)
    W[5] = 0
    W8, (scale, q_slack, w_norm) = int8_encoder(W)
    assert W8.shape == (50, 64) and W8.dtype == np.int8 and not W8[:, 43:].any()
    assert np.abs(W8).max() == 127 and not W8[5].any()
    approx = scale[:, None].astype(np.float64) * W8[:, :43]
    assert (np.linalg.norm(W - approx, axis=1) <= q_slack).all()
    assert (np.linalg.norm(approx, axis=1) <= w_norm).all() and (w_norm <= (1 + 1e-6) * (np.linalg.norm(W, axis=1) + q_slack)).all()
    assert (q_slack < 0.01 * np.linalg.norm(W, axis=1) + 1e-30).all()  # about |W[j]| sqrt(d / 12) / 127
    W[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        int8_encoder(W)


@pytest.mark.parametrize("kind", MODELS)
def test_projections_of_small_and_large_batches_are_w_dec_q(kind):
    model = MODELS[kind]().eval()
    Q = query_rows(model, unit(np.random.default_rng(10), SMALL_BATCH + 1, D))
    with torch.no_grad():
        W = model.W_dec.detach().numpy().astype(np.float64)
        b = model.decoder_bias
    ref = Q @ W.T if b is None else np.c_[Q @ W.T, Q @ b.detach().numpy().astype(np.float64)]
    encoder = QueryEncoder(model, K)
    small = np.concatenate([encoder.projections(Q[s:s + 6], num_threads=2) for s in range(0, len(Q), 6)])
    np.testing.assert_allclose(small, ref, atol=1e-5)
    np.testing.assert_allclose(encoder.projections(Q), ref, atol=1e-5)  # over SMALL_BATCH: torch


@pytest.fixture(scope="module")
def engine():
    model = ce.CompresSAE(32, 256, 8, seed=1)
    return ce.Engine(model).build(unit(np.random.default_rng(8), 2000, 32))


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_single_queries_equal_a_large_batch_and_the_exact_scores(engine, mode):
    """One query at a time (C++ encoder) gives the results of one batch over SMALL_BATCH (torch encoder), and
    sparse scores are the products of the unit codes."""
    Q = unit(np.random.default_rng(9), SMALL_BATCH + 3, 32, np.float16)
    ids, scores = engine.search(Q, 10, mode=mode)
    for i in range(0, len(Q), 13):
        one_ids, one_scores = engine.search(Q[i:i + 1], 10, mode=mode)
        np.testing.assert_allclose(one_scores[0], scores[i], atol=1e-5)
        same = one_ids[0] == ids[i]
        assert same.all() or (np.abs(np.diff(scores[i])) < 1e-5).any(), "ids may differ only between ties"
    if mode == "sparse":
        q_idx, q_val = query_codes(engine.model, query_rows(engine.model, Q), engine.model.k)
        queries = ce.SparseCodes(q_idx, q_val, engine.model.h).to_csr()
        _, items = next(engine.iter_codes(batch_size=1 << 20))
        full = (queries @ items.T).toarray()
        np.testing.assert_allclose(np.take_along_axis(full, ids, 1), scores, atol=1e-5)
        np.testing.assert_allclose(-np.sort(-full, axis=1)[:, :10], scores, atol=1e-5)


@pytest.mark.parametrize("Q, message", [
    (np.ones((1, 31), np.float32), "d=31 columns, the model expects d=32"),
    (np.ones(32, np.float32), "must be 2-D"),
    (np.zeros((0, 32), np.float32), "empty"),
    (np.ones((2, 32), np.int64), "must hold floats"),
    (np.r_[np.ones((1, 32)), np.full((1, 32), np.inf)].astype(np.float16), "Q row 1 holds NaN or Inf"),
    (np.r_[np.ones((2, 32)), np.zeros((1, 32))].astype(np.float32), "Q row 2 is all zeros"),
])
def test_bad_queries_still_name_the_problem(engine, Q, message):
    with pytest.raises(ValueError, match=message):
        engine.search(Q, 5)


@pytest.mark.parametrize("args, message", [
    ((np.ones((2, 8), np.float64), np.ones((5, 8), np.float32), None, 2), "queries has dtype float64"),
    ((np.ones((2, 8), np.float32), np.ones((5, 7), np.float32), None, 2), "weights have d=7, queries d=8"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), None, 6), r"k must be in 1..h=5"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), np.ones(4, np.float32), 2), r"shape \(h,\), h=5"),
    ((np.ones((2, 8), np.float32), np.ones((8, 5), np.float32).T, None, 2), "weights must be C-contiguous"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), None, 2, False, 1, np.ones((5, 32), np.int8), None),
     "int8_weights and int8_bounds go together"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), None, 2, False, 1, np.ones((5, 8), np.int8),
      np.ones((3, 5), np.float32)), r"int8_weights must have shape \(h, d rounded up to 32\) = \(5, 32\)"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), None, 2, False, 1, np.ones((5, 32), np.float32),
      np.ones((3, 5), np.float32)), "int8_weights has dtype float32, expected int8"),
    ((np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), None, 2, False, 1, np.ones((5, 32), np.int8),
      np.ones((5, 3), np.float32)), r"int8_bounds must have shape \(3, h\), h=5"),
])
def test_the_cpp_encoder_checks_its_arrays(args, message):
    with pytest.raises(ValueError, match=message):
        _core.encode_queries(*args)
