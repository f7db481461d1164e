"""Compression quality and speed against every peer, side by side, on the same items and queries in one process.

    python -m benchmarks.compare --data ../shared/data/wordnet-minilm       # or: csae bench --data ...
    python -m benchmarks.compare --data DIR --k 16 32 --h 4096 --steps 200  # a smaller grid
    python -m benchmarks.compare --data DIR --budgets 64 128 --peers PQ OPQ RaBitQ  # compact codes against PQ

The default grid is one model, (k, h) = (32, 8192) (--grid, or --k x --h, for others), which keeps the default run
at about 45 minutes on 2 cores at 117,659 items and 10,000 queries: the peers about 28 min, the model about 15 min
(training about 3, float16 codes (3 methods) and compact codes at each of 6 --budgets (2 methods each), whose
encodings take about 4 min and dense scans of every item about 4 min). Each further model adds 12-20 min; on a
10,000-item subset (100 training steps) h=8192 beat h=4096 at every budget, and k=64 beat k=32 from 128 bytes up
(--grid 32,8192 64,8192). The earlier default, the 12-model grid --k 8 16 32 64 --h 1024 4096 8192 of float16
codes only (--budgets with no value), took an hour.

DIR holds items.npy or docs.npy (n, d) and queries.npy, optionally gt_top100.npy (exact dense top 100; computed
exactly and cached when missing) and relevant.npy (the labelled answer per query: task recall).

Methods
  ours sparse        cosine between sparse codes, exact over the inverted index
  ours dense rerank  the sparse mode's top --candidates, rescored by cos(q, x_hat)
  ours dense all     cos(q, x_hat) over every item (forward codes only)
  ours compact       the same model's forward codes at each --budgets byte budget (Engine.build(X,
                     bytes_per_item=B)): a compact sparse code (refitted entries, --value-bits bits per value,
                     csae_engine/compact.py) and --residual-bytes of product-quantised residual
                     (csae_engine/residual.py) in B bytes: "dense all" over every item (the forward store only)
                     and "dense rerank" of the sparse mode's candidates (posting lists of the encoder's model-k
                     codes + the forward store)
  peers              truncation, PCA (fp32/fp16/int8), binary (+ rescore), PQ, OPQ, FAISS RaBitQ (1-4 bits per
                     dimension), flat, HNSW: benchmarks/peers.py

Metrics: recall@10 and @100 against exact dense top 100 (all queries, one batch on all cores; recall@10 is the
first 10 of each method's top 100), task recall@10 where labels exist, bytes per item (everything a method keeps
in memory per item to answer queries; constants such as a PCA matrix or PQ codebooks are reported apart),
build time (training included; our models' training is cached), QPS on all cores (the batch of all queries) and on
one thread (a batch of --queries), p50 / p99 latency of single queries on one thread (--queries of them, fewer
for slow methods: at most --latency-budget seconds each). QPS and latency are timed at top_k=10.
encode_us_per_item: encoding the items, per item (ours, float16 codes: model.encode on the items, timed apart from
indexing; ours compact: the whole Engine.build, residual training included; peers: adding the items to the index,
transform included).
candidate_recall@10 (rerank methods: ours dense rerank, binary + rescore): the share of the exact top 10 found
among the first stage's candidates, the ceiling of the rerank's recall@10.
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
from .peers import (DEFAULT_CANDIDATES, DEFAULT_OPQ_BYTES, DEFAULT_RABITQ_BITS, HNSW_EF_CONSTRUCTION,
                    HNSW_EF_SEARCH, HNSW_M, OPQ_ITERATIONS, PQ_TRAIN_POINTS, TOP, Method, encode_us, peer_methods,
                    set_threads)

DEFAULT_GRID = ((32, 8192),)  # (k, h): one model keeps the default run near 45 min on 2 CPU cores (see above)
DEFAULT_STEPS = 500
DEFAULT_BATCH = 1024
DEFAULT_PEER_BYTES = (32, 64, 128, 256)
DEFAULT_BUDGETS = (32, 64, 96, 128, 192, 256)  # bytes of forward code per item of our compact codes
TIMED_TOP_K = 10
POSTINGS = ("offsets", "local_ids", "post_values")  # Engine.nbytes(): the arrays of sparse mode
FORWARD = ("fwd_indices", "fwd_values", "fwd_packed")  # and of dense mode: plain or packed forward codes


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


def _split_bytes(engine) -> tuple[float, float, dict]:
    """(posting bytes, forward bytes, other arrays' bytes by name) per item of an engine."""
    nb = engine.nbytes()
    n = len(engine)
    postings = sum(nb.get(name, 0) for name in POSTINGS) / n
    forward = sum(nb.get(name, 0) for name in FORWARD) / n
    other = {name: size / n for name, size in nb.items()  # e.g. user ids: none with the default row numbers
             if name not in POSTINGS + FORWARD}
    return postings, forward, other


def _mode(engine, m, cands=None):
    return lambda Q, top_k, threads: engine.search(Q, top_k, mode=m, candidates=cands, num_threads=threads)[0]


def _sparse_candidates(engine, candidates: int):
    return lambda Q: engine.search(Q, min(candidates, len(engine)), mode="sparse")[0]


def our_methods(engine, model, h: int, k: int, train_s: float, index_s: float, candidates: int,
                encode_s: float | None = None):
    """Sparse, dense rerank and dense "all" on one engine of float16 codes, with their honest bytes per item."""
    from csae_engine.codes import index_dtype
    postings, forward, other = _split_bytes(engine)
    raw = k * (index_dtype(h).itemsize + 2)  # the codes themselves: uint16 (or uint8) index + float16 value
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    common = dict(h=h, k=k, raw_code_bytes=raw, train_s=train_s, index_s=index_s, constant_bytes=model_bytes,
                  build_s=train_s + index_s + (encode_s or 0), **({"other_bytes_per_item": other} if other else {}),
                  **({} if encode_s is None else {"encode_us_per_item": encode_us(encode_s, len(engine))}))
    tag = f"k={k}, h={h}"
    cands = max(candidates, TOP)
    return [Method(f"ours sparse ({tag})", "ours sparse", _mode(engine, "sparse"), postings, **common),
            Method(f"ours dense rerank {cands} ({tag})", "ours dense rerank", _mode(engine, "dense", cands),
                   postings + forward, candidate_search=_sparse_candidates(engine, cands), **common),
            Method(f"ours dense all ({tag})", "ours dense all", _mode(engine, "dense", "all"), forward, **common)]


def compact_methods(engine, model, h: int, k: int, budget: int, train_s: float, encode_s: float, index_s: float,
                    candidates: int):
    """Dense all and dense rerank on one engine of compact codes (Engine.build(X, bytes_per_item=budget)).

    Bytes per item: the packed forward store alone for dense all; posting lists + forward store for rerank."""
    postings, forward, other = _split_bytes(engine)
    cfg = engine.config
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    common = dict(h=h, k=k, code_k=cfg["k"], budget=budget, value_bits=cfg["value_bits"],
                  residual_bytes=cfg["residual_m"],
                  index_terms=cfg["index_terms"], raw_code_bytes=forward, train_s=train_s, index_s=index_s,
                  encode_us_per_item=encode_us(encode_s, len(engine)), constant_bytes=model_bytes,
                  build_s=train_s + encode_s + index_s, **({"other_bytes_per_item": other} if other else {}))
    tag = f"{budget} B, k={cfg['k']}, residual {cfg['residual_m']} B, h={h}, model k={k}"
    cands = max(candidates, TOP)
    return [Method(f"ours compact dense all ({tag})", "ours compact dense all", _mode(engine, "dense", "all"),
                   forward, **common),
            Method(f"ours compact dense rerank {cands} ({tag})", "ours compact dense rerank",
                   _mode(engine, "dense", cands), postings + forward,
                   candidate_search=_sparse_candidates(engine, cands), **common)]


def candidate_recall(cands: np.ndarray, gt: np.ndarray, k: int = 10, chunk: int = 256) -> float:
    """Mean over queries of the share of gt[:, :k] found anywhere among cands (nq, c)."""
    truth = np.asarray(gt)[:, :k]
    hits = 0
    for s in range(0, len(truth), chunk):
        hits += (truth[s:s + chunk, :, None] == cands[s:s + chunk, None, :]).any(axis=2).sum()
    return float(hits) / truth.size


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
    if method.candidate_search is not None:
        row["candidate_recall@10"] = candidate_recall(method.candidate_search(Q), data.gt, top10)
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
    p.add_argument("--k", type=int, nargs="+", default=None,
                   help="our grid: non-zeros per code (every --k x --h; default the --grid below)")
    p.add_argument("--h", type=int, nargs="+", default=None, help="our grid: latent dims")
    p.add_argument("--grid", nargs="+", default=None, metavar="K,H",
                   help="our models as k,h pairs instead of every --k x --h, e.g. --grid 16,4096 32,4096 (default "
                        + " ".join(f"{k},{h}" for k, h in DEFAULT_GRID) + ")")
    p.add_argument("--budgets", type=int, nargs="*", default=list(DEFAULT_BUDGETS),
                   help="bytes of forward code per item at which each grid model's compact codes are measured "
                        "(default " + " ".join(map(str, DEFAULT_BUDGETS)) + "; none: float16 codes only)")
    p.add_argument("--residual-bytes", type=int, default=None,
                   help="residual code bytes of the compact codes (default: Engine.build's split; 0: none)")
    p.add_argument("--value-bits", type=int, default=None,
                   help="bits per value of compact codes (default the library's DEFAULT_VALUE_BITS)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps of batch {DEFAULT_BATCH} per grid model (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-bytes", type=int, nargs="+", default=list(DEFAULT_PEER_BYTES),
                   help="bytes per item at which the compressing peers are built")
    p.add_argument("--opq-bytes", type=int, nargs="+", default=list(DEFAULT_OPQ_BYTES),
                   help="budgets (of --peer-bytes) at which OPQ is trained too (slow)")
    p.add_argument("--rabitq-bits", type=int, nargs="*", default=list(DEFAULT_RABITQ_BITS),
                   help="bits per dimension of the FAISS RaBitQ peers (default 1 2 3 4)")
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
        if a.grid:
            grid = [tuple(int(v) for v in pair.split(",")) for pair in a.grid]
        elif a.k or a.h:
            grid = [(k, h) for h in (a.h or dict.fromkeys(h for _, h in DEFAULT_GRID))
                    for k in (a.k or dict.fromkeys(k for k, _ in DEFAULT_GRID))]
        else:
            grid = list(DEFAULT_GRID)
    except ValueError:
        p.error(f"--grid takes k,h pairs such as 32,4096, got {a.grid}")
    if any(len(pair) != 2 for pair in grid):
        p.error(f"--grid takes k,h pairs such as 32,4096, got {a.grid}")
    from csae_engine.compact import MAX_VALUE_BITS, MIN_VALUE_BITS
    from csae_engine.models.encoding import DEFAULT_VALUE_BITS
    value_bits = DEFAULT_VALUE_BITS if a.value_bits is None else a.value_bits
    if not MIN_VALUE_BITS <= value_bits <= MAX_VALUE_BITS:
        p.error(f"--value-bits must be in {MIN_VALUE_BITS}..{MAX_VALUE_BITS}, got {value_bits}")
    cfg = {"data": data.name, "n": data.n, "d": data.d, "queries": len(data.Q), "ground_truth": data.gt_source,
           "task_labels": data.relevant is not None, "grid_k_h": grid, "steps": a.steps, "batch_size": a.batch_size,
           "seed": a.seed, "peer_bytes": a.peer_bytes, "opq_bytes": a.opq_bytes,
           "pq_train_points": min(data.n, PQ_TRAIN_POINTS), "opq_iterations": OPQ_ITERATIONS,
           "candidates": a.candidates, "hnsw": a.hnsw, "budgets": a.budgets, "value_bits": value_bits,
           "residual_bytes": a.residual_bytes,
           "rabitq_bits": a.rabitq_bits,
           "latency_queries": a.queries, "budget_s": a.budget, "cores": cores, "timed_top_k": TIMED_TOP_K}
    rows = []

    def save(complete: bool) -> str:  # after every model and peer, so that a cut-short run leaves its results
        cfg["complete"] = complete
        md = markdown(rows, cfg)
        write_result("compare", cfg, rows, command, md, results_dir=out)
        plots(rows, out, data.name)
        return md

    # peers first: they need no training, ours may train for long
    for m in peer_methods(data.X, a.peer_bytes, a.candidates, log, a.peers, tuple(a.hnsw), a.opq_bytes,
                          a.rabitq_bits):
        rows.append(evaluate(m, data, latency_queries=a.queries, budget_s=a.budget, cores=cores, log=log))
        del m
        save(False)
    import csae_engine as ce

    def measure(methods):
        for m in methods:
            rows.append(evaluate(m, data, latency_queries=a.queries, budget_s=a.budget, cores=cores, log=log))
        save(False)

    for k, h in grid:
        model, train_s = grid_model(data, h, k, a.steps, a.seed, a.batch_size, log)
        set_threads(cores)
        # model.encode, then Engine.build_codes: what Engine.build(X) does, with the encoding timed apart
        encode_s, codes = _timed(lambda model=model: model.encode(data.X))
        index_s, engine = _timed(lambda model=model, codes=codes: ce.Engine(model).build_codes(codes))
        measure(our_methods(engine, model, h, k, train_s, index_s, a.candidates, encode_s))
        del engine, codes
        for budget in a.budgets:
            try:  # the whole build (encoding, residual training, indexing) is timed as encoding
                build_s, engine = _timed(lambda model=model, budget=budget: ce.Engine(model).build(
                    data.X, bytes_per_item=budget, value_bits=value_bits, residual_bytes=a.residual_bytes))
            except ValueError as e:
                log(f"  compact codes at {budget} B (k={k}, h={h}): skipped, {e}")
                continue
            measure(compact_methods(engine, model, h, k, budget, train_s, build_s, 0.0, a.candidates))
            del engine
    md = save(True)
    log(md)
    log(f"wrote {out}/compare.json, compare.md, recall_vs_bytes.png, recall_vs_qps.png")
    return rows


COLUMNS = ["method", "bytes_per_item", "recall@10", "recall@100", "task@10", "candidate_recall@10",
           "encode_us_per_item", "build_s", "qps_all_cores", "qps_1_thread", "p50_ms", "p99_ms"]
SUMMARY_FAMILIES = ("ours compact dense all", "ours compact dense rerank", "ours dense all", "ours dense rerank",
                    "PQ", "OPQ", "RaBitQ", "PCA int8", "binary")


def at_bytes(rows, target: float, tol: float = 0.1) -> list:
    """Rows within tol of target bytes per item, best recall@10 first, plus the exact float32 ceiling."""
    near = [r for r in rows if abs(r["bytes_per_item"] - target) <= tol * target]
    ceiling = [r for r in rows if r["family"] == "flat" and r not in near]
    return sorted(near, key=lambda r: -r["recall@10"]) + ceiling


def best_under(rows, targets, families=SUMMARY_FAMILIES, tol: float = 0.1) -> list:
    """Per target: the best recall@10 of each family among its rows of at most (1 + tol) x target bytes per item,
    as "recall (bytes B)" cells."""
    out = []
    for target in targets:
        row = {"budget": f"{target} B"}
        for fam in families:
            fit = [r for r in rows if r["family"] == fam and r["bytes_per_item"] <= (1 + tol) * target]
            if fit:
                best = max(fit, key=lambda r: r["recall@10"])
                row[fam] = f"{best['recall@10']:.3f} ({best['bytes_per_item']:.0f} B)"
        out.append(row)
    return out


def markdown(rows, cfg) -> str:
    budgets = cfg.get("budgets", [])
    intro = (f"{cfg['n']} items, d={cfg['d']}, {cfg['queries']} queries; recall against exact dense top 100 "
             f"({cfg['ground_truth']}); our models (k, h) {', '.join(map(str, cfg['grid_k_h']))}, each trained "
             f"{cfg['steps']} steps of batch {cfg['batch_size']} on the items"
             + (f", measured as float16 codes and as compact codes of {', '.join(map(str, budgets))} bytes "
                f"({cfg['value_bits']}-bit values)" if budgets else "")
             + f"; dense rerank and binary rescoring take {cfg['candidates']} "
             f"candidates; QPS and latency at top_k={cfg['timed_top_k']} ({cfg['cores']} cores); bytes per item: "
             f"what the method keeps in memory per item (constants such as models, PCA matrices and codebooks "
             f"are in the JSON's constant_bytes); candidate_recall@10: the exact top 10 found among a rerank's "
             f"candidates; encode_us_per_item: encoding the items, per item.")
    out = [intro if cfg.get("complete", True) else "**Incomplete: the run was still going.** " + intro]
    targets = sorted({64, 128} | set(cfg["peer_bytes"]) | set(budgets))
    present = [f for f in SUMMARY_FAMILIES if any(r["family"] == f for r in rows)]
    if present and rows:
        out += ["\n## Best recall@10 at or under each budget (+10%)\n",
                md_table(best_under(rows, targets, present), ["budget"] + present)]
    for target in targets:
        sub = at_bytes(rows, target)
        if len(sub) > 1:
            out += [f"\n## About {target} bytes per item (within 10%)\n", md_table(sub, COLUMNS)]
    out += ["\n## Every method\n", md_table(sorted(rows, key=lambda r: (r["family"], r["bytes_per_item"])),
                                             COLUMNS + ["code_k", "raw_code_bytes", "train_s"])]
    return "\n".join(out)


MARKERS = {"ours sparse": ("o", "C3"), "ours dense rerank": ("s", "C1"), "ours dense all": ("D", "C5"),
           "ours compact dense all": ("D", "C6"), "ours compact dense rerank": ("s", "C6"),
           "truncation fp32": ("v", "C0"), "truncation fp16": ("^", "C0"), "PCA fp32": ("<", "C2"),
           "PCA fp16": (">", "C2"), "PCA int8": ("p", "C2"), "binary": ("x", "C7"), "binary+rescore": ("+", "C7"),
           "PQ": ("h", "C4"), "OPQ": ("H", "C9"), "RaBitQ": ("d", "darkcyan"), "flat": ("*", "k"), "HNSW": ("P", "C8")}
UNCONNECTED = ("flat", "HNSW", "binary", "binary+rescore", "ours sparse", "ours dense rerank", "ours dense all")


def plots(rows, out: Path, name: str) -> None:
    """recall@10 against bytes per item and against QPS; the compact codes of one model are joined across budgets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for x_key, x_label, fname in (("bytes_per_item", "bytes per item (log)", "recall_vs_bytes.png"),
                                  ("qps_all_cores", "queries per second, all cores (log)", "recall_vs_qps.png")):
        fig, ax = plt.subplots(figsize=(11, 7))
        for fam in dict.fromkeys(r["family"] for r in rows):
            marker, color = MARKERS.get(fam, ("o", None))
            ours = fam.startswith("ours")
            fam_rows = [r for r in rows if r["family"] == fam]
            # one line per model for compact codes (across budgets), one per family for a peer swept over sizes
            groups = dict.fromkeys((r["k"], r["h"]) if fam.startswith("ours compact") else None for r in fam_rows)
            for i, g in enumerate(groups):
                sub = sorted((r for r in fam_rows if g is None or (r["k"], r["h"]) == g), key=lambda r: r[x_key])
                ax.plot([r[x_key] for r in sub], [r["recall@10"] for r in sub], marker=marker, color=color,
                        linestyle="none" if fam in UNCONNECTED else ("-" if ours else ":"),
                        markersize=7 if ours else 8, label=fam if i == 0 else None, alpha=0.85,
                        markerfacecolor="none" if fam == "ours compact dense rerank" else None)
            if ours:
                for r in fam_rows:
                    ax.annotate(f"{r['k']},{r['h'] // 1024}k", (r[x_key], r["recall@10"]), fontsize=6,
                                xytext=(3, 2), textcoords="offset points", color=color)
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("recall@10 vs exact dense search")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{name}: recall@10 against {x_label.split(' (')[0]}; ours labelled (model k, h)")
        ax.legend(fontsize=8, loc="best", ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
