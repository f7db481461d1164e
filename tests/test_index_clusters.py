"""Clustered segments and approximate sparse search (probe < 1): cpp/clusters.h, csae_engine/index/clusters.py."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import csae_engine as ce
from conftest import unit
from csae_engine import _core
from csae_engine.index import clusters as clusters_module
from csae_engine.index.clusters import cluster_codes


def random_codes(rng, n, h, k):
    idx = np.argsort(rng.random((n, h)), axis=1)[:, :k].astype(np.uint32)
    val = rng.standard_normal((n, k)).astype(np.float32)
    return idx, val / np.linalg.norm(val, axis=1, keepdims=True)


def dense_codes(idx, val, h):
    out = np.zeros((len(idx), h), np.float64)
    np.put_along_axis(out, idx.astype(np.int64), val, axis=1)
    return out


def dense_lists(lists, n_clusters, h):
    """Latent-major centroid lists (offsets, clusters, weights) as an (n_clusters, h) matrix."""
    offsets, members, weights = lists
    out = np.zeros((n_clusters, h), np.float64)
    out[members, np.repeat(np.arange(h), np.diff(offsets))] = weights
    return out


@pytest.fixture(scope="module")
def clustered_segment():
    """A segment of random codes in cluster order, with 8-bit windows so that clusters straddle windows."""
    rng = np.random.default_rng(3)
    n, h, k = 3000, 64, 6
    idx, val = random_codes(rng, n, h, k)
    clusters = cluster_codes(idx, val, h, 37)
    idx, val = idx[clusters.order], val[clusters.order].astype(np.float16)
    off, local, post = _core.build_windowed(idx, val, None, h, 8, -1)
    seg = _core.SegmentIndex(off, local, post, idx.astype(np.uint16), val, n, h, 8)
    q_idx, q_val = random_codes(rng, 40, h, k)
    return seg.with_clusters(clusters.cluster_rows, *clusters.lists), clusters, q_idx.astype(np.int64), q_val


@pytest.mark.parametrize("threads", [1, 3])
def test_visiting_every_cluster_equals_exact_search(clustered_segment, threads):
    seg, _, q_idx, q_val = clustered_segment
    exact = seg.search(q_idx, q_val, 10, threads)
    every = seg.search(q_idx, q_val, 10, threads, None, 0.01, seg.n)  # min_items = n: all clusters, via the pieces
    np.testing.assert_array_equal(every[0], exact[0])
    np.testing.assert_allclose(every[1], exact[1], rtol=1e-6)  # a run cut into pieces: another FMA tail, an ulp
    mask = (np.random.default_rng(0).random(seg.n) < 0.2).astype(np.uint8)
    exact = seg.search(q_idx, q_val, 10, threads, mask)
    every = seg.search(q_idx, q_val, 10, threads, mask, 0.5, seg.n)
    np.testing.assert_array_equal(every[0], exact[0])
    assert mask[every[0]].all()


def test_a_small_probe_visits_the_best_clusters_only(clustered_segment):
    seg, clusters, q_idx, q_val = clustered_segment
    rows, _ = seg.search(q_idx, q_val, 5, 1, None, 0.05, 0)
    cluster_of = np.searchsorted(clusters.cluster_rows, rows, side="right") - 1
    assert all(len(np.unique(c)) <= 0.05 * len(clusters.cluster_rows) + 2 for c in cluster_of)
    # the visited rows cover at least the budget: a query returns top_k real rows
    assert (rows >= 0).all()


@pytest.mark.parametrize("min_items", [1, 100, 400])
def test_probe_scores_exactly_the_best_clusters_until_the_budget(clustered_segment, min_items):
    seg, clusters, q_idx, q_val = clustered_segment
    offsets, members, weights = clusters.lists
    h, C = len(offsets) - 1, len(clusters.cluster_rows) - 1
    latent_of = np.repeat(np.arange(h), np.diff(offsets))
    sizes = np.diff(clusters.cluster_rows)
    for q in range(len(q_idx)):
        dense_q = np.zeros(h, np.float32)
        dense_q[q_idx[q]] = q_val[q]
        scores = np.bincount(members, weights=weights * dense_q[latent_of], minlength=C).astype(np.float32)
        order = np.lexsort((np.arange(C), -scores))  # best first, ties: the smaller cluster
        chosen = order[: np.searchsorted(np.cumsum(sizes[order]), min_items) + 1]
        allowed = np.zeros(seg.n, np.uint8)
        for c in chosen:
            allowed[clusters.cluster_rows[c]:clusters.cluster_rows[c + 1]] = 1
        top = min(10, int(allowed.sum()))
        expected = seg.search(q_idx[q:q + 1], q_val[q:q + 1], top, 1, allowed)[0]
        probed = seg.search(q_idx[q:q + 1], q_val[q:q + 1], top, 1, None, 1e-9, min_items)[0]
        np.testing.assert_array_equal(probed, expected)


def test_clusters_of_equal_score_are_visited_smallest_first(clustered_segment):
    seg, clusters, q_idx, q_val = clustered_segment
    C = len(clusters.cluster_rows) - 1
    lists = (np.arange(0, C * (seg.h + 1), C, dtype=np.int64)[: seg.h + 1],  # every centroid alike: every score ties
             np.tile(np.arange(C, dtype=np.uint32), seg.h), np.ones(C * seg.h, np.float32))
    tied = seg.with_clusters(clusters.cluster_rows, *lists)
    rows = tied.search(q_idx, q_val, 3, 1, None, 1e-9, 1)[0]
    first = clusters.cluster_rows[np.flatnonzero(np.diff(clusters.cluster_rows))[0] + 1]
    assert (rows < first).all(), "ties must go to the smallest non-empty cluster first"


def test_bad_cluster_arrays_and_knobs_are_refused(clustered_segment):
    seg, clusters, q_idx, q_val = clustered_segment
    bad_rows = clusters.cluster_rows.copy()
    bad_rows[-1] -= 1
    with pytest.raises(ValueError, match="cluster_rows must run from 0 to n"):
        seg.with_clusters(bad_rows, *clusters.lists)
    offsets, members, weights = clusters.lists
    with pytest.raises(ValueError, match="out of range"):
        seg.with_clusters(clusters.cluster_rows, offsets, members + 1000, weights)
    with pytest.raises(ValueError, match="not finite"):
        seg.with_clusters(clusters.cluster_rows, offsets, members, np.full_like(weights, np.nan))
    with pytest.raises(ValueError, match="probe must be in"):
        seg.search(q_idx, q_val, 5, 1, None, 1.5, 0)
    plain = _core.SegmentIndex(*[np.asarray(a) for a in (np.zeros(seg.n_windows * seg.h + 1, np.int64),
                                                         np.zeros(0, np.uint16), np.zeros(0, np.float16))],
                               np.zeros((seg.n, 1), np.uint16), np.ones((seg.n, 1), np.float16), seg.n, seg.h, 8)
    with pytest.raises(ValueError, match="clustered segment"):
        plain.search(q_idx, q_val, 5, 1, None, 0.5, 0)


def test_kmeans_puts_items_of_one_mixture_component_together():
    rng = np.random.default_rng(0)
    h, k, parts = 256, 8, 8
    latents = [rng.choice(h, 2 * k, replace=False) for _ in range(parts)]  # each component draws from its own 16
    which = rng.integers(0, parts, 2000)
    idx = np.stack([rng.choice(latents[c], k, replace=False) for c in which]).astype(np.uint32)
    val = rng.random((2000, k)).astype(np.float32) + 0.5
    clusters = cluster_codes(idx, val, h, parts)
    cluster_of = np.empty(2000, np.int64)
    cluster_of[clusters.order] = np.searchsorted(clusters.cluster_rows, np.arange(2000), side="right") - 1
    purity = sum(np.bincount(which[cluster_of == c]).max() for c in np.unique(cluster_of)) / 2000
    assert purity > 0.9  # observed 1.0


def test_grouped_assignment_takes_the_best_cluster_of_the_best_groups():
    rng = np.random.default_rng(5)
    h, k, C, G = 96, 6, 60, 7
    idx, val = random_codes(rng, 500, h, k)
    cent_idx, cent_val = random_codes(rng, C, h, 12)
    group_first = np.concatenate([[0], np.sort(rng.choice(np.arange(1, C), G - 1, replace=False)), [C]])
    lists = clusters_module.centroid_lists(sp.csr_matrix(dense_codes(cent_idx, cent_val, h)), h)
    group_idx, group_val = random_codes(rng, G, h, 20)
    group_lists = clusters_module.centroid_lists(sp.csr_matrix(dense_codes(group_idx, group_val, h)), h)
    codes = dense_codes(idx, val, h)
    scores, group_scores = codes @ dense_lists(lists, C, h).T, codes @ dense_lists(group_lists, G, h).T
    exact = _core.assign_clusters(idx, val, *lists, C)
    every = _core.assign_clusters_grouped(idx, val, *group_lists, *lists, group_first.astype(np.int64), G)
    np.testing.assert_array_equal(every, exact)  # probing every group: the exact assignment
    for probe in (1, 3):
        got = _core.assign_clusters_grouped(idx, val, *group_lists, *lists, group_first.astype(np.int64), probe)
        for i in range(len(idx)):
            best_groups = np.lexsort((np.arange(G), -group_scores[i].astype(np.float32)))[:probe]
            allowed = np.concatenate([np.arange(group_first[g], group_first[g + 1]) for g in best_groups])
            assert got[i] in allowed
            np.testing.assert_allclose(scores[i, got[i]], scores[i, allowed].max(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one cluster"):
        _core.assign_clusters_grouped(idx, val, *group_lists, *lists, np.array([0, 5, 5, C], np.int64), 1)
    with pytest.raises(ValueError, match="must increase"):
        offsets, members, weights = lists
        _core.assign_clusters_grouped(idx, val, *group_lists, offsets, members[::-1].copy(), weights,
                                      group_first.astype(np.int64), 1)


def test_many_clusters_are_assigned_through_groups_nearly_as_well(monkeypatch):
    rng = np.random.default_rng(6)
    h, k, n = 128, 8, 4000
    idx, val = random_codes(rng, n, h, k)
    flat = cluster_codes(idx, val, h, 200)
    monkeypatch.setattr(clusters_module, "FLAT_CLUSTERS", 100)  # 200 clusters: 14 groups, each code probes 16 groups
    grouped = cluster_codes(idx, val, h, 200)
    monkeypatch.setattr(clusters_module, "PROBE_GROUPS", 2)
    narrow = cluster_codes(idx, val, h, 200)
    assert grouped.n_clusters == flat.n_clusters == 200
    np.testing.assert_array_equal(grouped.order, flat.order)  # 16 groups of 14: every centroid, the same k-means
    unit = dense_codes(idx, val, h)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)

    def mean_best_score(clusters):  # how close each code is to its own centroid (as routing scores it)
        cent = dense_lists(clusters.lists, clusters.n_clusters, h)
        own = np.repeat(np.arange(clusters.n_clusters), np.diff(clusters.cluster_rows))
        return float(np.mean(np.sum(unit[clusters.order] * cent[own], axis=1)))

    assert mean_best_score(narrow) > 0.9 * mean_best_score(flat)  # observed 0.97


# ---- through the engine ----

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ce.CompresSAE(d=32, h=256, k=8, seed=1)


@pytest.fixture(scope="module")
def data():
    """Items near 40 centres, so that clusters mean something; ids not in row order."""
    rng = np.random.default_rng(0)
    centres = unit(rng, 40, 32)
    X = centres[rng.integers(0, 40, 2000)] + 0.25 * unit(rng, 2000, 32)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ids = rng.permutation(10**6)[:2000].astype(np.int64) + 10**9
    Q = centres[rng.integers(0, 40, 50)] + 0.1 * unit(rng, 50, 32)
    return X, ids, Q.astype(np.float32)


def build(model, X, ids, **options):
    return ce.Engine(model).build(X, ids=ids, residual_bytes=0, **options)


@pytest.fixture(scope="module")
def clustered(model, data):
    X, ids, _ = data
    return build(model, X, ids, cluster_size=50)


def test_a_clustered_index_searches_exactly_like_a_plain_one(model, data, clustered):
    X, ids, Q = data
    plain = build(model, X, ids)
    assert clustered.segments[0].clustered and not plain.segments[0].clustered
    for mode in ("sparse", "dense"):
        a, sa = plain.search(Q, 10, mode)
        for probe in (None, 1.0):
            b, sb = clustered.search(Q, 10, mode, probe=probe)
            np.testing.assert_array_equal(a, b, err_msg=mode)
            np.testing.assert_allclose(sa, sb, rtol=1e-6, atol=1e-7)


def test_recall_of_the_approximate_mode_at_a_fifth_of_the_items(data, clustered):
    Q, engine = data[2], clustered
    exact, _ = engine.search(Q, 10)
    approx, _ = engine.search(Q, 10, probe=0.2)
    recall = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.8  # observed 0.98
    dense_exact, _ = engine.search(Q, 10, "dense", candidates=200)
    dense_approx, _ = engine.search(Q, 10, "dense", candidates=200, probe=0.2)
    assert np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(dense_approx, dense_exact)]) > 0.8


def test_updates_filters_and_shards_with_probe(model, data):
    X, ids, Q = data
    engine = build(model, X[:1700], ids[:1700], cluster_size=50, shard_size=600)
    assert len(engine.segments) == 3 and all(seg.clustered for seg in engine.segments)
    engine.add(X[1700:], ids[1700:])  # the delta segment: searched exactly
    assert not engine.segments[-1].clustered
    gone = ids[::7]
    engine.delete(gone)
    top, _ = engine.search(Q, 10, probe=0.1)
    assert not np.isin(top, gone).any() and (top >= 0).all()
    np.testing.assert_array_equal(engine.search(Q, 10, probe=1.0)[0], engine.search(Q, 10)[0])
    allow = ids[np.random.default_rng(1).choice(2000, 25, replace=False)]  # a selective filter: 25 items
    top, _ = engine.search(Q, 10, probe=0.05, allow_ids=allow)
    live_allowed = np.setdiff1d(allow, gone)
    assert np.isin(top, live_allowed).all() and (top >= 0).all()  # the budget grows until enough items pass
    engine.compact()
    assert all(seg.clustered for seg in engine.segments) and len(engine) == 2000 - len(gone)
    fresh = build(model, X[np.isin(ids, gone, invert=True)], ids[np.isin(ids, gone, invert=True)])
    np.testing.assert_array_equal(engine.search(Q, 10)[0], fresh.search(Q, 10)[0])


def test_saved_clustered_index_loads_back_and_searches_identically(data, clustered, tmp_path):
    Q, engine = data[2], clustered
    engine.save(tmp_path / "ix")
    loaded = ce.Engine.load(tmp_path / "ix")
    assert loaded.config["cluster_size"] == 50 and loaded.segments[0].clustered
    for probe in (0.1, 1.0):
        for mode in ("sparse", "dense"):
            a, sa = engine.search(Q, 10, mode, probe=probe)
            b, sb = loaded.search(Q, 10, mode, probe=probe)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("probe, error, match", [
    (0, ValueError, "probe must be in"), (1.5, ValueError, "probe must be in"),
    ("half", TypeError, "probe must be a number"), (True, TypeError, "probe must be a number")])
def test_invalid_probe_is_refused(data, clustered, probe, error, match):
    with pytest.raises(error, match=match):
        clustered.search(data[2], 10, probe=probe)


def test_probe_needs_a_clustered_index_and_a_sparse_stage(model, data, clustered):
    X, ids, Q = data
    with pytest.raises(ValueError, match="cluster_size"):
        build(model, X[:300], ids[:300]).search(Q, 10, probe=0.5)
    with pytest.raises(ValueError, match="cluster_size"):
        build(model, X[:300], ids[:300], cluster_size=0)
    with pytest.raises(ValueError, match="candidates"):
        clustered.search(Q, 10, "dense", candidates="all", probe=0.5)


def test_build_codes_clusters_its_shards_like_build(model, data):
    X, ids, Q = data
    engine = ce.Engine(model).build_codes(model.encode(X), ids, cluster_size=50, shard_size=1200)
    assert [seg.clustered for seg in engine.segments] == [True, True]
    assert engine.config["cluster_size"] == 50
    np.testing.assert_array_equal(engine.search(Q, 10, probe=1.0)[0], engine.search(Q, 10)[0])
    plain = ce.Engine(model).build_codes(model.encode(X), ids, shard_size=1200)
    np.testing.assert_array_equal(plain.search(Q, 10)[0], engine.search(Q, 10)[0])
    approx = engine.search(Q, 10, probe=0.2)[0]
    assert np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approx, plain.search(Q, 10)[0])]) > 0.8
