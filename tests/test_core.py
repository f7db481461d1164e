"""csae_engine._core on its own: SegmentIndex against numpy/scipy, its checks, the stub, and the C++ unit tests."""
import ast
import gc
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from csae_engine import _core

ROOT = Path(__file__).resolve().parents[1]


def random_codes(rng, n, k, h, value_dtype):
    """(n, k) codes with distinct latents per row from 0..h-2: latent h-1 is used by no item."""
    idx = np.argsort(rng.random((n, h - 1)), axis=1)[:, :k].astype(np.uint16)
    val = rng.standard_normal((n, k)).astype(value_dtype)
    return idx, val


def dense(idx, val, h):
    """The (n, h) float32 matrix of codes."""
    n, k = idx.shape
    return sp.csr_matrix((val.astype(np.float32).ravel(), idx.ravel().astype(np.int64), np.arange(0, n * k + 1, k)),
                         shape=(n, h)).toarray()


def segment_arrays(idx, val, h, window_bits):
    off, lid, pv = _core.build_windowed(idx, val, None, h, window_bits)
    return dict(offsets=off, local_ids=lid, post_values=pv, fwd_indices=idx, fwd_values=val, n=len(idx), h=h,
                window_bits=window_bits)


def assert_topk(ids, scores, ref, top_k, allowed=None, atol=1e-5):
    """ids/scores are the top_k of ref (nq, n) over the allowed columns, up to ties; -1 / -inf pad the rest."""
    if allowed is not None:
        ref = np.where(np.asarray(allowed, bool)[None], ref, -np.inf)
    ref_top = np.full((len(ref), top_k), -np.inf)
    ref_top[:, :min(top_k, ref.shape[1])] = -np.sort(-ref, axis=1)[:, :top_k]
    found = np.isfinite(ref_top)
    np.testing.assert_allclose(scores[found], ref_top[found], atol=atol, rtol=1e-5)
    assert (ids[~found] == -1).all() and np.isneginf(scores[~found]).all()
    np.testing.assert_allclose(np.take_along_axis(ref, np.where(found, ids, 0), 1)[found], scores[found],
                               atol=atol, rtol=1e-5)
    assert all(len(set(row[ok])) == ok.sum() for row, ok in zip(ids, found))
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "best first"


CASES = [(2, np.float32), (4, np.float16), (16, np.float32), (16, np.float16)]


@pytest.fixture(scope="module", params=CASES, ids=[f"bits{b}-{np.dtype(t).name}" for b, t in CASES])
def seg(request):
    window_bits, value_dtype = request.param
    rng = np.random.default_rng(window_bits)
    n, k, h = 1001, 5, 40  # 1001: the last window is partial
    idx, val = random_codes(rng, n, k, h, value_dtype)
    a = segment_arrays(idx, val, h, window_bits)
    return a, _core.SegmentIndex(**a), dense(idx, val, h)


def queries(rng, h, nq=6, q=5):
    q_idx = rng.choice(h, (nq, q)).astype(np.int64)
    q_idx[:, 0] = h - 1  # the latent no item uses
    return q_idx, rng.standard_normal((nq, q)).astype(np.float32)


def query_matrix(q_idx, q_val, h):
    nq, q = q_idx.shape
    return sp.csr_matrix((q_val.ravel(), q_idx.ravel(), np.arange(0, nq * q + 1, q)), shape=(nq, h))


def test_properties(seg):
    a, s, _ = seg
    windows = -(-a["n"] // (1 << a["window_bits"]))
    assert (s.n, s.h, s.window_bits, s.n_windows) == (a["n"], a["h"], a["window_bits"], windows)
    assert s.forward_width == a["fwd_indices"].shape[1] and s.n_postings == len(a["local_ids"]) == a["offsets"][-1]


@pytest.mark.parametrize("top_k", [1, 10, 1001, 1200])
def test_search_equals_scipy(seg, top_k):
    a, s, D = seg
    q_idx, q_val = queries(np.random.default_rng(top_k), a["h"])
    ids, scores = s.search(q_idx, q_val, top_k, num_threads=2)
    assert ids.shape == scores.shape == (len(q_idx), top_k) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert_topk(ids, scores, query_matrix(q_idx, q_val, a["h"]) @ D.T, top_k)


def test_one_query_split_over_threads_equals_one_thread(seg):
    a, s, _ = seg
    q_idx, q_val = queries(np.random.default_rng(1), a["h"], nq=1)  # one query over 4 threads: split windows
    allowed = np.random.default_rng(2).random(a["n"]) < 0.5
    one, four = s.search(q_idx, q_val, 7, 1, allowed), s.search(q_idx, q_val, 7, 4, allowed)
    np.testing.assert_array_equal(one[0], four[0])
    np.testing.assert_array_equal(one[1], four[1])


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_search_honours_allowed(seg, dtype):
    a, s, D = seg
    rng = np.random.default_rng(3)
    q_idx, q_val = queries(rng, a["h"])
    ref = query_matrix(q_idx, q_val, a["h"]) @ D.T
    allowed = (rng.random(a["n"]) < 0.3).astype(dtype)
    ids, scores = s.search(q_idx, q_val, 20, allowed=allowed)
    assert allowed[ids].all()
    assert_topk(ids, scores, ref, 20, allowed)
    few = np.zeros(a["n"], dtype)
    few[[0, 500, a["n"] - 1]] = 1  # fewer allowed than top_k: padded with -1
    ids, scores = s.search(q_idx, q_val, 10, allowed=few)
    assert_topk(ids, scores, ref, 10, few)
    assert (ids[:, 3:] == -1).all() and set(ids[0, :3]) == {0, 500, a["n"] - 1}


def test_rerank_and_scan_equal_numpy(seg):
    a, s, D = seg
    rng = np.random.default_rng(4)
    P = rng.standard_normal((3, a["h"])).astype(np.float32)
    full = P @ D.T
    ids, scores = s.scan(P, 15, num_threads=2)
    assert_topk(ids, scores, full, 15)
    allowed = (rng.random(a["n"]) < 0.2).astype(np.uint8)
    assert_topk(*s.scan(P, 15, allowed=allowed), full, 15, allowed)

    cand = rng.choice(a["n"], (3, 40), replace=False).astype(np.int64)
    cand[:, -5:] = -1  # no candidate
    ids, scores = s.rerank(P, cand, 12)
    mask = np.zeros_like(full, bool)
    np.put_along_axis(mask, np.where(cand >= 0, cand, 0), cand >= 0, 1)
    assert all(set(row) <= set(c) for row, c in zip(ids, cand))
    assert_topk(ids, scores, np.where(mask, full, -np.inf), 12)



def index_of(idx, val, h, window_bits):
    """A SegmentIndex whose posting lists and forward codes are the codes (idx, val)."""
    off, lid, pv = _core.build_windowed(idx, val, None, h, window_bits)
    return _core.SegmentIndex(off, lid, pv, idx, val, len(idx), h, window_bits)


def test_negative_overlaps_rank_below_unrelated_items():
    # item 0 shares latent 1 with the query, with opposite sign; items 1..3 share nothing (score 0)
    idx = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.uint16)
    val = np.array([[-1, 0], [1, 0], [1, 0], [1, 0]], np.float32) + np.float32(1e-3)
    ids, scores = index_of(idx, val, 10, 16).search(np.array([[1]]), np.array([[1.0]], np.float32), 4)
    assert ids[0].tolist() == [1, 2, 3, 0]
    assert scores[0, -1] < 0 and (scores[0, :3] == 0).all()


