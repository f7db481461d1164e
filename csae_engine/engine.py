"""The search engine: an inverted index over sparse codes, searched exactly in C++, with a dense rerank.

    engine = Engine(model).build(X, ids=ids)
    ids, scores = engine.search(Q, top_k=10, mode="sparse" | "dense")

Sparse mode scores cos(code(q), code(x)) through the windowed inverted index (cpp/index.h): exactly, or over the
best clusters (probe < 1, cpp/clusters.h). Dense mode takes sparse candidates (or every item) and scores
cos(q, x_hat) as sum_j v_j p[i_j] / |x_hat| with p = W_dec q once per query (cpp/rerank.h): O(k) per candidate.

The index is a tuple of immutable segments (index/segment.py): the shards of the main index, then at most one delta
segment that takes added items. Deletes are tombstones (a per-segment live mask) applied inside the scorer;
compact() rebuilds. A search reads one snapshot of the tuple, so updates never show it a half-written state.
"""
import threading
from pathlib import Path

import numpy as np

from .codes import SparseCodes
from .compact import CompactCodes
from .index.build import (WINDOW_BITS, decode_forward, forward_codes, join_postings, live_postings, make_segment,
                          merge_segments)
from .index.items import encode_items, forward_budget
from .index.query import QueryEncoder, query_rows
from .index.search import SearchParams, allowed_masks, search_segments
from .index.segment import FORWARD_ARRAYS, Segment, as_id_array, check_ids
from .index.storage import CONFIG_KEYS, IndexWriter, load_residual, load_segments, read_manifest
from .models import TopKSAE, load_model, model_hash
from .utils import positive_int, progress_bar

__all__ = ["Engine", "DEFAULT_SHARD_SIZE", "DEFAULT_BYTES_PER_ITEM"]

DEFAULT_SHARD_SIZE = 1 << 22  # items per shard when building to disk
DEFAULT_BYTES_PER_ITEM = 128  # forward code bytes per item that build() stores by default (signed models)


