"""The search engine: an inverted index over sparse codes, searched exactly in C++, with a dense rerank.

    engine = Engine(model).build(X, ids=ids)
    ids, scores = engine.search(Q, top_k=10, mode="sparse" | "dense")

Sparse mode scores cos(code(q), code(x)) exactly through the windowed inverted index (cpp/index.h).
Dense mode takes sparse candidates (or every item) and scores cos(q, x_hat) as sum_j v_j p[i_j] / |x_hat|
with p = W_dec q computed once per query (cpp/rerank.h): O(k) per candidate, nothing reconstructed.

The index is a list of immutable segments: the shards of the main index, then at most one delta segment that
takes added items. Deletes are tombstones (a per-segment live mask) applied inside the scorer; compact() rebuilds.
A search reads one snapshot of the segment list, so updates never show it a half-written state.
"""
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from . import _core
from .codes import SparseCodes, index_dtype
from .data import unit_rows
from .models import CompresSAE, TopKSAE, load_model, model_hash
from .utils import progress_bar

INDEX_FORMAT_VERSION = 3  # 3: posting lists in latent-major order
WINDOW_BITS = 16  # 65,536 items per window: a 256 KiB float accumulator, resident in L2
DEFAULT_SHARD_SIZE = 1 << 22  # items per shard when building to disk
MODES = ("sparse", "dense")
_ARRAYS = ("offsets", "local_ids", "post_values", "fwd_indices", "fwd_values", "ids")  # ids: only if given
_CONFIG = ("h", "k", "window_bits", "prune", "value_dtype", "shard_size")


def query_codes(model: CompresSAE, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes of unit query rows as sparse mode scores them: (indices (nq, k) int64, values (nq, k) float32 with unit
    norm; a code with no non-zero value, possible for CSR, stays all zeros and scores 0 everywhere)."""
    with torch.no_grad():
        idx, val = model.encode_tensor(torch.from_numpy(Q).to(model.device), k)
    val = val.float()
    norms = val.norm(dim=1, keepdim=True)
    val = torch.where(norms > 0, val / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(val))
    return idx.cpu().numpy().astype(np.int64), val.cpu().numpy()


class Segment:
    """One immutable part of the index: windowed posting lists (sparse mode), forward codes (dense mode), user ids
    (absent: first_id + row), and a live mask (None: every row live). Updates make new Segment objects."""

    def __init__(self, arrays: dict, first_id: int = 0, live: np.ndarray | None = None, files: dict | None = None):
        self.arrays, self.first_id, self.live = arrays, int(first_id), live
        self.n = len(arrays["fwd_indices"])
        self.n_live = self.n if live is None else int(np.count_nonzero(live))  # once: searches read it
        self.files = files or {}  # name -> (path, sha256, inode) of the files the arrays are mapped from
        self._lookup = None

    def ids(self) -> np.ndarray:
        if "ids" in self.arrays:
            return np.asarray(self.arrays["ids"])
        return np.arange(self.first_id, self.first_id + self.n, dtype=np.int64)

    def user_ids(self, rows: np.ndarray) -> np.ndarray:
        """User ids of rows (-1 stays -1)."""
        if "ids" in self.arrays:
            return np.where(rows >= 0, self.arrays["ids"][np.maximum(rows, 0)], -1).astype(np.int64, copy=False)
        return np.where(rows >= 0, rows + self.first_id, -1)

    def rows_of(self, ids: np.ndarray, live_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(found (len(ids),) bool, rows of the found ids)."""
        if "ids" in self.arrays:
            if self._lookup is None:
                known = np.asarray(self.arrays["ids"])
                order = np.argsort(known, kind="stable")
                self._lookup = (known[order], order)
            sorted_ids, order = self._lookup
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, self.n - 1)
            found = sorted_ids[pos] == ids
            rows = order[pos]
        else:
            rows = ids - self.first_id
            found = (rows >= 0) & (rows < self.n)
            rows = np.where(found, rows, 0)
        if live_only and self.live is not None:
            found &= self.live[rows] != 0
        return found, rows[found]

    def without_rows(self, rows: np.ndarray) -> "Segment":
        """This segment with rows tombstoned (same arrays, a new live mask)."""
        if len(rows) == 0:
            return self
        live = np.ones(self.n, np.uint8) if self.live is None else self.live.copy()
        live[rows] = 0
        return Segment(self.arrays, self.first_id, live, self.files)

    def live_rows(self) -> np.ndarray:
        return np.arange(self.n) if self.live is None else np.flatnonzero(self.live)

    def nbytes(self) -> dict:
        out = {name: int(arr.nbytes) for name, arr in self.arrays.items()}
        if self.live is not None:
            out["live"] = int(self.live.nbytes)
        return out


