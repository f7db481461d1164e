"""Exact dense search and recall: the yardsticks for compressed search."""
import numpy as np

from .data import as_matrix, iter_batches, unit_rows

__all__ = ["exact_topk", "recall", "task_recall"]


def exact_topk(Q, X, k: int, *, batch_size: int = 8192) -> np.ndarray:
    """(nq, k) rows of X with the highest cosine to each query, best first (float32, exact)."""
    Q = unit_rows(as_matrix(Q, "Q")[:], 0, "Q")
    X = as_matrix(X)
    if k > X.shape[0]:
        raise ValueError(f"k={k} exceeds the {X.shape[0]} rows of X")
    best_s = np.empty((len(Q), 0), np.float32)
    best_i = np.empty((len(Q), 0), np.int64)
    for start, batch in iter_batches(X, batch_size):
        best_s = np.concatenate([best_s, Q @ batch.T], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(batch)), (len(Q), len(batch)))], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def task_recall(found: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Share of queries whose labelled answer (relevant, (nq,) rows) is among the first k found."""
    return float((np.asarray(found)[:, :k] == np.asarray(relevant)[:, None]).any(axis=1).mean())


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"found has {found.shape[0]} rows, truth has {truth.shape[0]}")
    if found.shape[1] < k or truth.shape[1] < k:
        raise ValueError(f"recall@{k} needs at least {k} columns in found and truth")
    hits = 0
    for start in range(0, len(found), 1000):
        f, t = found[start:start + 1000], truth[start:start + 1000]
        hits += (f[:, :, None] == t[:, None, :]).any(axis=2).sum()
    return float(hits) / (len(found) * k)
