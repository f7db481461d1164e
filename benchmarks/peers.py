"""The peers of benchmarks/compare.py: FAISS and plain baselines at a byte budget, each as a Method.

  truncation         the first d' dims, renormalised (what Matryoshka models allow; MiniLM was not trained for it)
  PCA                d' principal components of the items, fp32 / fp16 / int8 scalar quantisation
  binary             sign bits, Hamming distance; binary+rescore reranks candidates by exact dot product with
                     the full float32 vectors, which it therefore keeps
  PQ, OPQ            FAISS product quantisation, 8-bit codes (M bytes per item)
  RaBitQ             FAISS IndexRaBitQ at 1..4 bits per dimension (faiss >= 1.13 for more than 1 bit): sign bits
                     plus extra bits and per-vector float factors; bytes per item = index.code_size, factors
                     included; search at the index's defaults (qb = 4 query bits, not centred)
  flat, HNSW         FAISS IndexFlatIP (exact, the ceiling) and IndexHNSWFlat (float32 vectors + graph)
"""
import time

import numpy as np

DEFAULT_CANDIDATES = 1000    # dense rerank and binary rescoring: candidates per query
DEFAULT_OPQ_BYTES = (64, 128)  # OPQ's rotation training is the slowest peer: only at the two budgets we report
DEFAULT_RABITQ_BITS = (1, 2, 3, 4)  # bits per dimension; at d=384: 56, 116, 164, 212 bytes per item
PQ_TRAIN_POINTS, OPQ_ITERATIONS = 32768, 10
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 128
TOP = 100                    # every method returns its top 100; recall@10 reads the first 10 columns


class Method:
    """One way to answer queries: search(Q, top_k, threads) -> (nq, top_k) item rows, best first.

    bytes_per_item: what the method keeps in memory per item to answer queries; constant_bytes: what it keeps
    regardless of n (a projection, codebooks, the model); candidate_search: for a method that reranks candidates,
    candidate_search(Q) -> (nq, candidates) item rows of its first stage (compare.py reports their recall)."""

    def __init__(self, name, family, search, bytes_per_item, build_s, constant_bytes=0, candidate_search=None,
                 **info):
        self.name, self.family, self.search = name, family, search
        self.bytes_per_item, self.build_s = bytes_per_item, build_s
        self.constant_bytes, self.candidate_search, self.info = constant_bytes, candidate_search, info


def _timed_add(index, X) -> float:
    """index.add(X) in seconds: the encoding of the items, for a quantiser."""
    t = time.perf_counter()
    index.add(X)
    return time.perf_counter() - t


def encode_us(seconds: float, n: int) -> float:
    """Microseconds per item."""
    return 1e6 * seconds / max(1, n)


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


def rabitq_index(d: int, bits: int):
    """A FAISS IndexRaBitQ for inner product at bits per dimension, or None when this faiss lacks it (IndexRaBitQ
    came in 1.11 with 1 bit; the nb_bits constructor argument, 1..9 bits, in 1.13)."""
    import faiss
    if not hasattr(faiss, "IndexRaBitQ"):
        return None
    try:
        return faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
    except TypeError:
        return faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT) if bits == 1 else None


def peer_methods(X: np.ndarray, peer_bytes, candidates: int = DEFAULT_CANDIDATES, log=print,
                 families=None, hnsw=(HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH), opq_bytes=DEFAULT_OPQ_BYTES,
                 rabitq_bits=DEFAULT_RABITQ_BITS):
    """Every peer at each budget in peer_bytes (where the budget fits the method), RaBitQ at each of rabitq_bits,
    plus flat and HNSW. Each Method's info has encode_us_per_item: the time of adding the items to the index
    (transform included) per item.

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
                add_s = _timed_add(index, Xt)
                trunc = lambda Q, dd=dd: Q[:, :dd] / np.maximum(np.linalg.norm(Q[:, :dd], axis=1, keepdims=True), 1e-12)
                yield Method(f"truncation {kind} d'={dd}", f"truncation {kind}", faiss_search(index, trunc),
                             width * dd, time.perf_counter() - t, dims=dd, encode_us_per_item=encode_us(add_s, n))
            if want(f"PCA {kind}"):
                t = time.perf_counter()
                index = make(dd)
                t_proj = time.perf_counter()
                Xp = (X - mu) @ P[:dd].T
                proj_s = time.perf_counter() - t_proj
                index.train(Xp)
                add_s = proj_s + _timed_add(index, Xp)
                consts = (dd + 1) * d * 4 + (2 * dd * 4 if kind == "int8" else 0)
                yield Method(f"PCA {kind} d'={dd}", f"PCA {kind}", faiss_search(index, lambda Q, dd=dd: Q @ P[:dd].T),
                             width * dd, pca_s + time.perf_counter() - t, constant_bytes=consts, dims=dd,
                             encode_us_per_item=encode_us(add_s, n))
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
            t_add = time.perf_counter()
            index.add(X @ R)
            add_s = time.perf_counter() - t_add
            consts = 256 * d * 4 + (d * d * 4 if fam == "OPQ" else 0)
            rotate = None if fam == "PQ" else (lambda Q, R=R: Q @ R)
            yield Method(f"{fam} M={budget} (8-bit)", fam, faiss_search(index, rotate), budget,
                         time.perf_counter() - t, constant_bytes=consts, M=budget, train_points=len(sample),
                         encode_us_per_item=encode_us(add_s, n))
    if want("RaBitQ"):
        for b in rabitq_bits:
            index = rabitq_index(d, b)
            if index is None:
                log(f"RaBitQ {b}-bit: skipped, faiss {faiss.__version__} has no IndexRaBitQ with nb_bits={b}")
                continue
            t = time.perf_counter()
            index.train(X)  # the centroid: the items' mean
            add_s = _timed_add(index, X)
            yield Method(f"RaBitQ {b}-bit (FAISS, qb={index.qb})", "RaBitQ", faiss_search(index),
                         index.code_size, time.perf_counter() - t, constant_bytes=4 * d, bits=b, qb=int(index.qb),
                         centered=bool(index.centered), encode_us_per_item=encode_us(add_s, n),
                         note="bytes: index.code_size (bits + per-vector factors); constant: the centroid")
    if want("binary") or want("binary+rescore"):
        t = time.perf_counter()
        nbits = (d + 7) // 8 * 8
        bits = lambda A: np.packbits(np.pad(A > 0, ((0, 0), (0, nbits - d))), axis=1)
        index = faiss.IndexBinaryFlat(nbits)
        index.add(bits(X))
        build_s = time.perf_counter() - t
        enc = encode_us(build_s, n)
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
            yield Method(f"binary sign ({nbits // 8} B, Hamming)", "binary", binary, nbits // 8, build_s, bits=nbits,
                         encode_us_per_item=enc)
        if want("binary+rescore"):
            yield Method(f"binary + rescore {candidates} (keeps float32 vectors)", "binary+rescore", rescore,
                         nbits // 8 + 4 * d, build_s, bits=nbits, candidates=candidates, encode_us_per_item=enc,
                         candidate_search=lambda Q: index.search(bits(Q), min(n, max(candidates, TOP)))[1])
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
