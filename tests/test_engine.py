import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import csae_engine as ce
from conftest import unit


def normalised_csr(indices, values, h):
    vals = values.astype(np.float32)
    vals = vals / np.linalg.norm(vals, axis=1, keepdims=True)
    return ce.SparseCodes(indices, vals, h).to_csr()


def assert_same_topk(ids, scores, ref_scores_full, top_k, atol=1e-5):
    """Scores equal the reference top-k; each returned id really has its score (ties may pick other ids)."""
    ref_top = -np.sort(-ref_scores_full, axis=1)[:, :top_k]
    np.testing.assert_allclose(scores, ref_top, atol=atol)
    np.testing.assert_allclose(np.take_along_axis(ref_scores_full, ids, 1), scores, atol=atol)
    assert all(len(set(row)) == top_k for row in ids)


def restricted_to(scores, candidates):
    """scores (nq, n) where each row keeps only its candidates' columns; -inf elsewhere."""
    out = np.full_like(scores, -np.inf)
    np.put_along_axis(out, candidates, np.take_along_axis(scores, candidates, 1), 1)
    return out


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return ce.CompresSAE(d=32, h=256, k=8, seed=1)


@pytest.fixture(scope="module")
def trained(wordnet):
    """A model trained briefly on real data and an engine over the float16 codes of 5,000 real items."""
    X = np.asarray(wordnet["docs"][:5000], np.float32)
    model = ce.train(X, h=1024, k=16, steps=60, batch_size=512, lr=3e-3, progress=False)
    return model, X, ce.Engine.from_codes(model.encode(X), model)


@pytest.mark.parametrize("value_dtype", [np.float16, np.float32])
def test_sparse_mode_equals_scipy_on_random_codes(small_model, value_dtype):
    rng = np.random.default_rng(0)
    X, Q = unit(rng, 3000, 32), unit(rng, 25, 32)
    codes = small_model.encode(X, value_dtype=value_dtype)
    engine = ce.Engine.from_codes(codes, small_model)
    ids, scores = engine.search(Q, top_k=20)
    qc = small_model.encode(Q, value_dtype=np.float32)
    D = normalised_csr(codes.indices, codes.values, 256)
    ref = (normalised_csr(qc.indices, qc.values, 256) @ D.T).toarray()
    assert_same_topk(ids, scores, ref, 20, atol=2e-3 if value_dtype == np.float16 else 1e-5)
    assert (ref < 0).any(), "signed codes must give negative products"


def test_sparse_mode_equals_scipy_on_real_codes(trained, wordnet):
    model, X, engine = trained
    Q = wordnet["queries"][:50]
    ids, scores = engine.search(Q, top_k=10)
    codes, qc = model.encode(X), model.encode(Q, value_dtype=np.float32)
    ref = (normalised_csr(qc.indices, qc.values, model.h) @ normalised_csr(codes.indices, codes.values, model.h).T).toarray()
    assert_same_topk(ids, scores, ref, 10, atol=2e-3)


def test_iter_codes_are_the_scored_codes_across_windows(trained, monkeypatch):
    model, X, _ = trained
    monkeypatch.setattr(ce.engine, "WINDOW_BITS", 5)
    ids = np.arange(300) * 3 + 7
    engine = ce.Engine(model).build_codes(model.encode(X[:300]), ids=ids)
    engine.delete([7, 10, 904])
    got = list(engine.iter_codes(64))
    got_ids = np.concatenate([i for i, _ in got])
    live = ~np.isin(ids, [7, 10, 904])
    np.testing.assert_array_equal(got_ids, ids[live])
    codes = model.encode(X[:300])
    want = normalised_csr(codes.indices, codes.values, model.h)[np.flatnonzero(live)].toarray()
    np.testing.assert_allclose(sp.vstack([b for _, b in got]).toarray(), want, atol=1e-3)


def test_dense_mode_equals_naive_reconstruct_then_cosine(trained, wordnet):
    model, X, engine = trained
    Q = wordnet["queries"][:40].astype(np.float32)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    X_hat = model.decode(model.encode(X))
    naive = Qn @ (X_hat / np.linalg.norm(X_hat, axis=1, keepdims=True)).T
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=2e-3)
    # rerank of the sparse top-50 equals the naive cosine restricted to those candidates
    cand, _ = engine.search(Q, top_k=50)
    restricted = restricted_to(naive, cand)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates=50)
    assert_same_topk(ids, scores, restricted, 10, atol=2e-3)


