"""Compression quality and speed against every peer, side by side, on the same items and queries in one process.

    python -m benchmarks.compare --data ../shared/data/wordnet-minilm       # or: csae bench --data ...
    python -m benchmarks.compare --data DIR --k 16 32 --h 4096 --steps 200  # a smaller grid

DIR holds items.npy or docs.npy (n, d) and queries.npy, optionally gt_top100.npy (exact dense top 100; computed
exactly and cached when missing) and relevant.npy (the labelled answer per query: task recall).

Methods
  ours sparse        cosine between sparse codes, exact over the inverted index
  ours dense rerank  the sparse mode's top --candidates, rescored by cos(q, x_hat)
  ours dense all     cos(q, x_hat) over every item (forward codes only)
  peers              truncation, PCA (fp32/fp16/int8), binary (+ rescore), PQ, OPQ, flat, HNSW: benchmarks/peers.py

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

from csae_engine.metrics import recall, task_recall

from .common import RESULTS, SHARED_WORDNET, md_table, write_result
from .peers import (DEFAULT_CANDIDATES, DEFAULT_OPQ_BYTES, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M,
                    OPQ_ITERATIONS, PQ_TRAIN_POINTS, TOP, Method, peer_methods, set_threads)

DEFAULT_K = (8, 16, 32, 64)
DEFAULT_H = (1024, 4096, 8192)
DEFAULT_STEPS = 500          # the 12-model grid trains in about 20 min on 2 CPU cores (h=8192: 1.3-2x h=4096)
DEFAULT_BATCH = 1024
DEFAULT_PEER_BYTES = (32, 64, 128, 256)
TIMED_TOP_K = 10


def cache_root() -> Path:
    from csae_engine import datasets
    return datasets.CACHE / "compare"


# data

class Data:
    """Items (float32, unit rows), queries, exact top-100 and optional labels of one dataset folder."""

    def __init__(self, path, cache_dir=None, log=print):
        from csae_engine import datasets
        from csae_engine.data import unit_rows
        path = Path(path)
        ds = datasets.load(path)
        if ds.queries is None:
            raise FileNotFoundError(f"{path} holds no queries.npy")
        self.name = ds.name
        self.X = unit_rows(np.asarray(ds.docs, np.float32))
        self.Q = unit_rows(np.asarray(ds.queries, np.float32), 0, "queries")
        if self.Q.shape[1] != self.X.shape[1]:
            raise ValueError(f"queries have d={self.Q.shape[1]}, items d={self.X.shape[1]}")
        self.n, self.d = self.X.shape
        self.top = min(TOP, self.n)
        self.fingerprint = fingerprint(self.X, self.Q)
        self.cache = Path(cache_dir) if cache_dir else cache_root() / self.name
        self.relevant = None if ds.relevant is None else ds.relevant.astype(np.int64)
        self.gt, self.gt_source = self._ground_truth(path / "gt_top100.npy", ds.gt, log)

    def _ground_truth(self, gt_file, gt, log):
        if gt is not None:
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
        row["task@10"] = task_recall(found, data.relevant, top10)
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
