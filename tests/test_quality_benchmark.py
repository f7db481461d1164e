"""The quality benchmark (benchmarks/quality.py) end to end at tiny settings, on a generated dataset folder."""
import importlib
import json
from pathlib import Path

import numpy as np

from csae_engine.metrics import exact_topk
from conftest import unit

ROOT = Path(__file__).resolve().parents[1]


def test_quality_benchmark_runs_every_experiment_at_tiny_settings(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    quality = importlib.import_module("benchmarks.quality")
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny"
    data.mkdir()
    docs = unit(rng, 400, 16, np.float16)
    relevant = rng.integers(0, 400, 40).astype(np.int32)
    queries = (docs[relevant].astype(np.float32) + 0.3 * unit(rng, 40, 16)).astype(np.float16)
    np.save(data / "docs.npy", docs)
    np.save(data / "queries.npy", queries)
    np.save(data / "relevant.npy", relevant)
    np.save(data / "gt_top100.npy", exact_topk(queries, docs, 100).astype(np.int32))
    rows = quality.main(["--data", str(data), "--h", "64", "--k", "4", "--steps", "4", "--batch-size", "64",
                         "--results-dir", str(tmp_path / "results"), "--name", "tiny",
                         "--models-dir", str(tmp_path / "models")])
    record = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert record["config"]["k8"] == 5 and record["config"]["test_queries"] == 20  # 5 x (1 + 1) + 2 <= 4 x (1 + 2)
    assert {r["exp"] for r in rows} == set("abcdef") and len(record["results"]) == len(rows)
    by = {(r["exp"], r["model"], r["k"]): r for r in rows}
    assert by[("e", "compressae-k5", 5)]["values"] == "int8" and by[("e", "compressae-k5", 5)]["bytes_per_item"] == 12
    assert by[("e", "compressae", 4)]["bytes_per_item"] == 12
    assert by[("c", "compressae-random-init+auxk", 4)]["aux_k"] > 0
    assert by[("a", "csr", 4)]["nonnegative"] and not by[("a", "compressae", 4)]["nonnegative"]
    assert sorted(r["k"] for r in rows if r["exp"] == "f" and r["model"] == "csr") == [1, 2, 3, 4]
    for r in rows:
        for key in ("recall@10", "recall@100", "sparse_recall@10", "task@10", "task_sparse@10", "dead_share"):
            assert 0 <= r[key] <= 1, (r["model"], key)
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "## d: fine-tuning" in md and "compressae+ft+ncl" in md
    # a rerun reuses the saved models instead of training again
    again = quality.main(["--data", str(data), "--h", "64", "--k", "4", "--steps", "4", "--batch-size", "64",
                          "--results-dir", str(tmp_path / "results"), "--name", "tiny", "--only", "a",
                          "--models-dir", str(tmp_path / "models")])
    assert again[0]["train_s"] == by[("a", "compressae", 4)]["train_s"]
