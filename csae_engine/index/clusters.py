"""Clusters of a segment's posting codes, for approximate sparse search (cpp/clusters.h).

Spherical k-means in code space on a sample of the unit codes; each centroid keeps its strongest
CENTROID_TERMS latents (renormalised), stored latent-major so a query scores every centroid with k list walks.
Every item then goes to its best centroid, and the segment numbers its rows cluster by cluster. Beyond
FLAT_CLUSTERS clusters (10M items at 512 a cluster: 19,532), scoring every centroid for every item would dominate
the build, so the centroids are themselves clustered into about sqrt(C) groups and each item scores the centroids
of its PROBE_GROUPS best groups only.
"""
import math

import numpy as np
import scipy.sparse as sp

from .. import _core

__all__ = ["CENTROID_TERMS", "SAMPLE_PER_CLUSTER", "Clusters", "cluster_codes", "clusters_for"]

CENTROID_TERMS = 128  # latents each centroid keeps
SAMPLE_PER_CLUSTER = 64  # k-means trains on this many items per cluster (at most all items)
ITERATIONS = 8
PROBE_GROUPS = 16  # beyond FLAT_CLUSTERS: groups of centroids a code searches for its best
FLAT_CLUSTERS = 4096  # up to this many clusters, codes are assigned by scoring every centroid


class Clusters:
    """A clustering of n codes: order (rows cluster by cluster), cluster_rows (C + 1 boundaries) and the centroid
    lists (offsets (h + 1,) int64, clusters uint32, weights float32) as SegmentIndex.with_clusters takes them."""

    def __init__(self, assign: np.ndarray, lists: tuple, n_clusters: int):
        self.order = np.argsort(assign, kind="stable")
        sizes = np.bincount(assign, minlength=n_clusters)
        self.cluster_rows = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.lists = lists
        self.n_clusters = n_clusters


def clusters_for(n: int, cluster_size: int) -> int:
    """Clusters for n items at about cluster_size items each (at least 1)."""
    return max(1, -(-n // cluster_size))


def cluster_codes(indices: np.ndarray, values: np.ndarray, h: int, n_clusters: int, *, seed: int = 0,
                  iterations: int = ITERATIONS, num_threads: int = -1) -> Clusters:
    """Spherical k-means of the codes (indices (n, m) uint32, values (n, m) float32, any row scale)."""
    n = len(indices)
    n_clusters = min(n_clusters, n)
    indices = np.ascontiguousarray(indices, np.uint32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    values = np.ascontiguousarray(np.where(norms > 0, values / np.maximum(norms, 1e-30), 0), np.float32)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE_PER_CLUSTER * n_clusters), replace=False))
    sample_idx, sample_val = indices[sample], values[sample]
    codes = _as_csr(sample_idx, sample_val, h)
    centroids = codes[rng.choice(len(sample), n_clusters, replace=False)]
    for _ in range(iterations):
        assign = _assign(sample_idx, sample_val, centroids, h, num_threads)
        members = sp.csr_matrix((np.ones(len(sample), np.float32), (assign, np.arange(len(sample)))),
                                shape=(n_clusters, len(sample)))
        centroids = (members @ codes).tocsr()
        empty = np.flatnonzero(np.diff(centroids.indptr) == 0)
        if len(empty):  # reseeded with random sample codes
            picks = rng.choice(len(sample), len(empty), replace=False)
            reseed = sp.csr_matrix((np.ones(len(empty), np.float32), (empty, picks)), shape=members.shape)
            centroids = (centroids + reseed @ codes).tocsr()
    return Clusters(_assign(indices, values, centroids, h, num_threads), centroid_lists(centroids, h),
                    n_clusters)


