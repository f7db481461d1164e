"""csae_engine._core on its own: SegmentIndex against numpy/scipy, its checks, the stub, and the C++ unit tests."""
import ast
import gc
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
