import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import csae_engine as ce


@pytest.fixture
def model():
    m = ce.CompresSAE(d=24, h=96, k=5, seed=7)
    with torch.no_grad():
        m.b_enc.normal_()
    return m


def test_save_load_round_trip_is_exact(model, tmp_path):
    model.save(tmp_path / "m.csae")
    back = ce.load_model(tmp_path / "m.csae")
    assert (back.d, back.h, back.k, back.variant) == (24, 96, 5, "compressae")
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(back.named_parameters())[name]), name
    X = np.random.default_rng(0).standard_normal((10, 24)).astype(np.float32)
    np.testing.assert_array_equal(model.encode(X).indices, back.encode(X).indices)


def test_truncated_file_is_refused(model, tmp_path):
    model.save(tmp_path / "m.csae")
    data = (tmp_path / "m.csae").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 4):
        (tmp_path / "t.csae").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable csae model file"):
            ce.load_model(tmp_path / "t.csae")


def test_foreign_files_are_refused(model, tmp_path):
    (tmp_path / "junk.csae").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable csae model file"):
        ce.load_model(tmp_path / "junk.csae")
    save_file({"w": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a csae model"):
        ce.load_model(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        ce.load_model(tmp_path / "missing.csae")


def _resave(model, path, config=None, tensors=None):
    cfg = dict(model.config(), **(config or {}))
    t = {n: p.detach().contiguous().clone() for n, p in model.named_parameters()}
    t.update(tensors or {})
    save_file(t, path, metadata={"csae_engine": json.dumps(cfg)})


@pytest.mark.parametrize("change, message", [
    ({"config": {"format_version": 99}}, "format version 99"),
    ({"config": {"variant": "mystery"}}, "unknown variant"),
    ({"config": {"h": 97}}, "do not match"),
    ({"tensors": {"W_dec": torch.zeros(96, 23)}}, "do not match"),
    ({"tensors": {"b_enc": torch.full((96,), float("nan"))}}, "NaN or Inf"),
])
def test_inconsistent_files_are_refused(model, tmp_path, change, message):
    _resave(model, tmp_path / "bad.csae", **change)
    with pytest.raises(ValueError, match=message):
        ce.load_model(tmp_path / "bad.csae")
