"""The main job end to end on real data: train, encode, index, search, and show a few real queries."""
import time

import numpy as np

from . import datasets
from .data import unit_rows
from .engine import Engine
from .metrics import exact_topk, recall, task_recall
from .training import train

__all__ = ["run"]

DEMO_STEPS = 1000  # keeps the whole demo under 10 minutes on 2 CPU cores; `csae train` defaults to 5,000


DEMO_BYTES = 128  # bytes of forward code per item (Engine.build's default): PQ-128's, printed beside ours


def run(data=None, *, steps: int | None = None, h: int = 4096, k: int = 32, bytes_per_item: int | None = DEMO_BYTES,
        show: int = 3) -> dict:
    """Train, encode, index and search the dataset at ``data`` (default the shared WordNet/MiniLM set), printing the
    figures; returns them. bytes_per_item=None stores the model's k entries in float16 instead of Engine.build's
    compact and residual codes."""
    path = data or datasets.wordnet_minilm()
    ds = datasets.load(path)
    n, d = ds.docs.shape
    steps = steps or DEMO_STEPS
    print(f"data: {ds.name}, {n} items of d={d} ({path})")

    t = time.perf_counter()
    model = train(ds.docs, h=h, k=k, steps=steps)
    train_s = time.perf_counter() - t
    if bytes_per_item is None:
        engine = Engine.from_codes(model.encode(ds.docs, progress=True), model)
    else:
        engine = Engine(model).build(ds.docs, bytes_per_item=bytes_per_item, progress=True)
    cfg, nbytes = engine.config, engine.nbytes()
    forward_bytes = sum(nbytes.get(name, 0) for name in ("fwd_indices", "fwd_values", "fwd_packed")) / n
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, 20000), replace=False))
    cos = np.sum(unit_rows(np.asarray(ds.docs[sample], np.float32)) * engine.reconstruct(sample), axis=1)
    used = np.zeros(h, bool)
    for _, block in engine.iter_codes():
        used[block.indices] = True
    dead = float(1 - used.mean())
    dense_bytes = d * np.dtype(ds.docs.dtype).itemsize
    report = {"items": n, "d": d, "h": h, "k": k, "steps": steps, "train_seconds": round(train_s, 1),
              "bytes_per_item": forward_bytes, "index_bytes_per_item": engine.bytes_per_item(),
              "dense_bytes_per_item": dense_bytes, "reconstruction_cosine": float(cos.mean()), "dead_latents": dead}
    print(f"trained {steps} steps in {train_s:.0f} s; dead latents (in no item's code): {dead:.1%}")
    if cfg["forward"] == "plain":
        what = f"k={cfg['k']} x (index + float16 value)"
    else:
        what = (f"a sparse code of {cfg['k']} refitted entries ({cfg['index_coding']} indices, {cfg['value_bits']}-bit "
                f"values)" + (f" + {cfg['residual_m']} bytes of residual code" if cfg["residual_m"] else ""))
    print(f"bytes per item: {forward_bytes:.0f} ({what}) vs {dense_bytes} dense "
          f"{ds.docs.dtype}: {dense_bytes / forward_bytes:.1f}x smaller")
    print(f"mean reconstruction cosine: {cos.mean():.4f}")
    if ds.queries is None:
        return report

    print(f"index: {engine.bytes_per_item():.0f} bytes/item (inverted lists of the encoder's {cfg['index_terms']} "
          f"strongest latents + forward codes for the dense mode)")
    truth = ds.gt if ds.gt is not None else exact_topk(ds.queries, ds.docs, 100)
    print(f"recall against exact dense search over {len(ds.queries)} queries:")
    for label, kwargs in (("sparse: query code vs item codes", {"mode": "sparse"}),
                          ("dense: query vs reconstructed items, rerank of 1,000 sparse candidates",
                           {"mode": "dense", "candidates": 1000}),
                          ("dense: query vs every reconstructed item", {"mode": "dense", "candidates": "all"})):
        t = time.perf_counter()
        found, _ = engine.search(ds.queries, top_k=100, **kwargs)
        qps = len(found) / (time.perf_counter() - t)
        r10, r100 = recall(found, truth, 10), recall(found, truth, 100)
        report[label] = {"recall_at_10": r10, "recall_at_100": r100, "qps": qps}
        print(f"  {label}: recall@10 {r10:.3f}, recall@100 {r100:.3f} ({qps:.0f} queries/s)")
    if ds.relevant is not None:
        task, exact_task = task_recall(found, ds.relevant), task_recall(truth, ds.relevant)
        report.update(task_recall_at_10=task, exact_task_recall_at_10=exact_task)
        print(f"task: the labelled synset is in the top 10 for {task:.1%} of queries (exact dense search: {exact_task:.1%})")
    pq_bytes = bytes_per_item or int(round(forward_bytes))  # the budget ours kept within
    pq = _pq_recall(ds, truth, pq_bytes)
    if pq is not None:
        report[f"FAISS PQ, {pq_bytes} bytes"] = {"recall_at_10": pq}
        print(f"  FAISS product quantisation at the same {pq_bytes} bytes per item, exhaustive: recall@10 {pq:.3f}")
    _show(ds, found, truth, show)
    return report


def _pq_recall(ds, truth, nbytes: int) -> float | None:
    """recall@10 of FAISS IndexPQ at nbytes bytes per item (8-bit codes) on the same items and queries, or None
    when faiss is not installed or nbytes does not divide d."""
    try:
        import faiss
    except ImportError:
        return None
    X = unit_rows(np.asarray(ds.docs, np.float32))
    if X.shape[1] % nbytes or len(X) < 256 * 39:  # PQ needs d divisible by M, and about 39 points per centroid
        return None
    index = faiss.IndexPQ(X.shape[1], nbytes, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(X[np.random.default_rng(0).choice(len(X), min(len(X), 32768), replace=False)])
    index.add(X)
    found = index.search(unit_rows(np.asarray(ds.queries, np.float32), 0, "queries"), 10)[1]
    return recall(found, truth, 10)


def _show(ds, found, truth, show):
    label = lambda texts, i: texts[i] if texts else f"item {i}"
    for q in range(min(show, len(found))):
        print(f"\nquery: {label(ds.query_texts, q)}")
        for rank, (f, t) in enumerate(zip(found[q, :3], truth[q, :3]), 1):
            print(f"  {rank}. compressed: {label(ds.doc_texts, f)[:70]:<70} | exact: {label(ds.doc_texts, t)[:60]}")
