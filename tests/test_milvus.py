"""Export to Milvus and search it, end to end against milvus-lite (embedded, a local .db, no server): Milvus's top-k
equals our sparse mode's on the same codes, under the user ids."""
import sys

import numpy as np
import pytest

import csae_engine as ce
from csae_engine.cli import main
from csae_engine.milvus import MilvusError, export_milvus, search_milvus
from conftest import unit

pytest.importorskip("pymilvus", reason="pip install pymilvus milvus-lite")
pytest.importorskip("milvus_lite", reason="pip install milvus-lite")

N, NQ, TOP_K = 800, 30, 10


def clustered(rng, n, centers):
    X = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, centers.shape[1]))
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small CSR model trained on clustered data, an engine over it with large signed int64 ids, exported."""
    rng = np.random.default_rng(0)
    centers = unit(rng, 40, 16)
    X, Q = clustered(rng, N, centers), clustered(rng, NQ, centers)
    model = ce.train(X, h=64, k=6, variant="csr", steps=40, batch_size=128, lr=1e-2, seed=0, progress=False)
    ids = rng.choice(2**62, N, replace=False).astype(np.int64) - 2**61  # far beyond row numbers, some negative
    engine = ce.Engine(model).build(X, ids=ids)
    db = tmp_path_factory.mktemp("milvus") / "codes.db"
    assert export_milvus(engine, db, "items", batch_size=300) == N  # 3 batches, the last one short
    return {"model": model, "X": X, "Q": Q, "ids": ids, "engine": engine, "db": db, "dir": db.parent}


def assert_same_topk(m_ids, m_scores, e_ids, e_scores, atol=1e-5):
    """Milvus returns the items with a score > 0, then -1s (score -inf); our engine fills with score-0 items. Scores equal;
    ids equal wherever a score is apart from its neighbours (ties may order either way)."""
    found = m_ids != -1
    np.testing.assert_allclose(np.where(found, m_scores, 0), np.where(found, e_scores, 0), atol=atol)
    assert np.isneginf(m_scores[~found]).all(), "missing results are padded with -1 and -inf, as the engine pads"
    assert (e_scores[~found] <= atol).all()
    s = np.pad(e_scores, ((0, 0), (1, 1)), constant_values=(np.inf, -np.inf))
    apart = (s[:, :-2] - s[:, 1:-1] > 1e-4) & (s[:, 1:-1] - s[:, 2:] > 1e-4) & found
    np.testing.assert_array_equal(m_ids[apart], e_ids[apart])
    return apart


def test_milvus_top_k_equals_sparse_mode(setup):
    e_ids, e_scores = setup["engine"].search(setup["Q"], TOP_K, mode="sparse")
    m_ids, m_scores = search_milvus(setup["db"], "items", setup["model"], setup["Q"], TOP_K)
    assert m_ids.dtype == np.int64 and m_scores.dtype == np.float32 and m_ids.shape == (NQ, TOP_K)
    apart = assert_same_topk(m_ids, m_scores, e_ids, e_scores)
    assert apart.mean() > 0.8, "the comparison must cover most places"
    assert (m_ids != -1).mean() > 0.9 and (m_scores > 0.3).any()
    assert np.isin(m_ids[m_ids != -1], setup["ids"]).all(), "Milvus returns the user ids"
    # an Engine stands for its model, and a top_k beyond the items that share a latent leaves -1s
    m_ids, m_scores = search_milvus(setup["db"], "items", setup["engine"], setup["Q"][:3], 400)
    e_ids, e_scores = setup["engine"].search(setup["Q"][:3], 400)
    assert_same_topk(m_ids, m_scores, e_ids, e_scores)
    assert (m_ids == -1).any()


def test_collection_holds_the_codes_under_the_user_ids(setup):
    from pymilvus import MilvusClient
    want = {}
    for ids, block in setup["engine"].iter_codes(256):
        for r in (0, 7):
            row = block[r]
            want[int(ids[r])] = {int(c): float(v) for c, v in zip(row.indices, row.data) if v != 0}
    client = MilvusClient(str(setup["db"]))
    try:
        assert client.get_collection_stats("items")["row_count"] == N
        info = client.describe_collection("items")
        assert info["properties"]["csae.h"] == "64"
        got = client.get("items", ids=list(want), output_fields=["id", "code"])
    finally:
        client.close()
    assert len(got) == len(want)
    for row in got:
        expected = want[row["id"]]
        assert set(row["code"]) == set(expected)
        np.testing.assert_allclose([row["code"][c] for c in expected], list(expected.values()), rtol=1e-6)


def test_signed_codes_are_refused_before_touching_milvus(tmp_path):
    X = unit(np.random.default_rng(0), 100, 16)
    signed = ce.CompresSAE(16, 64, 4, seed=0)
    db = tmp_path / "s.db"
    with pytest.raises(ValueError, match=r"signed.*non-negative.*variant=\"csr\".*csae train --variant csr"):
        export_milvus(ce.Engine(signed).build(X), db, "items")
    with pytest.raises(ValueError, match="Milvus sparse vectors take only non-negative weights"):
        search_milvus(db, "items", signed, X[:2], 5)
    assert not db.exists()


def test_existing_collection_is_refused_and_overwrite_replaces_it(setup):
    db = setup["dir"] / "replace.db"
    engine, X = setup["engine"], setup["X"]
    export_milvus(engine, db, "c")
    with pytest.raises(FileExistsError, match="collection 'c' already exists.*overwrite=True"):
        export_milvus(engine, db, "c")
    small = ce.Engine(setup["model"]).build(X[:50], ids=np.arange(50, dtype=np.int64) * 3 + 5)
    # a failed overwrite leaves the old collection whole, and no staging collection behind
    calls, iter_codes = [], small.iter_codes

    def failing_iter_codes(batch_size):
        for batch in iter_codes(20):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("disk full")
            yield batch
    small.iter_codes = failing_iter_codes
    with pytest.raises(RuntimeError, match="disk full"):
        export_milvus(small, db, "c", overwrite=True)
    del small.iter_codes
    ids, _ = search_milvus(db, "c", setup["model"], setup["Q"][:5], 5)
    assert np.isin(ids, setup["ids"]).all()
    assert export_milvus(small, db, "c", overwrite=True) == 50
    ids, scores = search_milvus(db, "c", setup["model"], X[:5], 3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5) * 3 + 5)  # each item finds itself first
    np.testing.assert_allclose(scores[:, 0], 1, atol=1e-3)  # float16 index values
    from pymilvus import MilvusClient
    client = MilvusClient(str(db))
    try:
        assert sorted(client.list_collections()) == ["c"]
        assert client.get_collection_stats("c")["row_count"] == 50
    finally:
        client.close()


def test_search_refuses_another_model_and_missing_collections(setup):
    X, Q = setup["X"], setup["Q"]
    other = ce.train(X, h=64, k=6, variant="csr", steps=5, batch_size=128, lr=1e-2, seed=1, progress=False)
    with pytest.raises(ValueError, match="exported from a different model"):
        search_milvus(setup["db"], "items", other, Q, 5)
    wider = ce.CSRAutoencoder(16, 96, 6, seed=0)
    with pytest.raises(ValueError, match="codes with h=64, the model has h=96"):
        search_milvus(setup["db"], "items", wider, Q, 5)
    with pytest.raises(MilvusError, match="no collection 'nope'"):
        search_milvus(setup["db"], "nope", setup["model"], Q, 5)
    with pytest.raises(ValueError, match="top_k must be an int in 1..16384"):
        search_milvus(setup["db"], "items", setup["model"], Q, 0)
    with pytest.raises(MilvusError, match="cannot open Milvus at 'not-a-uri'"):
        search_milvus("not-a-uri", "items", setup["model"], Q, 5)


def test_missing_pymilvus_says_what_to_install(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ImportError, match="pip install pymilvus milvus-lite"):
        search_milvus(setup["db"], "items", setup["model"], setup["Q"], 5)


def test_cli_exports_and_searches_milvus(setup, tmp_path, capsys):
    engine, Q = setup["engine"], setup["Q"]
    engine.save(tmp_path / "index")
    np.save(tmp_path / "q.npy", Q)
    db = str(setup["dir"] / "cli.db")
    assert main(["export", "milvus", str(tmp_path / "index"), "--uri", db, "--collection", "docs",
                 "--batch-size", "500"]) == 0
    assert f"exported {N} codes to Milvus collection 'docs'" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "q.npy"), "--milvus-uri", db, "--collection", "docs",
                 "--top-k", "7", "-o", str(tmp_path / "r.npz")]) == 0
    with np.load(tmp_path / "r.npz") as r:
        m_ids, m_scores = r["ids"], r["scores"]
    e_ids, e_scores = engine.search(Q, 7)
    assert_same_topk(m_ids, m_scores, e_ids, e_scores)
    # a model file supplies the model as well as the index directory does
    setup["model"].save(tmp_path / "m.csae")
    assert main(["search", str(tmp_path / "m.csae"), str(tmp_path / "q.npy"), "--milvus-uri", db, "--collection",
                 "docs", "--top-k", "7", "-o", str(tmp_path / "r2.npz")]) == 0
    with np.load(tmp_path / "r2.npz") as r:
        np.testing.assert_array_equal(r["ids"], m_ids)
    capsys.readouterr()
    # errors are reported, not raised
    assert main(["export", "milvus", str(tmp_path / "index"), "--uri", db, "--collection", "docs"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "q.npy"), "--milvus-uri", db,
                 "-o", str(tmp_path / "r.npz")]) == 2
    assert "needs both --milvus-uri and --collection" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "q.npy"), "--milvus-uri", db, "--collection", "docs",
                 "--mode", "dense", "-o", str(tmp_path / "r.npz")]) == 2
    assert "sparse mode only" in capsys.readouterr().err
    ce.Engine(ce.CompresSAE(16, 64, 4)).build(setup["X"][:100]).save(tmp_path / "signed")
    assert main(["export", "milvus", str(tmp_path / "signed"), "--uri", db, "--collection", "s"]) == 2
    assert "csae train --variant csr" in capsys.readouterr().err
