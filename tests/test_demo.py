import numpy as np

from csae_engine import demo
from csae_engine.cli import main
from conftest import unit


def test_demo_runs_end_to_end_on_a_dataset_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "docs.npy", unit(rng, 400, 16, np.float16))
    np.save(tmp_path / "queries.npy", unit(rng, 30, 16, np.float16))
    np.save(tmp_path / "relevant.npy", np.arange(30, dtype=np.int32))
    (tmp_path / "docs.txt").write_text("\n".join(f"document {i}" for i in range(400)) + "\n")
    (tmp_path / "queries.txt").write_text("\n".join(f"query {i}" for i in range(30)) + "\n")
    report = demo.run(tmp_path, steps=30, h=64, k=4, bytes_per_item=None, show=2)
    out = capsys.readouterr().out
    assert report["bytes_per_item"] == 4 * 3  # uint8 index + float16 value
    assert 0.3 < report["reconstruction_cosine"] <= 1
    ceiling = report["dense: query vs every reconstructed item"]["recall_at_10"]
    assert 0 < ceiling <= 1
    assert "query: query 0" in out and "document" in out and "recall@10" in out
    compact = demo.run(tmp_path, steps=30, h=64, k=4, show=0)  # the default: compact codes of 128 bytes
    assert compact["bytes_per_item"] <= 128 and compact["reconstruction_cosine"] > report["reconstruction_cosine"]


def test_demo_from_the_shell_on_a_bare_npy(tmp_path, capsys):
    np.save(tmp_path / "items.npy", unit(np.random.default_rng(1), 300, 12))
    assert main(["demo", "--data", str(tmp_path / "items.npy"), "--steps", "10", "--h", "48", "--k", "3"]) == 0
    assert "recall@100" in capsys.readouterr().out
