import json

import numpy as np
import pytest

import csae_engine as ce
from conftest import unit


@pytest.fixture
def engine():
    model = ce.CompresSAE(d=16, h=128, k=6, seed=2)
    X = unit(np.random.default_rng(0), 700, 16)
    return ce.Engine.from_codes(model.encode(X), model, ids=np.arange(700, dtype=np.int64) * 3 + 11)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(engine, tmp_path, mmap):
    engine.save(tmp_path / "index")
    back = ce.Engine.load(tmp_path / "index", mmap=mmap)
    assert isinstance(back.segments[0].arrays["local_ids"], np.memmap) == mmap
    Q = unit(np.random.default_rng(1), 9, 16)
    for mode in ("sparse", "dense"):
        a, b = engine.search(Q, 7, mode=mode), back.search(Q, 7, mode=mode)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not [p for p in tmp_path.iterdir() if p.name != "index"], "no temporary directories left behind"
    engine.save(tmp_path / "index")  # replacing an index is allowed
    assert ce.Engine.load(tmp_path / "index").config == engine.config


def test_corrupted_file_is_refused(engine, tmp_path):
    engine.save(tmp_path / "index")
    target = tmp_path / "index" / "seg-00000" / "post_values.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="post_values.npy is corrupted"):
        ce.Engine.load(tmp_path / "index")


def test_truncated_file_is_refused_even_without_checksums(engine, tmp_path):
    engine.save(tmp_path / "index")
    target = tmp_path / "index" / "seg-00000" / "fwd_values.npy"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(ValueError, match="fwd_values.npy is corrupted"):
        ce.Engine.load(tmp_path / "index")
    with pytest.raises(ValueError, match="fwd_values.npy is damaged or truncated"):
        ce.Engine.load(tmp_path / "index", verify=False)


def test_foreign_and_missing(engine, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a csae index"):
        ce.Engine.load(tmp_path / "foreign")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no manifest.json"):
        ce.Engine.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        ce.Engine.load(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is damaged"):
        ce.Engine.load(tmp_path / "bad")
    engine.save(tmp_path / "index")
    (tmp_path / "index" / "seg-00000" / "ids.npy").unlink()
    with pytest.raises(ValueError, match="ids.npy is missing"):
        ce.Engine.load(tmp_path / "index")


def test_old_format_version_is_refused_with_a_clear_error(engine, tmp_path):
    engine.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ValueError, match="format version 1.*rebuild"):
        ce.Engine.load(tmp_path / "index")


def test_model_mismatch_is_refused(engine, tmp_path):
    engine.save(tmp_path / "index")
    with pytest.raises(ValueError, match="different model"):
        ce.Engine.load(tmp_path / "index", model=ce.CompresSAE(d=16, h=128, k=6, seed=3))
    assert ce.Engine.load(tmp_path / "index", model=engine.model).ids().tolist() == engine.ids().tolist()


def test_save_never_replaces_a_foreign_directory(engine, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a csae index"):
        engine.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
