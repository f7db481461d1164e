"""The peer comparison (benchmarks/compare.py) on tiny generated data: bytes accounting, recall, caching, outputs."""
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from csae_engine.metrics import exact_topk
from conftest import unit

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("faiss")
pytest.importorskip("matplotlib")

N, D, NQ = 300, 16, 30


@pytest.fixture(scope="module")
def compare():
    import sys
    sys.path.insert(0, str(ROOT))
    try:
        yield importlib.import_module("benchmarks.compare")
    finally:
        sys.path.remove(str(ROOT))


def make_data(folder: Path, *, gt: bool, items_name: str = "docs.npy") -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    docs = unit(rng, N, D, np.float16)
    relevant = rng.integers(0, N, NQ).astype(np.int32)
    queries = (docs[relevant].astype(np.float32) + 0.3 * unit(rng, NQ, D)).astype(np.float16)
    np.save(folder / items_name, docs)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "relevant.npy", relevant)
    if gt:
        np.save(folder / "gt_top100.npy", exact_topk(queries, docs, 100).astype(np.int32))
    return folder


ARGS = ["--k", "4", "--h", "32", "--steps", "3", "--batch-size", "64", "--peer-bytes", "8", "16", "64",
        "--opq-bytes", "8", "--candidates", "40", "--queries", "5", "--budget", "0.01", "--hnsw", "8", "20", "16",
        "--budgets", "16", "32"]
BUDGETS = (16, 32)


def has_rabitq() -> bool:
    import faiss
    return hasattr(faiss, "IndexRaBitQ")


@pytest.fixture(scope="module")
def run(compare, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    data = make_data(tmp / "tiny", gt=True)
    rows = compare.main(["--data", str(data), "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache")] + ARGS)
    return {"rows": rows, "tmp": tmp, "data": data, "by": {r["method"]: r for r in rows}}