def test_many_windows_and_split_queries_agree():
    rng = np.random.default_rng(1)
    n, k, h = 140_000, 4, 64  # three windows of 65,536
    idx = np.sort(rng.choice(h, (n, k)), 1).astype(np.uint16)
    val = rng.standard_normal((n, k)).astype(np.float32)
    index = index_of(idx, val, h, 16)
    q_idx = rng.choice(h, (2, 3)).astype(np.int64)
    q_val = rng.standard_normal((2, 3)).astype(np.float32)
    serial = index.search(q_idx, q_val, 15, 1)
    split = index.search(q_idx, q_val, 15, 8)
    np.testing.assert_array_equal(serial[0], split[0])
    D = sp.csr_matrix((val.reshape(-1), idx.reshape(-1).astype(np.int64), np.arange(0, n * k + 1, k)), shape=(n, h))
    Qm = sp.csr_matrix((q_val.reshape(-1), q_idx.reshape(-1), [0, 3, 6]), shape=(2, h))
    assert_topk(serial[0], serial[1], (Qm @ D.T).toarray(), 15)
    assert serial[0].max() > 2 * 65536, "results must come from the last window too"


@pytest.mark.parametrize("window_bits", [1, 3, 7])
def test_small_windows_equal_scipy(window_bits):
    # many windows, lists that skip some of them, and a latent no item uses
    rng = np.random.default_rng(window_bits)
    n, k, h = 1000, 3, 40
    idx = np.sort(rng.choice(h - 1, (n, k)), 1).astype(np.uint16)
    val = rng.standard_normal((n, k)).astype(np.float16)
    off, lid, pv = _core.build_windowed(idx, val, None, h, window_bits)
    assert len(off) == ((n + (1 << window_bits) - 1) >> window_bits) * h + 1 and (np.diff(off) >= 0).all()
    q_idx = np.concatenate([rng.choice(h - 1, (5, 4)), np.full((5, 1), h - 1)], 1)
    q_val = rng.standard_normal((5, 5)).astype(np.float32)
    ids, scores = index_of(idx, val, h, window_bits).search(q_idx, q_val, 12, 1)
    D = sp.csr_matrix((val.astype(np.float32).reshape(-1), idx.reshape(-1).astype(np.int64),
                       np.arange(0, n * k + 1, k)), shape=(n, h))
    Qm = sp.csr_matrix((q_val.reshape(-1), q_idx.reshape(-1), np.arange(0, 26, 5)), shape=(5, h))
    assert_topk(ids, scores, (Qm @ D.T).toarray(), 12)


def test_window_postings_reassemble_the_codes(seg):
    a, s, D = seg
    rows, lats, vals, total = [], [], [], 0
    for w in range(s.n_windows):
        r, lat, v = s.window_postings(w)
        assert r.dtype == lat.dtype == np.int32 and v.dtype == np.float32
        assert (np.diff(lat) >= 0).all(), "latent order"
        assert r.max() < min(1 << s.window_bits, s.n - (w << s.window_bits))
        rows.append(r + (w << s.window_bits))
        lats.append(lat)
        vals.append(v)
        total += len(r)
    assert total == s.n_postings
    M = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(lats))), shape=(s.n, s.h))
    np.testing.assert_array_equal(M.toarray(), D)  # float16 -> float32 is exact


def test_window_postings_of_pruned_codes():
    rng = np.random.default_rng(5)
    idx, val = random_codes(rng, 300, 4, 30, np.float32)
    keep = (rng.random(idx.shape) < 0.6).astype(np.uint8)
    off, lid, pv = _core.build_windowed(idx, val, keep, 30, 3)
    s = _core.SegmentIndex(off, lid, pv, idx, val, 300, 30, 3)
    parts = [s.window_postings(w) for w in range(s.n_windows)]
    M = sp.csr_matrix((np.concatenate([p[2] for p in parts]),
                       (np.concatenate([p[0] + (w << 3) for w, p in enumerate(parts)]),
                        np.concatenate([p[1] for p in parts]))), shape=(300, 30))
    np.testing.assert_array_equal(M.toarray(), dense(idx, np.where(keep, val, 0), 30))


