"""The engine over compact codes (Engine.build(X, bytes_per_item=...)): dense mode equals decode-then-cosine,
updates, files and the two tiers (posting lists hold the strongest index_terms entries)."""
import json

import numpy as np
import pytest

import csae_engine as ce
from csae_engine.compact import CompactCodes
from conftest import unit
from test_engine import assert_same_topk, restricted_to


@pytest.fixture(scope="module")
def trained(wordnet):
    X = np.asarray(wordnet["docs"][:4000], np.float32)
    model = ce.train(X, h=512, k=8, steps=60, batch_size=512, progress=False)
    return model, X


def naive_cosines(model, codes, Q):
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    X_hat = model.decode(codes)
    return Qn @ (X_hat / np.linalg.norm(X_hat, axis=1, keepdims=True)).T


@pytest.mark.parametrize("index_coding", ["packed", "ef"])
@pytest.mark.parametrize("value_bits", [4, 8])
def test_dense_mode_over_compact_codes_equals_decode_then_cosine(trained, wordnet, value_bits, index_coding):
    model, X = trained
    Q = wordnet["queries"][:30].astype(np.float32)
    codes = model.encode(X, bytes_per_item=48, value_bits=value_bits, index_coding=index_coding)
    engine = ce.Engine.from_codes(codes, model)
    assert engine.config["forward"] == "packed" and engine.config["index_terms"] == model.k
    assert engine.config["index_coding"] == index_coding == engine.segments[0].index.index_coding
    assert engine.nbytes()["fwd_packed"] == codes.packed.nbytes, "the forward store is the compact codes"
    naive = naive_cosines(model, codes, Q)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 10, atol=2e-3)
    cand, _ = engine.search(Q, top_k=60)
    restricted = restricted_to(naive, cand)
    ids, scores = engine.search(Q, top_k=10, mode="dense", candidates=60)
    assert_same_topk(ids, scores, restricted, 10, atol=2e-3)


@pytest.mark.parametrize("index_coding", ["packed", "ef"])
def test_posting_lists_hold_the_strongest_index_terms(trained, index_coding):
    model, X = trained
    codes = model.encode(X[:500], bytes_per_item=48, index_coding=index_coding)
    engine = ce.Engine.from_codes(codes, model).build_codes(codes, index_terms=5)
    codes = codes.to_sparse()
    assert engine.segments[0].index.n_postings == 500 * 5
    for ids, block in engine.iter_codes(200):
        want = codes[ids].truncate(5)
        np.testing.assert_array_equal(np.sort(block.indices.reshape(len(ids), 5), 1),
                                      np.sort(want.indices.astype(np.int32), 1))
    with pytest.raises(ValueError, match="index_terms=99 exceeds"):
        ce.Engine(model).build_codes(codes, index_terms=99)


def test_built_posting_lists_hold_the_encoders_codes(trained):
    """Engine.build keeps the encoder's codes of index_terms entries in the posting lists, whatever the budget."""
    model, X = trained
    engine = ce.Engine(model).build(X[:500], bytes_per_item=8, residual_bytes=0, index_terms=6)
    assert engine.config["postings"] == "encoder" and engine.config["k"] < 6
    codes = model.encode(X[:500], 6, value_dtype=np.float32)
    for ids, block in engine.iter_codes(200):
        np.testing.assert_array_equal(np.sort(block.indices.reshape(len(ids), 6), 1),
                                      np.sort(codes.indices[ids].astype(np.int32), 1))
        unit = codes.values[ids] / np.linalg.norm(codes.values[ids], axis=1, keepdims=True)
        np.testing.assert_allclose(np.sort(block.data.reshape(len(ids), 6), 1), np.sort(unit, 1), atol=1e-3)
    with pytest.raises(ValueError, match="index_terms=600 exceeds"):
        ce.Engine(model).build(X[:50], index_terms=600)


@pytest.mark.parametrize("index_coding", ["packed", "ef"])
def test_compact_index_updates_save_and_load(trained, tmp_path, index_coding):
    model, X = trained
    engine = ce.Engine(model).build(X[:1000], bytes_per_item=40, index_coding=index_coding)
    engine.add(X[1000:1100], ids=np.arange(5000, 5100))
    engine.delete([3, 5001])
    Q = X[2000:2010]
    want = engine.search(Q, 10, mode="dense")
    engine.save(tmp_path / "index")
    back = ce.Engine.load(tmp_path / "index")
    got = back.search(Q, 10, mode="dense")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])
    assert back.config["forward"] == "packed" and len(back) == 1098
    assert back.config["index_coding"] == index_coding and back.config["k"] == engine.config["k"]
    assert all(seg.index.index_coding == index_coding for seg in back.segments), "add encodes with the same coding"
    back.compact()
    np.testing.assert_array_equal(back.search(Q, 10, mode="dense", candidates="all")[0],
                                  engine.search(Q, 10, mode="dense", candidates="all")[0])


def test_an_index_saved_before_index_codings_loads_as_fixed_width(trained, tmp_path):
    model, X = trained
    engine = ce.Engine(model).build_codes(model.encode(X[:300], bytes_per_item=40, index_coding="packed"))
    engine.save(tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["index_coding"]
    path.write_text(json.dumps({**manifest, "format_version": 4}))  # as written before index codings
    back = ce.Engine.load(tmp_path / "index")
    assert back.config["index_coding"] == "packed" and back.segments[0].index.index_coding == "packed"
    np.testing.assert_array_equal(back.search(X[:5], 5, mode="dense")[0], engine.search(X[:5], 5, mode="dense")[0])
    back.add(X[300:310], ids=np.arange(1000, 1010))
    assert back.segments[-1].index.index_coding == "packed"


def test_compact_codes_of_a_csr_model_are_refused_with_refit_and_indexed_without(trained):
    X = unit(np.random.default_rng(0), 300, 16)
    csr = ce.CSRAutoencoder(16, 64, 4)
    with pytest.raises(ValueError, match="signed codes"):
        csr.encode(X, bytes_per_item=32)
    codes = csr.encode(X, bytes_per_item=32, refit=False)
    assert isinstance(codes, CompactCodes)
    engine = ce.Engine.from_codes(codes, csr)
    naive = naive_cosines(csr, codes, X[:5])
    ids, scores = engine.search(X[:5], 5, mode="dense", candidates="all")
    assert_same_topk(ids, scores, naive, 5, atol=2e-3)