def _assign(indices: np.ndarray, values: np.ndarray, centroids: sp.csr_matrix, h: int,
            num_threads: int) -> np.ndarray:
    """Each code's best centroid (as routing scores them: centroid_lists): exactly, up to FLAT_CLUSTERS centroids;
    beyond, the best among those of the code's PROBE_GROUPS best groups, the centroids themselves clustered into
    about sqrt(C) groups (a code then scores ~PROBE_GROUPS sqrt(C) centroids, not C)."""
    C = centroids.shape[0]
    lists = centroid_lists(centroids, h)
    if C <= FLAT_CLUSTERS:
        return _core.assign_clusters(indices, values, *lists, C, num_threads)
    cent_idx, cent_val = _padded(_lists_csr(lists, C, h))  # the centroids as routing scores them
    groups = cluster_codes(cent_idx, cent_val, h, math.isqrt(C), num_threads=num_threads)
    sizes = np.diff(groups.cluster_rows)
    kept = np.flatnonzero(sizes)
    group_ids = np.full(groups.n_clusters, -1, np.int64)
    group_ids[kept] = np.arange(len(kept))
    rank = np.empty(C, np.int64)
    rank[groups.order] = np.arange(C)  # clusters renumbered group by group
    local = _core.assign_clusters_grouped(indices, values, *_renumbered(groups.lists, group_ids),
                                          *_renumbered(lists, rank), np.concatenate([[0], np.cumsum(sizes[kept])]),
                                          PROBE_GROUPS, num_threads)
    return groups.order[local].astype(np.int32)


def _renumbered(lists: tuple, new_id: np.ndarray) -> tuple:
    """Centroid lists with cluster c renamed new_id[c] (-1: dropped), each latent's entries in the new order."""
    offsets, members, weights = lists
    latent = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    ids = new_id[members]
    keep = ids >= 0
    latent, ids, weights = latent[keep], ids[keep], weights[keep]
    order = np.lexsort((ids, latent))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(latent, minlength=len(offsets) - 1))]).astype(np.int64)
    return offsets, ids[order].astype(np.uint32), np.ascontiguousarray(weights[order])


def _lists_csr(lists: tuple, n_clusters: int, h: int) -> sp.csr_matrix:
    """Latent-major centroid lists back to an (n_clusters, h) matrix."""
    offsets, members, weights = lists
    return sp.csc_matrix((weights, members, offsets), shape=(n_clusters, h)).tocsr()


def _padded(rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """A CSR matrix's rows as (n, m) indices uint32 and values float32, padded with zero values."""
    m = max(1, int(np.diff(rows.indptr).max()))
    idx, val = np.zeros((rows.shape[0], m), np.uint32), np.zeros((rows.shape[0], m), np.float32)
    for i in range(rows.shape[0]):
        lo, hi = rows.indptr[i], rows.indptr[i + 1]
        idx[i, :hi - lo], val[i, :hi - lo] = rows.indices[lo:hi], rows.data[lo:hi]
    return idx, val


def centroid_lists(centroids: sp.csr_matrix, h: int) -> tuple:
    """(offsets, clusters, weights): each row's strongest CENTROID_TERMS entries, unit norm, latent-major."""
    rows, cols, vals = [], [], []
    for c in range(centroids.shape[0]):
        lo, hi = centroids.indptr[c], centroids.indptr[c + 1]
        idx, val = centroids.indices[lo:hi], centroids.data[lo:hi]
        if len(idx) > CENTROID_TERMS:
            top = np.argpartition(-np.abs(val), CENTROID_TERMS - 1)[:CENTROID_TERMS]
            idx, val = idx[top], val[top]
        norm = np.linalg.norm(val)
        rows.append(np.full(len(idx), c, np.uint32))
        cols.append(idx)
        vals.append(val / norm if norm > 0 else val)
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols).astype(np.int64), np.concatenate(vals)
    order = np.lexsort((rows, cols))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=h))]).astype(np.int64)
    return offsets, np.ascontiguousarray(rows[order]), np.ascontiguousarray(vals[order], np.float32)


def _as_csr(indices: np.ndarray, values: np.ndarray, h: int) -> sp.csr_matrix:
    n, m = indices.shape
    return sp.csr_matrix((values.ravel(), indices.ravel().astype(np.int64), np.arange(0, n * m + 1, m)),
                         shape=(n, h))
