"""The residual quantizer (csae_engine/residual.py) and the engine's forward rows with residual codes: dense mode
equals decode-then-cosine of x_hat + r_hat, files, updates and the byte split."""
import numpy as np
import pytest

import csae_engine as ce
from csae_engine.residual import (CENTROIDS, DEFAULT_SPARSE_BYTES, WEIGHT_BYTES, ResidualQuantizer, encode_residuals,
                                  residual_split, residuals_of)
from test_engine import assert_same_topk, restricted_to


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_tables_score_exactly_the_decoded_residual(rng):
    R = rng.standard_normal((3000, 30)).astype(np.float32)
    pq = ResidualQuantizer.train(R, 7, iterations=4)  # 30 dims in 7 subspaces: sizes 4 and 5
    assert (pq.m, pq.sub, pq.d) == (7, 5, 30)
    codes = pq.encode(R[:200])
    assert codes.shape == (200, 7) and codes.dtype == np.uint8
    decoded = pq.decode(codes)
    Q = rng.standard_normal((5, 30)).astype(np.float32)
    T = pq.tables(Q).reshape(5, 7, CENTROIDS)
    looked_up = T[:, np.arange(7)[None, :], codes].sum(axis=2)  # (5, 200)
    np.testing.assert_allclose(looked_up, Q @ decoded.T, rtol=1e-5, atol=1e-5)


def test_k_means_lowers_the_error_and_codes_its_own_centroids_exactly(rng):
    R = rng.standard_normal((4000, 16)).astype(np.float32)
    one = ResidualQuantizer.train(R, 4, iterations=1, seed=3)
    many = ResidualQuantizer.train(R, 4, iterations=8, seed=3)
    err = lambda pq: float(((R - pq.decode(pq.encode(R))) ** 2).sum(axis=1).mean())  # noqa: E731
    assert err(many) < err(one) < float((R ** 2).sum(axis=1).mean())
    few = R[:100]  # fewer rows than centroids: every row is a centroid
    np.testing.assert_array_equal(ResidualQuantizer.train(few, 8).decode(ResidualQuantizer.train(few, 8).encode(few)),
                                  few)


def test_each_dimension_lies_in_exactly_one_subspace(rng):
    pq = ResidualQuantizer(rng.standard_normal((4, CENTROIDS, 3)).astype(np.float32), 10)  # sizes 2, 3, 2, 3
    codes = rng.integers(0, CENTROIDS, (6, 4)).astype(np.uint8)
    Q = np.eye(10, dtype=np.float32)
    np.testing.assert_allclose(pq.tables(Q).reshape(10, 4, CENTROIDS)[:, np.arange(4)[None, :], codes].sum(axis=2).T,
                               pq.decode(codes), atol=1e-6)


