"""Incremental updates (add, upsert, delete, compact), filters and sharded indexes."""
import threading

import numpy as np
import pytest
import torch

import csae_engine as ce
from conftest import unit


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ce.CompresSAE(d=32, h=256, k=8, seed=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = unit(rng, 1200, 32)
    ids = rng.permutation(10**6)[:1200].astype(np.int64) + 10**9
    return X, ids, unit(np.random.default_rng(1), 25, 32)


def build(model, X, **options):
    """An engine over compact codes without residual codes: an update then equals a fresh build exactly (a residual
    quantizer is trained per build; tests/test_residual.py covers updates with one)."""
    return ce.Engine(model).build(X, residual_bytes=0, **options)


def assert_same_search(a, b, Q, top_k=10, atol=0.0):
    for mode, candidates in (("sparse", None), ("dense", None), ("dense", "all")):
        ia, sa = a.search(Q, top_k, mode=mode, candidates=candidates)
        ib, sb = b.search(Q, top_k, mode=mode, candidates=candidates)
        np.testing.assert_array_equal(ia, ib, err_msg=mode)
        np.testing.assert_allclose(sa, sb, rtol=1e-6, atol=atol, err_msg=mode)  # summation order: an ulp


def test_added_items_are_searched_like_a_fresh_build(model, data):
    X, ids, Q = data
    engine = build(model, X[:800], ids=ids[:800])
    engine.add(X[800:1000], ids[800:1000]).add(X[1000:], ids[1000:])
    assert len(engine) == 1200 and len(engine.segments) == 2  # main + one delta, rebuilt by the second add
    assert_same_search(engine, build(model, X, ids=ids), Q)
    engine.compact()
    assert len(engine.segments) == 1
    assert_same_search(engine, build(model, X, ids=ids), Q)


def test_upsert_replaces_the_item(model, data):
    X, ids, Q = data
    engine = build(model, X[:600], ids=ids[:600])
    target = Q[0]
    engine.add(target[None], ids[[5]])  # id 5 now stands for the query itself
    assert len(engine) == 600
    top, scores = engine.search(target[None], 1)
    assert top[0, 0] == ids[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-3)
    old_top, _ = engine.search(X[5][None], 3, mode="dense", candidates="all")
    fresh = build(model, np.vstack([np.delete(X[:600], 5, 0), target[None]]),
                                   ids=np.r_[np.delete(ids[:600], 5), ids[5]])
    assert_same_search(engine, fresh, Q, atol=1e-3)  # a row encoded alone may round one quantised value apart
    assert ids[5] not in old_top[0] or engine.search(X[5][None], 3, mode="dense", candidates="all")[0][0, 0] != ids[5]


def test_deleted_items_are_never_returned(model, data):
    X, ids, Q = data
    engine = build(model, X, ids=ids)
    before, _ = engine.search(X[:50], 1)
    gone = before[:, 0]  # each of these was the best hit of a query
    engine.delete(gone)
    assert len(engine) == 1200 - len(np.unique(gone))
    for mode, candidates in (("sparse", None), ("dense", None), ("dense", "all")):
        found, _ = engine.search(X[:50], 20, mode=mode, candidates=candidates)
        assert not np.isin(found, gone).any()
    keep = ~np.isin(ids, gone)
    assert_same_search(engine, build(model, X[keep], ids=ids[keep]), Q)
    assert gone[0] not in engine and ids[keep][0] in engine
    with pytest.raises(KeyError, match="unknown id 7"):
        engine.delete([ids[keep][0], 7])
    assert ids[keep][0] in engine, "a failed delete changes nothing"
    with pytest.raises(KeyError):
        engine.delete(gone[:1])  # already deleted
    engine.compact()
    assert [seg.n for seg in engine.segments] == [keep.sum()] and engine.segments[0].live is None
    assert_same_search(engine, build(model, X[keep], ids=ids[keep]), Q)


def test_updates_survive_save_and_load(model, data, tmp_path):
    X, ids, Q = data
    engine = build(model, X[:900], ids=ids[:900])
    engine.add(X[900:], ids[900:]).delete(ids[100:150])
    engine.save(tmp_path / "ix")
    back = ce.Engine.load(tmp_path / "ix")
    assert len(back) == len(engine) == 1150
    assert_same_search(engine, back, Q)
    back.add(X[100:110], ids[100:110]).compact()  # a loaded, memory-mapped index keeps taking updates
    back.save(tmp_path / "ix")
    again = ce.Engine.load(tmp_path / "ix")
    assert len(again) == 1160 and len(again.segments) == 1
    assert_same_search(again, back, Q)


def exact_scores(engine, Q, item_ids, mode):
    """(nq, len(item_ids)) scores of the given items computed outside the scorer, from what the engine stores."""
    Q = (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)
    if mode == "dense":
        return Q @ engine.reconstruct(item_ids).T
    import scipy.sparse as sp
    parts = list(engine.iter_codes())
    row_of = {int(i): r for r, i in enumerate(np.concatenate([p[0] for p in parts]))}
    codes = sp.vstack([p[1] for p in parts]).tocsr()[[row_of[int(i)] for i in item_ids]]
    q_idx, q_val = engine.queries.codes(Q)
    rows = np.repeat(np.arange(len(Q)), q_idx.shape[1])
    queries = sp.csr_matrix((q_val.ravel(), (rows, q_idx.ravel())), shape=(len(Q), codes.shape[1]))
    return (queries @ codes.T).toarray()


def test_filters_apply_inside_the_scorer(model, data):
    X, ids, Q = data
    engine = build(model, X, ids=ids)
    allowed = ids[[3, 70, 400, 401, 999, 1100, 1199]]
    for mode, candidates in (("sparse", None), ("dense", None), ("dense", "all")):
        got, scores = engine.search(Q, 5, mode=mode, candidates=candidates, allow_ids=allowed)
        exact = exact_scores(engine, Q, allowed, mode)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(got, allowed[order])  # still 5 results though 99% of the items are filtered out
        np.testing.assert_allclose(scores, np.take_along_axis(exact, order, 1), atol=1e-5)
        padded, pad_scores = engine.search(Q, 9, mode=mode, candidates=candidates, allow_ids=allowed)
        assert (padded[:, 7:] == -1).all() and np.isneginf(pad_scores[:, 7:]).all()
        assert set(padded[0, :7]) == set(allowed)


def test_filter_as_a_boolean_mask_and_with_deletes(model, data):
    X, _, Q = data
    engine = build(model, X)  # ids are row numbers
    mask = np.zeros(1200, bool)
    mask[::10] = True
    engine.delete([0, 10])
    got, _ = engine.search(Q, 10, allow_ids=mask)
    assert (got % 10 == 0).all() and not np.isin(got, [0, 10]).any()
    with pytest.raises(ValueError, match="allow_ids must be integers"):
        engine.search(Q, 10, allow_ids=[0.5, 1.5])


def test_searches_during_updates_see_whole_states(model, data):
    X, ids, Q = data
    engine = build(model, X[:1000], ids=ids[:1000])
    stop, errors = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                found, scores = engine.search(Q, 10, mode="dense")
                assert (found >= 0).all() and (np.diff(scores, axis=1) <= 0).all()
            except Exception as e:  # noqa: BLE001 (the test reports any failure)
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(10):
        engine.add(X[1000 + 20 * i:1020 + 20 * i], ids[1000 + 20 * i:1020 + 20 * i])
        engine.delete(ids[10 * i:10 * i + 10])
        if i % 4 == 3:
            engine.compact()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    keep = np.r_[np.arange(100, 1200)]
    assert_same_search(engine, build(model, X[keep], ids=ids[keep]), Q)


def test_sharded_build_equals_one_segment(model, data, tmp_path):
    X, ids, Q = data
    whole = build(model, X, ids=ids)
    sharded = build(model, X, ids=ids, shard_size=500)
    assert [seg.n for seg in sharded.segments] == [500, 500, 200]
    assert_same_search(whole, sharded, Q)
    np.save(tmp_path / "items.npy", X)
    on_disk = build(model, tmp_path / "items.npy", shard_size=300, directory=tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir() if p.is_dir()) == [f"seg-0000{i}" for i in range(4)]
    assert isinstance(on_disk.segments[0].arrays["local_ids"], np.memmap)
    row_ids = build(model, X)
    assert_same_search(on_disk, row_ids, Q)
    assert_same_search(ce.Engine.load(tmp_path / "ix"), row_ids, Q)
    on_disk.delete([5, 650]).add(X[:2], [5000, 5001]).compact()
    # shards with deletes are rebuilt; the delta would overfill the last shard, so it becomes a shard of its own
    assert [seg.n for seg in on_disk.segments] == [299, 300, 299, 300, 2]
    on_disk.delete([5000]).add(X[2:3], [5002]).compact()
    assert [seg.n for seg in on_disk.segments] == [299, 300, 299, 300, 2]
    assert len(on_disk) == 1200 and 5000 not in on_disk and 5002 in on_disk


def test_saving_links_unchanged_shards_instead_of_copying(model, data, tmp_path):
    X, ids, Q = data
    engine = build(model, X, ids=ids, shard_size=400, directory=tmp_path / "ix")
    inode = (tmp_path / "ix" / "seg-00001" / "post_values.npy").stat().st_ino
    engine.delete(ids[:3])  # tombstones in shard 0 only: its arrays stay, a live mask is added
    engine.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "seg-00001" / "post_values.npy").stat().st_ino == inode
    assert_same_search(ce.Engine.load(tmp_path / "ix"), engine, Q)


