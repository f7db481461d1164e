"""Compression quality and speed against every peer, side by side, on the same items and queries in one process.

    python -m benchmarks.compare --data ../shared/data/wordnet-minilm       # or: csae bench --data ...
    python -m benchmarks.compare --data DIR --k 16 32 --h 4096 --steps 200  # a smaller grid

DIR holds items.npy or docs.npy (n, d) and queries.npy, optionally gt_top100.npy (exact dense top 100; computed
exactly and cached when missing) and relevant.npy (the labelled answer per query: task recall).

Methods
  ours sparse        cosine between sparse codes, exact over the inverted index
  ours dense rerank  the sparse mode's top --candidates, rescored by cos(q, x_hat)
  ours dense all     cos(q, x_hat) over every item (forward codes only)
  truncation         the first d' dims, renormalised (what Matryoshka models allow; MiniLM was not trained for it)
  PCA                d' principal components of the items, fp32 / fp16 / int8 scalar quantisation
  binary             sign bits, Hamming distance; binary+rescore reranks --candidates by exact dot product with
                     the full float32 vectors, which it therefore keeps
  PQ, OPQ            FAISS product quantisation, 8-bit codes (M bytes per item)
  flat, HNSW         FAISS IndexFlatIP (exact, the ceiling) and IndexHNSWFlat (float32 vectors + graph)

Metrics: recall@10 and @100 against exact dense top 100 (all queries, one batch on all cores; recall@10 is the
first 10 of each method's top 100), task recall@10 where labels exist, bytes per item (everything a method keeps
in memory per item to answer queries; constants such as a PCA matrix or PQ codebooks are reported apart),
build time (training included; our models' training is cached), QPS on all cores (the batch of all queries) and on
one thread (a batch of --queries), p50 / p99 latency of single queries on one thread (--queries of them, fewer
for slow methods: at most --latency-budget seconds each). QPS and latency are timed at top_k=10.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from csae_engine.metrics import recall

from .common import RESULTS, SHARED_WORDNET, md_table, write_result

DEFAULT_K = (8, 16, 32, 64)
DEFAULT_H = (1024, 4096, 8192)
DEFAULT_STEPS = 500          # the 12-model grid trains in about 20 min on 2 CPU cores (h=8192: 1.3-2x h=4096)
DEFAULT_BATCH = 1024
DEFAULT_PEER_BYTES = (32, 64, 128, 256)
DEFAULT_CANDIDATES = 1000    # dense rerank and binary rescoring: candidates per query
DEFAULT_OPQ_BYTES = (64, 128)  # OPQ's rotation training is the slowest peer: only at the two budgets we report
PQ_TRAIN_POINTS, OPQ_ITERATIONS = 32768, 10
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 128
TOP = 100                    # every method returns its top 100; recall@10 reads the first 10 columns
TIMED_TOP_K = 10


def cache_root() -> Path:
    from csae_engine import datasets
    return datasets.CACHE / "compare"


# data

class Data:
    """Items (float32, unit rows), queries, exact top-100 and optional labels of one dataset folder."""

    def __init__(self, path, cache_dir=None, log=print):
        path = Path(path)
        items = next((path / f for f in ("items.npy", "docs.npy") if (path / f).exists()), None)
        if items is None:
            raise FileNotFoundError(f"{path} holds neither items.npy nor docs.npy")
        if not (path / "queries.npy").exists():
            raise FileNotFoundError(f"{path} holds no queries.npy")
        from csae_engine.data import unit_rows
        self.name = path.name
        self.X = unit_rows(np.asarray(np.load(items, mmap_mode="r"), np.float32))
        self.Q = unit_rows(np.asarray(np.load(path / "queries.npy"), np.float32), 0, "queries")
        if self.Q.shape[1] != self.X.shape[1]:
            raise ValueError(f"queries have d={self.Q.shape[1]}, items d={self.X.shape[1]}")
        self.n, self.d = self.X.shape
        self.top = min(TOP, self.n)
        self.fingerprint = fingerprint(self.X, self.Q)
        self.cache = Path(cache_dir) if cache_dir else cache_root() / self.name
        self.relevant = np.load(path / "relevant.npy").astype(np.int64) if (path / "relevant.npy").exists() else None
        self.gt, self.gt_source = self._ground_truth(path, log)

    def _ground_truth(self, path, log):
        gt_file = path / "gt_top100.npy"
        if gt_file.exists():
            gt = np.load(gt_file)
            if gt.shape[0] == len(self.Q) and gt.shape[1] >= self.top:
                return gt[:, :self.top].astype(np.int64), str(gt_file)
            log(f"{gt_file} has shape {gt.shape}, not ({len(self.Q)}, >={self.top}): computing the exact top")
        cached = self.cache / f"gt_top{self.top}_{self.fingerprint}.npy"
        if cached.exists():
            return np.load(cached).astype(np.int64), str(cached)
        from csae_engine.metrics import exact_topk
        t = time.perf_counter()
        gt = exact_topk(self.Q, self.X, self.top)
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, gt.astype(np.int32))
        log(f"computed the exact top {self.top} in {time.perf_counter() - t:.1f} s, cached in {cached}")
        return gt, str(cached) + " (computed)"


def fingerprint(X: np.ndarray, Q: np.ndarray) -> str:
    """A short hash of the shapes and a sample of rows: names cache files of this exact data."""
    h = hashlib.sha1(repr((X.shape, Q.shape)).encode())
    for A in (X, Q):
        h.update(np.ascontiguousarray(A[:: max(1, len(A) // 64)], np.float32).tobytes())
    return h.hexdigest()[:10]


# our models

def grid_model(data: Data, h: int, k: int, steps: int, seed: int = 0, batch_size: int = DEFAULT_BATCH, log=print):
    """The model trained on the items at (h, k, steps, seed), from the cache or trained and cached; (model, train_s)."""
    import csae_engine as ce
    path = data.cache / "models" / f"h{h}_k{k}_steps{steps}_seed{seed}_b{batch_size}_{data.fingerprint}.csae"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return ce.load_model(path), json.loads(info_path.read_text())["train_s"]
    t = time.perf_counter()
    model = ce.train(data.X, h=h, k=k, steps=steps, batch_size=batch_size, seed=seed, progress=False)
    train_s = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    info_path.write_text(json.dumps({"train_s": train_s, "final_cos_k": model.history[-1]["cos_k"]}))
    log(f"trained h={h} k={k} in {train_s:.0f} s (cos@k {model.history[-1]['cos_k']:.4f}), cached in {path}")
    return model, train_s


# methods

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


def _faiss_search(index, transform=None):
    def search(Q, top_k, threads):
        return index.search(np.ascontiguousarray(Q if transform is None else transform(Q), np.float32), top_k)[1]
    return search


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def our_methods(engine, model, h: int, k: int, train_s: float, index_s: float, candidates: int):
    """Sparse, dense rerank and dense "all" on one engine, with their honest bytes per item."""
    from csae_engine.codes import index_dtype
    nb = engine.nbytes()
    n = len(engine)
    postings = (nb["offsets"] + nb["local_ids"] + nb["post_values"]) / n
    forward = (nb["fwd_indices"] + nb["fwd_values"]) / n
    raw = k * (index_dtype(h).itemsize + 2)  # the codes themselves: uint16 (or uint8) index + float16 value
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    other = {name: size / n for name, size in nb.items()  # e.g. user ids: none with the default row numbers
             if name not in ("offsets", "local_ids", "post_values", "fwd_indices", "fwd_values")}
    common = dict(h=h, k=k, raw_code_bytes=raw, train_s=train_s, index_s=index_s, constant_bytes=model_bytes,
                  build_s=train_s + index_s, **({"other_bytes_per_item": other} if other else {}))

    def mode(m, cands=None):
        return lambda Q, top_k, threads: engine.search(Q, top_k, mode=m, candidates=cands, num_threads=threads)[0]

    tag = f"k={k}, h={h}"
    return [Method(f"ours sparse ({tag})", "ours sparse", mode("sparse"), postings, **common),
            Method(f"ours dense rerank {max(candidates, TOP)} ({tag})", "ours dense rerank",
                   mode("dense", max(candidates, TOP)), postings + forward, **common),
            Method(f"ours dense all ({tag})", "ours dense all", mode("dense", "all"), forward, **common)]


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
                yield Method(f"truncation {kind} d'={dd}", f"truncation {kind}", _faiss_search(index, trunc),
                             width * dd, time.perf_counter() - t, dims=dd)
            if want(f"PCA {kind}"):
                t = time.perf_counter()
                index = make(dd)
                Xp = (X - mu) @ P[:dd].T
                index.train(Xp)
                index.add(Xp)
                consts = (dd + 1) * d * 4 + (2 * dd * 4 if kind == "int8" else 0)
                yield Method(f"PCA {kind} d'={dd}", f"PCA {kind}", _faiss_search(index, lambda Q, dd=dd: Q @ P[:dd].T),
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
            yield Method(f"{fam} M={budget} (8-bit)", fam, _faiss_search(index, rotate), budget,
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
        yield Method("FAISS IndexFlatIP (exact, float32)", "flat", _faiss_search(index), 4 * d,
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
        yield Method(f"FAISS HNSWFlat M={M} efSearch={index.hnsw.efSearch}", "HNSW", _faiss_search(index),
                     size / n, build_s, M=M, efConstruction=efc, efSearch=index.hnsw.efSearch,
                     note="bytes: serialised index / n (float32 vectors + graph)")


# measuring

def evaluate(method: Method, data: Data, *, latency_queries: int, budget_s: float, cores: int, log=print) -> dict:
    """Recall from one all-core batch of every query (top 100), then QPS (all cores, one thread) and single-query
    latency on one thread, at top_k=10, each within about budget_s seconds."""
    Q, nq = data.Q, len(data.Q)
    set_threads(cores)
    pass_s, found = _timed(lambda: method.search(Q, data.top, -1))
    row = {"method": method.name, "family": method.family, "bytes_per_item": float(method.bytes_per_item),
           "constant_bytes": int(method.constant_bytes), "build_s": float(method.build_s), **method.info}
    top10 = min(TIMED_TOP_K, data.top)
    row["recall@10"] = recall(found, data.gt, top10)
    row["recall@100"] = recall(found, data.gt, data.top)
    if data.relevant is not None:
        row["task@10"] = float((np.asarray(found)[:, :top10] == data.relevant[:, None]).any(axis=1).mean())
    est = nq / pass_s  # an underestimate: top 100, not 10
    nb = int(np.clip(budget_s * est, min(nq, 100), nq))
    row["qps_all_cores"] = nb / _timed(lambda: method.search(Q[:nb], top10, -1))[0]
    set_threads(1)
    n1 = int(np.clip(budget_s * row["qps_all_cores"] / cores, min(nq, 50), nq))
    row["qps_1_thread"] = n1 / _timed(lambda: method.search(Q[:n1], top10, 1))[0]
    nl = min(nq, latency_queries, max(20, int(budget_s * row["qps_1_thread"] / 2)))
    ms = np.array([_timed(lambda i=i: method.search(Q[i:i + 1], top10, 1))[0] for i in range(nl)]) * 1e3
    row.update(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)), latency_queries=nl,
               qps_queries={"all_cores": nb, "1_thread": n1})
    set_threads(cores)
    log(f"  {method.name}: {row['bytes_per_item']:.1f} B/item, R@10 {row['recall@10']:.4f}, "
        f"R@100 {row['recall@100']:.4f}, {row['qps_all_cores']:.0f} QPS ({row['qps_1_thread']:.0f} on 1 thread), "
        f"p50 {row['p50_ms']:.2f} ms")
    return row


# the run

def main(argv=None, prog: str = "python -m benchmarks.compare"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED_WORDNET), help="dataset folder (default the shared WordNet/MiniLM)")
    p.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_K), help="our grid: non-zeros per code")
    p.add_argument("--h", type=int, nargs="+", default=list(DEFAULT_H), help="our grid: latent dims")
    p.add_argument("--grid", nargs="+", default=None, metavar="K,H",
                   help="our models as k,h pairs instead of every --k x --h, e.g. --grid 16,4096 32,4096")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps of batch {DEFAULT_BATCH} per grid model (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-bytes", type=int, nargs="+", default=list(DEFAULT_PEER_BYTES),
                   help="bytes per item at which the compressing peers are built")
    p.add_argument("--opq-bytes", type=int, nargs="+", default=list(DEFAULT_OPQ_BYTES),
                   help="budgets (of --peer-bytes) at which OPQ is trained too (slow)")
    p.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES,
                   help="candidates per query of our dense rerank and of binary rescoring")
    p.add_argument("--queries", type=int, default=1000, help="single queries timed for latency (at most)")
    p.add_argument("--budget", type=float, default=4.0, help="seconds per timing (QPS and latency) per method")
    p.add_argument("--peers", nargs="*", default=None, help="only these peer families (default all)")
    p.add_argument("--hnsw", type=int, nargs=3, default=[HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH],
                   metavar=("M", "EF_CONSTRUCTION", "EF_SEARCH"))
    p.add_argument("--cache-dir", default=None, help="trained models and computed ground truth "
                   "(default ~/.cache/csae-engine/compare/<dataset>)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<dataset>)")
    a = p.parse_args(argv)
    command = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    log = lambda s: print(s, flush=True)
    import faiss  # noqa: F401 (fail early when a peer is missing)
    import matplotlib  # noqa: F401

    cores = os.cpu_count() or 1
    data = Data(a.data, a.cache_dir, log)
    out = Path(a.out) if a.out else RESULTS / data.name
    log(f"{data.name}: {data.n} items, d={data.d}, {len(data.Q)} queries; ground truth from {data.gt_source}")
    try:
        grid = [tuple(int(v) for v in pair.split(",")) for pair in a.grid] if a.grid else \
            [(k, h) for h in a.h for k in a.k]
    except ValueError:
        p.error(f"--grid takes k,h pairs such as 32,4096, got {a.grid}")
    if any(len(pair) != 2 for pair in grid):
        p.error(f"--grid takes k,h pairs such as 32,4096, got {a.grid}")
    cfg = {"data": data.name, "n": data.n, "d": data.d, "queries": len(data.Q), "ground_truth": data.gt_source,
           "task_labels": data.relevant is not None, "grid_k_h": grid, "steps": a.steps, "batch_size": a.batch_size,
           "seed": a.seed, "peer_bytes": a.peer_bytes, "opq_bytes": a.opq_bytes,
           "pq_train_points": min(data.n, PQ_TRAIN_POINTS), "opq_iterations": OPQ_ITERATIONS,
           "candidates": a.candidates, "hnsw": a.hnsw,
           "latency_queries": a.queries, "budget_s": a.budget, "cores": cores, "timed_top_k": TIMED_TOP_K}
    rows = []

    def save(complete: bool) -> str:  # after every model and peer, so that a cut-short run leaves its results
        cfg["complete"] = complete
        md = markdown(rows, cfg)
        write_result("compare", cfg, rows, command, md, results_dir=out)
        plots(rows, out, data.name)
        return md

    # peers first: they need no training, ours may train for long
    for m in peer_methods(data.X, a.peer_bytes, a.candidates, log, a.peers, tuple(a.hnsw), a.opq_bytes):
        rows.append(evaluate(m, data, latency_queries=a.queries, budget_s=a.budget, cores=cores, log=log))
        del m
        save(False)
    import csae_engine as ce
    for k, h in grid:
        model, train_s = grid_model(data, h, k, a.steps, a.seed, a.batch_size, log)
        set_threads(cores)
        index_s, engine = _timed(lambda model=model: ce.Engine(model).build(data.X))
        for m in our_methods(engine, model, h, k, train_s, index_s, a.candidates):
            rows.append(evaluate(m, data, latency_queries=a.queries, budget_s=a.budget, cores=cores, log=log))
        del engine
        save(False)
    md = save(True)
    log(md)
    log(f"wrote {out}/compare.json, compare.md, recall_vs_bytes.png, recall_vs_qps.png")
    return rows


COLUMNS = ["method", "bytes_per_item", "recall@10", "recall@100", "task@10", "build_s", "qps_all_cores",
           "qps_1_thread", "p50_ms", "p99_ms"]


def at_bytes(rows, target: float, tol: float = 0.1) -> list:
    """Rows within tol of target bytes per item, best recall@10 first, plus the exact float32 ceiling."""
    near = [r for r in rows if abs(r["bytes_per_item"] - target) <= tol * target]
    ceiling = [r for r in rows if r["family"] == "flat" and r not in near]
    return sorted(near, key=lambda r: -r["recall@10"]) + ceiling


def markdown(rows, cfg) -> str:
    intro = (f"{cfg['n']} items, d={cfg['d']}, {cfg['queries']} queries; recall against exact dense top 100 "
             f"({cfg['ground_truth']}); our models (k, h) {', '.join(map(str, cfg['grid_k_h']))}, each trained {cfg['steps']} steps of "
             f"batch {cfg['batch_size']} on the items; dense rerank and binary rescoring take {cfg['candidates']} "
             f"candidates; QPS and latency at top_k={cfg['timed_top_k']} ({cfg['cores']} cores); bytes per item: "
             f"what the method keeps in memory per item (constants such as models, PCA matrices and codebooks "
             f"are in the JSON's constant_bytes).")
    out = [intro if cfg.get("complete", True) else "**Incomplete: the run was still going.** " + intro]
    for target in sorted({64, 128} | set(cfg["peer_bytes"])):
        sub = at_bytes(rows, target)
        if len(sub) > 1:
            out += [f"\n## About {target} bytes per item (within 10%)\n", md_table(sub, COLUMNS)]
    out += ["\n## Every method\n", md_table(sorted(rows, key=lambda r: (r["family"], r["bytes_per_item"])),
                                             COLUMNS + ["raw_code_bytes", "train_s"])]
    return "\n".join(out)


MARKERS = {"ours sparse": ("o", "C3"), "ours dense rerank": ("s", "C1"), "ours dense all": ("D", "C5"),
           "truncation fp32": ("v", "C0"), "truncation fp16": ("^", "C0"), "PCA fp32": ("<", "C2"),
           "PCA fp16": (">", "C2"), "PCA int8": ("p", "C2"), "binary": ("x", "C7"), "binary+rescore": ("+", "C7"),
           "PQ": ("h", "C4"), "OPQ": ("H", "C9"), "flat": ("*", "k"), "HNSW": ("P", "C8")}


def plots(rows, out: Path, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for x_key, x_label, fname in (("bytes_per_item", "bytes per item (log)", "recall_vs_bytes.png"),
                                  ("qps_all_cores", "queries per second, all cores (log)", "recall_vs_qps.png")):
        fig, ax = plt.subplots(figsize=(10, 6.5))
        for fam in dict.fromkeys(r["family"] for r in rows):
            sub = sorted((r for r in rows if r["family"] == fam), key=lambda r: r[x_key])
            marker, color = MARKERS.get(fam, ("o", None))
            ours = fam.startswith("ours")
            ax.plot([r[x_key] for r in sub], [r["recall@10"] for r in sub], marker=marker, color=color,
                    linestyle="none" if ours or fam in ("flat", "HNSW", "binary", "binary+rescore") else ":",
                    markersize=7 if ours else 8, label=fam, alpha=0.85)
            if ours:
                for r in sub:
                    ax.annotate(f"{r['k']},{r['h'] // 1024}k", (r[x_key], r["recall@10"]), fontsize=6,
                                xytext=(3, 2), textcoords="offset points", color=color)
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("recall@10 vs exact dense search")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{name}: recall@10 against {x_label.split(' (')[0]}; ours labelled (k, h)")
        ax.legend(fontsize=8, loc="best", ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
