"""Search over segments: one parameters object, and the two modes composed of a proposer and a rescorer.

sparse: the exact windowed scorer of cpp/scorer.h ranks items by the dot product of unit sparse codes; with
probe < 1, clustered segments score only the clusters each query routes to (cpp/clusters.h).
dense: the sparse scorer proposes candidates over all segments (as one segment would), and the forward codes
rescore them by cos(q, x_hat) (cpp/rerank.h); candidates="all" scans every item instead.
"""
from dataclasses import dataclass

import numpy as np

from ..utils import positive_int
from .query import QueryEncoder
from .segment import as_id_array

__all__ = ["MODES", "DEFAULT_CANDIDATES", "SearchParams", "search_segments", "allowed_masks", "first_best",
           "merge_top"]

MODES = ("sparse", "dense")
# WordNet/MiniLM, 128 B codes: reranking 1,000 sparse candidates comes within 0.014 of scanning every item, 100
# fall 0.10 short (README, "Compact codes")
DEFAULT_CANDIDATES = 1000
DENSE_BATCH = 1024  # queries per dense-mode pass: their projections with residual tables take ~120 MB at h=4096


@dataclass(frozen=True)
class SearchParams:
    """The knobs of one search (FAISS's SearchParameters).

    Parameters
    ----------
    top_k : int
        Results per query.
    mode : {"sparse", "dense"}
    candidates : int, "all" or None
        Dense mode: sparse candidates per query to rerank (default max(DEFAULT_CANDIDATES, 10 * top_k)), or "all"
        to scan every item.
    query_terms : int or None
        Use only the strongest terms of each query code (approximate, faster); default all k.
    probe : float or None
        Share of each clustered segment's allowed items the sparse stage visits, best clusters first (at least
        the items it returns); None or 1: every item (exact).
    """

    top_k: int = 10
    mode: str = "sparse"
    candidates: int | str | None = None
    query_terms: int | None = None
    probe: float | None = None

    def check(self, n_items: int, k: int, cluster_size: int | None = None) -> None:
        """ValueError naming the knob that does not fit an index of n_items items with k terms per code, clustered
        at cluster_size (None: not clustered)."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        positive_int(self.top_k, "top_k")
        if self.top_k > n_items:
            raise ValueError(f"top_k={self.top_k} exceeds the {n_items} indexed items")
        if self.scans_all and self.candidates != "all":
            raise ValueError(f"candidates must be an int or 'all', got {self.candidates!r}")
        if self.mode == "dense" and self.candidates is not None and not self.scans_all:
            positive_int(self.candidates, "candidates")
        if self.mode == "dense" and not self.scans_all and self.sparse_top(n_items) < self.top_k:
            raise ValueError(f"candidates={self.candidates} must be at least top_k={self.top_k}")
        if self.query_terms is not None and not positive_int(self.query_terms, "query_terms") <= k:
            raise ValueError(f"query_terms must be in 1..{k}, got {self.query_terms!r}")
        if self.probe is not None:
            if isinstance(self.probe, bool) or not isinstance(self.probe, (int, float)):
                raise TypeError(f"probe must be a number in (0, 1], got {type(self.probe).__name__}")
            if not 0 < self.probe <= 1:
                raise ValueError(f"probe must be in (0, 1], got {self.probe}")
            if self.probe < 1 and cluster_size is None:
                raise ValueError("probe < 1 needs a clustered index: build it with cluster_size=...")
            if self.scans_all and self.probe < 1:
                raise ValueError('probe applies to the sparse stage; candidates="all" scans every item')

    @property
    def scans_all(self) -> bool:
        return self.mode == "dense" and isinstance(self.candidates, str)

    def sparse_top(self, n_items: int) -> int:
        """How many items the sparse scorer returns per query: top_k, or the dense mode's candidates (a scan of
        every item runs no sparse stage: top_k)."""
        if self.mode == "sparse" or self.scans_all:
            return self.top_k
        wanted = max(DEFAULT_CANDIDATES, 10 * self.top_k) if self.candidates is None else int(self.candidates)
        return min(n_items, wanted)


def search_segments(segments: tuple, masks: list, Q: np.ndarray, params: SearchParams, queries: QueryEncoder,
                    num_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The best params.top_k (user ids, scores) of unit query rows Q over segments, best first.

    masks: per segment, None or an (n,) uint8 mask of the rows that may be returned.
    """
    if params.mode == "dense" and len(Q) > DENSE_BATCH:  # bounds the projections: (batch, h + residual tables)
        parts = [search_segments(segments, masks, Q[s:s + DENSE_BATCH], params, queries, num_threads)
                 for s in range(0, len(Q), DENSE_BATCH)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    n = sum(seg.n_live for seg in segments)
    top_k, n_sparse = params.top_k, params.sparse_top(n)
    live = [(seg, mask) for seg, mask in zip(segments, masks) if seg.n_live > 0]
    P = queries.projections(Q, num_threads) if params.mode == "dense" else None
    if params.scans_all:
        results = [seg.index.scan(P, min(top_k, seg.n), num_threads, mask) for seg, mask in live]
    else:
        q_idx, q_val = queries.codes(Q, params.query_terms, num_threads)
        probe = 1.0 if params.probe is None else float(params.probe)
        results = [seg.index.search(q_idx, q_val, min(n_sparse, seg.n), num_threads, mask,
                                    probe if seg.clustered else 1.0, min(n_sparse, seg.n)) for seg, mask in live]
        if params.mode == "dense":
            results = [seg.index.rerank(P, rows, min(top_k, seg.n), num_threads)
                       for (seg, _), rows in zip(live, _global_candidates(results, n_sparse))]
    results = [(seg.user_ids(rows), scores) for (seg, _), (rows, scores) in zip(live, results)]
    return merge_top(results, top_k)


def allowed_masks(segments: tuple, allow_ids) -> list:
    """Per segment: None (every row may be returned) or a uint8 mask of live rows passing the filter.

    allow_ids: None, an array of the ids that may be returned, or a boolean mask over ids (mask[id]).
    """
    if allow_ids is None:
        return [seg.live for seg in segments]
    allow = np.asarray(allow_ids)
    if allow.dtype == bool:
        if allow.ndim != 1:
            raise ValueError(f"allow_ids as a mask must be 1-D (mask[id]), got shape {allow.shape}")
        allow = np.flatnonzero(allow)
    else:
        allow = as_id_array(allow, "allow_ids")
    return [seg.allowed_rows(allow) for seg in segments]


def _global_candidates(results: list, n_sparse: int) -> list:
    """Per segment, its rows among the best n_sparse of all segments' (rows, scores); -1 elsewhere."""
    if len(results) == 1:
        return [results[0][0]]
    chosen = first_best(np.concatenate([r[1] for r in results], axis=1), n_sparse)
    out, start = [], 0
    for rows, _ in results:
        out.append(np.where(chosen[:, start:start + rows.shape[1]], rows, -1))
        start += rows.shape[1]
    return out


def first_best(scores: np.ndarray, n: int) -> np.ndarray:
    """(nq, m) bool: each row's n highest scores, ties to the earlier column: the first n of a stable sort by
    descending score, found in linear time (a sort of 10 shards' 1,000 candidates took 0.26 ms a query)."""
    if n >= scores.shape[1]:
        return np.ones(scores.shape, bool)
    nth = -np.partition(-scores, n - 1, axis=1)[:, n - 1:n]
    above, tied = scores > nth, scores == nth
    room = n - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= room))


def merge_top(results: list, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best top_k of per-part (ids, scores), each (nq, <= top_k) best first; ties keep part order. Missing
    results are padded with id -1 and score -inf."""
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