def test_user_ids_map_both_ways(small_model):
    X = unit(np.random.default_rng(2), 500, 32)
    user_ids = np.arange(500, dtype=np.int64) * 7919 + 10**12
    engine = ce.Engine(small_model).build(X, ids=user_ids)
    ids, _ = engine.search(X[:5], top_k=3, mode="dense", candidates="all")
    assert np.isin(ids, user_ids).all()
    np.testing.assert_array_equal(engine.ids(), user_ids)
    assert user_ids[99] in engine and 5 not in engine
    with pytest.raises(ValueError, match="appears more than once"):
        ce.Engine(small_model).build(X, ids=np.zeros(500, np.int64))
    with pytest.raises(ValueError, match=r"shape \(500,\)"):
        ce.Engine(small_model).build(X, ids=np.arange(3))


def test_query_terms_cut_equals_search_with_truncated_query(small_model):
    rng = np.random.default_rng(4)
    X, Q = unit(rng, 2000, 32), unit(rng, 10, 32)
    engine = ce.Engine(small_model).build(X, ids=None)
    codes, qc = small_model.encode(X, value_dtype=np.float32), small_model.encode(Q, value_dtype=np.float32)
    qv = qc.values / np.linalg.norm(qc.values, axis=1, keepdims=True)
    cut = ce.SparseCodes(qc.indices[:, :3], qv[:, :3], 256).to_csr()
    ref = (cut @ normalised_csr(codes.indices, codes.values, 256).T).toarray()
    ids, scores = engine.search(Q, top_k=10, query_terms=3)
    assert_same_topk(ids, scores, ref, 10, atol=2e-3)
    np.testing.assert_array_equal(engine.search(Q, 10, query_terms=8)[0], engine.search(Q, 10)[0])


def test_pruning_keeps_the_strongest_postings(small_model):
    X = unit(np.random.default_rng(5), 4000, 32)
    exact = ce.Engine(small_model).build(X)
    full = ce.Engine(small_model).build(X, prune=1.0)
    half = ce.Engine(small_model).build(X, prune=0.5)
    np.testing.assert_array_equal(exact.search(X[:20], 10)[0], full.search(X[:20], 10)[0])
    n_exact, n_half = exact.nbytes()["local_ids"], half.nbytes()["local_ids"]
    assert 0.5 * n_exact <= n_half < 0.55 * n_exact
    pv = np.abs(half.segments[0].arrays["post_values"].astype(np.float32))
    assert pv.mean() > np.abs(exact.segments[0].arrays["post_values"].astype(np.float32)).mean()
    with pytest.raises(ValueError, match="prune must be in"):
        ce.Engine(small_model).build(X, prune=0.0)