class Engine:
    """Compressed vector search over a CompresSAE model's codes. Any number of threads may search at once, also
    while another thread adds, deletes or compacts (updates are serialised among themselves).

    Parameters
    ----------
    model : CompresSAE
        Encodes items and queries; its decoder scores dense mode.
    num_threads : int
        Threads for build and search; -1 means all cores.
    """

    def __init__(self, model: CompresSAE, *, num_threads: int = -1):
        if not isinstance(model, TopKSAE):
            raise TypeError(f"Engine needs a TopKSAE model (CompresSAE or CSR), got {type(model).__name__}")
        self.model = model.eval()
        self.num_threads = num_threads
        self.config: dict = {}
        self._segments: tuple[Segment, ...] = ()  # main shards, then the delta segment if _has_delta
        self._has_delta = False
        self._write_lock = threading.Lock()
        self._decoder = None  # (h [+ 1], d) float32 for dense mode, made once

    # building
    @classmethod
    def from_codes(cls, codes: SparseCodes, model: CompresSAE, ids=None, *, prune: float | None = None,
                   num_threads: int = -1) -> "Engine":
        """An engine over codes already encoded by model."""
        return cls(model, num_threads=num_threads).build_codes(codes, ids, prune=prune)

    def build(self, X, ids=None, *, batch_size: int = 8192, prune: float | None = None, shard_size: int | None = None,
              directory=None, progress: bool | None = None) -> "Engine":
        """Encode the rows of X (array, memmap or .npy path) and index them.

        ids: one int64 per row, returned by search; default: the row numbers 0..n-1, which cost no memory.
        prune: keep only this share (0 < prune <= 1) of each posting list, its largest |values| (approximate).
        shard_size: items per shard (segment); default one shard, or DEFAULT_SHARD_SIZE with directory.
        directory: build larger than memory: each shard is written there as soon as it is encoded and mapped back,
        so memory holds one shard's work at a time; the directory is then a saved index (Engine.load reads it).
        """
        X = self.model.check_input(X)
        n = X.shape[0]
        ids = _check_ids(ids, n)
        if shard_size is None and directory is not None:
            shard_size = DEFAULT_SHARD_SIZE
        if shard_size is not None and (not isinstance(shard_size, (int, np.integer)) or shard_size <= 0):
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        self._set_config(prune, shard_size, value_dtype=np.float16)
        if directory is None and (shard_size is None or shard_size >= n):
            codes = self.model.encode(X, batch_size=batch_size, progress=progress)
            return self.build_codes(codes, ids, prune=prune, shard_size=shard_size)
        writer = None if directory is None else _IndexWriter(Path(directory), self)
        segments = []
        try:
            bar = progress_bar(range(0, n, shard_size), total=-(-n // shard_size), desc="build shards", unit="batch",
                              progress=progress if n > shard_size else False, items=n)
            for start in bar:
                stop = min(n, start + shard_size)
                codes = self.model.encode(X[start:stop], batch_size=batch_size, progress=False)
                seg = self._segment(*self._forward(codes), None if ids is None else ids[start:stop], first_id=start)
                segments.append(seg if writer is None else writer.add(seg))
            if writer is not None:
                writer.commit(segments)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self._publish(tuple(segments), False)
        return self

    def build_codes(self, codes: SparseCodes, ids=None, *, prune: float | None = None,
                    shard_size: int | None = None) -> "Engine":
        """Index codes encoded by this engine's model."""
        if not isinstance(codes, SparseCodes):
            raise TypeError(f"expected SparseCodes, got {type(codes).__name__}")
        if codes.h != self.model.h:
            raise ValueError(f"codes have h={codes.h}, the model has h={self.model.h}")
        if codes.n >= 2**32:
            raise ValueError(f"{codes.n} items exceed one index's 2^32 - 1")
        ids = _check_ids(ids, codes.n)
        value_dtype = np.float16 if codes.quantized else codes.values.dtype  # 8-bit codes are indexed as float16
        self._set_config(prune, shard_size, value_dtype, k=codes.k)
        step = codes.n if shard_size is None else shard_size
        fwd_indices, fwd_values = self._forward(codes)
        segments = tuple(self._segment(fwd_indices[s:s + step], fwd_values[s:s + step],
                                       None if ids is None else ids[s:s + step], first_id=s)
                         for s in range(0, codes.n, step))
        self._publish(segments, False)
        return self

    def _set_config(self, prune, shard_size, value_dtype, k=None) -> None:
        if prune is not None and not 0 < prune <= 1:
            raise ValueError(f"prune must be in (0, 1], got {prune}")
        self.config = {"h": self.model.h, "k": self.model.k if k is None else k, "window_bits": WINDOW_BITS,
                       "prune": prune, "value_dtype": str(np.dtype(value_dtype)), "shard_size": shard_size}

    def _forward(self, codes: SparseCodes) -> tuple[np.ndarray, np.ndarray]:
        """Forward codes for dense mode: indices and values / |x_hat| (float32); with a decoder bias b, one more
        term, latent h with value 1 / |x_hat|, whose projection is q . b."""
        if codes.k != self.config["k"]:
            raise ValueError(f"codes have k={codes.k}, the index has k={self.config['k']}")
        vals = codes.float_values()
        if not (np.abs(vals).sum(axis=1) > 0).all():
            raise ValueError(f"code of item {int(np.argmin(np.abs(vals).sum(axis=1) > 0))} is all zeros")
        inv_norm = 1 / self._reconstruction_norms(codes.indices, vals)
        fwd_indices, fwd_values = codes.indices, vals * inv_norm[:, None]
        if self.model.decoder_bias is not None:
            fwd_indices = np.hstack([fwd_indices, np.full((codes.n, 1), codes.h)]).astype(index_dtype(codes.h + 1))
            fwd_values = np.hstack([fwd_values, inv_norm[:, None]])
        return fwd_indices, fwd_values

    def _segment(self, fwd_indices, fwd_values, ids, first_id: int = 0) -> Segment:
        """A segment from forward codes. Posting values are the forward values rescaled to a unit code, so a
        segment rebuilt from another's forward codes (compaction) is bit-identical to a fresh build."""
        k, h, value_dtype = self.config["k"], self.config["h"], np.dtype(self.config["value_dtype"])
        fwd_values = np.ascontiguousarray(fwd_values, dtype=value_dtype)
        code = fwd_values[:, :k].astype(np.float32)
        post = (code / np.linalg.norm(code, axis=1, keepdims=True)).astype(value_dtype)
        indices = np.ascontiguousarray(fwd_indices[:, :k])
        keep = None if self.config["prune"] is None else _prune_mask(indices, post, h, self.config["prune"])
        offsets, local_ids, post_values = _core.build_windowed(indices, post, keep, h, WINDOW_BITS, self.num_threads)
        arrays = {"offsets": offsets, "local_ids": local_ids, "post_values": post_values,
                  "fwd_indices": np.ascontiguousarray(fwd_indices), "fwd_values": fwd_values}
        if ids is not None:
            arrays["ids"] = np.ascontiguousarray(ids, dtype=np.int64)
        return Segment(arrays, first_id)

    def _reconstruction_norms(self, indices: np.ndarray, values: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """|x_hat| per item, decoded in batches."""
        out = np.empty(len(indices), np.float32)
        with torch.no_grad():
            for s in range(0, len(indices), batch_size):
                idx = torch.from_numpy(indices[s:s + batch_size].astype(np.int64)).to(self.model.device)
                val = torch.from_numpy(values[s:s + batch_size]).to(self.model.device)
                out[s:s + len(idx)] = self.model.decode_tensor(idx, val).norm(dim=1).cpu().numpy()
        if not (out > 0).all():
            raise ValueError(f"item {int(np.argmin(out > 0))} reconstructs to the zero vector")
        return out

    def _publish(self, segments: tuple, has_delta: bool) -> None:
        self._segments, self._has_delta = segments, has_delta  # one tuple swap: searches see old or new, whole

    # updates
    def add(self, X, ids, *, batch_size: int = 8192, progress: bool | None = None) -> "Engine":
        """Encode and index new rows of X under ids (int64, required); an id already indexed is replaced (upsert).
        New items go to the delta segment, searched with the main index until compact()."""
        self._require_built()
        X = self.model.check_input(X)
        ids = _check_ids(ids, X.shape[0], required=True)
        codes = self.model.encode(X, batch_size=batch_size, progress=progress)
        fwd_indices, fwd_values = self._forward(codes)
        with self._write_lock:
            segments = [seg.without_rows(seg.rows_of(ids)[1]) for seg in self._segments]
            if self._has_delta:
                old = segments.pop()
                rows = old.live_rows()
                fwd_indices = np.concatenate([old.arrays["fwd_indices"][rows], fwd_indices])
                fwd_values = np.concatenate([old.arrays["fwd_values"][rows], fwd_values])
                ids = np.concatenate([old.ids()[rows], ids])
            self._publish(tuple(segments) + (self._segment(fwd_indices, fwd_values, ids),), True)
        return self

    def delete(self, ids) -> "Engine":
        """Remove items by id (tombstones, honoured by every search at once; compact() reclaims the space).
        An id that is not indexed raises KeyError and nothing is deleted."""
        self._require_built()
        ids = np.unique(_as_id_array(ids, "ids"))
        with self._write_lock:
            found = np.zeros(len(ids), bool)
            located = []
            for seg in self._segments:
                f, rows = seg.rows_of(ids)
                found |= f
                located.append(rows)
            if not found.all():
                raise KeyError(f"unknown id {int(ids[~found][0])}")
            self._publish(tuple(seg.without_rows(rows) for seg, rows in zip(self._segments, located)), self._has_delta)
        return self

    def compact(self) -> "Engine":
        """Drop tombstoned items and fold the delta segment into the main index. Without a shard_size everything
        becomes one segment; with one, only shards holding deletes are rebuilt and the delta joins the last shard
        (or starts a new one when that would pass shard_size)."""
        self._require_built()
        with self._write_lock:
            segments, has_delta = list(self._segments), self._has_delta
            delta = segments.pop() if has_delta else None
            shard_size = self.config["shard_size"]
            if shard_size is None:
                parts = segments + ([delta] if delta else [])
                if len(parts) == 1 and parts[0].live is None:
                    return self
                merged = [self._merge(parts)]
            else:
                merged = [seg if seg.live is None else self._merge([seg]) for seg in segments]
                if delta is not None:
                    if merged and merged[-1].n_live + delta.n_live <= shard_size:
                        merged[-1] = self._merge([merged[-1], delta])
                    else:
                        merged.append(self._merge([delta]))
            self._publish(tuple(seg for seg in merged if seg.n > 0) or (merged[0],), False)
        return self

    def _merge(self, parts: list) -> Segment:
        """One segment of the live rows of parts, rebuilt from their forward codes."""
        rows = [seg.live_rows() for seg in parts]
        fwd_indices = np.concatenate([np.asarray(seg.arrays["fwd_indices"])[r] for seg, r in zip(parts, rows)])
        fwd_values = np.concatenate([np.asarray(seg.arrays["fwd_values"])[r] for seg, r in zip(parts, rows)])
        ids = np.concatenate([seg.ids()[r] for seg, r in zip(parts, rows)])
        return self._segment(fwd_indices, fwd_values, ids)

    # searching
    def search(self, Q, top_k: int = 10, mode: str = "sparse", *, candidates=None, query_terms: int | None = None,
               allow_ids=None, num_threads: int | None = None):
        """The top_k items for each query row of Q (nq, d).

        mode="sparse": cosine between sparse codes, exact over the index (unless built with prune).
        mode="dense": cosine between q and each item's reconstruction, over ``candidates`` from sparse mode
        (default 10 * top_k) or over every item with candidates="all".
        query_terms: use only the strongest terms of each query code in sparse mode (approximate, faster).
        allow_ids: a filter: an array of the ids that may be returned, or a boolean mask over ids (mask[id]).
        Applied inside the scorer, so a query gets top_k results whenever top_k items pass it; when fewer pass,
        the rest is padded with id -1 and score -inf.
        Returns (ids (nq, top_k) int64, scores (nq, top_k) float32), best first.
        """
        self._require_built()
        segments = self._segments  # one snapshot for the whole search
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n = sum(seg.n_live for seg in segments)
        if not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if top_k > n:
            raise ValueError(f"top_k={top_k} exceeds the {n} indexed items")
        Q = unit_rows(self.model.check_input(Q, "Q")[:], 0, "Q")
        threads = self.num_threads if num_threads is None else num_threads
        masks = self._allowed(segments, allow_ids)
        scan_all = mode == "dense" and isinstance(candidates, str)
        if scan_all and candidates != "all":
            raise ValueError(f"candidates must be an int or 'all', got {candidates!r}")
        n_sparse = top_k
        if mode == "dense" and not scan_all:
            n_sparse = min(n, 10 * top_k if candidates is None else int(candidates))
            if n_sparse < top_k:
                raise ValueError(f"candidates={candidates} must be at least top_k={top_k}")
        if not scan_all:
            q_idx, q_val = self._encode_queries(Q, query_terms)
        P = self._projections(Q) if mode == "dense" else None
        live = [(seg, allowed) for seg, allowed in zip(segments, masks) if seg.n_live > 0]
        results = []
        for seg, allowed in live:
            a = seg.arrays
            if scan_all:
                results.append(_core.dense_scan(a["fwd_indices"], a["fwd_values"], P, min(top_k, seg.n), threads,
                                                allowed))
            else:
                results.append(_core.sparse_search(a["offsets"], a["local_ids"], a["post_values"], seg.n,
                                                   self.config["h"], self.config["window_bits"], q_idx, q_val,
                                                   min(n_sparse, seg.n), threads, allowed))
        if mode == "dense" and not scan_all:
            # rerank the best n_sparse candidates over all segments, as one segment would
            results = [_core.dense_rerank(seg.arrays["fwd_indices"], seg.arrays["fwd_values"], P, rows,
                                          min(top_k, seg.n), threads)
                       for (seg, _), rows in zip(live, _global_candidates(results, n_sparse))]
        results = [(seg.user_ids(rows), scores) for (seg, _), (rows, scores) in zip(live, results)]
        return _merge_top(results, top_k)

    def _allowed(self, segments, allow_ids) -> list:
        """Per segment: None (every row may be returned) or a uint8 mask of live rows passing the filter."""
        if allow_ids is None:
            return [seg.live for seg in segments]
        allow = np.asarray(allow_ids)
        if allow.dtype == bool:
            if allow.ndim != 1:
                raise ValueError(f"allow_ids as a mask must be 1-D (mask[id]), got shape {allow.shape}")
            allow = np.flatnonzero(allow)
        else:
            allow = _as_id_array(allow, "allow_ids")
        masks = []
        for seg in segments:
            mask = np.zeros(seg.n, np.uint8)
            mask[seg.rows_of(allow)[1]] = 1
            masks.append(mask)
        return masks

    def _encode_queries(self, Q: np.ndarray, query_terms):
        k = self.config["k"]
        terms = k if query_terms is None else query_terms
        if not isinstance(terms, (int, np.integer)) or not 0 < terms <= k:
            raise ValueError(f"query_terms must be in 1..{k}, got {query_terms!r}")
        idx, val = query_codes(self.model, Q, k)
        return np.ascontiguousarray(idx[:, :terms]), np.ascontiguousarray(val[:, :terms])

    def _projections(self, Q: np.ndarray) -> np.ndarray:
        """p = W_dec q for each unit query: (nq, h) float32; with a decoder bias b, one more column q . b."""
        with torch.no_grad():
            if self._decoder is None:  # a tied decoder is a fresh transpose copy: make it once, not per search
                W = self.model.W_dec.float()
                b = self.model.decoder_bias
                self._decoder = (W if b is None else torch.cat([W, b.float()[None]])).contiguous()
            W = self._decoder
            return (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()

    def iter_codes(self, batch_size: int = 1 << 16):
        """The live indexed codes, exactly as scored in sparse mode (unit-norm rows), in batches:
        yields (ids (b,) int64, scipy.sparse.csr_matrix (b, h) float32)."""
        import scipy.sparse as sp
        h, win = self.config["h"], 1 << self.config["window_bits"]
        for seg in self._require_built():
            a = seg.arrays
            windows = (len(a["offsets"]) - 1) // h
            off = np.asarray(a["offsets"])
            for w in range(windows):
                first, size = w * win, min(win, seg.n - w * win)
                starts, ends = off[w:-1:windows], off[w + 1::windows]  # each latent's postings in window w
                counts = ends - starts
                at = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
                lat = np.repeat(np.arange(h, dtype=np.int32), counts)
                rows = np.asarray(a["local_ids"][at], np.int32)
                vals = np.asarray(a["post_values"][at], np.float32)
                block = sp.csr_matrix((vals, (rows, lat)), shape=(size, h))
                block.sort_indices()
                live = np.arange(size) if seg.live is None else np.flatnonzero(seg.live[first:first + size])
                ids = seg.user_ids(live + first)
                for s in range(0, len(live), batch_size):
                    yield ids[s:s + batch_size], block[live[s:s + batch_size]]

    def ids(self) -> np.ndarray:
        """The user ids of every live item, int64."""
        return np.concatenate([seg.ids()[seg.live_rows()] for seg in self._require_built()])

    def __contains__(self, item_id) -> bool:
        key = np.asarray([item_id], np.int64)
        return any(seg.rows_of(key)[0][0] for seg in self._segments)

    def __len__(self) -> int:
        return sum(seg.n_live for seg in self._segments)

    def __repr__(self) -> str:
        if not self._segments:
            return f"Engine({self.model}, empty)"
        return (f"Engine({self.model}, n={len(self)}, {len(self._segments)} segment(s), "
                f"{self.bytes_per_item():.1f} bytes/item)")

    def nbytes(self) -> dict:
        """Bytes of each kind of index array, summed over segments: everything a search keeps besides the model."""
        out: dict = {}
        for seg in self._require_built():
            for name, size in seg.nbytes().items():
                out[name] = out.get(name, 0) + size
        return out

    def bytes_per_item(self) -> float:
        return sum(self.nbytes().values()) / max(1, len(self))

    def _forward_width(self) -> int:
        """Terms per item in the forward codes: k, plus one for a decoder bias."""
        return self.config["k"] + (self.model.decoder_bias is not None)

    def _require_built(self) -> tuple:
        if not self._segments:
            raise RuntimeError("the engine is empty: call build() first or Engine.load()")
        return self._segments

    # files
    def save(self, path) -> None:
        """Write the index directory (manifest.json, the model, one folder of .npy files per segment), atomically:
        a temporary directory beside it, renamed into place. Unchanged segment files mapped from disk are linked,
        not copied."""
        segments, has_delta = self._require_built(), self._has_delta
        writer = _IndexWriter(Path(path), self)
        try:
            writer.commit([writer.add(seg) for seg in segments], has_delta)
        except BaseException:
            writer.abort()
            raise

    @classmethod
    def load(cls, path, *, mmap: bool = True, model: CompresSAE | None = None, verify: bool = True,
             num_threads: int = -1) -> "Engine":
        """Open an index directory written by save. mmap=True maps the arrays instead of reading them.

        verify=True checks every file's SHA-256 (reads everything once); sizes and shapes are always checked.
        model: use this model instead of the saved one; it must be the model the index was built with.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no index directory at {path}")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} is not a csae index: no manifest.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}/manifest.json is damaged: {e}") from e
        if manifest.get("format") != "csae-engine index":
            raise ValueError(f"{path} is not a csae index (manifest format {manifest.get('format')!r})")
        if manifest.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{path}: index format version {manifest.get('format_version')}, this build reads "
                             f"{INDEX_FORMAT_VERSION}; rebuild the index with this version")
        _check_file(path / "model.csae", manifest["model_file_sha256"], verify)
        if model is None:
            model = load_model(path / "model.csae")
        if model_hash(model) != manifest["model_sha256"]:
            raise ValueError(f"{path} was built with a different model than the one given")
        engine = cls(model, num_threads=num_threads)
        engine.config = {key: manifest[key] for key in _CONFIG}
        segments = tuple(_load_segment(path, entry, engine.config, engine._forward_width(), mmap, verify)
                         for entry in manifest["segments"])
        if not segments:
            raise ValueError(f"{path}: the manifest lists no segments")
        engine._publish(segments, bool(manifest["has_delta"]))
        return engine


class _IndexWriter:
    """Writes an index directory segment by segment into a temporary directory beside it; commit renames it into
    place (replacing an older index there), abort removes it."""

    def __init__(self, path: Path, engine: Engine):
        if path.exists() and not (path / "manifest.json").exists():
            raise FileExistsError(f"{path} exists and is not a csae index; refusing to replace it")
        self.path, self.engine, self.entries = path, engine, []
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else "."))

    def add(self, seg: Segment) -> Segment:
        """Write seg as the next segment folder; returns it mapped from its new files."""
        name = f"seg-{len(self.entries):05d}"
        folder = self.tmp / name
        folder.mkdir()
        files = {}
        for array_name, arr in seg.arrays.items():
            target = folder / f"{array_name}.npy"
            source = seg.files.get(array_name)
            if not (source and _try_link(source, target)):
                np.save(target, arr, allow_pickle=False)
                source = (None, _sha256(target), None)
            files[f"{array_name}.npy"] = source[1]
        if seg.live is not None:
            np.save(folder / "live.npy", seg.live, allow_pickle=False)
            files["live.npy"] = _sha256(folder / "live.npy")
        self.entries.append({"dir": name, "n": seg.n, "first_id": seg.first_id, "files": files,
                             "dtypes": {a: str(arr.dtype) for a, arr in seg.arrays.items()}})
        return _load_segment(self.tmp, self.entries[-1], self.engine.config, self.engine._forward_width(),
                             mmap=True, verify=False, final_dir=self.path)

    def commit(self, segments: list, has_delta: bool = False) -> None:
        engine = self.engine
        engine.model.save(self.tmp / "model.csae")
        manifest = {"format": "csae-engine index", "format_version": INDEX_FORMAT_VERSION, **engine.config,
                    "n": sum(seg.n_live for seg in segments), "model_sha256": model_hash(engine.model),
                    "model_file_sha256": _sha256(self.tmp / "model.csae"), "has_delta": has_delta,
                    "segments": self.entries}
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old)  # mapped files stay readable until unmapped
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _load_segment(root: Path, entry: dict, cfg: dict, fwd_width: int, mmap: bool, verify: bool,
                  final_dir: Path | None = None) -> Segment:
    """A segment from its folder under root. final_dir: where root will be renamed to (for the file links)."""
    folder = root / entry["dir"]
    arrays, files = {}, {}
    for name, dtype in entry["dtypes"].items():
        if name not in _ARRAYS:
            raise ValueError(f"{folder}: unknown array {name!r} in the manifest")
        arrays[name] = _load_array(folder / f"{name}.npy", entry["files"].get(f"{name}.npy"), dtype, mmap, verify)
        files[name] = ((final_dir or root) / entry["dir"] / f"{name}.npy", entry["files"][f"{name}.npy"],
                       os.stat(folder / f"{name}.npy").st_ino)
    live = None
    if "live.npy" in entry["files"]:
        live = np.array(_load_array(folder / "live.npy", entry["files"]["live.npy"], "uint8", False, verify))
    _check_shapes(arrays, entry["n"], live, cfg, fwd_width, folder)
    return Segment(arrays, entry["first_id"], live, files if mmap else None)


def _load_array(path: Path, digest, dtype: str, mmap: bool, verify: bool) -> np.ndarray:
    if digest is None:
        raise ValueError(f"{path}: no checksum in the manifest")
    _check_file(path, digest, verify)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path} is damaged or truncated ({e})") from e
    if str(arr.dtype) != dtype:
        raise ValueError(f"{path} has dtype {arr.dtype}, expected {dtype}")
    return arr


def _check_file(path: Path, digest: str, verify: bool) -> None:
    if not path.exists():
        raise ValueError(f"{path} is missing")
    if verify and _sha256(path) != digest:
        raise ValueError(f"{path} is corrupted (checksum mismatch)")


def _try_link(source: tuple, target: Path) -> bool:
    """Hard-link the file a segment array is mapped from, if it is still that very file."""
    path, _, inode = source
    try:
        if os.stat(path).st_ino != inode:
            return False
        os.link(path, target)
        return True
    except OSError:
        return False


def _global_candidates(results: list, n_sparse: int) -> list:
    """Per segment, its rows among the best n_sparse of all segments' (rows, scores); -1 elsewhere."""
    if len(results) == 1:
        return [results[0][0]]
    scores = np.concatenate([r[1] for r in results], axis=1)
    chosen = np.zeros(scores.shape, bool)
    np.put_along_axis(chosen, np.argsort(-scores, axis=1, kind="stable")[:, :n_sparse], True, 1)
    out, start = [], 0
    for rows, _ in results:
        out.append(np.where(chosen[:, start:start + rows.shape[1]], rows, -1))
        start += rows.shape[1]
    return out


def _merge_top(results: list, top_k: int):
    """The best top_k of per-segment (ids, scores), each (nq, <= top_k) best first; ties keep segment order."""
    if len(results) == 1 and results[0][0].shape[1] == top_k:
        return results[0]
    ids = np.concatenate([r[0] for r in results], axis=1)
    scores = np.concatenate([r[1] for r in results], axis=1)
    if ids.shape[1] < top_k:
        pad = top_k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def _as_id_array(ids, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {ids.dtype}")
    return ids.astype(np.int64)


def _check_ids(ids, n: int, required: bool = False) -> np.ndarray | None:
    if ids is None:
        if required:
            raise ValueError("ids are required: one int64 per added row")
        return None
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per item, shape ({n},), got {ids.shape}")
    ids = _as_id_array(ids, "ids")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"id {int(uniq[np.argmax(counts > 1)])} appears more than once")
    return ids


def _prune_mask(indices: np.ndarray, values: np.ndarray, h: int, keep_share: float) -> np.ndarray:
    """(n, k) mask keeping, in each latent's posting list, the ceil(keep_share * length) largest |values|."""
    lat = indices.reshape(-1).astype(np.int64)
    mag = np.abs(values.reshape(-1).astype(np.float32))
    order = np.lexsort((-mag, lat))  # by latent, strongest first
    counts = np.bincount(lat, minlength=h)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(lat)) - np.repeat(starts, counts)
    keep_sorted = rank < np.ceil(keep_share * np.repeat(counts, counts))
    keep = np.empty(len(lat), np.uint8)
    keep[order] = keep_sorted
    return keep.reshape(indices.shape)


def _check_shapes(a: dict, n: int, live, cfg: dict, fwd_width: int, path) -> None:
    h = cfg["h"]
    windows = (n + (1 << cfg["window_bits"]) - 1) >> cfg["window_bits"]
    expected = {"offsets": (windows * h + 1,), "fwd_indices": (n, fwd_width), "fwd_values": (n, fwd_width),
                "ids": (n,)}
    missing = set(_ARRAYS) - {"ids"} - set(a)
    if missing:
        raise ValueError(f"{path}: the manifest lists no {sorted(missing)}")
    for name, shape in expected.items():
        if name in a and a[name].shape != shape:
            raise ValueError(f"{path}: {name}.npy has shape {a[name].shape}, expected {shape}")
    if live is not None and live.shape != (n,):
        raise ValueError(f"{path}: live.npy has shape {live.shape}, expected ({n},)")
    total = int(a["offsets"][-1])
    if a["local_ids"].shape != (total,) or a["post_values"].shape != (total,):
        raise ValueError(f"{path}: posting arrays do not match the offsets")


def _sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
