"""Clusters of a segment's posting codes, for approximate sparse search (cpp/clusters.h).

Spherical k-means in code space on a sample of the unit codes; each centroid keeps its strongest
CENTROID_TERMS latents (renormalised), stored latent-major so a query scores every centroid with k list walks.
Every item then goes to its best centroid, and the segment numbers its rows cluster by cluster.
"""
import numpy as np
import scipy.sparse as sp

from .. import _core

__all__ = ["CENTROID_TERMS", "SAMPLE_PER_CLUSTER", "Clusters", "cluster_codes", "clusters_for"]

CENTROID_TERMS = 128  # latents each centroid keeps
SAMPLE_PER_CLUSTER = 64  # k-means trains on this many items per cluster (at most all items)
ITERATIONS = 8


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
        lists = centroid_lists(centroids, h)
        assign = _core.assign_clusters(sample_idx, sample_val, *lists, n_clusters, num_threads)
        members = sp.csr_matrix((np.ones(len(sample), np.float32), (assign, np.arange(len(sample)))),
                                shape=(n_clusters, len(sample)))
        centroids = (members @ codes).tocsr()
        empty = np.flatnonzero(np.diff(centroids.indptr) == 0)
        if len(empty):  # reseeded with random sample codes
            picks = rng.choice(len(sample), len(empty), replace=False)
            reseed = sp.csr_matrix((np.ones(len(empty), np.float32), (empty, picks)), shape=members.shape)
            centroids = (centroids + reseed @ codes).tocsr()
    lists = centroid_lists(centroids, h)
    return Clusters(_core.assign_clusters(indices, values, *lists, n_clusters, num_threads), lists, n_clusters)


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
