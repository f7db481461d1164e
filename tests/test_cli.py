import dataclasses
import typing

import numpy as np
import pytest

import csae_engine as ce
import csae_engine.models
from csae_engine.cli import build_parser, main
from csae_engine.models import CSRAutoencoder
from csae_engine.training import TrainConfig
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
    expected = ce.Engine(model).build(X, ids=np.arange(400) + 1000, shard_size=150).search(Q, 7, mode="dense")
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(scores, expected[1])
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "queries.npy"), "--top-k", "401",
                 "-o", str(tmp_path / "r.npz")]) == 2
    assert "exceeds the 400 indexed items" in capsys.readouterr().err


def test_clustered_build_and_probe_search_from_the_shell(tmp_path):
    rng = np.random.default_rng(2)
    X, Q = unit(rng, 300, 16), unit(rng, 5, 16)
    np.save(tmp_path / "items.npy", X)
    np.save(tmp_path / "queries.npy", Q)
    model = ce.CompresSAE(d=16, h=96, k=4)
    model.save(tmp_path / "m.csae")
    assert main(["build", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "index"),
                 "--cluster-size", "20"]) == 0
    assert main(["search", str(tmp_path / "index"), str(tmp_path / "queries.npy"), "--probe", "0.3",
                 "-o", str(tmp_path / "r.npz")]) == 0
    with np.load(tmp_path / "r.npz") as r:
        expected = ce.Engine(model).build(X, cluster_size=20).search(Q, 10, probe=0.3)
        np.testing.assert_array_equal(r["ids"], expected[0])


def test_cli_trains_csr_with_pairs_and_encodes_uint8(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = unit(rng, 300, 12, np.float16)
    np.save(tmp_path / "items.npy", X)
    np.savez(tmp_path / "pairs.npz", queries=unit(rng, 40, 12), docs=unit(rng, 40, 12))
    assert main(["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--variant", "csr",
                 "--h", "64", "--k", "4", "--steps", "10", "--batch-size", "64", "--pairs", str(tmp_path / "pairs.npz"),
                 "--tau", "0.5"]) == 0
    model = ce.load_model(tmp_path / "m.csae")
    assert isinstance(model, CSRAutoencoder) and model.tied
    assert main(["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz"),
                 "--values", "uint8"]) == 0
    codes = ce.load_codes(tmp_path / "c.npz")
    assert codes.values.dtype == np.uint8 and codes.is_nonnegative
    assert "10 bytes/item" in capsys.readouterr().out  # 4 x (uint8 index + uint8 value) + float16 scale


def test_cli_reports_bad_pairs_files(tmp_path, capsys):
    np.save(tmp_path / "items.npy", unit(np.random.default_rng(0), 50, 8))
    np.savez(tmp_path / "wrong.npz", q=np.ones((3, 8)))
    args = ["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--steps", "1", "--pairs"]
    assert main(args + [str(tmp_path / "wrong.npz")]) == 2
    assert "lacks arrays ['docs', 'queries']" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "missing.npz")]) == 2
    assert "no such pairs file" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "items.npy")]) == 2
    assert "holds one array" in capsys.readouterr().err


def test_every_train_config_field_is_a_train_flag_with_its_default():
    parser = build_parser()
    base = ["train", "items.npy", "-o", "m.csae"]
    defaults = parser.parse_args(base)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert getattr(defaults, f.name) == f.default, f.name
        flag = "--" + f.name.replace("_", "-")
        if bool in typing.get_args(hints[f.name]):
            assert getattr(parser.parse_args(base + [flag]), f.name) is True
            assert getattr(parser.parse_args(base + [flag.replace("--", "--no-")]), f.name) is False
            continue
        value = f.metadata["choices"][-1] if "choices" in f.metadata else "7"
        parsed = getattr(parser.parse_args(base + [flag, value]), f.name)
        assert str(parsed) == value or parsed == 7, (f.name, parsed)


def test_bad_input_is_reported_and_bugs_raise(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "items.npy", unit(np.random.default_rng(0), 20, 8))
    train = ["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae")]
    assert main(train + ["--steps", "0"]) == 2
    assert "csae train: error: steps must be a positive int, got 0" in capsys.readouterr().err
    encode = ["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz")]
    for error, reported in ((FileExistsError, True), (TypeError, False), (KeyError, False)):
        def load_model(*args, **kwargs):
            raise error("boom")
        monkeypatch.setattr(csae_engine.models, "load_model", load_model)
        if reported:
            assert main(encode) == 2 and "csae encode: error: boom" in capsys.readouterr().err
        else:
            with pytest.raises(error, match="boom"):
                main(encode)


def train_from_shell(tmp_path, X, h: int) -> None:
    """items.npy and a 5-step model m.csae (k=4) in tmp_path, made by the CLI."""
    np.save(tmp_path / "items.npy", X)
    assert main(["train", str(tmp_path / "items.npy"), "-o", str(tmp_path / "m.csae"), "--h", str(h), "--k", "4",
                 "--steps", "5"]) == 0


def test_compact_codes_from_the_shell(tmp_path):
    X = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    train_from_shell(tmp_path, X, 32)
    assert main(["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz"),
                 "--bytes-per-item", "16", "--value-bits", "6"]) == 0
    codes = ce.load_codes(tmp_path / "c.npz")
    assert isinstance(codes, ce.CompactCodes) and codes.bytes_per_item <= 16 and codes.value_bits == 6
    assert main(["build", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "index"),
                 "--bytes-per-item", "16", "--index-terms", "3"]) == 0
    engine = ce.Engine.load(tmp_path / "index")
    assert engine.config["forward"] == "packed" and engine.config["index_terms"] == 3
    assert main(["encode", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "c.npz"),
                 "--bytes-per-item", "2"]) == 2, "a budget too small for one entry is a user error"


def test_elias_fano_codes_from_the_shell(tmp_path):
    X = np.random.default_rng(4).standard_normal((200, 8)).astype(np.float32)
    train_from_shell(tmp_path, X, 64)
    assert main(["build", str(tmp_path / "m.csae"), str(tmp_path / "items.npy"), "-o", str(tmp_path / "index"),
                 "--bytes-per-item", "24", "--index-coding", "ef"]) == 0
    engine = ce.Engine.load(tmp_path / "index")
    assert engine.config["index_coding"] == "ef" and engine.config["k"] > 4
