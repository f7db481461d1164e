"""Larger than memory: build a sharded on-disk index from a .npy of perturbed real vectors, then search it mapped.

    python -m benchmarks.scale --model wordnet.csae --items 10000000 --shard-size 1000000

The build runs in a child process (its peak RSS is the build's alone) and reads the items with pread, one shard at
a time; each shard is written to disk and mapped back. The search stage opens the index memory-mapped and times
single queries on one thread (p50/p99) and batches on all cores, in sparse mode, dense mode (rerank) and with a
filter that allows 1% of the items. RSS there includes the index pages the searches touched (page cache).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from csae_engine import datasets

from .common import RESULTS, SHARED_WORDNET, md_table, peak_rss_mib, perturbed, write_result
from .search import latencies, qps

CACHE = datasets.CACHE / "bench"


def _build(a) -> None:
    import csae_engine as ce
    model = ce.load_model(a.model)
    t = time.perf_counter()
    ce.Engine(model).build(a.items_path, shard_size=a.shard_size, directory=a.index, progress=True)
    print(json.dumps({"build_s": time.perf_counter() - t, "build_peak_rss_mib": peak_rss_mib()}))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


BUILD_FIGURES = ("build_s", "build_peak_rss_mib", "index_bytes_on_disk", "index_bytes_per_item")


def _build_stage(a, items: Path, index: Path) -> dict:
    t = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--stage", "build", "--model", a.model,
                            "--items-path", str(items), "--index", str(index), "--shard-size", str(a.shard_size)],
                           check=True, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    out = {"build_s": time.perf_counter() - t,
           "build_peak_rss_mib": json.loads(child.stdout.strip().splitlines()[-1])["build_peak_rss_mib"],
           "index_bytes_on_disk": _dir_bytes(index)}
    out["index_bytes_per_item"] = out["index_bytes_on_disk"] / a.items
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--items", type=int, default=10_000_000)
    p.add_argument("--shard-size", type=int, default=1_000_000)
    p.add_argument("--index", default=None, help="index directory (default: in the benchmark cache)")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--search-only", action="store_true",
                   help="reuse the index and the build figures of the last run's result file; time the searches again")
    p.add_argument("--stage", choices=["all", "build"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--items-path", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage == "build":
        return _build(a)
    command = "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    ds = datasets.load(a.data)
    items = CACHE / f"perturbed_{ds.name}_{a.items}.npy"
    if not items.exists():
        print(f"writing {a.items} perturbed items to {items}")
        perturbed(ds.docs, a.items, items)
    index = Path(a.index or CACHE / f"index_{ds.name}_{a.items}")
    cfg = {"items": a.items, "shard_size": a.shard_size, "items_file_bytes": items.stat().st_size,
           "items_dtype": "float16", "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}

    name = f"scale_{ds.name}_{a.items}"
    if a.search_only:
        previous = json.loads((RESULTS / f"{name}.json").read_text())
        cfg.update({key: previous["config"][key] for key in BUILD_FIGURES})
        cfg["build_figures_from"] = f"commit {previous['commit']}, {previous['date']}"
    else:
        cfg.update(_build_stage(a, items, index))
    print(cfg)

    import torch

    import csae_engine as ce
    from csae_engine.data import unit_rows
    torch.set_num_threads(1)
    t = time.perf_counter()
    engine = ce.Engine.load(index, verify=False)
    cfg["open_s"] = time.perf_counter() - t
    cfg["segments"] = len(engine.segments)
    Q = unit_rows(ds.queries[: a.queries])
    nl = min(a.latency_queries, len(Q))
    rng = np.random.default_rng(0)
    allow = np.sort(rng.choice(a.items, a.items // 100, replace=False))
    t = time.perf_counter()
    engine.search(Q, 10, num_threads=-1)  # first pass: faults the index pages in
    cfg["first_batch_s"] = time.perf_counter() - t
    rows = []
    for method, kw in (("sparse", {}), ("dense rerank 100", {"mode": "dense"}),
                       ("sparse, filter allows 1%", {"allow_ids": allow})):
        single = latencies(lambda i: engine.search(Q[i:i + 1], 10, num_threads=1, **kw), nl)  # noqa: B023
        single_all = latencies(lambda i: engine.search(Q[i:i + 1], 10, num_threads=-1, **kw), nl)  # noqa: B023
        row = {"method": method, "top_k": 10, **single, "p50_ms_all_cores": single_all["p50_ms"],
               "all_core_qps": qps(lambda: engine.search(Q, 10, num_threads=-1, **kw), len(Q), 1)}  # noqa: B023
        rows.append(row)
        print(row)
    found, _ = engine.search(Q[:50], 10, allow_ids=allow)
    cfg["filter_results_all_allowed"] = bool(np.isin(found, allow).all() and (found >= 0).all())
    cfg["search_peak_rss_mib"] = peak_rss_mib()
    md = (f"{a.items:,} items (perturbed WordNet/MiniLM, float16 .npy of {cfg['items_file_bytes'] / 2**30:.1f} GiB) "
          f"in {cfg['segments']} shards of {a.shard_size:,}; machine RAM {cfg['ram_bytes'] / 2**30:.0f} GiB.\n\n"
          f"Build {cfg['build_s'] / 60:.1f} min, peak RSS {cfg['build_peak_rss_mib']:.0f} MiB; index on disk "
          f"{cfg['index_bytes_on_disk'] / 2**30:.2f} GiB ({cfg['index_bytes_per_item']:.1f} bytes/item); opened "
          f"in {cfg['open_s']:.2f} s (mapped); search RSS peak {cfg['search_peak_rss_mib']:.0f} MiB (includes "
          f"mapped index pages).\n\n"
          + md_table(rows, ["method", "top_k", "p50_ms", "p99_ms", "p50_ms_all_cores", "all_core_qps"]))
    path = write_result(name, cfg, rows, command, md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