class Engine:
    """Compressed vector search over a TopK autoencoder's codes. Any number of threads may search at once, also
    while another thread adds, deletes or compacts (updates are serialised among themselves).

    Parameters
    ----------
    model : TopKSAE
        Encodes items and queries; its decoder scores dense mode.
    num_threads : int
        Threads for build and search; -1 means all cores.
    """

    def __init__(self, model: TopKSAE, *, num_threads: int = -1):
        if not isinstance(model, TopKSAE):
            raise TypeError(f"Engine needs a TopKSAE model (CompresSAE or CSR), got {type(model).__name__}")
        self.model = model.eval()
        self.num_threads = num_threads
        self.config: dict = {}
        self.queries: QueryEncoder | None = None  # made with the config: encodes queries for this index
        self.residual = None  # the ResidualQuantizer of the forward rows' residual codes, if they hold any
        self._segments: tuple[Segment, ...] = ()  # main shards, then the delta segment if _has_delta
        self._has_delta = False
        self._write_lock = threading.Lock()

    @property
    def segments(self) -> tuple:
        """The current segments (read-only snapshot): main shards, then the delta segment if any."""
        return self._segments

    # building
    @classmethod
    def from_codes(cls, codes: SparseCodes, model: TopKSAE, ids=None, *, prune: float | None = None,
                   num_threads: int = -1) -> "Engine":
        """An engine over codes already encoded by model."""
        return cls(model, num_threads=num_threads).build_codes(codes, ids, prune=prune)

    def build(self, X, ids=None, *, bytes_per_item: int | None = None, residual_bytes: int | None = None,
              value_bits: int | None = None, index_coding: str | None = None, support: str | None = None,
              index_terms: int | None = None, cluster_size: int | None = None,
              batch_size: int = 8192, prune: float | None = None, shard_size: int | None = None, directory=None,
              progress: bool | None = None) -> "Engine":
        """Encode the rows of X and index them.

        Parameters
        ----------
        X : array, np.memmap or path to a .npy, (n, d)
        ids : (n,) int64, optional
            Returned by search; default: the row numbers 0..n-1, which cost no memory.
        bytes_per_item : int, optional
            Bytes of forward code per item for dense mode (default DEFAULT_BYTES_PER_ITEM for signed models;
            CSR models store their k entries with float16 values): a compact code (model.encode(X,
            bytes_per_item=...): as many refitted, quantised entries as fit), then residual_bytes of residual code
            and a float16 weight. For float16 codes of the model's k, use build_codes(model.encode(X)).
        residual_bytes : int, optional
            Bytes of product-quantised residual x - x_hat per item (csae_engine/residual.py), trained on these
            items; 0 for none; default residual.residual_split.
        value_bits : int, optional
            Bits per value of compact codes (default DEFAULT_VALUE_BITS).
        index_coding : {"packed", "ef"}, optional
            How compact codes store their latents (compact.py; default DEFAULT_INDEX_CODING): fixed-width, or
            Elias-Fano coded sorted sets, which fit more entries in the same bytes.
        support : {"encoder", "pursuit"}, optional
            How compact codes choose their latents (default index.items.DEFAULT_SUPPORT; see model.encode).
        index_terms : int, optional
            The strongest entries of each code that the posting lists hold (sparse mode and the candidates of
            dense mode); default: the model's k, at most the code's entries.
        cluster_size : int, optional
            Cluster each shard into groups of about this many items (index/clusters.py) for search(probe=...).
        prune : float, optional
            Keep only this share (0 < prune <= 1) of each posting list, its largest |values| (approximate).
        shard_size : int, optional
            Items per shard (segment); default one shard, or DEFAULT_SHARD_SIZE with directory.
        directory : path, optional
            Build larger than memory: each shard is written there as soon as it is encoded and mapped back, so
            memory holds one shard's work at a time; the directory is then a saved index (Engine.load reads it).

        Returns
        -------
        Engine
            self.
        """
        X = self.model.check_input(X)
        n = X.shape[0]
        ids = check_ids(ids, n)
        if shard_size is None and directory is not None:
            shard_size = DEFAULT_SHARD_SIZE
        if shard_size is not None:
            shard_size = positive_int(shard_size, "shard_size")
        if bytes_per_item is None and self.model.signed:
            bytes_per_item = DEFAULT_BYTES_PER_ITEM
        forward = forward_budget(self.model, bytes_per_item, residual_bytes, value_bits, index_coding, support)
        compact = bytes_per_item is not None
        self._set_config(forward["k"], compact, forward["value_bits"], forward["index_coding"], np.float16, prune,
                         shard_size, index_terms, forward["residual_m"], "encoder" if compact else "forward",
                         forward["support"], cluster_size)
        step = n if shard_size is None else shard_size
        writer = None if directory is None else IndexWriter(Path(directory), self.config)
        segments = []
        try:
            for start in progress_bar(range(0, n, step), total=-(-n // step), desc="build shards", unit="shard",
                                      progress=progress if n > step else False, items=n):
                stop = min(n, start + step)
                rows = X[start:stop] if step < n else X
                fit = start == 0 and self.config["residual_m"] > 0  # the first shard trains the residual
                fwd, postings, residual = encode_items(self.model, rows, self.config, self.residual,
                                                       fit_residual=fit, batch_size=batch_size,
                                                       progress=progress if step >= n else False)
                if fit:
                    self.residual = residual
                    self.queries = QueryEncoder(self.model, self.config["index_terms"], residual)
                seg = make_segment(fwd, None if ids is None else ids[start:stop], self.config, self.num_threads,
                                   start, postings, cluster=True)
                segments.append(seg if writer is None else writer.add(seg))
            if writer is not None:
                writer.commit(self.model, model_hash(self.model), segments, residual=self.residual)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self._publish(tuple(segments), False)
        return self

    def build_codes(self, codes, ids=None, *, prune: float | None = None, shard_size: int | None = None,
                    index_terms: int | None = None, cluster_size: int | None = None) -> "Engine":
        """Index SparseCodes or CompactCodes encoded by this engine's model (8-bit codes are indexed as float16);
        the options are build's."""
        if not isinstance(codes, (SparseCodes, CompactCodes)):
            raise TypeError(f"expected SparseCodes or CompactCodes, got {type(codes).__name__}")
        if codes.h != self.model.h:
            raise ValueError(f"codes have h={codes.h}, the model has h={self.model.h}")
        if codes.n >= 2**32:
            raise ValueError(f"{codes.n} items exceed one index's 2^32 - 1")
        ids = check_ids(ids, codes.n)
        packed = isinstance(codes, CompactCodes)
        self._set_config(codes.k, packed, codes.value_bits if packed else None,
                         codes.index_coding if packed else None,
                         np.float16 if packed or codes.quantized else codes.values.dtype,  # 8-bit: as float16
                         prune, shard_size, index_terms, 0, "forward", "encoder" if packed else None, cluster_size)
        step = codes.n if shard_size is None else shard_size
        forward = self._forward(codes)
        segments = tuple(make_segment({name: arr[s:s + step] for name, arr in forward.items()},
                                      None if ids is None else ids[s:s + step], self.config, self.num_threads, s,
                                      cluster=True) for s in range(0, codes.n, step))
        self._publish(segments, False)
        return self

    def _set_config(self, k, packed, value_bits, index_coding, value_dtype, prune, shard_size, index_terms,
                    residual_m, postings, support, cluster_size=None) -> None:
        """The index's config (see csae_engine/index/storage.py). postings: "forward" (the strongest index_terms
        entries of the forward codes) or "encoder" (the encoder's codes of index_terms entries)."""
        if prune is not None and not 0 < prune <= 1:
            raise ValueError(f"prune must be in (0, 1], got {prune}")
        if cluster_size is not None:
            positive_int(cluster_size, "cluster_size")
        most = k if postings == "forward" else self.model.h
        if index_terms is None:  # encoder postings: the model's k, whatever the forward code holds
            index_terms = min(self.model.k, most) if packed else k
        if not positive_int(index_terms, "index_terms") <= most:
            raise ValueError(f"index_terms={index_terms} exceeds the codes' {most} entries")
        self.config = {"h": self.model.h, "k": k, "window_bits": WINDOW_BITS, "prune": prune,
                       "value_dtype": str(np.dtype(value_dtype)), "shard_size": shard_size,
                       "forward": "packed" if packed else "plain", "index_terms": index_terms,
                       "value_bits": value_bits, "index_coding": index_coding,
                       "forward_bias": self.model.decoder_bias is not None, "residual_m": residual_m,
                       "postings": postings, "support": support, "cluster_size": cluster_size}
        self.residual = None
        self.queries = QueryEncoder(self.model, index_terms)

    def _forward(self, codes) -> dict:
        packed = isinstance(codes, CompactCodes)
        coding = codes.index_coding if packed else None
        if (codes.k != self.config["k"] or packed != (self.config["forward"] == "packed")
                or coding != self.config["index_coding"]):
            raise ValueError(f"codes have k={codes.k} ({type(codes).__name__}, index coding {coding}), the index "
                             f"stores {self.config['forward']} codes of k={self.config['k']} (index coding "
                             f"{self.config['index_coding']})")
        return forward_codes(self.model, codes)

    def _segment(self, forward: dict, ids, first_id: int = 0, postings=None) -> Segment:
        return make_segment(forward, ids, self.config, self.num_threads, first_id, postings)

    def _publish(self, segments: tuple, has_delta: bool) -> None:
        self._segments, self._has_delta = segments, has_delta  # one tuple swap: searches see old or new, whole

    def _require_built(self) -> tuple:
        if not self._segments:
            raise RuntimeError("the engine is empty: call build() first or Engine.load()")
        return self._segments

    # updates
    def add(self, X, ids, *, batch_size: int = 8192, progress: bool | None = None) -> "Engine":
        """Encode and index new rows of X under ids (int64, required); an id already indexed is replaced (upsert).
        New items go to the delta segment, searched with the main index until compact()."""
        self._require_built()
        X = self.model.check_input(X)
        ids = check_ids(ids, X.shape[0], required=True)
        forward, postings, _ = encode_items(self.model, X, self.config, self.residual, batch_size=batch_size,
                                            progress=progress)
        with self._write_lock:
            segments = [seg.without_rows(seg.rows_of(ids)[1]) for seg in self._segments]
            if self._has_delta:
                old = segments.pop()
                rows = old.live_rows()
                forward = {name: np.concatenate([old.arrays[name][rows], arr]) for name, arr in forward.items()}
                ids = np.concatenate([old.ids()[rows], ids])
                if postings is not None:
                    postings = join_postings([live_postings(old, rows, self.config), postings])
            self._publish(tuple(segments) + (self._segment(forward, ids, postings=postings),), True)
        return self

    def delete(self, ids) -> "Engine":
        """Remove items by id (tombstones, honoured by every search at once; compact() reclaims the space).
        An id that is not indexed raises KeyError and nothing is deleted."""
        self._require_built()
        ids = np.unique(as_id_array(ids, "ids"))
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
        merge = lambda parts: merge_segments(parts, self.config, self.num_threads)  # noqa: E731
        with self._write_lock:
            segments, has_delta = list(self._segments), self._has_delta
            delta = segments.pop() if has_delta else None
            shard_size = self.config["shard_size"]
            if shard_size is None:
                parts = segments + ([delta] if delta else [])
                if len(parts) == 1 and parts[0].live is None:
                    return self
                merged = [merge(parts)]
            else:
                merged = [seg if seg.live is None else merge([seg]) for seg in segments]
                if delta is not None:
                    if merged and merged[-1].n_live + delta.n_live <= shard_size:
                        merged[-1] = merge([merged[-1], delta])
                    else:
                        merged.append(merge([delta]))
            self._publish(tuple(seg for seg in merged if seg.n > 0) or (merged[0],), False)
        return self

    # searching
    def search(self, Q, top_k: int = 10, mode: str = "sparse", *, candidates=None, query_terms: int | None = None,
               probe: float | None = None, allow_ids=None,
               num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top_k items for each query row of Q (nq, d).

        Parameters
        ----------
        Q : (nq, d) array
        top_k : int
        mode : {"sparse", "dense"}
            sparse: cosine between sparse codes, exact over the index (unless built with prune).
            dense: cosine between q and each item's reconstruction, over ``candidates`` from sparse mode
            (default max(1000, 10 * top_k)) or over every item with candidates="all".
        query_terms : int, optional
            Use only the strongest terms of each query code in sparse mode (approximate, faster).
        probe : float in (0, 1], optional
            Approximate (needs build(cluster_size=...)): the sparse stage visits the best clusters until this share
            of the allowed items, and at least top_k or candidates, is covered; default 1, every item.
        allow_ids : array of ids, or bool mask over ids (mask[id]), optional
            A filter applied inside the scorer, so a query gets top_k results whenever top_k items pass it.
        num_threads : int, optional
            Default: the engine's.

        Returns
        -------
        ids : (nq, top_k) int64
        scores : (nq, top_k) float32
            Best first; when fewer than top_k items pass the filter, padded with id -1 and score -inf.
        """
        segments = self._require_built()  # one snapshot for the whole search
        params = SearchParams(top_k, mode, candidates, query_terms, probe)
        params.check(sum(seg.n_live for seg in segments), self.config["index_terms"], self.config["cluster_size"])
        Q = query_rows(self.model, Q)
        masks = allowed_masks(segments, allow_ids)
        threads = self.num_threads if num_threads is None else num_threads
        return search_segments(segments, masks, Q, params, self.queries, threads)

    def reconstruct(self, ids) -> np.ndarray:
        """(len(ids), d) float32: the unit vectors dense mode scores for the given item ids (x_hat / |x_hat|, the
        residual code included): an item's dense score for a unit query q is q . reconstruct([id])[0]. KeyError
        for an id that is not indexed."""
        ids = as_id_array(ids, "ids")
        out = np.empty((len(ids), self.model.d), np.float32)
        found = np.zeros(len(ids), bool)
        for seg in self._require_built():
            here, rows = seg.rows_of(ids)
            where = np.flatnonzero(here)
            new = ~found[where]
            where, rows = where[new], rows[new]
            if len(where):
                forward = {name: np.asarray(seg.arrays[name])[rows] for name in FORWARD_ARRAYS if name in seg.arrays}
                out[where] = decode_forward(self.model, forward, self.config, self.residual)
                found[where] = True
        if not found.all():
            raise KeyError(f"unknown id {int(ids[~found][0])}")
        return out

    def iter_codes(self, batch_size: int = 1 << 16):
        """The live indexed codes, exactly as scored in sparse mode (unit-norm rows), in batches:
        yields (ids (b,) int64, scipy.sparse.csr_matrix (b, h) float32)."""
        for seg in self._require_built():
            yield from seg.iter_codes(batch_size)

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
        """All index bytes (nbytes) over the live items."""
        return sum(self.nbytes().values()) / max(1, len(self))

    # files
    def save(self, path) -> None:
        """Write the index directory (index/storage.py), atomically: a temporary directory beside it, renamed into
        place. Unchanged segment files mapped from disk are linked, not copied."""
        segments, has_delta = self._require_built(), self._has_delta
        writer = IndexWriter(Path(path), self.config)
        try:
            writer.commit(self.model, model_hash(self.model), [writer.add(seg) for seg in segments], has_delta,
                          self.residual)
        except BaseException:
            writer.abort()
            raise

    @classmethod
    def load(cls, path, *, mmap: bool = True, model: TopKSAE | None = None, verify: bool = True,
             num_threads: int = -1) -> "Engine":
        """Open an index directory written by save.

        Parameters
        ----------
        mmap : bool
            Map the arrays instead of reading them.
        model : TopKSAE, optional
            Use this model instead of the saved one; it must be the model the index was built with.
        verify : bool
            Check every file's SHA-256 (reads everything once); sizes and shapes are always checked.
        """
        manifest, model_file = read_manifest(path, verify)
        if model is None:
            model = load_model(model_file)
        if model_hash(model) != manifest["model_sha256"]:
            raise ValueError(f"{path} was built with a different model than the one given")
        engine = cls(model, num_threads=num_threads)
        engine.config = {key: manifest[key] for key in CONFIG_KEYS}
        engine.residual = load_residual(path, manifest, model.d, verify)
        engine.queries = QueryEncoder(model, engine.config["index_terms"], engine.residual)
        width = engine.config["k"] + (model.decoder_bias is not None)
        engine._publish(load_segments(path, manifest, width, mmap, verify), bool(manifest["has_delta"]))
        return engine
