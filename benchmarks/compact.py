"""Forward codes against float16 codes at equal bytes, for one trained model: recall of dense mode and the index size.

    python -m benchmarks.compact --model wordnet.csae          # 128 and 64 B, packed and ef indices, 4 and 5-bit values
    python -m benchmarks.compact --model M --budgets 128 64 --codings ef --value-bits 5 --residual-bytes 0 default 80

Each budget is split between a compact sparse code and --residual-bytes of residual code (0: none; "default":
Engine.build's split). recall@10 against the exact dense top 10 (gt_top100.npy) over every item ("dense all") and
over the sparse mode's top --candidates ("rerank N"); bytes per item of the forward codes alone and of the whole
index. The side-by-side comparison with PQ, OPQ and RaBitQ is `csae bench` (benchmarks/compare.py).
"""
import argparse
import sys
import time

import csae_engine as ce
from csae_engine import datasets
from csae_engine.metrics import recall

from .common import SHARED_WORDNET, md_table, write_result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compact", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model file from csae train")
    p.add_argument("--data", default=str(SHARED_WORDNET), help="dataset folder with docs, queries, gt_top100")
    p.add_argument("--budgets", type=int, nargs="+", default=[128, 64])
    p.add_argument("--value-bits", type=int, nargs="+", default=[4, 5])
    p.add_argument("--codings", nargs="+", default=["packed", "ef"], help="index codings of compact codes")
    p.add_argument("--residual-bytes", nargs="+", default=["0"],
                   help="residual bytes within each budget: ints, or 'default' for Engine.build's split")
    p.add_argument("--support", nargs="+", default=["encoder"], help="how compact codes choose their latents")
    p.add_argument("--queries", type=int, default=2000, help="the first this many queries")
    p.add_argument("--candidates", type=int, nargs="+", default=[1000])
    a = p.parse_args(argv)
    command = "python -m benchmarks.compact " + " ".join(argv if argv is not None else sys.argv[1:])
    model = ce.load_model(a.model)
    ds = datasets.load(a.data)
    Q, gt = ds.queries[:a.queries], ds.gt[:a.queries]
    rows = []

    def measure(label, engine, build_s, forward_names):
        nb, n = engine.nbytes(), len(engine)
        row = {"codes": label, "entries": engine.config["k"], "residual_bytes": engine.config["residual_m"],
               "build_s": build_s, "forward_bytes": sum(nb[name] for name in forward_names) / n,
               "index_bytes": sum(nb.values()) / n,
               "dense_all@10": recall(engine.search(Q, 10, mode="dense", candidates="all")[0], gt, 10)}
        for c in a.candidates:
            row[f"rerank {c}@10"] = recall(engine.search(Q, 10, mode="dense", candidates=c)[0], gt, 10)
        rows.append(row)
        print(row, flush=True)

    t = time.perf_counter()
    plain = ce.Engine.from_codes(model.encode(ds.docs), model)
    measure(f"float16, k={model.k}", plain, time.perf_counter() - t, ("fwd_indices", "fwd_values"))
    for budget in a.budgets:
        for coding in a.codings:
            for bits in a.value_bits:
                for residual in a.residual_bytes:
                    for support in a.support:
                        t = time.perf_counter()
                        try:
                            engine = ce.Engine(model).build(
                                ds.docs, bytes_per_item=budget, value_bits=bits, index_coding=coding,
                                support=support, residual_bytes=None if residual == "default" else int(residual))
                        except ValueError as e:
                            print(f"skipped {budget} B with {residual} residual bytes: {e}", flush=True)
                            continue
                        m = engine.config["residual_m"]
                        measure(f"{budget} B: compact, {coding} indices, {bits}-bit values, {support} support"
                                + (f" + {m} B residual" if m else ""), engine, time.perf_counter() - t,
                                ("fwd_packed",))
    cfg = {"model": a.model, "h": model.h, "k": model.k, "data": ds.name, "queries": len(Q),
           "candidates": a.candidates}
    md = (f"{len(ds.docs)} items, h={model.h}, model k={model.k}, {len(Q)} queries; recall@10 against the exact "
          f"dense top 10\n\n" + md_table(rows, ["codes", "entries", "residual_bytes", "forward_bytes", "index_bytes",
                                               "dense_all@10"] + [f"rerank {c}@10" for c in a.candidates]
                                         + ["build_s"]))
    print(md)
    tag = "" if a.support == ["encoder"] else "_" + "_".join(a.support)
    write_result(f"compact_{ds.name}_h{model.h}_k{model.k}{tag}", cfg, rows, command, md)


if __name__ == "__main__":
    main()