def test_outputs_are_written_with_every_method(run):
    out = run["tmp"] / "out"
    record = json.loads((out / "compare.json").read_text())
    assert record["command"].startswith("python -m benchmarks.compare --data") and record["commit"]
    families = {r["family"] for r in record["results"]}
    assert families == {"ours sparse", "ours dense rerank", "ours dense all", "truncation fp32", "truncation fp16",
                        "PCA fp32", "PCA fp16", "PCA int8", "PQ", "OPQ", "binary", "binary+rescore", "flat", "HNSW",
                        "ours compact dense all", "ours compact dense rerank"} | ({"RaBitQ"} if has_rabitq() else set())
    assert record["config"]["budgets"] == list(BUDGETS) and record["config"]["value_bits"] >= 2
    assert len(record["results"]) == len(run["rows"])
    md = (out / "compare.md").read_text()
    assert "## About 16 bytes per item" in md and "## Every method" in md
    assert "## About 32 bytes per item" in md and "## Best recall@10 at or under each budget" in md
    about16 = md.split("## About 16 bytes per item")[1].split("\n## ")[0]
    assert "ours compact dense all (16 B" in about16 and "PQ M=16 (8-bit)" in about16
    for png in ("recall_vs_bytes.png", "recall_vs_qps.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in run["rows"]:
        for key in ("recall@10", "recall@100", "task@10"):
            assert 0 <= r[key] <= 1, (r["method"], key)
        assert r["qps_all_cores"] > 0 and r["qps_1_thread"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]


def test_bytes_per_item_accounting(run, compare):
    import csae_engine as ce
    by = run["by"]
    assert {m: by[m]["bytes_per_item"] for m in ("truncation fp32 d'=4", "truncation fp16 d'=8", "PCA int8 d'=16",
                                                  "PCA fp32 d'=16", "PQ M=16 (8-bit)", "OPQ M=8 (8-bit)")} == \
        {"truncation fp32 d'=4": 16, "truncation fp16 d'=8": 16, "PCA int8 d'=16": 16, "PCA fp32 d'=16": 64,
         "PQ M=16 (8-bit)": 16, "OPQ M=8 (8-bit)": 8}
    assert by["PCA fp32 d'=16"]["constant_bytes"] == 17 * D * 4  # projection + mean, not per item
    assert by["binary sign (2 B, Hamming)"]["bytes_per_item"] == 2
    assert by["binary + rescore 40 (keeps float32 vectors)"]["bytes_per_item"] == 2 + 4 * D
    assert by["FAISS IndexFlatIP (exact, float32)"]["bytes_per_item"] == 4 * D
    assert by["FAISS HNSWFlat M=8 efSearch=100"]["bytes_per_item"] > 4 * D + 8 * 4  # vectors + level-0 links
    # ours: the index arrays each mode reads, per item
    data = compare.Data(run["data"], run["tmp"] / "cache")
    model, _ = compare.grid_model(data, 32, 4, 3, batch_size=64)
    nb = ce.Engine.from_codes(model.encode(data.X), model).nbytes()
    postings = (nb["offsets"] + nb["local_ids"] + nb["post_values"]) / N
    forward = (nb["fwd_indices"] + nb["fwd_values"]) / N
    assert forward == 4 * (1 + 2)  # k x (uint8 index at h=32 + float16 value)
    assert by["ours sparse (k=4, h=32)"]["bytes_per_item"] == pytest.approx(postings)
    assert by["ours dense rerank 100 (k=4, h=32)"]["bytes_per_item"] == pytest.approx(postings + forward)
    assert by["ours dense all (k=4, h=32)"]["bytes_per_item"] == pytest.approx(forward)
    assert by["ours sparse (k=4, h=32)"]["raw_code_bytes"] == 12


def test_peers_are_sane(run):
    by = run["by"]
    assert by["FAISS IndexFlatIP (exact, float32)"]["recall@10"] == 1.0
    assert by["PCA fp32 d'=16"]["recall@10"] == 1.0 and by["PCA fp32 d'=16"]["recall@100"] == 1.0  # d' = d
    assert by["PCA fp16 d'=8"]["recall@10"] >= by["PCA fp32 d'=4"]["recall@10"] - 0.05
    rescored, plain = by["binary + rescore 40 (keeps float32 vectors)"], by["binary sign (2 B, Hamming)"]
    assert rescored["recall@10"] >= plain["recall@10"] and rescored["recall@100"] >= plain["recall@100"]
    assert by["ours dense all (k=4, h=32)"]["recall@10"] >= 0.1


def test_compact_codes_at_each_budget(run, compare):
    import csae_engine as ce
    from csae_engine.compact import DEFAULT_INDEX_CODING, stream_bits
    from csae_engine.models.encoding import DEFAULT_VALUE_BITS
    rows = run["rows"]
    data = compare.Data(run["data"], run["tmp"] / "cache")
    model, _ = compare.grid_model(data, 32, 4, 3, batch_size=64)
    for budget in BUDGETS:
        engine = ce.Engine(model).build(data.X, bytes_per_item=budget)
        k, m = engine.config["k"], engine.config["residual_m"]
        tag = f"({budget} B, k={k}, residual {m} B, h=32, model k=4)"
        dense, rerank = run["by"][f"ours compact dense all {tag}"], run["by"][f"ours compact dense rerank 100 {tag}"]
        nb = engine.nbytes()
        postings = (nb["offsets"] + nb["local_ids"] + nb["post_values"]) / N
        assert dense["bytes_per_item"] == nb["fwd_packed"] / N <= budget  # the packed forward store alone
        # the budget is used: one more entry would not fit beside the residual (m bytes and its 2-byte weight)
        sparse = budget - (m + 2 if m else 0)
        assert k == 32 or 2 + -(-stream_bits(32, k + 1, DEFAULT_VALUE_BITS, DEFAULT_INDEX_CODING) // 8) > sparse
        assert dense["residual_bytes"] == m
        assert rerank["bytes_per_item"] == pytest.approx(postings + nb["fwd_packed"] / N)
        for r in (dense, rerank):
            assert (r["code_k"], r["k"], r["h"], r["budget"], r["value_bits"]) == (k, 4, 32, budget, DEFAULT_VALUE_BITS)
            assert r["encode_us_per_item"] > 0 and 0 <= r["recall@10"] <= 1
        assert "candidate_recall@10" not in dense
        assert rerank["recall@10"] <= rerank["candidate_recall@10"] <= 1  # the rerank keeps candidates only
        assert dense["recall@10"] >= 0.1
    for r in rows:
        if "rerank" in r["family"]:
            assert 0 <= r["candidate_recall@10"] <= 1 and r["recall@10"] <= r["candidate_recall@10"] + 1e-9
        if r["family"].startswith("ours"):
            assert r["encode_us_per_item"] > 0


def test_rabitq_peers(run):
    if not has_rabitq():
        pytest.skip("this faiss has no IndexRaBitQ")
    import faiss
    found = {r["bits"]: r for r in run["rows"] if r["family"] == "RaBitQ"}
    assert set(found) == {1, 2, 3, 4}
    for bits, r in found.items():
        assert r["method"] == f"RaBitQ {bits}-bit (FAISS, qb=4)" and r["qb"] == 4
        assert r["bytes_per_item"] == faiss.IndexRaBitQ(D, faiss.METRIC_INNER_PRODUCT, bits).code_size
        assert 0 <= r["recall@10"] <= 1 and r["encode_us_per_item"] > 0
    sizes = [found[b]["bytes_per_item"] for b in (1, 2, 3, 4)]
    assert sizes == sorted(sizes) and sizes[0] >= D / 8  # sign bits + per-vector factors, more with more bits
    assert found[4]["recall@10"] >= found[1]["recall@10"]


def test_recall_against_brute_force(compare, tmp_path):
    data = compare.Data(make_data(tmp_path / "d", gt=True), tmp_path / "cache")
    exact = exact_topk(data.Q, data.X, 105)
    noisy = exact[:, :100].copy()
    noisy[:, 5:10] = exact[:, 100:105]  # 5 of the top 10 replaced by ranks 100..104, outside the top 100
    answer = lambda Q, k, t: noisy[:len(Q), :k] if len(Q) == NQ else exact[:len(Q), :k]  # the all-query pass
    method = compare.Method("fake", "fake", answer, bytes_per_item=1, build_s=0)
    row = compare.evaluate(method, data, latency_queries=3, budget_s=0.01, cores=1, log=lambda s: None)
    assert row["recall@10"] == pytest.approx(0.5)
    assert row["recall@100"] == pytest.approx(0.95)
    hits = (noisy[:, :10] == np.load(tmp_path / "d" / "relevant.npy")[:, None]).any(axis=1).mean()
    assert row["task@10"] == pytest.approx(hits)


def test_missing_ground_truth_is_computed_and_cached(compare, tmp_path):
    folder = make_data(tmp_path / "nogt", gt=False, items_name="items.npy")
    first = compare.Data(folder, tmp_path / "cache", log=lambda s: None)
    assert first.gt_source.endswith("(computed)")
    assert np.array_equal(first.gt, exact_topk(np.load(folder / "queries.npy"), np.load(folder / "items.npy"), 100))
    again = compare.Data(folder, tmp_path / "cache")
    assert again.gt_source == first.gt_source.removesuffix(" (computed)") and np.array_equal(again.gt, first.gt)
    assert not (folder / "gt_top100.npy").exists()  # the dataset folder is never written


def test_a_rerun_reuses_trained_models(compare, run):
    rows = compare.main(["--data", str(run["data"]), "--out", str(run["tmp"] / "out2"),
                         "--cache-dir", str(run["tmp"] / "cache"), "--peers", "flat"] + ARGS + ["--budgets"])
    by = {r["method"]: r for r in rows}
    assert by["ours sparse (k=4, h=32)"]["train_s"] == run["by"]["ours sparse (k=4, h=32)"]["train_s"]
    assert {r["family"] for r in rows} == {"ours sparse", "ours dense rerank", "ours dense all", "flat"}


def test_csae_bench_delegates_to_the_comparison(run, capsys):
    from csae_engine import cli
    assert cli.main(["bench", "--data", str(run["data"]), "--out", str(run["tmp"] / "out3"),
                     "--cache-dir", str(run["tmp"] / "cache"), "--peers", "binary"] + ARGS) == 0
    record = json.loads((run["tmp"] / "out3" / "compare.json").read_text())
    assert record["command"].startswith("csae bench --data")
    assert cli.main(["bench", "--data", str(run["tmp"] / "missing")]) == 2
    assert "neither items.npy nor docs.npy" in capsys.readouterr().err