def test_concurrent_searches_equal_serial(small_model):
    rng = np.random.default_rng(6)
    engine = ce.Engine(small_model).build(unit(rng, 3000, 32))
    queries = [unit(rng, 7, 32) for _ in range(8)]
    expected = [engine.search(q, 5, mode=m) for q in queries for m in ("sparse", "dense")]
    results = [None] * len(expected)

    def work(i):
        for _ in range(3):
            results[i] = engine.search(queries[i // 2], 5, mode=("sparse", "dense")[i % 2])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(expected))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (ei, es), (ri, rs) in zip(expected, results):
        np.testing.assert_array_equal(ei, ri)
        np.testing.assert_array_equal(es, rs)


@pytest.mark.parametrize("call, message", [
    (lambda e: e.search(np.ones((2, 31), np.float32)), "d=31 columns, the model expects d=32"),
    (lambda e: e.search(np.full((2, 32), np.nan, np.float32)), "row 0 holds NaN"),
    (lambda e: e.search(np.zeros((0, 32), np.float32)), "empty"),
    (lambda e: e.search(np.ones((1, 32), np.float32), top_k=0), "top_k must be a positive int"),
    (lambda e: e.search(np.ones((1, 32), np.float32), top_k=101), "top_k=101 exceeds the 100 indexed items"),
    (lambda e: e.search(np.ones((1, 32), np.float32), mode="fast"), "mode must be one of"),
    (lambda e: e.search(np.ones((1, 32), np.float32), mode="dense", candidates="some"), "candidates must be"),
    (lambda e: e.search(np.ones((1, 32), np.float32), top_k=10, mode="dense", candidates=5), "at least top_k"),
    (lambda e: e.search(np.ones((1, 32), np.float32), query_terms=9), "query_terms must be in 1..8"),
])
def test_bad_queries_are_refused(small_model, call, message):
    engine = ce.Engine(small_model).build(unit(np.random.default_rng(7), 100, 32))
    with pytest.raises(ValueError, match=message):
        call(engine)


def test_empty_engine_and_wrong_codes(small_model):
    with pytest.raises(RuntimeError, match="call build"):
        ce.Engine(small_model).search(np.ones((1, 32), np.float32))
    other = ce.SparseCodes(np.zeros((3, 2), np.uint16), np.ones((3, 2), np.float16), 512)
    with pytest.raises(ValueError, match="codes have h=512"):
        ce.Engine.from_codes(other, small_model)


def test_default_ids_are_row_numbers_and_cost_nothing(small_model, tmp_path):
    X = unit(np.random.default_rng(8), 300, 32)
    engine = ce.Engine(small_model).build(X)
    assert "ids" not in engine.nbytes()
    ids, _ = engine.search(X[:4], 1, mode="dense", candidates="all")
    np.testing.assert_array_equal(engine.ids(), np.arange(300))
    assert 299 in engine and 300 not in engine
    engine.save(tmp_path / "index")
    assert not list((tmp_path / "index").rglob("ids.npy"))
    np.testing.assert_array_equal(ce.Engine.load(tmp_path / "index").search(X[:4], 1, mode="dense", candidates="all")[0], ids)


def _csr_with_bias(d=32, h=128, k=8):
    model = ce.CSRAutoencoder(d, h, k, seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        model.b_pre.copy_(0.3 * torch.randn(d, generator=gen))
        model.b_enc.copy_(torch.randn(h, generator=gen))
    return model


def test_csr_dense_mode_includes_the_decoder_bias(tmp_path):
    model = _csr_with_bias()
    X = unit(np.random.default_rng(5), 400, 32)
    Q = unit(np.random.default_rng(6), 20, 32)
    X_hat = model.decode(model.encode(X))  # code @ W_dec + b_pre
    naive = Q @ (X_hat / np.linalg.norm(X_hat, axis=1, keepdims=True)).T
    engine = ce.Engine(model).build(X)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=2e-3)
    engine.save(tmp_path / "ix")
    loaded = ce.Engine.load(tmp_path / "ix")
    for mode in ("sparse", "dense"):
        np.testing.assert_array_equal(loaded.search(Q, 10, mode=mode)[0], engine.search(Q, 10, mode=mode)[0])


@pytest.mark.parametrize("variant, dtype", [("compressae", np.int8), ("csr", np.uint8)])
def test_eight_bit_codes_index_like_their_dequantised_values(variant, dtype):
    model = _csr_with_bias() if variant == "csr" else ce.CompresSAE(32, 128, 8, seed=3)
    X = unit(np.random.default_rng(7), 400, 32)
    Q = unit(np.random.default_rng(8), 20, 32)
    codes8 = model.encode(X, value_dtype=dtype)
    assert codes8.quantized
    dequantised = ce.SparseCodes(codes8.indices, codes8.float_values(), codes8.h)
    engine8 = ce.Engine.from_codes(codes8, model)
    reference = ce.Engine.from_codes(dequantised, model)
    for mode, candidates in (("sparse", None), ("dense", "all")):  # dense over sparse candidates inherits ties
        ids8, s8 = engine8.search(Q, 10, mode=mode, candidates=candidates)
        ref_ids, ref = reference.search(Q, 10, mode=mode, candidates=candidates)
        np.testing.assert_allclose(s8, ref, atol=2e-3)  # both store float16 in the index
        overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids8, ref_ids)])
        assert overlap > 0.9  # 8-bit codes tie often; the scores above are the real check
