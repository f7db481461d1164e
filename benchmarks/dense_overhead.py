"""Where dense mode's time goes, for a batch of queries on all cores: each stage timed alone, interleaved.

    python -m benchmarks.dense_overhead --model wordnet.csae --items 1000000

Stages: the whole search in sparse mode (top 10 and top 1,000) and dense mode (1,000 candidates); inside them,
query encoding, the C++ scorer at top 10 and top 1,000, the projections W_dec q and the C++ rerank.
"""
import argparse
import sys


import csae_engine as ce
from csae_engine import datasets
from csae_engine.data import unit_rows

from .common import SHARED_WORDNET, md_table, sparse_scorer, write_result
from .search import interleaved, load_items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--items", type=int, default=0, help="0: the dataset's items; else this many perturbed ones")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    command = "python -m benchmarks.dense_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    model = ce.load_model(a.model)
    ds = datasets.load(a.data)
    X, data_name = load_items(a, ds)
    Q = unit_rows(ds.queries[: a.queries])
    engine = ce.Engine(model).build(X)
    index, n, c = engine.segments[0].index, len(X), a.candidates
    q_idx, q_val = engine.queries.codes(Q)
    P = engine.queries.projections(Q)
    score = sparse_scorer(engine)
    scorer = lambda top_k: score(q_idx, q_val, top_k, -1)  # noqa: E731

    cands = scorer(c)[0]
    stages = {
        "search, sparse, top 10": lambda: engine.search(Q, 10),
        f"search, sparse, top {c}": lambda: engine.search(Q, c),
        f"search, dense, {c} candidates, top 10": lambda: engine.search(Q, 10, mode="dense", candidates=c),
        "encode queries": lambda: engine.queries.codes(Q),
        "scorer, top 10": lambda: scorer(10),
        f"scorer, top {c}": lambda: scorer(c),
        "projections W_dec q": lambda: engine.queries.projections(Q),
        f"rerank {c} candidates": lambda: index.rerank(P, cands, 10, -1),
    }
    med = interleaved(stages, a.reps)
    base = med["search, sparse, top 10"]
    rows = [{"stage": name, "ms": s * 1e3, "over_sparse_top10": s / base} for name, s in med.items()]
    cfg = {"data": data_name, "n": n, "h": model.h, "k": model.k, "queries": len(Q), "candidates": c, "reps": a.reps}
    md = (f"{n} items, h={model.h}, k={model.k}; a batch of {len(Q)} queries on all cores; median of {a.reps} "
          f"interleaved runs\n\n" + md_table(rows, ["stage", "ms", "over_sparse_top10"]))
    print(md)
    write_result(f"dense_overhead_{data_name}_h{model.h}_k{model.k}", cfg, rows, command, md)


if __name__ == "__main__":
    main()
