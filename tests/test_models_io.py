"""Model files (csae_engine/models/io.py): save/load round trips, files written before CSR, damaged, foreign and
inconsistent files refused with a reason; model_hash."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import csae_engine as ce
from csae_engine.models import CSRAutoencoder
from conftest import csr_model, unit


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


@pytest.mark.parametrize("tied", [True, False])
def test_csr_save_load_round_trip_is_exact(tmp_path, tied):
    model = csr_model(tied=tied)
    model.save(tmp_path / "m.csae")
    back = ce.load_model(tmp_path / "m.csae")
    assert isinstance(back, CSRAutoencoder) and back.tied == tied and not back.signed
    assert {n: p for n, p in model.named_parameters()}.keys() == {n: p for n, p in back.named_parameters()}.keys()
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(back.named_parameters())[name]), name
    from safetensors import safe_open
    with safe_open(tmp_path / "m.csae", framework="pt") as f:
        cfg = json.loads(f.metadata()["csae_engine"])
    assert cfg["variant"] == "csr" and cfg["signed"] is False and cfg["tied"] == tied
    X = unit(np.random.default_rng(0), 10, 10)
    a, b = model.encode(X), back.encode(X)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)


def test_old_compressae_file_without_signed_still_loads(tmp_path):
    model = ce.CompresSAE(12, 48, 4, seed=2)
    old_cfg = {"format_version": 1, "variant": "compressae", "d": 12, "h": 48, "k": 4}  # as written before CSR
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, tmp_path / "old.csae",
              metadata={"csae_engine": json.dumps(old_cfg)})
    back = ce.load_model(tmp_path / "old.csae")
    assert type(back) is ce.CompresSAE and back.signed and back.config()["signed"] is True
    assert torch.equal(back.W_dec, model.W_dec)


@pytest.mark.parametrize("config, message", [
    ({"signed": True}, "signed=True, but csr codes are non-negative"),
    ({"tied": "yes"}, "needs tied true or false"),
    ({"tied": False}, "do not match"),  # a tied file's weights lack W_dec
])
def test_inconsistent_csr_files_are_refused(tmp_path, config, message):
    model = csr_model()
    cfg = dict(model.config(), **config)
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, tmp_path / "bad.csae",
              metadata={"csae_engine": json.dumps(cfg)})
    with pytest.raises(ValueError, match=message):
        ce.load_model(tmp_path / "bad.csae")
