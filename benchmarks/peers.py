"""The peers of benchmarks/compare.py: FAISS and plain baselines at a byte budget, each as a Method.

  truncation         the first d' dims, renormalised (what Matryoshka models allow; MiniLM was not trained for it)
  PCA                d' principal components of the items, fp32 / fp16 / int8 scalar quantisation
  binary             sign bits, Hamming distance; binary+rescore reranks candidates by exact dot product with
                     the full float32 vectors, which it therefore keeps
  PQ, OPQ            FAISS product quantisation, 8-bit codes (M bytes per item)
  flat, HNSW         FAISS IndexFlatIP (exact, the ceiling) and IndexHNSWFlat (float32 vectors + graph)
"""
import time

import numpy as np

DEFAULT_CANDIDATES = 1000    # dense rerank and binary rescoring: candidates per query
DEFAULT_OPQ_BYTES = (64, 128)  # OPQ's rotation training is the slowest peer: only at the two budgets we report
PQ_TRAIN_POINTS, OPQ_ITERATIONS = 32768, 10
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 128
TOP = 100                    # every method returns its top 100; recall@10 reads the first 10 columns


class Method:
    """One way to answer queries: search(Q, top_k, threads) -> (nq, top_k) item rows, best first.

    bytes_per_item: what the method keeps in memory per item to answer queries; constant_bytes: what it keeps
    regardless of n (a projection, codebooks, the model)."""

    def __init__(self, name, family, search, bytes_per_item, build_s, constant_bytes=0, **info):
        self.name, self.family, self.search = name, family, search
        self.bytes_per_item, self.build_s = bytes_per_item, build_s
        self.constant_bytes, self.info = constant_bytes, info


def set_threads(n: int) -> None:
    import faiss
    import torch
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)


def faiss_search(index, transform=None):
    def search(Q, top_k, threads):
        return index.search(np.ascontiguousarray(Q if transform is None else transform(Q), np.float32), top_k)[1]
    return search



def pca(X: np.ndarray):
    """(mean, components (d, d) rows by decreasing variance) of the rows of X."""
    mu = X.mean(axis=0, dtype=np.float64)
    C = (X.T.astype(np.float64) @ X) / len(X) - np.outer(mu, mu)
    _, V = np.linalg.eigh(C)
    return mu.astype(np.float32), np.ascontiguousarray(V[:, ::-1].T, np.float32)


def train_pq(pq, S: np.ndarray, niter: int = 20, seed: int = 1) -> None:
    """k-means per sub-space with faiss.Kmeans (several times faster here than ProductQuantizer.train)."""
    import faiss
    ds = pq.dsub
    cents = np.empty((pq.M, pq.ksub, ds), np.float32)
    for m in range(pq.M):
        km = faiss.Kmeans(ds, pq.ksub, niter=niter, seed=seed + m, max_points_per_centroid=1 << 20)
        km.train(np.ascontiguousarray(S[:, m * ds:(m + 1) * ds], np.float32))
        cents[m] = km.centroids
    faiss.copy_array_to_vector(cents.ravel(), pq.centroids)


def opq_rotation(S: np.ndarray, M: int, niter: int = OPQ_ITERATIONS) -> np.ndarray:
    """OPQ (Ge et al. 2013, non-parametric): alternate a PQ on S @ R with the orthogonal Procrustes R that best maps
    S onto its reconstruction. Returns R (d, d); items and queries are rotated as X @ R."""
    import faiss
    d = S.shape[1]
    R = np.eye(d, dtype=np.float32)
    for it in range(niter):
        pq = faiss.ProductQuantizer(d, M, 8)
        train_pq(pq, S @ R, niter=4, seed=it)
        Y = pq.decode(pq.compute_codes(np.ascontiguousarray(S @ R)))
        U, _, Vt = np.linalg.svd(S.T.astype(np.float64) @ Y)
        R = (U @ Vt).astype(np.float32)
    return R


