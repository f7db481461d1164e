"""Issue 16's first experiment: how much of the exact answer survives when sparse search only visits the clusters
whose centroids score best, as a function of the share of items visited.

    python -m benchmarks.cluster_probe --model wordnet.csae --clusters 1024

Spherical k-means on the items' unit sparse codes (a sample of 60 per cluster, 10 iterations), each item in its
best cluster; a query scores the centroids with its code and visits clusters best first until the share is spent.
Reported per share: recall@10 against the exact sparse top 10, and the share of the exact dense top 10 among the
best 1,000 visited items (the candidates dense mode would rerank; exact sparse search gives the ceiling at share 1).
"""
import argparse
import sys

import numpy as np
import scipy.sparse as sp

import csae_engine as ce
from csae_engine import datasets

from .common import SHARED_WORDNET, md_table, write_result

SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def unit_csr(codes) -> sp.csr_matrix:
    values = codes.values / np.linalg.norm(codes.values, axis=1, keepdims=True)
    return sp.csr_matrix((values.ravel(), codes.indices.ravel().astype(np.int64),
                          np.arange(0, codes.n * codes.k + 1, codes.k)), shape=(codes.n, codes.h))


def spherical_kmeans(X: sp.csr_matrix, clusters: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centroids = X[rng.choice(X.shape[0], clusters, replace=False)].toarray()
    for _ in range(iterations):
        sample = X[rng.choice(X.shape[0], min(X.shape[0], 60 * clusters), replace=False)]
        assign = np.asarray((sample @ centroids.T).argmax(axis=1)).ravel()
        members = sp.csr_matrix((np.ones(len(assign)), (assign, np.arange(len(assign)))),
                                shape=(clusters, len(assign)))
        sums = np.asarray((members @ sample).todense())
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centroids)
    return centroids


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model file from csae train")
    p.add_argument("--data", default=str(SHARED_WORDNET), help="dataset folder with docs, queries, gt_top100")
    p.add_argument("--clusters", type=int, nargs="+", default=[1024])
    p.add_argument("--queries", type=int, default=2000, help="a random sample of this many queries")
    a = p.parse_args(argv)
    command = "python -m benchmarks.cluster_probe " + " ".join(argv if argv is not None else sys.argv[1:])
    model = ce.load_model(a.model)
    ds = datasets.load(a.data)
    rows = np.sort(np.random.default_rng(0).choice(len(ds.queries), min(a.queries, len(ds.queries)), replace=False))
    X = unit_csr(model.encode(ds.docs, value_dtype=np.float32))
    Q = unit_csr(model.encode(ds.queries[rows], value_dtype=np.float32))
    dense_truth = ds.gt[rows, :10]
    scores = (Q @ X.T).toarray()
    exact = np.argsort(-scores, axis=1)[:, :10]
    out = []
    for clusters in a.clusters:
        centroids = spherical_kmeans(X, clusters)
        assign = np.asarray((X @ centroids.T).argmax(axis=1)).ravel()
        sizes = np.bincount(assign, minlength=clusters)
        order = np.argsort(-(Q @ centroids.T), axis=1)
        for share in SHARES:
            sparse_hits = dense_hits = 0
            for q in range(len(rows)):
                visited = order[q][:np.searchsorted(np.cumsum(sizes[order[q]]), share * X.shape[0]) + 1]
                s = np.where(np.isin(assign, visited), scores[q], -np.inf)
                top = np.argpartition(-s, 1000)[:1000]
                sparse_hits += len(np.intersect1d(top[np.argsort(-s[top])][:10], exact[q]))
                dense_hits += len(np.intersect1d(top[np.isfinite(s[top])], dense_truth[q]))
            out.append({"clusters": clusters, "largest_cluster": int(sizes.max()), "share": share,
                        "recall_vs_exact_sparse@10": sparse_hits / (10 * len(rows)),
                        "dense_top10_in_1000": dense_hits / (10 * len(rows))})
            print(out[-1], flush=True)
    md = (f"{X.shape[0]} items, h={model.h}, k={model.k}, {len(rows)} queries\n\n"
          + md_table(out, ["clusters", "largest_cluster", "share", "recall_vs_exact_sparse@10", "dense_top10_in_1000"]))
    print(md)
    write_result(f"cluster_probe_{ds.name}_h{model.h}_k{model.k}", {"model": a.model, "queries": len(rows)}, out,
                 command, md)


if __name__ == "__main__":
    main()
