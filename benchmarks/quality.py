"""Training quality at equal bytes per item: CompresSAE vs CSR, AuxK, encoder init, contrastive pairs, 8-bit values,
adaptive k. Every model gets the same steps, batch and learning rate.

    python -m benchmarks.quality                       # all experiments, shared WordNet/MiniLM data, train.py defaults
    python -m benchmarks.quality --steps 2000          # a shorter common budget
    python -m benchmarks.quality --only a,f            # a subset: a b c d e f (see EXPERIMENTS)
    python -m benchmarks.quality --models-dir ~/m      # keep trained models there and reuse them on a rerun

Metrics, per model and encoding:
  recall@10, recall@100   dense query against the reconstructed items, vs the exact top 100 (all queries)
  sparse_recall@10        query code against item codes (cosine), vs the exact top 100 (all queries)
  task@10, task_sparse@10 the labelled answer (relevant.npy) in the top 10, on the TEST half of the queries only
  dead_share              latents used by no item (no non-zero value in any item's code)
Experiment d fine-tunes on (query, answer) pairs of the TRAIN half of the queries (a seeded split), with and
without the contrastive term, for --ft-steps; the test-half queries are never trained on.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import csae_engine as ce
from csae_engine import datasets
from csae_engine.codes import index_dtype
from csae_engine.metrics import exact_topk, recall, task_recall
from csae_engine.models import new_model
from csae_engine.training import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_PAIRS_WEIGHT, DEFAULT_STEPS, DEFAULT_TAU

from .common import RESULTS, SHARED_WORDNET, md_table, write_result

EXPERIMENTS = {
    "a": "signed CompresSAE vs non-negative CSR (each with its default AuxK setting)",
    "b": "each variant with and without AuxK",
    "c": "CompresSAE encoder init: decoder transpose vs random, and random with AuxK",
    "d": "fine-tuning on train-half (query, answer) pairs, with and without the contrastive term",
    "e": "8-bit values at k8 vs float16 at k, at equal bytes per item",
    "f": "adaptive k: the first k' entries of each code, no retraining",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED_WORDNET), help="dataset folder with docs, queries, relevant, gt")
    p.add_argument("--only", default="abcdef", help="experiments to run, e.g. a,b (default all)")
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k8", type=int, default=None,
                   help="k of the 8-bit codes (default: equal bytes to float16 at k, 42 for k=32 at h=4096)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--ft-steps", type=int, default=None, help="fine-tuning steps of experiment d (default steps/4)")
    p.add_argument("--pairs-weight", type=float, default=DEFAULT_PAIRS_WEIGHT)
    p.add_argument("--tau", type=float, default=DEFAULT_TAU)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", default=None, help="save trained models here, and reuse those already there")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--name", default=None, help="result file name (default from the settings)")
    a = p.parse_args(argv)
    only = sorted(set(a.only.replace(",", "")))
    if not only or set(only) - set(EXPERIMENTS):
        p.error(f"--only takes letters from {''.join(EXPERIMENTS)}, got {a.only!r}")
    command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    ds = datasets.load(a.data)
    if ds.queries is None or ds.relevant is None:
        raise SystemExit(f"{a.data}: the quality benchmark needs queries.npy and relevant.npy")
    bench = Bench(ds, a)
    rows = []
    for letter in only:
        rows += getattr(bench, f"exp_{letter}")()
    cfg = {"data": ds.name, "h": a.h, "k": a.k, "k8": bench.k8, "steps": a.steps, "batch_size": a.batch_size,
           "lr": a.lr, "ft_steps": bench.ft_steps, "pairs_weight": a.pairs_weight, "tau": a.tau, "seed": a.seed,
           "experiments": only, "queries": len(ds.queries), "test_queries": int(len(bench.test))}
    md = bench.markdown(rows, only)
    name = a.name or f"quality_{ds.name}_h{a.h}_k{a.k}_steps{a.steps}_b{a.batch_size}"
    print(md)
    print("wrote", write_result(name, cfg, rows, command, md, results_dir=a.results_dir))
    return rows


class Bench:
    def __init__(self, ds, a):
        self.ds, self.a = ds, a
        self.docs = np.asarray(ds.docs, np.float32)
        self.queries = np.asarray(ds.queries, np.float32)
        self.truth = ds.gt if ds.gt is not None else exact_topk(self.queries, self.docs, 100)
        self.relevant = np.asarray(ds.relevant, np.int64)
        order = np.random.default_rng(1234).permutation(len(self.queries))  # fixed split, independent of --seed
        self.train_q, self.test = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        self.k8 = a.k8 or equal_bytes_k8(a.k, a.h)
        self.ft_steps = a.ft_steps or max(1, a.steps // 4)
        self.models: dict = {}
        self.cache: dict = {}

    # models
    def model(self, name: str, **kw):
        """Train (or reuse) the model `name` with train() options kw on the shared settings."""
        if name in self.models:
            return self.models[name]
        a = self.a
        base = kw.pop("base", None)
        path = None
        if a.models_dir:
            Path(a.models_dir).mkdir(parents=True, exist_ok=True)
            path = Path(a.models_dir) / f"{name}_h{a.h}_steps{a.steps}_b{a.batch_size}_lr{a.lr}.csae"
        if path is not None and path.exists():
            model = ce.load_model(path)
            info = json.loads(path.with_suffix(".json").read_text())
        else:
            steps = a.steps
            if base is not None:  # fine-tune a copy of a trained model
                src = self.model(base)
                model = new_model(src.variant, src.d, src.h, src.k, tied=getattr(src, "tied", None))
                model.load_state_dict(src.state_dict())
                kw["model"], steps = model, self.ft_steps
            kw.setdefault("k", a.k)
            t = time.perf_counter()
            model = ce.train(self.ds.docs, h=a.h, steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                             progress=False, **kw)
            last = model.history[-1]
            info = {"train_s": time.perf_counter() - t, "steps": steps, "final_loss": last["loss"],
                    "final_cos_k": last["cos_k"], "dead_window_share": last["dead"]}
            if base is not None:
                info["train_s"] += self.models[base].info["train_s"]
                info["fine_tune_s"] = time.perf_counter() - t
            if path is not None:
                model.save(path)
                path.with_suffix(".json").write_text(json.dumps(info))
            print(f"trained {name}: {model}, {info['train_s']:.0f} s, cos@k {info['final_cos_k']:.4f}", flush=True)
        model.info = info
        self.models[name] = model
        return model

    def compressae(self):
        return self.model("compressae", variant="compressae")

    def csr(self):
        return self.model("csr", variant="csr")

    # evaluation
    def evaluate(self, exp: str, name: str, model, k=None, values="float16", **extra) -> dict:
        key = (name, k, values)
        if key in self.cache:
            return dict(self.cache[key], exp=exp, **extra)
        k = model.k if k is None else k
        t = time.perf_counter()
        codes = model.encode(self.docs, k=k, value_dtype=values)
        X_hat = model.decode(codes)
        found = exact_topk(self.queries, X_hat, 100)
        q_codes = model.encode(self.queries, k=k, value_dtype=np.float32)
        sparse = sparse_topk(q_codes, codes, 100)
        full = codes if k == model.k else model.encode(self.docs, value_dtype=np.float32)
        row = {"model": name, "variant": model.variant, "k": k, "values": values,
               "bytes_per_item": codes.bytes_per_item, "recall@10": recall(found, self.truth, 10),
               "recall@100": recall(found, self.truth, 100), "sparse_recall@10": recall(sparse, self.truth, 10),
               "task@10": task_recall(found[self.test], self.relevant[self.test]),
               "task_sparse@10": task_recall(sparse[self.test], self.relevant[self.test]),
               "dead_share": float((full.latent_counts() == 0).mean()),
               "nonnegative": codes.is_nonnegative, "train_s": model.info["train_s"],
               "final_cos_k": model.info["final_cos_k"], "eval_s": time.perf_counter() - t}
        print(f"  {name} k={k} {values}: R@10 {row['recall@10']:.4f}, sparse R@10 {row['sparse_recall@10']:.4f}, "
              f"task {row['task@10']:.4f}, dead {row['dead_share']:.1%}", flush=True)
        self.cache[key] = row
        return dict(row, exp=exp, **extra)

    # experiments
    def exp_a(self):
        return [self.evaluate("a", "compressae", self.compressae(), aux_k=0),
                self.evaluate("a", "csr", self.csr(), aux_k=self.csr().default_aux_k)]

    def exp_b(self):
        csr_aux = self.csr().default_aux_k
        sae_aux = ce.CompresSAE(self.docs.shape[1], self.a.h, self.a.k).default_aux_k
        return [self.evaluate("b", "compressae", self.compressae(), aux_k=0),
                self.evaluate("b", "compressae+auxk", self.model("compressae+auxk", variant="compressae",
                                                                 aux_k=sae_aux), aux_k=sae_aux),
                self.evaluate("b", "csr-no-auxk", self.model("csr-no-auxk", variant="csr", aux_k=0), aux_k=0),
                self.evaluate("b", "csr", self.csr(), aux_k=csr_aux)]

    def exp_c(self):
        aux_k = ce.CompresSAE(self.docs.shape[1], self.a.h, self.a.k).default_aux_k
        return [self.evaluate("c", "compressae", self.compressae(), init="transpose", aux_k=0),
                self.evaluate("c", "compressae-random-init",
                              self.model("compressae-random-init", variant="compressae", init="random"),
                              init="random", aux_k=0),
                # a random start leaves dead latents: what AuxK is for
                self.evaluate("c", "compressae-random-init+auxk",
                              self.model("compressae-random-init+auxk", variant="compressae", init="random",
                                         aux_k=aux_k), init="random", aux_k=aux_k)]

    def exp_d(self):
        Q = self.queries[self.train_q]
        D = self.docs[self.relevant[self.train_q]]
        pw, tau = self.a.pairs_weight, self.a.tau
        rows = []
        for base in ("compressae", "csr"):
            self.model(base, variant=base)
            rows += [self.evaluate("d", base, self.models[base], fine_tune="none"),
                     self.evaluate("d", f"{base}+ft", self.model(f"{base}+ft", base=base), fine_tune="reconstruction"),
                     self.evaluate("d", f"{base}+ft+ncl", self.model(f"{base}+ft+ncl", base=base, pairs=(Q, D),
                                                                     pairs_weight=pw, tau=tau),
                                   fine_tune=f"reconstruction + {pw} x InfoNCE (tau {tau})")]
        return rows

    def exp_e(self):
        k8 = self.k8
        return [self.evaluate("e", "compressae", self.compressae()),
                self.evaluate("e", f"compressae-k{k8}", self.model(f"compressae-k{k8}", variant="compressae", k=k8),
                              values="int8"),
                self.evaluate("e", "csr", self.csr()),
                self.evaluate("e", f"csr-k{k8}", self.model(f"csr-k{k8}", variant="csr", k=k8), values="uint8")]

    def exp_f(self):
        k = self.a.k
        ks = sorted({max(1, round(k * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        return [self.evaluate("f", name, getattr(self, name)(), k=kk) for name in ("compressae", "csr") for kk in ks]

    def markdown(self, rows, only) -> str:
        a = self.a
        out = [f"Shared settings: h={a.h}, k={a.k}, {a.steps} steps of batch {a.batch_size}, lr {a.lr} "
               f"(fine-tuning in d: {self.ft_steps} more steps); {len(self.queries)} queries "
               f"(task metrics on the {len(self.test)}-query test half). Dense exact search puts the labelled "
               f"answer in the top 10 for {task_recall(self.truth[self.test], self.relevant[self.test]):.4f} "
               f"of the test half."]
        common = ["model", "k", "values", "bytes_per_item", "recall@10", "recall@100", "sparse_recall@10", "task@10",
                  "task_sparse@10", "dead_share", "train_s"]
        extra = {"a": ["aux_k"], "b": ["aux_k"], "c": ["init", "aux_k"], "d": ["fine_tune"], "e": [], "f": []}
        for letter in only:
            sub = [r for r in rows if r["exp"] == letter]
            out += [f"\n## {letter}: {EXPERIMENTS[letter]}\n", md_table(sub, common[:1] + extra[letter] + common[1:])]
        return "\n".join(out)


def equal_bytes_k8(k: int, h: int) -> int:
    """The largest k8 with k8 * (index + 1) + 2 <= k * (index + 2) bytes: 8-bit values plus a float16 row scale."""
    idx = index_dtype(h).itemsize
    return (k * (idx + 2) - 2) // (idx + 1)


def sparse_topk(q_codes, item_codes, top: int, chunk: int = 256) -> np.ndarray:
    """(nq, top) items by cosine between sparse codes, exact (ties in arbitrary order)."""
    def unit(codes):
        v = codes.float_values()
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    item_idx = torch.from_numpy(item_codes.indices.astype(np.int64))
    item_val = torch.from_numpy(unit(item_codes))
    q_idx = torch.from_numpy(q_codes.indices.astype(np.int64))
    q_val = torch.from_numpy(unit(q_codes))
    out = np.empty((q_codes.n, top), np.int64)
    for s in range(0, q_codes.n, chunk):
        P = torch.zeros(len(q_idx[s:s + chunk]), item_codes.h).scatter_(1, q_idx[s:s + chunk], q_val[s:s + chunk])
        scores = F.embedding_bag(item_idx, P.T.contiguous(), per_sample_weights=item_val, mode="sum")  # (n, c)
        out[s:s + chunk] = scores.topk(top, dim=0).indices.T.numpy()
    return out


if __name__ == "__main__":
    main()