def test_bad_updates_are_refused(model, data):
    X, ids, _ = data
    engine = build(model, X[:100], ids=ids[:100])
    with pytest.raises(ValueError, match="ids are required"):
        engine.add(X[100:110], None)
    with pytest.raises(ValueError, match="d=16 columns"):
        engine.add(np.ones((2, 16), np.float32), [1, 2])
    with pytest.raises(ValueError, match="appears more than once"):
        engine.add(X[100:102], [1, 1])
    with pytest.raises(ValueError, match="shard_size must be a positive int"):
        build(model, X, shard_size=0)
    with pytest.raises(RuntimeError, match="empty"):
        ce.Engine(model).add(X[:2], [1, 2])


@pytest.mark.parametrize("prune", [None, 0.5])
def test_compaction_carries_the_posting_entries_over(model, data, prune):
    """Compact codes index the encoder's codes, not the forward codes: compaction moves each live item's posting
    entries (pruned or not) into the new lists, so sparse mode answers exactly as before it."""
    X, ids, Q = data
    engine = build(model, X[:700], ids=ids[:700], prune=prune)
    assert engine.config["postings"] == "encoder"
    engine.add(X[700:900], ids[700:900]).delete(ids[[3, 750]])
    before = [engine.search(Q, 10, mode=mode) for mode in ("sparse", "dense")]
    postings = sum(seg.index.n_postings for seg in engine.segments)
    engine.compact()
    assert len(engine.segments) == 1 and engine.segments[0].index.n_postings <= postings
    for (ids_before, scores_before), mode in zip(before, ("sparse", "dense")):
        ids_after, scores_after = engine.search(Q, 10, mode=mode)
        np.testing.assert_array_equal(ids_after, ids_before, err_msg=mode)
        np.testing.assert_allclose(scores_after, scores_before, rtol=1e-6, err_msg=mode)
