"""The query path of Engine.search, old against new in one run: where one query's time goes, and batch throughput.

    python -m benchmarks.query_path [--model M] [--index DIR] [--probe P]

"old" reproduces the query encoding before the lean path (model.encode_tensor under no_grad: the autograd
Function, a dozen torch ops, numpy copies), "new" is QueryEncoder.codes (one C++ call, cpp/encode.h: an int8 pass
over the encoder, then float32 for the candidate latents; torch above SMALL_BATCH queries), "float32 pass" the same
C++ call reading the whole float32 encoder (the same codes). The engines share one index: only the encoder differs.
Per-query stages and end-to-end searches are timed one query at a time, every variant in turn for each query
(p50/p99 over the queries); batches (all cores) are the median of interleaved runs. Without --model, a CompresSAE
trained for --steps steps on the items; with --index, the index is loaded from DIR (or built and saved there).
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

import csae_engine as ce
from csae_engine import _core, datasets
from csae_engine.data import unit_rows
from csae_engine.index.query import SMALL_BATCH, QueryEncoder, query_codes, query_rows
from csae_engine.residual import CENTROIDS

from .common import SHARED_WORDNET, md_table, write_result
from .search import interleaved


def old_codes(model, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The query encoding as it was: model.encode_tensor under no_grad, renormalised in torch, copied to numpy."""
    with torch.no_grad():
        idx, val = model.encode_tensor(torch.from_numpy(Q).to(model.device), k)
    val = val.float()
    norms = val.norm(dim=1, keepdim=True)
    val = torch.where(norms > 0, val / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(val))
    return idx.cpu().numpy().astype(np.int64), val.cpu().numpy()