def test_empty_segment():
    idx, val = np.zeros((0, 4), np.uint16), np.zeros((0, 4), np.float16)
    s = _core.SegmentIndex(**segment_arrays(idx, val, 8, 16))
    assert (s.n, s.n_windows, s.n_postings) == (0, 0, 0)
    ids, scores = s.search(np.array([[1, 2]]), np.ones((1, 2), np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    assert (s.scan(np.ones((1, 8), np.float32), 2)[0] == -1).all()


def test_memmapped_read_only_arrays_are_held_not_copied(tmp_path):
    rng = np.random.default_rng(6)
    idx, val = random_codes(rng, 500, 4, 30, np.float16)
    a = segment_arrays(idx, val, 30, 5)
    for name in ("offsets", "local_ids", "post_values", "fwd_indices", "fwd_values"):
        np.save(tmp_path / f"{name}.npy", a[name])
        a[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
        assert isinstance(a[name], np.memmap) and not a[name].flags.writeable
    names = ("offsets", "local_ids", "post_values", "fwd_indices", "fwd_values")
    before = {name: sys.getrefcount(a[name]) for name in names}
    s = _core.SegmentIndex(**a)
    after = {name: sys.getrefcount(a[name]) for name in names}  # not inside assert: its rewriting holds references
    assert after == {name: count + 1 for name, count in before.items()}, "arrays must be held as given, not copied"
    q_idx, q_val = queries(rng, 30)
    want = s.search(q_idx, q_val, 9)
    in_memory = _core.SegmentIndex(**{name: np.array(v) if isinstance(v, np.ndarray) else v for name, v in a.items()})
    np.testing.assert_array_equal(in_memory.search(q_idx, q_val, 9)[0], want[0])
    del a, in_memory
    gc.collect()
    got = s.search(q_idx, q_val, 9)  # the segment keeps its arrays alive
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.fixture(scope="module")
def good():
    rng = np.random.default_rng(7)
    idx, val = random_codes(rng, 1000, 4, 40, np.float32)
    return segment_arrays(idx, val, 40, 4)  # 63 windows, the last of 8 items


def _with(good, **changes):
    return {**good, **changes}


def _decreasing(off):
    off = off.copy()
    off[1] = off[-1] + 1
    return off


def _outside_window(lid):
    lid = lid.copy()
    lid[0] = 16
    return lid


BAD_SEGMENTS = [
    ("offsets has dtype int32, expected int64", lambda g: _with(g, offsets=g["offsets"].astype(np.int32))),
    ("offsets must be 1-D", lambda g: _with(g, offsets=g["offsets"][None])),
    ("offsets has 2520 entries, expected n_windows \\* h \\+ 1 = 2521", lambda g: _with(g, offsets=g["offsets"][:-1])),
    ("offsets has .* entries", lambda g: _with(g, window_bits=5)),
    ("offsets has .* entries", lambda g: _with(g, n=1030)),
    (r"offsets\[0\] must be 0, got 1", lambda g: _with(g, offsets=g["offsets"] + np.int64(1) * (np.arange(2521) == 0))),
    ("offsets must be non-decreasing", lambda g: _with(g, offsets=_decreasing(g["offsets"]))),
    ("offsets must be C-contiguous", lambda g: _with(g, offsets=np.repeat(g["offsets"], 2)[::2])),
    ("disagree with offsets: offsets\\[-1\\] = 4000, local_ids has 3999",
     lambda g: _with(g, local_ids=g["local_ids"][:-1], post_values=g["post_values"][:-1].copy())),
    ("local_ids has dtype int32, expected uint16", lambda g: _with(g, local_ids=g["local_ids"].astype(np.int32))),
    ("local_ids has dtype float16, expected uint16", lambda g: _with(g, local_ids=g["local_ids"].view(np.float16))),
    (r"local_ids\[0\] = 16 is outside window", lambda g: _with(g, local_ids=_outside_window(g["local_ids"]))),
    ("post_values must be float16 or float32, got float64",
     lambda g: _with(g, post_values=g["post_values"].astype(np.float64))),
    ("fwd_indices must be 2-D", lambda g: _with(g, fwd_indices=g["fwd_indices"].ravel())),
    ("fwd_indices must be uint8, uint16 or uint32, got int64",
     lambda g: _with(g, fwd_indices=g["fwd_indices"].astype(np.int64))),
    ("fwd_values must be float16 or float32, got float64",
     lambda g: _with(g, fwd_values=g["fwd_values"].astype(np.float64))),
    (r"fwd_indices and fwd_values must have the same shape, got \(1000, 4\) and \(1000, 3\)",
     lambda g: _with(g, fwd_values=g["fwd_values"][:, :3].copy())),
    ("fwd_values must be C-contiguous", lambda g: _with(g, fwd_values=np.asfortranarray(g["fwd_values"]))),
    ("fwd_indices has 999 rows, expected n = 1000",
     lambda g: _with(g, fwd_indices=g["fwd_indices"][:-1], fwd_values=g["fwd_values"][:-1])),
    ("window_bits must be in 1..16, got 0", lambda g: _with(g, window_bits=0)),
    ("window_bits must be in 1..16, got 17", lambda g: _with(g, window_bits=17)),
    ("n must be >= 0, got -1", lambda g: _with(g, n=-1)),
    ("h must be positive, got 0", lambda g: _with(g, h=0)),
]


@pytest.mark.parametrize("message, make", BAD_SEGMENTS, ids=[m for m, _ in BAD_SEGMENTS])
def test_bad_segment_arrays_raise(good, message, make):
    _core.SegmentIndex(**good)  # the unchanged arrays are fine
    with pytest.raises(ValueError, match=message):
        _core.SegmentIndex(**make(good))


def test_bad_query_inputs_raise(good):
    s = _core.SegmentIndex(**good)
    q_idx, q_val = np.array([[1, 2]]), np.ones((1, 2), np.float32)
    P = np.ones((1, 40), np.float32)
    bad = [
        ("query latent 40 out of range for h=40", lambda: s.search([[1, 40]], q_val, 3)),
        ("query latent -1 out of range", lambda: s.search([[-1, 2]], q_val, 3)),
        ("query indices and values must have the same shape", lambda: s.search(q_idx, np.ones((1, 3)), 3)),
        ("query indices must be 2-D", lambda: s.search([1, 2], [1.0, 1.0], 3)),
        ("top_k must be positive", lambda: s.search(q_idx, q_val, 0)),
        ("top_k must be positive", lambda: s.rerank(P, [[1, 2]], -1)),
        ("top_k must be positive", lambda: s.scan(P, 0)),
        (r"allowed must have one entry per item \(1000\)", lambda: s.search(q_idx, q_val, 3, allowed=np.ones(999, bool))),
        ("allowed must be a uint8 or bool array", lambda: s.scan(P, 3, allowed=np.ones(1000, np.int64))),
        ("projections have 38 columns, the forward codes need 39", lambda: s.scan(P[:, :38], 3)),
        ("projections must be 2-D", lambda: s.rerank(P[0], [[1]], 3)),
        ("candidate 1000 out of range for n=1000", lambda: s.rerank(P, [[1, 1000]], 3)),
        ("candidates and projections disagree on nq", lambda: s.rerank(P, [[1], [2]], 3)),
        ("window -1 out of range: the segment has 63 windows", lambda: s.window_postings(-1)),
        ("window 63 out of range", lambda: s.window_postings(63)),
    ]
    for message, call in bad:
        with pytest.raises(ValueError, match=message):
            call()
    assert s.search(q_idx, q_val, 3)[0].shape == (1, 3)  # still usable


# ---- packed forward codes: SegmentIndex.packed ----

def pack_rows(idx, q, scale, bias, index_bits, value_bits, row_bytes=None, rng=None):
    """(n, row_bytes) uint8 rows: float16 scale, [float16 bias], then k entries of index_bits + value_bits bits
    (latent, then q in two's complement) in an LSB-first bitstream. rng fills the unused bits and padding bytes."""
    n, k = idx.shape
    w = index_bits + value_bits
    fields = idx.astype(np.uint64) | (q.astype(np.int64) & ((1 << value_bits) - 1)).astype(np.uint64) << np.uint64(index_bits)
    bits = (fields[..., None] >> np.arange(w, dtype=np.uint64) & np.uint64(1)).astype(np.uint8).reshape(n, k * w)
    header = [np.asarray(scale, "<f2").view(np.uint8).reshape(n, 2)]
    if bias is not None:
        header.append(np.asarray(bias, "<f2").view(np.uint8).reshape(n, 2))
    row_bytes = row_bytes or 2 * len(header) + -(-k * w // 8)
    tail = row_bytes * 8 - 16 * len(header) - k * w
    junk = rng.integers(0, 2, (n, tail), dtype=np.uint8) if rng is not None else np.zeros((n, tail), np.uint8)
    stream = np.packbits(np.concatenate([bits, junk], 1), axis=1, bitorder="little")
    return np.ascontiguousarray(np.concatenate(header + [stream], 1))


def packed_case(rng, n, k, h, index_bits, value_bits, has_bias, row_bytes=None):
    """Random packed rows, distinct latents per row (the largest, h - 1, in row 0), extreme values and some q = 0."""
    idx = np.stack([rng.choice(h, k, replace=False) for _ in range(n)])
    idx[0, -1] = h - 1 if h - 1 not in idx[0, :-1] else idx[0, -1]
    lo, hi = -(1 << value_bits - 1), (1 << value_bits - 1) - 1
    q = rng.integers(lo, hi + 1, (n, k))
    q[rng.random((n, k)) < 0.2] = 0
    q[1, 0], q[2, -1] = lo, hi
    scale = ((rng.random(n) + 0.5) / hi).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float16) if has_bias else None
    rows = pack_rows(idx, q, scale, bias, index_bits, value_bits, row_bytes, rng)
    return dict(idx=idx, q=q, scale=scale, bias=bias, rows=rows, h=h, k=k, index_bits=index_bits,
                value_bits=value_bits, has_bias=has_bias)


def packed_scores(c, P):
    """(nq, n) float64: s * sum_j q_j P[:, latent_j] + b * P[:, h]."""
    P = P.astype(np.float64)
    out = (P[:, c["idx"]] * c["q"]).sum(-1) * c["scale"].astype(np.float64)
    return out + (P[:, c["h"], None] * c["bias"].astype(np.float64) if c["has_bias"] else 0)


def plain_forward(c):
    """The plain format's forward codes of a packed case: latents and q * s, the bias as column h with value b."""
    idx, val = c["idx"], (c["q"] * c["scale"].astype(np.float32)[:, None]).astype(np.float32)
    if c["has_bias"]:
        idx = np.hstack([idx, np.full((len(idx), 1), c["h"])])
        val = np.hstack([val, c["bias"].astype(np.float32)[:, None]])
    return idx.astype(np.uint16 if c["h"] + c["has_bias"] <= 1 << 16 else np.uint32), np.ascontiguousarray(val)


def mapped_rows(rows: np.ndarray, tmp_path) -> np.memmap:
    """rows written to a file and mapped back: the last row ends the mapping, so a read past it would fault."""
    path = tmp_path / "fwd_packed.bin"
    rows.tofile(path)
    mapped = np.memmap(path, np.uint8, "r", shape=rows.shape)
    assert path.stat().st_size == rows.size
    return mapped


def packed_index(c, rows=None, window_bits=16):
    """SegmentIndex.packed of a case, its posting lists from the plain codes; and the plain SegmentIndex."""
    idx, val = plain_forward(c)
    k = c["k"]
    code_idx, code_val = np.ascontiguousarray(idx[:, :k]), np.ascontiguousarray(val[:, :k])
    off, lid, pv = _core.build_windowed(code_idx, code_val, None, c["h"], window_bits)
    packed = _core.SegmentIndex.packed(off, lid, pv, c["rows"] if rows is None else rows, len(idx), c["h"], window_bits,
                                       k, c["index_bits"], c["value_bits"], c["has_bias"],
                                       c.get("index_coding", "packed"))
    return packed, _core.SegmentIndex(off, lid, pv, idx, val, len(idx), c["h"], window_bits)


def check_packed_queries(c, packed, plain, rng, nq=3, top_k=10):
    n = len(c["idx"])
    P = rng.standard_normal((nq, c["h"] + c["has_bias"])).astype(np.float32)
    full = packed_scores(c, P)
    allowed = (rng.random(n) < 0.5).astype(np.uint8)
    cand = np.stack([rng.choice(n, min(n, 40), replace=False) for _ in range(nq)]).astype(np.int64)
    cand[:, -3:] = -1
    mask = np.zeros_like(full, bool)
    for row, cc in zip(mask, cand):
        row[cc[cc >= 0]] = True
    for index in (packed, plain):
        for threads in (1, 2):
            ids, scores = index.scan(P, top_k, threads)
            assert_topk(ids, scores, full, top_k, atol=1e-4)
            assert_topk(*index.scan(P, top_k, threads, allowed), full, top_k, allowed, atol=1e-4)
            ids, scores = index.rerank(P, cand, top_k, threads)
            assert all(set(row[row >= 0]) <= set(cc) for row, cc in zip(ids, cand))
            assert_topk(ids, scores, np.where(mask, full, -np.inf), top_k, atol=1e-4)
    np.testing.assert_allclose(packed.scan(P, top_k)[1], plain.scan(P, top_k)[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(packed.rerank(P, cand, top_k)[1], plain.rerank(P, cand, top_k)[1], rtol=1e-5, atol=1e-4)


# (index_bits, value_bits, k): the compile-time layouts (12+4, 12+8, 12+6, 13+4) and the run-time ones, w = 16
# (one load of eight lanes), w <= 25 (gathered), w > 25 (scalar); 1 index bit holds at most 2 distinct latents.
PACKED_LAYOUTS = [(i, v, k) for i, v in [(12, 4), (12, 8), (12, 6), (13, 4), (13, 5), (16, 16), (7, 3), (10, 6), (32, 2)]
                  for k in (1, 5, 63)] + [(1, 2, 1), (1, 2, 2)]


@pytest.mark.parametrize("has_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("index_bits, value_bits, k", PACKED_LAYOUTS, ids=[f"{i}+{v}-k{k}" for i, v, k in PACKED_LAYOUTS])
def test_packed_rerank_and_scan_equal_numpy_and_plain(index_bits, value_bits, k, has_bias):
    rng = np.random.default_rng(index_bits * 100 + value_bits * 10 + k + has_bias)
    h = 1 << min(index_bits, 16)  # 2**32 latents would need too wide projections: index_bits 32 uses 2**16
    c = packed_case(rng, 300, k, h, index_bits, value_bits, has_bias)
    packed, plain = packed_index(c)
    row_bytes = 2 + 2 * has_bias + -(-k * (index_bits + value_bits) // 8)
    assert (packed.is_packed, packed.row_bytes, packed.index_bits, packed.value_bits) == (True, row_bytes, index_bits,
                                                                                           value_bits)
    assert packed.forward_width == plain.forward_width == k + has_bias
    assert (plain.is_packed, plain.row_bytes, plain.index_bits, plain.value_bits) == (False, 0, 0, 0)
    check_packed_queries(c, packed, plain, rng)
    q_idx = rng.choice(h, (2, 4)).astype(np.int64)
    q_val = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(packed.search(q_idx, q_val, 7)[0], plain.search(q_idx, q_val, 7)[0])


@pytest.mark.parametrize("index_bits, value_bits", [(12, 4), (12, 8), (16, 16), (7, 3)])
def test_packed_padding_bytes_are_ignored(index_bits, value_bits):
    rng = np.random.default_rng(8)
    c = packed_case(rng, 200, 9, 1 << index_bits, index_bits, value_bits, True, row_bytes=64)  # 64 > 4 + stream
    packed, plain = packed_index(c)
    assert packed.row_bytes == 64
    check_packed_queries(c, packed, plain, rng)


@pytest.mark.parametrize("k, index_bits, value_bits, has_bias, n", [
    (63, 12, 4, False, 32),   # 2 + 126 = 128 bytes a row, 4096 in all: the file ends on a page boundary
    (60, 13, 5, True, 7),     # 4 + 135 = 139 bytes
    (8, 12, 8, False, 128),   # 2 + 20 = 22 bytes
    (1, 5, 3, False, 4096),   # 2 + 1 = 3 bytes, under one 8-byte read; 12288 in all
    (3, 16, 16, True, 3),     # 4 + 12 = 16 bytes
])
def test_packed_last_entry_at_the_end_of_a_memory_map(tmp_path, k, index_bits, value_bits, has_bias, n):
    rng = np.random.default_rng(k)
    c = packed_case(rng, n, k, 1 << index_bits, index_bits, value_bits, has_bias)
    assert (k * (index_bits + value_bits)) % 8 == 0, "the last entry ends exactly at the row's last byte"
    rows = mapped_rows(c["rows"], tmp_path)
    packed, plain = packed_index(c, rows)
    check_packed_queries(c, packed, plain, rng, top_k=min(n, 10))
    ids, scores = packed.rerank(np.ones((1, c["h"] + has_bias), np.float32), [[n - 1]], 1)
    assert ids[0, 0] == n - 1
    np.testing.assert_allclose(scores[0, 0], packed_scores(c, np.ones((1, c["h"] + has_bias)))[0, -1], rtol=1e-5,
                               atol=1e-4)


def test_packed_memmapped_read_only_rows_are_held_not_copied(tmp_path):
    rng = np.random.default_rng(9)
    c = packed_case(rng, 500, 16, 4096, 12, 4, True)
    np.save(tmp_path / "fwd_packed.npy", c["rows"])
    rows = np.load(tmp_path / "fwd_packed.npy", mmap_mode="r")
    assert isinstance(rows, np.memmap) and not rows.flags.writeable
    before = sys.getrefcount(rows)
    packed, plain = packed_index(c, rows)
    after = sys.getrefcount(rows)  # not inside assert: its rewriting holds references
    assert after == before + 1, "fwd_packed must be held as given, not copied"
    P = rng.standard_normal((2, 4097)).astype(np.float32)
    want = packed.scan(P, 9)
    del rows
    gc.collect()
    got = packed.scan(P, 9)  # the segment keeps its rows alive
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    check_packed_queries(c, packed, plain, rng)


@pytest.fixture(scope="module")
def good_packed():
    rng = np.random.default_rng(10)
    c = packed_case(rng, 300, 5, 40, 12, 4, True)  # 4 + 10 = 14 bytes a row
    idx, val = plain_forward(c)
    off, lid, pv = _core.build_windowed(np.ascontiguousarray(idx[:, :5]), np.ascontiguousarray(val[:, :5]), None, 40, 4)
    arrays = dict(offsets=off, local_ids=lid, post_values=pv, fwd_packed=c["rows"], n=300, h=40, window_bits=4, k=5,
                  index_bits=12, value_bits=4, has_bias=True)
    return c, arrays


def _repacked(c, **changes):
    """The good case's rows packed again with some of idx, scale, bias replaced."""
    c = {**c, **changes}
    return pack_rows(c["idx"], c["q"], c["scale"], c["bias"], c["index_bits"], c["value_bits"])


def _set(a, at, value):
    a = a.copy()
    a[at] = value
    return a


BAD_PACKED = [
    ("fwd_packed has dtype int8, expected uint8", lambda c, g: dict(fwd_packed=g["fwd_packed"].view(np.int8))),
    ("fwd_packed has dtype uint16, expected uint8", lambda c, g: dict(fwd_packed=g["fwd_packed"].view(np.uint16))),
    (r"fwd_packed must be 2-D \(n, row_bytes\), got 1-D", lambda c, g: dict(fwd_packed=g["fwd_packed"].ravel())),
    ("fwd_packed must be C-contiguous", lambda c, g: dict(fwd_packed=np.asfortranarray(g["fwd_packed"]))),
    ("fwd_packed has 299 rows, expected n = 300", lambda c, g: dict(fwd_packed=g["fwd_packed"][:-1])),
    (r"fwd_packed has 13 bytes per row, k = 5 entries of 12 \+ 4 bits need 14 \(header 4\)",
     lambda c, g: dict(fwd_packed=np.ascontiguousarray(g["fwd_packed"][:, :13]))),
    (r"fwd_packed has 14 bytes per row, k = 6 entries of 12 \+ 4 bits need 16", lambda c, g: dict(k=6)),
    (r"fwd_packed has 14 bytes per row, k = 5 entries of 12 \+ 8 bits need 17", lambda c, g: dict(value_bits=8)),
    ("index_bits must be in 1..32, got 0", lambda c, g: dict(index_bits=0)),
    ("index_bits must be in 1..32, got 33", lambda c, g: dict(index_bits=33)),
    ("value_bits must be in 2..16, got 1", lambda c, g: dict(value_bits=1)),
    ("value_bits must be in 2..16, got 17", lambda c, g: dict(value_bits=17)),
    ("k must be positive, got 0", lambda c, g: dict(k=0)),
    ("k must be positive, got -1", lambda c, g: dict(k=-1)),
    ("k = 1073741824 entries do not fit a row", lambda c, g: dict(k=1 << 30)),
    ("fwd_packed row 7, entry 2: latent 40 out of range for h=40",
     lambda c, g: dict(fwd_packed=_repacked(c, idx=_set(c["idx"], (7, 2), 40)))),
    ("fwd_packed row 299, entry 4: latent 4095 out of range for h=40",
     lambda c, g: dict(fwd_packed=_repacked(c, idx=_set(c["idx"], (299, 4), 4095)))),
    (r"fwd_packed row 3: scale is not finite \(inf\)",
     lambda c, g: dict(fwd_packed=_repacked(c, scale=_set(c["scale"], 3, np.inf)))),
    (r"fwd_packed row 4: scale is not finite \(nan\)",
     lambda c, g: dict(fwd_packed=_repacked(c, scale=_set(c["scale"], 4, np.nan)))),
    (r"fwd_packed row 5: weight is not finite \(-inf\)",
     lambda c, g: dict(fwd_packed=_repacked(c, bias=_set(c["bias"], 5, -np.inf)))),
    ("window_bits must be in 1..16, got 0", lambda c, g: dict(window_bits=0)),
    ("local_ids has dtype int32, expected uint16", lambda c, g: dict(local_ids=g["local_ids"].astype(np.int32))),
]


@pytest.mark.parametrize("message, make", BAD_PACKED, ids=[m for m, _ in BAD_PACKED])
def test_bad_packed_arrays_raise(good_packed, message, make):
    c, good = good_packed
    _core.SegmentIndex.packed(**good)  # the unchanged arrays are fine
    with pytest.raises(ValueError, match=message):
        _core.SegmentIndex.packed(**{**good, **make(c, good)})


def test_packed_query_checks(good_packed):
    _, good = good_packed
    s = _core.SegmentIndex.packed(**good)
    P = np.ones((1, 41), np.float32)
    with pytest.raises(ValueError, match="projections have 40 columns, the forward codes need 41"):
        s.scan(P[:, :40], 3)  # the bias column h is needed too
    with pytest.raises(ValueError, match="projections have 40 columns, the forward codes need 41"):
        s.rerank(P[:, :40], [[1]], 3)
    with pytest.raises(ValueError, match="candidate 300 out of range for n=300"):
        s.rerank(P, [[1, 300]], 3)
    with pytest.raises(ValueError, match=r"allowed must have one entry per item \(300\)"):
        s.scan(P, 3, allowed=np.ones(299, bool))
    c = packed_case(np.random.default_rng(11), 300, 5, 40, 12, 4, False)
    no_bias = _core.SegmentIndex.packed(**{**good, "fwd_packed": c["rows"], "has_bias": False})
    assert no_bias.forward_width == 5 and no_bias.scan(P[:, :40], 2)[0].shape == (1, 2)  # h columns suffice


def test_empty_packed_segment():
    off, lid, pv = _core.build_windowed(np.zeros((0, 3), np.uint16), np.zeros((0, 3), np.float32), None, 8, 16)
    s = _core.SegmentIndex.packed(off, lid, pv, np.zeros((0, 8), np.uint8), 0, 8, 16, 3, 12, 4, False)
    assert (s.n, s.row_bytes, s.forward_width) == (0, 8, 3)
    ids, scores = s.scan(np.ones((1, 8), np.float32), 2)
    assert (ids == -1).all() and np.isneginf(scores).all()


# ---- Elias-Fano coded forward rows: SegmentIndex.packed(..., index_coding="ef") ----

def ef_low(h, k):
    return max(0, math.floor(math.log2(h / k)))


def pack_ef_rows(idx, q, scale, bias, h, value_bits, row_bytes=None, rng=None):
    """(n, row_bytes) uint8 ef rows: float16 scale, [float16 bias], then, for latents sorted along each row, k low
    parts (L bits), the bitmap (bit (x_i >> L) + i), k values (two's complement), LSB-first. rng fills padding."""
    n, k = idx.shape
    low = ef_low(h, k)
    map_bits = k + ((h - 1) >> low) + 1
    bits = []
    for x, v in zip(idx, q):
        lows = [(int(xi) >> b) & 1 for xi in x for b in range(low)]
        bitmap = np.zeros(map_bits, np.uint8)
        bitmap[[(int(xi) >> low) + i for i, xi in enumerate(x)]] = 1
        values = [((int(vi) & ((1 << value_bits) - 1)) >> b) & 1 for vi in v for b in range(value_bits)]
        bits.append(np.concatenate([np.array(lows, np.uint8), bitmap, np.array(values, np.uint8)]))
    bits = np.stack(bits)
    header = [np.asarray(scale, "<f2").view(np.uint8).reshape(n, 2)]
    if bias is not None:
        header.append(np.asarray(bias, "<f2").view(np.uint8).reshape(n, 2))
    row_bytes = row_bytes or 2 * len(header) + -(-bits.shape[1] // 8)
    tail = row_bytes * 8 - 16 * len(header) - bits.shape[1]
    junk = rng.integers(0, 2, (n, tail), dtype=np.uint8) if rng is not None else np.zeros((n, tail), np.uint8)
    stream = np.packbits(np.concatenate([bits, junk], 1), axis=1, bitorder="little")
    return np.ascontiguousarray(np.concatenate(header + [stream], 1))


def ef_case(rng, n, k, h, value_bits, has_bias, row_bytes=None):
    """Random ef rows: sorted distinct latents (h - 1 in row 0, 0 in row 1), extreme values and some q = 0."""
    idx = np.sort(np.stack([rng.choice(h, k, replace=False) for _ in range(n)]), axis=1)
    if k < h:
        idx[0, -1], idx[min(1, n - 1), 0] = h - 1, 0
        idx = np.array([np.sort(np.unique(row)) if len(np.unique(row)) == k else np.sort(rng.choice(h, k, False))
                        for row in idx])
    lo, hi = -(1 << value_bits - 1), (1 << value_bits - 1) - 1
    q = rng.integers(lo, hi + 1, (n, k))
    q[rng.random((n, k)) < 0.2] = 0
    q[0, 0], q[-1, -1] = lo, hi
    scale = ((rng.random(n) + 0.5) / hi).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float16) if has_bias else None
    rows = pack_ef_rows(idx, q, scale, bias, h, value_bits, row_bytes, rng)
    return dict(idx=idx, q=q, scale=scale, bias=bias, rows=rows, h=h, k=k, index_bits=0, value_bits=value_bits,
                has_bias=has_bias, index_coding="ef")


def ef_stream_bytes(h, k, vb):
    low = ef_low(h, k)
    return -(-(k * low + k + ((h - 1) >> low) + 1 + k * vb) // 8)


# (h, k, value_bits): 128 B at h=4096 (k=88, L=5), the compile-time value widths 4 and 8, L = 0 (k = h, and k > h/2),
# one entry, a bitmap of many 56-bit chunks (k=700), wide values, odd h.
EF_LAYOUTS = [(4096, 88, 4), (4096, 63, 8), (4096, 1, 4), (4096, 700, 4), (64, 64, 3), (300, 200, 6), (16, 16, 2),
              (1, 1, 3), (2, 1, 2), (65536, 3, 16), (1000, 7, 5), (100, 13, 16), (257, 5, 8)]


@pytest.mark.parametrize("has_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("h, k, value_bits", EF_LAYOUTS, ids=[f"h{h}-k{k}-v{v}" for h, k, v in EF_LAYOUTS])
def test_ef_rerank_and_scan_equal_numpy_and_plain(h, k, value_bits, has_bias):
    rng = np.random.default_rng(h * 7 + k * 3 + value_bits + has_bias)
    c = ef_case(rng, 120, k, h, value_bits, has_bias)
    ef, plain = packed_index(c)
    row_bytes = 2 + 2 * has_bias + ef_stream_bytes(h, k, value_bits)
    assert (ef.is_packed, ef.index_coding, ef.row_bytes, ef.index_bits, ef.value_bits) == (
        True, "ef", row_bytes, ef_low(h, k), value_bits)
    assert ef.forward_width == plain.forward_width == k + has_bias and plain.index_coding == ""
    check_packed_queries(c, ef, plain, rng, top_k=min(10, 120))
    q_idx = rng.choice(h, (2, 4)).astype(np.int64)
    q_val = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(ef.search(q_idx, q_val, 7)[0], plain.search(q_idx, q_val, 7)[0])


def test_compact_py_writes_the_ef_rows_this_packer_writes():
    """The engine's rows (compact.py's packer) are the rows the C++ decoder is tested on: one format."""
    from csae_engine.compact import CompactCodes
    rng = np.random.default_rng(12)
    h, k, vb = 4096, 88, 4
    c = ef_case(rng, 200, k, h, vb, False)
    codes = CompactCodes.pack(c["idx"][:, ::-1], c["q"][:, ::-1], c["scale"], h, vb, "ef")
    np.testing.assert_array_equal(codes.packed, c["rows"])


@pytest.mark.parametrize("h, k, value_bits", [(4096, 88, 4), (64, 7, 4), (16, 16, 2), (1000, 7, 8)])
def test_ef_padding_bytes_are_ignored(h, k, value_bits):
    rng = np.random.default_rng(13)
    c = ef_case(rng, 150, k, h, value_bits, True, row_bytes=4 + ef_stream_bytes(h, k, value_bits) + 9)
    ef, plain = packed_index(c)
    assert ef.row_bytes == 4 + ef_stream_bytes(h, k, value_bits) + 9
    check_packed_queries(c, ef, plain, rng)


@pytest.mark.parametrize("h, k, value_bits, has_bias, n", [
    (4096, 88, 4, False, 32),  # 2 + 126 = 128 bytes a row, 4096 in all: the file ends on a page boundary
    (256, 88, 8, True, 7),     # 4 + 126 = 130 bytes
    (64, 7, 4, False, 128),    # 2 + 8 = 10 bytes
    (16, 1, 2, False, 4096),   # 2 + 1 = 3 bytes, under one 8-byte read
    (1000, 5, 16, True, 3),    # 4 + 16 = 20 bytes
])
def test_ef_last_value_at_the_end_of_a_memory_map(tmp_path, h, k, value_bits, has_bias, n):
    rng = np.random.default_rng(k + h)
    c = ef_case(rng, n, k, h, value_bits, has_bias)
    low = ef_low(h, k)
    assert (k * (low + 1 + value_bits) + ((h - 1) >> low) + 1) % 8 == 0, "the last value ends at the row's last byte"
    rows = mapped_rows(c["rows"], tmp_path)
    ef, plain = packed_index(c, rows)
    check_packed_queries(c, ef, plain, rng, top_k=min(n, 10))
    ids, scores = ef.rerank(np.ones((1, h + has_bias), np.float32), [[n - 1]], 1)
    assert ids[0, 0] == n - 1
    np.testing.assert_allclose(scores[0, 0], packed_scores(c, np.ones((1, h + has_bias)))[0, -1], rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def good_ef():
    rng = np.random.default_rng(14)
    c = ef_case(rng, 300, 5, 40, 4, True)  # L = 3: 15 + 5 + 5 + 20 = 45 bits, 4 + 6 = 10 bytes a row
    idx, val = plain_forward(c)
    off, lid, pv = _core.build_windowed(np.ascontiguousarray(idx[:, :5]), np.ascontiguousarray(val[:, :5]), None, 40, 4)
    arrays = dict(offsets=off, local_ids=lid, post_values=pv, fwd_packed=c["rows"], n=300, h=40, window_bits=4, k=5,
                  index_bits=0, value_bits=4, has_bias=True, index_coding="ef")
    return c, arrays


def _ef_bit(rows, row, bit):
    """rows with one stream bit of one row flipped (bit counted from the end of the 4-byte header)."""
    rows = rows.copy()
    rows[row, 4 + bit // 8] ^= np.uint8(1 << bit % 8)
    return rows


def _clear_bitmap_bit(latents, low):
    """A bitmap bit that a row of these latents leaves clear."""
    used = {(int(x) >> low) + i for i, x in enumerate(latents)}
    return next(b for b in range(len(latents) + 64) if b not in used)


def _ef_repacked(c, row, latents):
    """The good case's rows with one row's latents replaced, packed as given (not sorted, not checked)."""
    idx = c["idx"].copy()
    idx[row] = latents
    return pack_ef_rows(idx, c["q"], c["scale"], c["bias"], c["h"], c["value_bits"])


BAD_EF = [
    # L = 3: low parts are stream bits 0..14, the bitmap bits 15..24 (bit 15 + (x >> 3) + i), values 25..44
    ("fwd_packed row 7, the high bitmap holds 4 set bits, expected k = 5", lambda c, g: dict(
        fwd_packed=_ef_bit(g["fwd_packed"], 7, 15 + (int(c["idx"][7, 0]) >> 3)))),
    ("fwd_packed row 9, the high bitmap holds 6 set bits, expected k = 5", lambda c, g: dict(
        fwd_packed=_ef_bit(g["fwd_packed"], 9, 15 + _clear_bitmap_bit(c["idx"][9], 3)))),
    ("fwd_packed row 3, entry 4: latent 4[0-9] out of range for h=40",
     lambda c, g: dict(fwd_packed=_ef_repacked(c, 3, [1, 2, 3, 4, 47]))),
    (r"fwd_packed row 5, entry 2: latent 9 does not exceed entry 1's 9 \(ef latents strictly increase\)",
     lambda c, g: dict(fwd_packed=_ef_repacked(c, 5, [1, 9, 9, 20, 30]))),
    (r"fwd_packed row 6, entry 3: latent 10 does not exceed entry 2's 12",
     lambda c, g: dict(fwd_packed=_ef_repacked(c, 6, [1, 9, 12, 10, 30]))),
    (r"fwd_packed has 9 bytes per row, k = 5 ef-coded entries over h = 40 with 4-bit values need 10 \(header 4\)",
     lambda c, g: dict(fwd_packed=np.ascontiguousarray(g["fwd_packed"][:, :9]))),
    (r"fwd_packed has 10 bytes per row, k = 5 ef-coded entries over h = 40 with 8-bit values need 13",
     lambda c, g: dict(value_bits=8)),
    ("k = 41 exceeds h = 40: ef rows hold k distinct latents", lambda c, g: dict(k=41)),
    ("index_coding must be 'packed' or 'ef', got 'elias'", lambda c, g: dict(index_coding="elias")),
    (r"fwd_packed row 3: scale is not finite \(inf\)", lambda c, g: dict(fwd_packed=pack_ef_rows(
        c["idx"], c["q"], _set(c["scale"], 3, np.inf), c["bias"], 40, 4))),
    (r"fwd_packed row 5: weight is not finite \(nan\)", lambda c, g: dict(fwd_packed=pack_ef_rows(
        c["idx"], c["q"], c["scale"], _set(c["bias"], 5, np.nan), 40, 4))),
]


@pytest.mark.parametrize("message, make", BAD_EF, ids=[m for m, _ in BAD_EF])
def test_bad_ef_rows_raise(good_ef, message, make):
    c, good = good_ef
    s = _core.SegmentIndex.packed(**good)  # the unchanged arrays are fine
    assert (s.index_coding, s.index_bits, s.row_bytes) == ("ef", 3, 10)
    with pytest.raises(ValueError, match=message):
        _core.SegmentIndex.packed(**{**good, **make(c, good)})


def test_ef_with_index_bits_any_and_empty_segment(good_ef):
    _, good = good_ef
    s = _core.SegmentIndex.packed(**{**good, "index_bits": 99})  # ignored by ef
    assert s.index_bits == 3
    off, lid, pv = _core.build_windowed(np.zeros((0, 3), np.uint16), np.zeros((0, 3), np.float32), None, 8, 16)
    e = _core.SegmentIndex.packed(off, lid, pv, np.zeros((0, 6), np.uint8), 0, 8, 16, 3, 0, 4, False, "ef")
    assert (e.n, e.row_bytes, e.forward_width, e.index_coding) == (0, 6, 3, "ef")
    ids, scores = e.scan(np.ones((1, 8), np.float32), 2)
    assert (ids == -1).all() and np.isneginf(scores).all()


def _signature_names(doc: str) -> list:
    """Argument names of pybind11's first docstring line, 'name(self: T, a: T, b: T = 1) -> R'."""
    return [n for n in re.findall(r"(?:\(|, )(\w+):", doc.splitlines()[0]) if n != "self"]


def test_stub_matches_the_module():
    tree = ast.parse((ROOT / "csae_engine" / "_core.pyi").read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    assert set(functions) | set(classes) == {n for n in dir(_core) if not n.startswith("_")}
    stubbed = [(f, getattr(_core, name)) for name, f in functions.items()]
    for name, cls in classes.items():
        members = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        assert set(members) - {"__init__"} == {n for n in dir(getattr(_core, name)) if not n.startswith("_")}
        for member, f in members.items():
            attr = getattr(getattr(_core, name), member)
            if not isinstance(attr, property):
                stubbed.append((f, attr))
            assert ast.get_docstring(f) or member == "__init__", f"{name}.{member} has no docstring"
    for f, obj in stubbed:
        names = [a.arg for a in f.args.args if a.arg != "self"]
        assert names == _signature_names(obj.__doc__), f"{f.name}: the stub's arguments differ from the module's"


def test_cpp_unit_tests(tmp_path):
    """cpp/tests/test_topk.cpp: TopK against a naive sort, the windowed scorer against a naive exhaustive one."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (c++ or g++) on PATH")
    exe = tmp_path / "test_topk"
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-march=native", "-I", str(ROOT / "cpp"),
                            str(ROOT / "cpp" / "tests" / "test_topk.cpp"), "-pthread", "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"compiling cpp/tests/test_topk.cpp failed:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"cpp/tests/test_topk.cpp failed:\n{run.stdout}{run.stderr}"
    assert "0 failures" in run.stdout