def peer_methods(X: np.ndarray, peer_bytes, candidates: int = DEFAULT_CANDIDATES, log=print,
                 families=None, hnsw=(HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH), opq_bytes=DEFAULT_OPQ_BYTES):
    """Every peer at each budget in peer_bytes (where the budget fits the method), plus flat and HNSW.

    Yields Methods one at a time (so that only one peer's index is alive at once)."""
    import faiss
    n, d = X.shape
    want = lambda fam: families is None or fam in families

    t = time.perf_counter()
    mu, P = pca(X)
    pca_s = time.perf_counter() - t
    # items are centred, queries not: q . (x - mu) ranks like q . x, and is exact at d' = d
    coders = {"fp32": (4, lambda dd: faiss.IndexFlatIP(dd)),
              "fp16": (2, lambda dd: faiss.IndexScalarQuantizer(dd, faiss.ScalarQuantizer.QT_fp16,
                                                                faiss.METRIC_INNER_PRODUCT)),
              "int8": (1, lambda dd: faiss.IndexScalarQuantizer(dd, faiss.ScalarQuantizer.QT_8bit,
                                                                faiss.METRIC_INNER_PRODUCT))}
    for budget in peer_bytes:
        for kind, (width, make) in coders.items():
            dd = budget // width
            if budget % width or not 1 <= dd <= d:
                continue
            if kind != "int8" and want(f"truncation {kind}"):
                t = time.perf_counter()
                index = make(dd)
                Xt = X[:, :dd] / np.maximum(np.linalg.norm(X[:, :dd], axis=1, keepdims=True), 1e-12)
                index.train(Xt)
                index.add(Xt)
                trunc = lambda Q, dd=dd: Q[:, :dd] / np.maximum(np.linalg.norm(Q[:, :dd], axis=1, keepdims=True), 1e-12)
                yield Method(f"truncation {kind} d'={dd}", f"truncation {kind}", faiss_search(index, trunc),
                             width * dd, time.perf_counter() - t, dims=dd)
            if want(f"PCA {kind}"):
                t = time.perf_counter()
                index = make(dd)
                Xp = (X - mu) @ P[:dd].T
                index.train(Xp)
                index.add(Xp)
                consts = (dd + 1) * d * 4 + (2 * dd * 4 if kind == "int8" else 0)
                yield Method(f"PCA {kind} d'={dd}", f"PCA {kind}", faiss_search(index, lambda Q, dd=dd: Q @ P[:dd].T),
                             width * dd, pca_s + time.perf_counter() - t, constant_bytes=consts, dims=dd)
    sample = X[np.sort(np.random.default_rng(0).choice(n, min(n, PQ_TRAIN_POINTS), replace=False))]
    for budget in peer_bytes:
        for fam in ("PQ", "OPQ"):
            if d % budget or budget > d or not want(fam) or (fam == "OPQ" and budget not in opq_bytes):
                continue
            t = time.perf_counter()
            R = opq_rotation(sample, budget) if fam == "OPQ" else np.eye(d, dtype=np.float32)
            index = faiss.IndexPQ(d, budget, 8, faiss.METRIC_INNER_PRODUCT)
            train_pq(index.pq, sample @ R)
            index.is_trained = True
            index.add(X @ R)
            consts = 256 * d * 4 + (d * d * 4 if fam == "OPQ" else 0)
            rotate = None if fam == "PQ" else (lambda Q, R=R: Q @ R)
            yield Method(f"{fam} M={budget} (8-bit)", fam, faiss_search(index, rotate), budget,
                         time.perf_counter() - t, constant_bytes=consts, M=budget, train_points=len(sample))
    if want("binary") or want("binary+rescore"):
        t = time.perf_counter()
        nbits = (d + 7) // 8 * 8
        bits = lambda A: np.packbits(np.pad(A > 0, ((0, 0), (0, nbits - d))), axis=1)
        index = faiss.IndexBinaryFlat(nbits)
        index.add(bits(X))
        build_s = time.perf_counter() - t
        binary = lambda Q, top_k, threads: index.search(bits(Q), top_k)[1]

        def rescore(Q, top_k, threads, chunk=128):
            cand = index.search(bits(Q), min(n, max(candidates, top_k)))[1]
            out = np.empty((len(Q), top_k), np.int64)
            for s in range(0, len(Q), chunk):
                c = cand[s:s + chunk]
                scores = np.einsum("qcd,qd->qc", X[c], Q[s:s + chunk])
                order = np.argsort(-scores, axis=1)[:, :top_k]
                out[s:s + chunk] = np.take_along_axis(c, order, 1)
            return out
        if want("binary"):
            yield Method(f"binary sign ({nbits // 8} B, Hamming)", "binary", binary, nbits // 8, build_s, bits=nbits)
        if want("binary+rescore"):
            yield Method(f"binary + rescore {candidates} (keeps float32 vectors)", "binary+rescore", rescore,
                         nbits // 8 + 4 * d, build_s, bits=nbits, candidates=candidates)
    if want("flat"):
        t = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(X)
        yield Method("FAISS IndexFlatIP (exact, float32)", "flat", faiss_search(index), 4 * d,
                     time.perf_counter() - t)
    if want("HNSW"):
        M, efc, efs = hnsw
        t = time.perf_counter()
        index = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = efc
        index.add(X)
        build_s = time.perf_counter() - t
        index.hnsw.efSearch = max(efs, TOP)
        size = len(faiss.serialize_index(index))
        yield Method(f"FAISS HNSWFlat M={M} efSearch={index.hnsw.efSearch}", "HNSW", faiss_search(index),
                     size / n, build_s, M=M, efConstruction=efc, efSearch=index.hnsw.efSearch,
                     note="bytes: serialised index / n (float32 vectors + graph)")