def test_bad_input_is_refused_by_name(rng):
    R = rng.standard_normal((300, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="exceed the 8 dimensions"):
        ResidualQuantizer.train(R, 9)
    with pytest.raises(ValueError, match="NaN"):
        ResidualQuantizer.train(np.full((10, 8), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="non-empty"):
        ResidualQuantizer.train(np.zeros((0, 8), np.float32), 2)
    pq = ResidualQuantizer.train(R, 2, iterations=1)
    with pytest.raises(ValueError, match=r"\(n, 2\) uint8"):
        pq.decode(np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        pq.encode(R[:, :7])
    with pytest.raises(ValueError, match="does not fit d=9"):
        ResidualQuantizer(pq.codebook, 9)


def test_the_byte_split():
    assert residual_split(128, 384) == (30, 96), "a quarter, less the weight, for the sparse code"
    assert residual_split(64, 384) == (DEFAULT_SPARSE_BYTES, 64 - 2 - DEFAULT_SPARSE_BYTES), "at least 22 bytes"
    assert residual_split(256, 384) == (62, 192)
    assert residual_split(128, 64) == (128 - 64 - WEIGHT_BYTES, 64), "at most one byte per dimension"
    assert residual_split(24, 384) == (24, 0), "no room beside the sparse code: no residual"
    assert residual_split(128, 384, 0) == (128, 0)
    assert residual_split(128, 384, 40) == (86, 40)
    assert residual_split(6, 384, sparse_min=5) == (6, 0), "no room for a residual: none by default"
    with pytest.raises(ValueError, match="leaves 2 bytes for the sparse code"):
        residual_split(64, 384, 60, sparse_min=5)
    with pytest.raises(ValueError, match=r"residual_bytes must be in 0..384"):
        residual_split(64, 384, -1)
    with pytest.raises(TypeError, match="residual_bytes must be an int"):
        residual_split(64, 384, 2.5)


@pytest.fixture(scope="module")
def trained(wordnet):
    X = np.asarray(wordnet["docs"][:3000], np.float32)
    return ce.train(X, h=512, k=8, steps=60, batch_size=512, progress=False), X


def naive_cosines(engine, X, Q):
    """cos(q, x_hat + r_hat), every item, from the model's decode and the quantizer's decode."""
    model, cfg = engine.model, engine.config
    sparse_bytes, m = residual_split(128, model.d, cfg["residual_m"])
    codes = model.encode(X, bytes_per_item=sparse_bytes)
    assert codes.k == cfg["k"]
    x_hat = model.decode(codes) + engine.residual.decode(encode_residuals(model, X, codes, engine.residual))
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return Qn @ (x_hat / np.linalg.norm(x_hat, axis=1, keepdims=True)).T


@pytest.mark.parametrize("residual_bytes", [None, 40])
def test_dense_mode_equals_decode_then_cosine(trained, wordnet, residual_bytes):
    model, X = trained
    Q = wordnet["queries"][:30].astype(np.float32)
    engine = ce.Engine(model).build(X, residual_bytes=residual_bytes)
    m = 96 if residual_bytes is None else residual_bytes
    assert engine.config["residual_m"] == engine.residual.m == engine.segments[0].index.residual_m == m
    assert engine.nbytes()["fwd_packed"] == len(X) * ce.engine.DEFAULT_BYTES_PER_ITEM, "the budget holds"
    naive = naive_cosines(engine, X, Q)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=3e-3)
    cand, _ = engine.search(Q, top_k=50)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates=50)
    assert_same_topk(ids, scores, restricted_to(naive, cand), 10, atol=3e-3)


def test_the_residual_lifts_dense_recall(trained, wordnet):
    model, X = trained
    Q = wordnet["queries"][:200].astype(np.float32)
    Xn, Qn = X / np.linalg.norm(X, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True)
    truth = np.argsort(-(Qn @ Xn.T), axis=1)[:, :10]
    recall = lambda e: np.mean([len(set(a) & set(b)) / 10  # noqa: E731
                                for a, b in zip(e.search(Q, 10, mode="dense", candidates="all")[0], truth)])
    with_residual, without = ce.Engine(model).build(X), ce.Engine(model).build(X, residual_bytes=0)
    assert without.residual is None and without.config["residual_m"] == 0
    assert recall(with_residual) > recall(without) + 0.05


def test_saved_residual_index_loads_back_and_refuses_a_damaged_codebook(trained, wordnet, tmp_path):
    model, X = trained
    Q = wordnet["queries"][:20].astype(np.float32)
    engine = ce.Engine(model).build(X[:1000])
    engine.save(tmp_path / "ix")
    back = ce.Engine.load(tmp_path / "ix")
    np.testing.assert_array_equal(back.residual.codebook, engine.residual.codebook)
    for mode in ("sparse", "dense"):
        for a, b in zip(engine.search(Q, 10, mode=mode), back.search(Q, 10, mode=mode)):
            np.testing.assert_array_equal(a, b)
    codebook = np.load(tmp_path / "ix" / "residual.npy")
    np.save(tmp_path / "ix" / "residual.npy", codebook * 2)
    with pytest.raises(ValueError, match="residual.npy is corrupted"):
        ce.Engine.load(tmp_path / "ix")
    (tmp_path / "ix" / "residual.npy").unlink()
    with pytest.raises(ValueError, match="residual.npy is missing"):
        ce.Engine.load(tmp_path / "ix", verify=False)


def test_updates_code_added_rows_with_the_same_quantizer(trained, wordnet):
    model, X = trained
    Q = wordnet["queries"][:20].astype(np.float32)
    engine = ce.Engine(model).build(X[:600])
    quantizer = engine.residual
    engine.add(X[600:1000], np.arange(600, 1000)).delete([3, 700])
    naive = naive_cosines(engine, X[:1000], Q)
    naive[:, [3, 700]] = -np.inf
    ids, scores = engine.search(Q, 10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=3e-3)
    engine.compact()
    assert engine.residual is quantizer and len(engine.segments) == 1 and engine.config["residual_m"] == 96
    ids, scores = engine.search(Q, 10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=3e-3)


def test_residuals_are_what_the_sparse_code_leaves(trained):
    model, X = trained
    codes = model.encode(X[:50], bytes_per_item=30)
    R = residuals_of(model, X, codes, np.arange(50))
    Xn = X[:50] / np.linalg.norm(X[:50], axis=1, keepdims=True)
    np.testing.assert_allclose(R + model.decode(codes), Xn, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"residual_bytes": 0}, {"plain": True}])
def test_reconstruct_gives_the_vectors_dense_mode_scores(trained, wordnet, options):
    model, X = trained
    Q = wordnet["queries"][:10].astype(np.float32)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    ids = np.arange(400) * 7 + 5
    engine = (ce.Engine.from_codes(model.encode(X[:400]), model, ids=ids) if options.get("plain")
              else ce.Engine(model).build(X[:400], ids=ids, **options))
    engine.add(X[400:410], ids=np.arange(10) + 10**6).delete([ids[3]])
    got, scores = engine.search(Q, 10, mode="dense", candidates="all")
    vectors = engine.reconstruct(got.reshape(-1)).reshape(10, 10, -1)
    np.testing.assert_allclose(np.einsum("qd,qkd->qk", Qn, vectors), scores, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=2), 1, atol=2e-3)
    with pytest.raises(KeyError, match=str(ids[3])):
        engine.reconstruct([ids[3]])
