import numpy as np

import csae_engine as ce
from csae_engine.cli import main
from conftest import unit


def test_train_then_encode_from_the_shell(tmp_path, capsys):
    X = unit(np.random.default_rng(0), 300, 24, np.float16)
    np.save(tmp_path / "items.npy", X)
    assert main(["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"),
                 "--h", "128", "--k", "6", "--steps", "20", "--batch-size", "64"]) == 0
    model = ce.load_model(tmp_path / "m.csae")
    assert (model.d, model.h, model.k) == (24, 128, 6)
    assert main(["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz")]) == 0
    codes = ce.load_codes(tmp_path / "c.npz")
    np.testing.assert_array_equal(codes.indices, model.encode(X).indices)
    assert "18 bytes/item" in capsys.readouterr().out  # 6 x (uint8 index + float16 value)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    np.save(tmp_path / "items.npy", np.zeros((5, 8), np.float32))
    assert main(["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--steps", "2"]) == 2
    assert "row 0 is all zeros" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "nope.csae"), str(tmp_path / "items.npy"), "-o", "x.npz"]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_build_then_search_from_the_shell(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X, Q = unit(rng, 400, 16), unit(rng, 5, 16)
    np.save(tmp_path / "items.npy", X)
    np.save(tmp_path / "queries.npy", Q)
    np.save(tmp_path / "ids.npy", np.arange(400, dtype=np.int64) + 1000)
    model = ce.CompresSAE(d=16, h=96, k=4)
    model.save(tmp_path / "m.csae")
    assert main(["build", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "index"),
                 "--ids", str(tmp_path / "ids.npy"), "--shard-size", "150"]) == 0
    assert len(list((tmp_path / "index").glob("seg-*"))) == 3
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "queries.npy"), "--top-k", "7", "--mode", "dense",
                 "-o", str(tmp_path / "r.npz")]) == 0
    with np.load(tmp_path / "r.npz") as r:
        ids, scores = r["ids"], r["scores"]
    expected = ce.Engine(model).build(X, ids=np.arange(400) + 1000).search(Q, 7, mode="dense")
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(scores, expected[1])
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "queries.npy"), "--top-k", "401",
                 "-o", str(tmp_path / "r.npz")]) == 2
    assert "exceeds the 400 indexed items" in capsys.readouterr().err