class OldEncoder(QueryEncoder):
    """QueryEncoder as it was: the old codes, and projections by torch at every batch size."""

    def codes(self, Q, terms=None, num_threads=-1):
        idx, val = old_codes(self.model, Q, self.k)
        if terms is not None and terms < self.k:
            idx, val = np.ascontiguousarray(idx[:, :terms]), np.ascontiguousarray(val[:, :terms])
        return idx, val

    def projections(self, Q, num_threads=-1):
        with torch.no_grad():
            if self.decoder is None:
                W, b = self.model.W_dec.detach().float(), self.model.decoder_bias
                self.decoder = (W if b is None else torch.cat([W, b.detach().float()[None]])).contiguous()
            W = self.decoder
            if self.residual is None:
                return (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()
            P = np.empty((len(Q), len(W) + self.residual.m * CENTROIDS), np.float32)
            P[:, :len(W)] = (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()
        self.residual.tables(Q, out=P[:, len(W):])
        return P


class Float32Encoder(QueryEncoder):
    """QueryEncoder with the C++ encoder's float32 pass only (no int8 copy): the same codes."""

    def __init__(self, *args):
        super().__init__(*args)
        self.float32 = None

    def small_codes(self, Q, num_threads=-1):
        if self.float32 is None:
            with torch.no_grad():
                self.float32 = (self.model.W_enc.detach().T.float().contiguous().numpy(),
                                self.model.encoder_bias().detach().float().numpy().copy())
        return _core.encode_queries(np.ascontiguousarray(Q, np.float32), *self.float32, self.k,
                                    not self.model.signed, num_threads)


def per_query(fns: dict, n: int) -> dict:
    """p50 and p99 in ms of each fn(i) over queries i < n, the functions taking turns on each query."""
    times = {name: [] for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t)
    return {name: (float(np.percentile(t, 50)) * 1e3, float(np.percentile(t, 99)) * 1e3) for name, t in times.items()}


def load_engine(a, X):
    if a.index and Path(a.index).exists():
        return ce.Engine.load(a.index, verify=False)
    model = ce.load_model(a.model) if a.model else ce.train(X, h=a.h, k=a.k, steps=a.steps, progress=False)
    engine = ce.Engine(model).build(X)
    if a.index:
        engine.save(a.index)
    return engine


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a model file; default: train one for --steps steps")
    p.add_argument("--index", default=None, help="load the index from DIR, or build it and save it there")
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--latency-queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000, help="queries in the all-core batch")
    p.add_argument("--reps", type=int, default=5, help="interleaved runs of each batch")
    p.add_argument("--probe", type=float, default=None, help="searches visit this share of a clustered index")
    p.add_argument("--name", default=None, help="the result's name (default query_path_<data>_h<h>_k<k>)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--crossover", type=int, nargs="*", default=[1, 4, 16, 64, 256, 1000],
                   help="batch sizes at which the C++ and torch encoders are compared")
    a = p.parse_args(argv)
    command = "python -m benchmarks.query_path " + " ".join(argv if argv is not None else sys.argv[1:])

    ds = datasets.load(a.data)
    X = np.asarray(ds.docs, np.float16)
    engine = load_engine(a, X)
    model, k, top_k = engine.model, engine.config["index_terms"], a.top_k
    old = copy.copy(engine)  # the same segments, the old encoder
    old.queries = OldEncoder(model, k, engine.residual)
    old.queries.decoder = None
    f32 = copy.copy(engine)
    f32.queries = Float32Encoder(model, k, engine.residual)
    probe = a.probe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one query at a time: the caller's thread only, as in a single-threaded server
    Qraw = np.asarray(ds.queries[:max(a.latency_queries, a.batch)])
    Qu, n = unit_rows(Qraw), a.latency_queries
    seg = engine.segments[0]
    codes = [engine.queries.codes(Qu[i:i + 1]) for i in range(n)]  # for the scorer alone
    old_idx, old_val = old_codes(model, Qu[:n], k)
    new_idx, new_val = np.concatenate([c[0] for c in codes]), np.concatenate([c[1] for c in codes])
    cfg_check = {"codes_equal_rows": float((old_idx == new_idx).all(1).mean()),
                 "codes_max_value_diff": float(np.abs(old_val - new_val).max())}
    P = [engine.queries.projections(Qu[i:i + 1]) for i in range(n)]
    cands = [seg.index.search(*codes[i], 1000, 1)[0] for i in range(n)]

    # stages of one query (nq=1), then whole searches; every variant takes its turn on each query
    stages = {
        "input checks (check_input)": lambda i: model.check_input(Qraw[i:i + 1], "Q"),
        "normalise (unit_rows)": lambda i: unit_rows(Qraw[i:i + 1], 0, "Q"),
        "query_rows (old and new)": lambda i: query_rows(model, Qraw[i:i + 1]),
        "encode, old (encode_tensor + renormalise)": lambda i: old_codes(model, Qu[i:i + 1], k),
        "encode, new (QueryEncoder.codes)": lambda i: engine.queries.codes(Qu[i:i + 1]),
        "encode, float32 pass": lambda i: f32.queries.codes(Qu[i:i + 1]),
        "projections, old (torch)": lambda i: old.queries.projections(Qu[i:i + 1]),
        "projections, new (W_dec q + residual tables; dense only)": lambda i: engine.queries.projections(Qu[i:i + 1]),
        f"C++ sparse search, top {top_k} (given the codes)": lambda i: seg.index.search(
            *codes[i], top_k, 1, None, 1.0 if probe is None else probe, top_k),
        "C++ rerank of 1,000 candidates (given p)": lambda i: seg.index.rerank(P[i], cands[i], top_k, 1),
    }
    for name, e in (("old", old), ("new", engine), ("float32 pass", f32)):
        stages[f"search sparse, {name}"] = lambda i, e=e: e.search(Qraw[i:i + 1], top_k, num_threads=1, probe=probe)
    for name, e in (("old", old), ("new", engine), ("float32 pass", f32)):
        stages[f"search dense, {name}"] = lambda i, e=e: e.search(Qraw[i:i + 1], top_k, mode="dense", num_threads=1,
                                                                  probe=probe)
    for fn in stages.values():  # warm: the encoder copies, caches
        fn(0)
    lat = per_query(stages, n)
    rows = [{"stage": name, "p50_ms": p50, "p99_ms": p99} for name, (p50, p99) in lat.items()]
    # each search alone over the queries, as a server running one path: only its own arrays compete for the cache
    alone = {f"{name} (alone)": per_query({name: fn}, n)[name] for name, fn in stages.items()
             if name.startswith(("encode", "search"))}
    rows += [{"stage": name, "p50_ms": p50, "p99_ms": p99} for name, (p50, p99) in alone.items()]
    ratios = {
        "encode": lat["encode, old (encode_tensor + renormalise)"][0] / lat["encode, new (QueryEncoder.codes)"][0],
        "projections": lat["projections, old (torch)"][0]
        / lat["projections, new (W_dec q + residual tables; dense only)"][0],
        "search sparse": lat["search sparse, old"][0] / lat["search sparse, new"][0],
        "search dense": lat["search dense, old"][0] / lat["search dense, new"][0],
        "encode (alone)": alone["encode, old (encode_tensor + renormalise) (alone)"][0]
        / alone["encode, new (QueryEncoder.codes) (alone)"][0],
        "search sparse (alone)": alone["search sparse, old (alone)"][0] / alone["search sparse, new (alone)"][0],
        "search dense (alone)": alone["search dense, old (alone)"][0] / alone["search dense, new (alone)"][0],
    }
    for what in ("encode", "search sparse", "search dense"):  # the float32 pass against the int8 one
        new = "encode, new (QueryEncoder.codes)" if what == "encode" else f"{what}, new"
        ratios[f"{what}: float32 pass / int8 pass"] = lat[f"{what}, float32 pass"][0] / lat[new][0]
        ratios[f"{what}: float32 pass / int8 pass (alone)"] = (alone[f"{what}, float32 pass (alone)"][0]
                                                               / alone[f"{new} (alone)"][0])

    torch.set_num_threads(threads)  # batches: all cores
    Qb = Qraw[:a.batch]
    batch = interleaved({
        "encode, old": lambda: old_codes(model, unit_rows(Qb), k),
        "encode, new": lambda: engine.queries.codes(unit_rows(Qb)),
        "search sparse, old": lambda: old.search(Qb, top_k, probe=probe),
        "search sparse, new": lambda: engine.search(Qb, top_k, probe=probe),
        "search dense, old": lambda: old.search(Qb, top_k, mode="dense", probe=probe),
        "search dense, new": lambda: engine.search(Qb, top_k, mode="dense", probe=probe),
    }, a.reps)
    batch_rows = [{"stage": name, "ms": s * 1e3, "qps": len(Qb) / s} for name, s in batch.items()]
    for what in ("encode", "search sparse", "search dense"):
        ratios[f"batch {what}"] = batch[f"{what}, old"] / batch[f"{what}, new"]

    # where the C++ encoder (SMALL_BATCH and below) and torch's GEMM cross: ms per query of each, interleaved
    cross = []
    for nq in a.crossover:  # noqa: B023 (the lambdas run inside their iteration)
        Qn = Qu[:nq]
        med = interleaved({"c++": lambda: engine.queries.small_codes(Qn), "torch": lambda: query_codes(model, Qn, k),
                           "c++ float32": lambda: f32.queries.small_codes(Qn)}, a.reps)
        cross.append({"nq": nq, "cpp_ms_per_query": med["c++"] * 1e3 / nq,
                      "cpp_float32_pass_ms_per_query": med["c++ float32"] * 1e3 / nq,
                      "torch_ms_per_query": med["torch"] * 1e3 / nq, "path": "c++" if nq <= SMALL_BATCH else "torch"})

    cfg = {"data": ds.name, "n": len(engine), "d": model.d, "h": model.h, "k": model.k, "index_terms": k,
           "top_k": top_k, "probe": probe, "latency_queries": a.latency_queries, "batch": len(Qb), "reps": a.reps,
           "small_batch": SMALL_BATCH, **cfg_check, "torch_threads": {"one_query": 1, "batches": threads},
           "model": a.model or f"CompresSAE trained {a.steps} steps", "index_config": engine.config}
    md = (f"{len(engine):,} items, h={model.h}, k={model.k}, top_k={top_k}, probe {probe or 1}; index "
          f"({engine.config['forward']} "
          f"forward codes, residual m={engine.config['residual_m']}). One query at a time on one thread (torch too) "
          f"({a.latency_queries} queries, the variants in turn on each; \"alone\": one variant over all queries, "
          f"then the next):\n\n"
          + md_table(rows, ["stage", "p50_ms", "p99_ms"])
          + f"\n\nA batch of {len(Qb)} queries on all cores (median of {a.reps} interleaved runs):\n\n"
          + md_table(batch_rows, ["stage", "ms", "qps"])
          + f"\n\nThe two encoders by batch size, all cores (QueryEncoder.codes takes the C++ one up to "
          f"{SMALL_BATCH} queries):\n\n" + md_table(cross, ["nq", "cpp_ms_per_query", "cpp_float32_pass_ms_per_query", "torch_ms_per_query",
                                      "path"])
          + "\n\nold / new (one query: p50; batches: median time):\n\n"
          + md_table([{"what": w, "old_over_new": r} for w, r in ratios.items()], ["what", "old_over_new"]))
    print(md)
    results = {"one_query": rows, "batch": batch_rows, "crossover": cross, "old_over_new": ratios}
    write_result(a.name or f"query_path_{ds.name}_h{model.h}_k{model.k}", cfg, results, command, md)


if __name__ == "__main__":
    main()
