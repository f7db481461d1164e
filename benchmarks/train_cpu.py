"""CPU training: speed, peak memory and the resulting search quality, on the shared data or any dataset folder.

    python -m benchmarks.train_cpu                         # the documented defaults, shared WordNet/MiniLM data
    python -m benchmarks.train_cpu --steps 200 --name quick
    python -m benchmarks.train_cpu --memmap-items 4000000  # train from a generated .npy much larger than the model
    python -m benchmarks.train_cpu --steps 100 --resident no --name streamed   # the streamed loader on the same data
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import csae_engine as ce
from csae_engine import datasets
from csae_engine.metrics import exact_topk, recall
from csae_engine.training import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS

from .common import SHARED_WORDNET, md_table, peak_rss_mib, perturbed, write_result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED_WORDNET))
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--memmap-items", type=int, default=0,
                   help="instead: train --steps on this many perturbed items written to a temporary .npy")
    p.add_argument("--resident", choices=["auto", "yes", "no"], default="auto",
                   help="hold the items in memory (yes), stream them (no), or let train decide (TrainConfig.resident)")
    p.add_argument("--step-path", choices=["auto", "dense", "sparse"], default="auto",
                   help="the training step's path (TopKSAE.step_path; auto: sparse on the CPU)")
    p.add_argument("--name", default=None, help="result file name (default from the settings)")
    p.add_argument("--save", default=None, help="also write the trained model here")
    a = p.parse_args(argv)
    ds = datasets.load(a.data)
    cfg = {"data": ds.name, "h": a.h, "k": a.k, "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr,
           "resident": a.resident, "step_path": a.step_path}
    resident = {"auto": None, "yes": True, "no": False}[a.resident]

    def fresh_model(d):
        model = ce.CompresSAE(d, a.h, a.k, seed=0)
        model.step_path = a.step_path
        return model
    command = "python -m benchmarks.train_cpu " + " ".join(argv if argv is not None else sys.argv[1:])

    if a.memmap_items:
        with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
            path = perturbed(ds.docs, a.memmap_items, Path(tmp) / "items.npy")
            rss_before = peak_rss_mib()
            t = time.perf_counter()
            model = ce.train(str(path), model=fresh_model(ds.docs.shape[1]), steps=a.steps, batch_size=a.batch_size,
                             lr=a.lr, resident=resident)
            seconds = time.perf_counter() - t
            row = {"items": a.memmap_items, "file_mib": path.stat().st_size / 2**20, "train_s": seconds,
                   "steps_per_s": a.steps / seconds, "samples_per_s": a.steps * a.batch_size / seconds,
                   "peak_rss_mib": peak_rss_mib(), "peak_rss_before_training_mib": rss_before,
                   "final_cos_k": model.history[-1]["cos_k"]}
        cfg["memmap_items"] = a.memmap_items
        name = a.name or f"train_cpu_memmap_{a.memmap_items}"
        md = md_table([row], list(row))
    else:
        t = time.perf_counter()
        model = ce.train(ds.docs, model=fresh_model(ds.docs.shape[1]), steps=a.steps, batch_size=a.batch_size,
                         lr=a.lr, resident=resident)
        seconds = time.perf_counter() - t
        if a.save:
            model.save(a.save)
        codes = model.encode(ds.docs)
        X_hat = model.decode(codes)
        X = np.asarray(ds.docs, np.float32)
        cos = (X * X_hat).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(X_hat, axis=1)
        row = {"items": len(X), "train_s": seconds, "steps_per_s": a.steps / seconds,
               "samples_per_s": a.steps * a.batch_size / seconds, "peak_rss_mib": peak_rss_mib(),
               "final_loss": model.history[-1]["loss"], "reconstruction_cos": float(cos.mean()),
               "dead_share": float((codes.latent_counts() == 0).mean()),
               "dead_share_window": model.history[-1]["dead"], "bytes_per_item": codes.bytes_per_item}
        if ds.queries is not None:
            truth = ds.gt if ds.gt is not None else exact_topk(ds.queries, ds.docs, 100)
            found = exact_topk(ds.queries, X_hat, 100)
            row.update(queries=len(found), recall_at_10=recall(found, truth, 10), recall_at_100=recall(found, truth, 100))
        name = a.name or f"train_cpu_{ds.name}_h{a.h}_k{a.k}_steps{a.steps}_b{a.batch_size}"
        md = md_table([row], list(row))
    print(md)
    print("wrote", write_result(name, cfg, [row], command, md))


if __name__ == "__main__":
    main()
