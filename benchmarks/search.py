"""Search: our sparse and dense modes against scipy, FAISS (flat, HNSW) and Seismic, on the same data in one run.

    python -m benchmarks.search --model wordnet.csae                    # the 117,659 shared items
    python -m benchmarks.search --model wordnet.csae --items 1000000    # real items + noise, renormalised

Single-thread latency is per query, one call each (p50/p99); all-core QPS is one batch call. "scorer" times the
C++ call on an encoded query; "end to end" includes encoding the query with the model. Recall@k is against exact
dense search on the original vectors, and for approximate methods also against our exact sparse mode.
"""
import argparse
import os
import sys
import time

import numpy as np

import csae_engine as ce
from csae_engine import datasets
from csae_engine.data import unit_rows
from csae_engine.metrics import recall

from .common import SHARED_WORDNET, md_table, perturbed, sparse_scorer, write_result

CACHE = datasets.CACHE / "bench"


def latencies(fn, n: int) -> dict:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def qps(fn, nq: int, repeat: int = 2) -> float:
    best = min(_timed(fn) for _ in range(repeat))
    return nq / best


def interleaved(fns: dict, reps: int) -> dict:
    """Median seconds of each function, run in turn (A B A B ...) so that drifts in machine speed hit all alike."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: float(np.median(t)) for name, t in times.items()}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load_items(a, ds):
    if not a.items:
        return np.asarray(ds.docs, np.float16), ds.name
    path = CACHE / f"perturbed_{ds.name}_{a.items}.npy"
    if not path.exists():
        print(f"writing {a.items} perturbed items to {path}")
        perturbed(ds.docs, a.items, path)
    return np.load(path, mmap_mode="r"), f"{ds.name}-perturbed-{a.items}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained model (k=32, h=4096 for the issue's figures)")
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--items", type=int, default=0, help="0: the dataset's items; else this many perturbed ones")
    p.add_argument("--latency-queries", type=int, default=1000, help="queries timed one by one")
    p.add_argument("--queries", type=int, default=10000, help="queries in the all-core batch and for recall")
    p.add_argument("--slow-queries", type=int, default=1000,
                   help="queries for the exhaustive peers (scipy, FAISS flat); their recall and QPS use these")
    p.add_argument("--top-k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--peers", nargs="*", default=["scipy", "faiss-flat", "faiss-hnsw", "seismic"])
    p.add_argument("--ratio-reps", type=int, default=5, help="interleaved runs for the dense/sparse batch ratio")
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    command = "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])

    import torch
    torch.set_num_threads(1)  # the query encoder runs in the caller's thread, as in a single-threaded server
    model = ce.load_model(a.model)
    ds = datasets.load(a.data)
    X, data_name = load_items(a, ds)
    Q = unit_rows(ds.queries[: a.queries])
    nq, nl = len(Q), min(a.latency_queries, len(Q))
    n = len(X)
    max_k = max(a.top_k)
    rows, knobs = [], []
    cfg = {"data": data_name, "n": n, "d": X.shape[1], "h": model.h, "k": model.k, "queries": nq,
           "latency_queries": nl, "top_k": a.top_k, "cores": os.cpu_count()}

    import faiss
    Xf = unit_rows(X)  # float32 copy for the dense peers and the ground truth
    flat = faiss.IndexFlatIP(Xf.shape[1])
    flat.add(Xf)
    print("exact dense ground truth...")
    _, gt = flat.search(Q, max_k)

    t = time.perf_counter()
    engine = ce.Engine(model).build(X)
    build_s = time.perf_counter() - t
    nbytes = engine.nbytes()
    code_bytes = n * model.k * 4
    cfg["index_bytes"] = nbytes
    cfg["index_bytes_per_item"] = sum(nbytes.values()) / n
    cfg["raw_code_bytes_per_item"] = code_bytes / n
    cfg["index_over_raw_codes"] = sum(nbytes.values()) / code_bytes
    cfg["index_over_raw_codes_with_int64_ids"] = (sum(nbytes.values()) + 8 * n) / code_bytes
    cfg["build_s"] = build_s
    q_idx, q_val = engine.queries.codes(Q)
    a_ = engine.segments[0].arrays
    score = sparse_scorer(engine)

    def scorer(i, top_k, threads=1, terms=None, of=score):
        sl = slice(i, i + 1) if i is not None else slice(None)
        return of(q_idx[sl, :terms], q_val[sl, :terms], top_k, threads)

    if "scipy" in a.peers:
        D = ce.SparseCodes(a_["fwd_indices"], a_["fwd_values"].astype(np.float32), model.h).to_csr()
        D = _row_normalised(D).T.tocsr()
        Qs = _row_normalised(ce.SparseCodes(q_idx, q_val, model.h).to_csr())
    hnsw = _hnsw(Xf, cfg) if "faiss-hnsw" in a.peers else None

    for top_k in a.top_k:  # noqa: B023 (the lambdas below run inside their iteration)
        exact_sparse, _ = engine.search(Q, top_k, num_threads=-1)
        base = {"top_k": top_k}

        def add(method, single, batch, found, note=""):
            m = len(found)  # the slow peers answer the first m queries only
            row = dict(base, method=method, **single, all_core_qps=batch, recall_vs_dense=recall(found, gt[:m], top_k),
                       recall_vs_exact_sparse=recall(found, exact_sparse[:m], top_k))
            if note:
                row["note"] = note
            rows.append(row)
            print(row)

        add("ours sparse (scorer)", latencies(lambda i: scorer(i, top_k), nl),
            qps(lambda: scorer(None, top_k, -1), nq), exact_sparse)
        add("ours sparse (end to end)", latencies(lambda i: engine.search(Q[i:i + 1], top_k, num_threads=1), nl),
            qps(lambda: engine.search(Q, top_k, num_threads=-1), nq), exact_sparse)
        for cands in sorted({10 * top_k, 1000}):
            found, _ = engine.search(Q, top_k, mode="dense", candidates=cands, num_threads=-1)
            add(f"ours dense rerank {cands} (end to end)",
                latencies(lambda i: engine.search(Q[i:i + 1], top_k, mode="dense", candidates=cands, num_threads=1), nl),
                qps(lambda: engine.search(Q, top_k, mode="dense", candidates=cands, num_threads=-1), nq), found)
        found, _ = engine.search(Q[:1000], top_k, mode="dense", candidates="all", num_threads=-1)
        rows.append(dict(base, method="ours dense all (end to end)",
                         all_core_qps=qps(lambda: engine.search(Q[:1000], top_k, mode="dense", candidates="all"), 1000, 1),
                         recall_vs_dense=recall(found, gt[:1000], top_k)))
        print(rows[-1])

        if "scipy" in a.peers:
            def scipy_topk(rows_):
                S = (Qs[rows_] @ D).toarray()
                part = np.argpartition(-S, top_k - 1, axis=1)[:, :top_k]
                return np.take_along_axis(part, np.argsort(-np.take_along_axis(S, part, 1), axis=1), 1)

            ns = min(nq, a.slow_queries)
            found = np.concatenate([scipy_topk(slice(s, min(ns, s + 100))) for s in range(0, ns, 100)])
            add("scipy CSR product + argpartition", latencies(lambda i: scipy_topk(slice(i, i + 1)), min(nl, 200)),
                qps(lambda: [scipy_topk(slice(s, min(ns, s + 100))) for s in range(0, ns, 100)], ns, 1), found,
                f"same codes; single-threaded library; {ns} queries")
        if "faiss-flat" in a.peers:
            faiss.omp_set_num_threads(1)
            single = latencies(lambda i: flat.search(Q[i:i + 1], top_k), min(nl, 300))
            faiss.omp_set_num_threads(os.cpu_count())
            ns = min(nq, a.slow_queries)
            found = flat.search(Q[:ns], top_k)[1]
            add("FAISS IndexFlatIP (dense float32)", single, qps(lambda: flat.search(Q[:ns], top_k), ns, 1), found,
                f"{Xf.shape[1] * 4} bytes/item; {ns} queries")
        if hnsw is not None:
            hnsw.hnsw.efSearch = max(64, 2 * top_k)
            faiss.omp_set_num_threads(1)
            single = latencies(lambda i: hnsw.search(Q[i:i + 1], top_k), nl)
            faiss.omp_set_num_threads(os.cpu_count())
            found = hnsw.search(Q, top_k)[1]
            add(f"FAISS IndexHNSWFlat M=32 efSearch={hnsw.hnsw.efSearch}", single,
                qps(lambda: hnsw.search(Q, top_k), nq), found, "dense float32 + graph")
        if "seismic" in a.peers:
            res = _seismic(a_, q_idx, q_val, n, model, top_k, nl, cfg)
            if res is not None:
                add(*res)

    # the cost of dense mode over sparse mode for batches, measured in turn
    top_k = a.top_k[0]
    # (sparse1000 finds the same 1,000 candidates: against it, the rerank step alone)
    med = interleaved({"sparse": lambda: engine.search(Q, top_k, num_threads=-1),
                       "sparse1000": lambda: engine.search(Q, 1000, num_threads=-1),
                       "dense1000": lambda: engine.search(Q, top_k, mode="dense", candidates=1000, num_threads=-1)},
                      a.ratio_reps)
    cfg["dense_rerank_1000_over_sparse"] = med["dense1000"] / med["sparse"]
    cfg["dense_rerank_1000_over_sparse_top1000"] = med["dense1000"] / med["sparse1000"]
    print("dense rerank of 1,000 candidates / sparse, batch of", nq, "queries:", cfg["dense_rerank_1000_over_sparse"],
          "/ sparse top 1,000:", cfg["dense_rerank_1000_over_sparse_top1000"])

    # approximate knobs, at the first top_k
    top_k = a.top_k[0]
    exact_sparse, _ = engine.search(Q, top_k, num_threads=-1)
    for terms in (32, 24, 16, 12, 8, 4):
        if terms > model.k:
            continue
        found = scorer(None, top_k, -1, terms)[0]
        knobs.append({"knob": "query_terms", "value": terms, **latencies(lambda i: scorer(i, top_k, 1, terms), nl),
                      "recall_vs_exact_sparse": recall(found, exact_sparse, top_k),
                      "recall_vs_dense": recall(found, gt, top_k)})
        print(knobs[-1])
    for share in (1.0, 0.5, 0.25, 0.1):
        t = time.perf_counter()
        pruned = ce.Engine(model).build_codes(ce.SparseCodes(a_["fwd_indices"], a_["fwd_values"], model.h), prune=share)
        b = time.perf_counter() - t
        pruned_score = sparse_scorer(pruned)
        found = scorer(None, top_k, -1, None, pruned_score)[0]
        knobs.append({"knob": "prune", "value": share, **latencies(lambda i: scorer(i, top_k, 1, None, pruned_score), nl),
                      "recall_vs_exact_sparse": recall(found, exact_sparse, top_k),
                      "recall_vs_dense": recall(found, gt, top_k), "build_s": b,
                      "postings": int(len(pruned.segments[0].arrays["local_ids"]))})
        print(knobs[-1])

    cols = ["top_k", "method", "p50_ms", "p99_ms", "all_core_qps", "recall_vs_dense", "recall_vs_exact_sparse", "note"]
    md = (f"{n} items, d={X.shape[1]}, h={model.h}, k={model.k}; {nq} queries ({nl} timed one by one); "
          f"index {cfg['index_bytes_per_item']:.1f} bytes/item = {cfg['index_over_raw_codes']:.2f}x the raw codes "
          f"({cfg['index_over_raw_codes_with_int64_ids']:.2f}x with an int64 user-id map); build {build_s:.1f} s; "
          f"a batch in dense mode with 1,000 candidates takes {cfg['dense_rerank_1000_over_sparse']:.2f}x the time of "
          f"sparse mode at top_k={top_k} and {cfg['dense_rerank_1000_over_sparse_top1000']:.2f}x that of sparse mode at "
          f"top_k=1000, which finds the same candidates (median of {a.ratio_reps} interleaved runs)\n\n"
          + md_table(rows, cols) + "\n\nApproximate knobs (top_k=%d):\n\n" % top_k
          + md_table(knobs, ["knob", "value", "p50_ms", "p99_ms", "recall_vs_exact_sparse", "recall_vs_dense", "build_s", "postings"]))
    print(md)
    name = a.name or f"search_{data_name}_h{model.h}_k{model.k}"
    print("wrote", write_result(name, cfg, {"methods": rows, "knobs": knobs}, command, md))


def _row_normalised(M):
    import scipy.sparse as sp
    norms = np.sqrt(np.asarray(M.multiply(M).sum(axis=1))).ravel()
    return sp.diags(1 / norms) @ M


def _hnsw(Xf, cfg):
    import faiss
    index = faiss.IndexHNSWFlat(Xf.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    t = time.perf_counter()
    index.add(Xf)
    cfg["hnsw_build_s"] = time.perf_counter() - t
    return index


def _seismic(a_, q_idx, q_val, n, model, top_k, nl, cfg):
    """Seismic on the same codes (its ids are strings); None if it refuses them."""
    try:
        from seismic import SeismicDataset, SeismicIndex, get_seismic_string
    except ImportError:
        return None
    idx = a_["fwd_indices"].astype(np.int64)
    val = a_["fwd_values"].astype(np.float32)
    val /= np.linalg.norm(val, axis=1, keepdims=True)
    order = np.argsort(idx, axis=1)
    idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
    dataset = SeismicDataset()
    try:
        dataset.add_documents_by_id([str(i) for i in range(n)], idx.reshape(-1),
                                    val.reshape(-1), np.arange(0, n * model.k + 1, model.k, dtype=np.int64))
        t = time.perf_counter()
        index = SeismicIndex.build_from_dataset(dataset)
        cfg["seismic_build_s"] = time.perf_counter() - t
    except Exception as e:  # report, not crash: the peer may refuse signed or id-addressed input
        cfg["seismic_error"] = f"{type(e).__name__}: {e}"
        print("seismic refused the codes:", cfg["seismic_error"])
        return None
    comps = np.array([[str(c) for c in row] for row in q_idx], dtype=get_seismic_string())
    qv = np.ascontiguousarray(q_val, np.float32)

    def one(i):
        return index.search(str(i), comps[i], qv[i], top_k, model.k, 0.9)

    def batch():
        return index.batch_search(np.array([str(i) for i in range(len(comps))], dtype=get_seismic_string()),
                                  list(comps), list(qv), top_k, model.k, 0.9)

    single = latencies(one, nl)
    found = np.full((len(comps), top_k), -1, np.int64)
    for res in batch():  # results come in any order; each names its query
        if res:
            found[int(res[0][0]), :len(res)] = [int(r[2]) for r in res]
    return ("Seismic (query_cut=k, heap_factor=0.9)", single, qps(batch, len(comps), 1), found,
            "same codes, approximate")


if __name__ == "__main__":
    main()
