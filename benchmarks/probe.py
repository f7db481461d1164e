"""Approximate sparse search over clustered segments (issue 16): recall and latency against the share of items
visited, beside exact search and FAISS's IVF indexes, one thread, on the same data in one run.

    python -m benchmarks.probe --model wordnet.csae                                  # the 117,659 real items
    python -m benchmarks.probe --model wordnet.csae --items 1000000                  # real items + noise 0.05
    python -m benchmarks.probe --model wordnet.csae --items 1000000 --noise 0.5      # noise that mixes neighbours
    python -m benchmarks.probe --model wordnet.csae --items 10000000 --set interpolated --forward float16 \
        --shard-size 1000000 --faiss                          # points between real neighbours, 10M, 10 shards

Per cluster size and probe: single-query p50/p99 of the C++ scorer on encoded queries ("scorer") and of
Engine.search end to end, sparse and dense (rerank of 1,000 candidates); recall@10 against exact sparse search (the
same engine at probe 1), against exact-then-rerank, and against exact dense search on the vectors. For perturbed
items, "bases_in_top10" is how many distinct real rows the exact dense top 10 are copies of (10: no two are copies);
for interpolated items, how many distinct segments they lie on. --forward float16 indexes model.encode's float16
codes (build_codes; dense mode reranks their exact reconstruction) instead of build's default compact codes, and
caches them beside the items.
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

from .common import SHARED_WORDNET, exact_top, interpolated, md_table, perturbed, write_result
from .search import CACHE, latencies, qps

PROBES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
NPROBES = (1, 2, 4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained model (h=4096, k=32 for the issue's figures)")
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--items", type=int, default=0, help="0: the dataset's items; else this many perturbed ones")
    p.add_argument("--noise", type=float, default=None,
                   help="norm of the noise added to a unit row (default 0.05 perturbed, 0.1 interpolated)")
    p.add_argument("--set", choices=["perturbed", "interpolated"], default="perturbed",
                   help="--items made of noisy copies of real rows, or of points between real neighbours")
    p.add_argument("--forward", choices=["compact", "float16"], default="compact",
                   help="build's default compact codes, or model.encode's float16 codes")
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--cluster-sizes", type=int, nargs="+", default=[128, 512])
    p.add_argument("--probes", type=float, nargs="+", default=list(PROBES))
    p.add_argument("--queries", type=int, default=2000, help="queries for recall")
    p.add_argument("--latency-queries", type=int, default=300, help="queries timed one by one")
    p.add_argument("--faiss", nargs="*", default=["IVF1024,PQ64", "IVF1024,RaBitQ"],
                   help="FAISS index factory strings, nprobe (IVF) or efSearch (HNSW) swept (none: skip)")
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    if a.noise is None:
        a.noise = 0.1 if a.set == "interpolated" else 0.05
    command = "python -m benchmarks.probe " + " ".join(argv if argv is not None else sys.argv[1:])

    import faiss
    import torch
    cores = torch.get_num_threads()
    model = ce.load_model(a.model)
    ds = datasets.load(a.data)
    X, data_name = _items(a, ds)
    Q = unit_rows(ds.queries[: a.queries])
    nq, nl, n = len(Q), min(a.latency_queries, len(Q)), len(X)
    gt = exact_top(X, Q, 10)
    cfg = {"data": data_name, "n": n, "d": X.shape[1], "h": model.h, "k": model.k, "queries": nq,
           "latency_queries": nl, "noise": a.noise if a.items else None, "cores": os.cpu_count()}
    if a.items:
        bases = np.load(_bases_path(a, ds))
        cfg["bases_in_top10"] = float(np.mean([len(np.unique(bases[row], axis=0)) for row in gt]))
    rows = []
    for size in a.cluster_sizes:
        torch.set_num_threads(cores)  # builds on every core; queries on one (a single-threaded server)
        t = time.perf_counter()
        if a.forward == "float16":
            engine = ce.Engine(model, num_threads=-1).build_codes(_codes(a, model, X, data_name), cluster_size=size,
                                                                  shard_size=a.shard_size)
        else:
            engine = ce.Engine(model, num_threads=-1).build(X, cluster_size=size, shard_size=a.shard_size)
        build_s = time.perf_counter() - t
        torch.set_num_threads(1)
        indexes = [seg.index for seg in engine.segments]
        q_idx, q_val = engine.queries.codes(Q)
        exact = engine.search(Q, 10)[0]
        exact_dense = engine.search(Q, 10, "dense")[0]
        nbytes = sum(engine.nbytes().values()) / n
        for probe in a.probes:
            found = engine.search(Q, 10, probe=probe)[0]
            dense = engine.search(Q, 10, "dense", probe=probe)[0]
            row = {"cluster_size": size, "clusters": sum(ix.n_clusters for ix in indexes), "probe": probe,
                   "build_s": build_s, "bytes_per_item": nbytes,
                   "scorer": latencies(lambda i: [ix.search(q_idx[i:i + 1], q_val[i:i + 1], 10, 1, None, probe, 10)
                                                  for ix in indexes], nl)["p50_ms"],
                   **{f"sparse_{k}": v for k, v in latencies(
                       lambda i: engine.search(Q[i:i + 1], 10, probe=probe, num_threads=1), nl).items()},
                   "sparse_qps_all_cores": qps(lambda: _all_cores(torch, cores, engine.search, Q, 10, probe=probe), nq),
                   "recall_vs_exact_sparse": recall(found, exact, 10), "sparse_recall_vs_dense": recall(found, gt, 10),
                   **{f"dense_{k}": v for k, v in latencies(
                       lambda i: engine.search(Q[i:i + 1], 10, "dense", probe=probe, num_threads=1), nl).items()},
                   "dense_recall_vs_exact_rerank": recall(dense, exact_dense, 10),
                   "dense_recall_vs_dense": recall(dense, gt, 10)}
            rows.append(row)
            print(row, flush=True)
        del engine
    peers = []
    Xf = unit_rows(X) if a.faiss else None
    for spec in a.faiss:
        peers += _faiss(spec, Xf, Q, gt, nl, faiss)
    cols = ["cluster_size", "clusters", "probe", "scorer", "sparse_p50_ms", "sparse_p99_ms", "sparse_qps_all_cores",
            "recall_vs_exact_sparse", "sparse_recall_vs_dense", "dense_p50_ms", "dense_p99_ms",
            "dense_recall_vs_exact_rerank", "dense_recall_vs_dense"]
    builds = {r["cluster_size"]: (r["build_s"], r["bytes_per_item"]) for r in rows}
    md = (f"{n:,} items ({data_name}), d={X.shape[1]}, h={model.h}, k={model.k}; {nq} queries for recall, {nl} timed "
          f"one by one on one thread (p50/p99 in ms; `scorer` is the C++ call alone, p50; QPS: all the queries in one "
          "call on every core); recall@10"
          + (f"; the exact dense top 10 {_of_bases(a)} {cfg['bases_in_top10']:.2f} distinct {_bases_name(a)} on "
             "average" if a.items else "")
          + (f"; {len(indexes)} shards of {a.shard_size:,}" if a.shard_size else "")
          + (f"; forward codes: {a.forward}" + (" (dense mode reranks their exact reconstruction)"
                                                  if a.forward == "float16" else ""))
          + ("; `scorer` sums the C++ calls over the shards" if len(indexes) > 1 else "") + "\n\nBuild (seconds, index bytes per item): "
          + ", ".join(f"cluster_size {s}: {b:.0f} s, {nb:.0f} B" for s, (b, nb) in builds.items()) + "\n\n"
          + md_table(rows, cols) + "\n\n" + _faiss_md(peers))
    print(md)
    name = a.name or f"probe_{data_name}_h{model.h}_k{model.k}" + ("_f16" if a.forward == "float16" else "")
    print("wrote", write_result(name, cfg, {"ours": rows, "faiss": peers}, command, md))


def _all_cores(torch, cores, search, *args, **kwargs):
    """search(*args, **kwargs) with every core (the C++ threads and torch's batch encoding)."""
    torch.set_num_threads(cores)
    try:
        return search(*args, num_threads=-1, **kwargs)
    finally:
        torch.set_num_threads(1)


def _items(a, ds):
    if not a.items:
        return np.asarray(ds.docs, np.float16), ds.name
    path = CACHE / f"{a.set}_{ds.name}_{a.items}_noise{a.noise:g}.npy"
    if not path.exists():
        print(f"writing {a.items} {a.set} items to {path}")
        (perturbed if a.set == "perturbed" else interpolated)(ds.docs, a.items, path, noise=a.noise)
    return np.load(path, mmap_mode="r"), f"{ds.name}-{a.set}-{a.items}-noise{a.noise:g}"


def _bases_path(a, ds):
    return CACHE / f"{a.set}_{ds.name}_{a.items}_noise{a.noise:g}.bases.npy"


def _of_bases(a):
    return "are copies of" if a.set == "perturbed" else "lie on"


def _bases_name(a):
    return "real rows" if a.set == "perturbed" else "segments between real neighbours"


def _codes(a, model, X, data_name):
    """model.encode(X), cached beside the items (keyed by the model's hash)."""
    from csae_engine.codes import SparseCodes
    from csae_engine.models.io import model_hash
    path = CACHE / f"codes_{data_name}_{model_hash(model)[:12]}.npz"
    if path.exists():
        z = np.load(path)
        return SparseCodes(z["indices"], z["values"], model.h)
    codes = model.encode(X, progress=True)
    np.savez(path, indices=codes.indices, values=codes.values)
    return codes


def ivf_lists(spec: str) -> int:
    """The list count of a FAISS "IVF<n>,..." factory string (training takes 40 points per list)."""
    return int(spec.split(",")[0].removeprefix("IVF"))


def _faiss_md(peers: list) -> str:
    if not peers:
        return "FAISS: not run (`--faiss` named no index).\n"
    return ("FAISS, one thread (bytes per item: codes only, without ids):\n\n"
            + md_table(peers, ["index", "knob", "bytes_per_item", "p50_ms", "p99_ms", "recall_vs_dense", "build_s"]))


def _faiss(spec, Xf, Q, gt, nl, faiss):
    t = time.perf_counter()
    index = faiss.index_factory(Xf.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    faiss.omp_set_num_threads(os.cpu_count())
    if not spec.startswith("HNSW"):
        index.train(Xf[np.random.default_rng(0).choice(len(Xf), min(len(Xf), 40 * ivf_lists(spec)),
                                                        replace=False)])
    index.add(Xf)
    faiss.omp_set_num_threads(1)
    build_s = time.perf_counter() - t
    if spec.startswith("HNSW"):  # float32 vectors and the base level's 2M neighbours of 4 bytes
        knob, values, set_knob = "efSearch", EF_SEARCHES, lambda v: setattr(index.hnsw, "efSearch", v)
        code_bytes = 4 * Xf.shape[1] + 4 * index.hnsw.nb_neighbors(0)
    else:
        ivf = faiss.extract_index_ivf(index)
        knob, values, set_knob, code_bytes = "nprobe", NPROBES, lambda v: setattr(ivf, "nprobe", v), ivf.code_size
    out = []
    for value in values:
        set_knob(value)
        found = index.search(Q, 10)[1]
        out.append({"index": spec, "knob": f"{knob} {value}", "bytes_per_item": code_bytes,
                    **latencies(lambda i: index.search(Q[i:i + 1], 10), nl), "recall_vs_dense": recall(found, gt, 10),
                    "build_s": build_s})
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    main()
