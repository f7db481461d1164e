"""Triton kernels against the PyTorch reference (kernels/reference.py) and a float64 oracle.

Runs on CUDA when present, else on the CPU under TRITON_INTERPRET=1 (tiny, odd shapes: the interpreter is slow).
"""
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    import triton  # noqa: F401
except ImportError:
    pytest.skip("triton is not installed", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA, or TRITON_INTERPRET=1 to run them on the CPU", allow_module_level=True)

import csae_engine as ce  # noqa: E402
from conftest import TOLERANCES, unit  # noqa: E402
from csae_engine import kernels  # noqa: E402
from csae_engine.kernels import reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_bf16_supported(), reason="this GPU has no bf16"))]
ROOT = Path(__file__).resolve().parents[1]
# (B, d, h, k): none a multiple of a block size; k=20 is the 4k of k=5; d=70 spans several d-slices
ENCODE_SHAPES = [(37, 19, 70, 5), (37, 19, 70, 20), (21, 70, 40, 8)]
DECODE_SHAPES = [(37, 19, 70, 5), (23, 70, 40, 20)]


def _submodule(name):
    return importlib.import_module(f"{kernels.__name__}.{name}")


def _encoder(B, d, h, dtype, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(B, d, generator=g), dim=1)
    W, b = torch.randn(d, h, generator=g), torch.randn(h, generator=g) * 0.1
    x, W, b = (t.to(DEVICE, dtype) for t in (x, W, b))
    return x, W.requires_grad_(grad), b.requires_grad_(grad)


def _exact_z(x, W, b):
    return x.double() @ W.double() + b.double()


def _close(actual, expected, dtype, msg=""):
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{msg}: {m}")


# encode forward

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,d,h,k", ENCODE_SHAPES)
def test_encode_matches_reference(B, d, h, k, dtype):
    x, W, b = _encoder(B, d, h, dtype)
    idx, val = kernels.topk_encode(x, W, b, k, backend="triton")
    assert idx.shape == val.shape == (B, k) and idx.dtype == torch.int64 and val.dtype == dtype
    assert idx.device.type == val.device.type == DEVICE
    assert ((idx >= 0) & (idx < h)).all()
    assert (idx.sort(1).values.diff(dim=1) > 0).all(), "each latent at most once per row"
    assert (val.abs()[:, :-1] >= val.abs()[:, 1:]).all(), "strongest first"
    assert (val < 0).any() and (val > 0).any(), "the test must exercise negative codes"
    z = _exact_z(x, W, b)
    _close(val, z.gather(1, idx), dtype, "values are z at the returned indices")
    # the selection is a top k: its |z| equal the true k largest (ties may pick other indices with equal |z|)
    _close(z.gather(1, idx).abs().sort(1, descending=True).values, z.abs().topk(k, 1).values, dtype, "top-k set")
    ref_idx, ref_val = reference.topk_encode(x, W, b, k)
    _close(val.abs().sort(1).values, ref_val.abs().sort(1).values, dtype, "same |values| as the reference")
    if dtype == torch.float32:  # random fp32 data has no ties at the cut
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(val, ref_val, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,d,h,k", [(5, 16, 24, 24), (9, 7, 33, 1), (0, 5, 10, 3)])
def test_encode_edge_sizes(B, d, h, k):
    """k == h (the whole row, sorted), k == 1, and an empty batch."""
    x, W, b = _encoder(B, d, h, torch.float32, seed=3)
    idx, val = kernels.topk_encode(x, W, b, k, backend="triton")
    ref_idx, ref_val = reference.topk_encode(x, W, b, k)
    assert idx.shape == (B, k)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val, atol=1e-5, rtol=1e-5)


def test_encode_ties_pick_a_true_top_k():
    x, W, b = _encoder(6, 8, 40, torch.float32, seed=4)
    with torch.no_grad():
        W[:, 1::2] = W[:, 0::2]  # every |z| appears twice
        b.zero_()
    idx, val = kernels.topk_encode(x, W, b, 7, backend="triton")
    _, ref_val = reference.topk_encode(x, W, b, 7)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()
    torch.testing.assert_close(val, _exact_z(x, W, b).gather(1, idx).float())
    torch.testing.assert_close(val.abs(), ref_val.abs())


def test_encode_large_k_falls_back_to_row_chunks(monkeypatch):
    """k past MAX_FUSED_K takes torch's matmul + topk over row chunks; the backward stays sparse."""
    te = _submodule("encode")
    monkeypatch.setattr(te, "MAX_FUSED_K", 4)
    monkeypatch.setattr(te, "_FALLBACK_ROWS", 16)
    x, W, b = _encoder(37, 19, 70, torch.float32, grad=True)
    idx, val = kernels.topk_encode(x, W, b, 5, backend="triton")
    val.sum().backward()
    W2, b2 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref_idx, ref_val = reference.topk_encode(x, W2, b2, 5)
    ref_val.sum().backward()
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val)
    torch.testing.assert_close(W.grad, W2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


# encode backward (kernel 3)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,d,h,k", [ENCODE_SHAPES[1], ENCODE_SHAPES[2]])
def test_encode_backward_matches_dense_autograd(B, d, h, k, dtype):
    x, W, b = _encoder(B, d, h, dtype, seed=1, grad=True)
    idx, val = kernels.topk_encode(x, W, b, k, backend="triton")
    weights = torch.randn(B, k, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    (val * weights).sum().backward()
    assert W.grad.dtype == dtype and b.grad.dtype == dtype
    # oracle: float64 autograd through a dense z, read at the kernel's indices
    W64, b64 = W.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    (torch.addmm(b64, x.double(), W64).gather(1, idx) * weights.double()).sum().backward()
    _close(W.grad, W64.grad, dtype, "grad W_enc")
    _close(b.grad, b64.grad, dtype, "grad b_enc")
    if dtype == torch.float32:  # and the reference autograd.Function itself
        W2, b2 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        _, ref_val = reference.topk_encode(x, W2, b2, k)
        (ref_val * weights).sum().backward()
        torch.testing.assert_close(W.grad, W2.grad)
        torch.testing.assert_close(b.grad, b2.grad)


def test_encode_under_autocast_computes_in_low_precision_and_returns_param_dtype_grads():
    """As in training on CUDA: fp32 inputs and parameters, bf16 autocast."""
    x, W, b = _encoder(37, 19, 70, torch.float32, seed=5, grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        idx, val = kernels.topk_encode(x, W, b, 20, backend="triton")
        _, ref_val = reference.topk_encode(x, W, b, 20)
    assert val.dtype == ref_val.dtype == torch.bfloat16
    z = _exact_z(*(t.detach().bfloat16() for t in (x, W, b)))
    _close(val, z.gather(1, idx), torch.bfloat16, "values")
    _close(val.abs().sort(1).values, ref_val.abs().sort(1).values, torch.bfloat16, "same |values| as the reference")
    val.float().sum().backward()
    assert W.grad.dtype == b.grad.dtype == torch.float32
    G = torch.zeros(37, 70, dtype=torch.float64).scatter_(1, idx.cpu(), 1.0).to(DEVICE)
    _close(W.grad, x.bfloat16().double().T @ G, torch.float32, "grad W_enc (x is used as cast for the forward)")
    torch.testing.assert_close(b.grad.double(), G.sum(0))


def test_encode_backward_only_bias_and_no_grad_for_x():
    x, W, b = _encoder(37, 19, 70, torch.float32)
    b.requires_grad_()
    _, val = kernels.topk_encode(x, W, b, 5, backend="triton")
    val.sum().backward()
    b64 = b.detach().double().requires_grad_()
    z = torch.addmm(b64, x.double(), W.double())
    z.gather(1, z.abs().topk(5, 1).indices).sum().backward()
    torch.testing.assert_close(b.grad, b64.grad.float())
    assert W.grad is None
    x.requires_grad_()
    _, val = kernels.topk_encode(x, W, b, 5, backend="triton")
    with pytest.raises(NotImplementedError, match="with respect to x"):
        val.sum().backward()


# decode

def _codes(B, d, h, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # slices of wider tensors (non-contiguous), random indices with repeats within and across rows
    idx = torch.randint(0, h, (B, 2 * k), generator=g)[:, k:].to(DEVICE)
    val = torch.randn(B, 2 * k, generator=g).to(DEVICE, dtype)[:, k:].requires_grad_()
    W_dec = torch.randn(h, d, generator=g).to(DEVICE, dtype).requires_grad_()
    grad_out = torch.randn(B, d, generator=g).to(DEVICE, dtype)
    return idx, val, W_dec, grad_out


def _check_decode(B, d, h, k, dtype):
    idx, val, W_dec, grad_out = _codes(B, d, h, k, dtype)
    assert not idx.is_contiguous() and (idx[:, :, None] == idx[:, None, :]).sum() > B * k, "repeats in a row"
    out = kernels.sparse_decode(idx, val, W_dec, backend="triton")
    out.backward(grad_out)
    assert out.shape == (B, d) and out.dtype == dtype
    assert val.grad.dtype == dtype and W_dec.grad.dtype == dtype
    v64, W64 = val.detach().double().requires_grad_(), W_dec.detach().double().requires_grad_()
    ref = (v64[:, :, None] * W64[idx]).sum(1)
    ref.backward(grad_out.double())
    _close(out, ref, dtype, "x_hat")
    _close(val.grad, v64.grad, dtype, "grad values")
    _close(W_dec.grad, W64.grad, dtype, "grad W_dec")
    if dtype == torch.float32:
        v2, W2 = val.detach().clone().requires_grad_(), W_dec.detach().clone().requires_grad_()
        ref32 = reference.sparse_decode(idx, v2, W2)
        ref32.backward(grad_out)
        torch.testing.assert_close(out, ref32)
        torch.testing.assert_close(val.grad, v2.grad)
        torch.testing.assert_close(W_dec.grad, W2.grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,d,h,k", DECODE_SHAPES)
def test_decode_matches_reference(B, d, h, k, dtype):
    _check_decode(B, d, h, k, dtype)


def test_decode_over_several_d_slices(monkeypatch):
    """dv summed atomically over d-slices when one program does not cover d."""
    sd = _submodule("decode")
    monkeypatch.setattr(sd, "_CUDA_MAX_BLOCK_D", 16)
    monkeypatch.setattr(sd, "_CPU_BLOCK_D", 16)
    _check_decode(19, 37, 30, 6, torch.float32)


def test_decode_int32_indices_and_empty_code():
    idx, val, W_dec, _ = _codes(11, 9, 25, 4, torch.float32)
    out = kernels.sparse_decode(idx.int(), val, W_dec, backend="triton")
    torch.testing.assert_close(out, reference.sparse_decode(idx, val, W_dec))
    empty = kernels.sparse_decode(idx[:, :0], val[:, :0], W_dec, backend="triton")
    assert empty.shape == (11, 9) and not empty.any()


# validation and backend selection

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_invalid_k_refused(backend):
    x, W, b = _encoder(4, 6, 10, torch.float32)
    for k in (0, -1, 11):
        with pytest.raises(ValueError, match="k must be in 1..h=10"):
            kernels.topk_encode(x, W, b, k, backend=backend)
    for k in (True, 2.0):
        with pytest.raises(TypeError, match="k must be an int"):
            kernels.topk_encode(x, W, b, k, backend=backend)


def test_encode_shape_mismatch_named():
    x, W, b = _encoder(4, 6, 10, torch.float32)
    with pytest.raises(ValueError, match="do not chain"):
        kernels.topk_encode(x[:, :5], W, b, 3, backend="triton")


def test_backend_selection(monkeypatch):
    calls = []
    enc, dec = reference.topk_encode, reference.sparse_decode
    monkeypatch.setattr(reference, "topk_encode", lambda *a: calls.append("torch") or enc(*a))
    monkeypatch.setattr(reference, "sparse_decode", lambda *a: calls.append("torch") or dec(*a))
    x, W, b = _encoder(5, 6, 12, torch.float32)
    # on CPU tensors "auto" stays on torch, interpreter or not; on CUDA it takes the path measured fastest
    auto = {op: ["torch"] if DEVICE == "cpu" or kernels.FASTEST_ON_CUDA[op] == "torch" else []
            for op in ("topk_encode", "sparse_decode")}
    for backend in ("torch", "triton", "auto"):
        expected = {"torch": ["torch"], "triton": []}.get(backend)
        calls.clear()
        idx, val = kernels.topk_encode(x, W, b, 3, backend=backend)
        assert calls == (expected if expected is not None else auto["topk_encode"]), backend
        calls.clear()
        kernels.sparse_decode(idx, val, W.T, backend=backend)
        assert calls == (expected if expected is not None else auto["sparse_decode"]), backend
    for bad in ("cuda", "Triton", None):
        with pytest.raises(ValueError, match="backend must be one of"):
            kernels.topk_encode(x, W, b, 3, backend=bad)
        with pytest.raises(ValueError, match="backend must be one of"):
            kernels.sparse_decode(idx, val, W.T, backend=bad)
    assert kernels.BACKENDS == ("auto", "torch", "triton")
    # the Triton submodules load without shadowing the public functions
    assert _submodule("encode").topk_encode is not kernels.topk_encode
    assert kernels.topk_encode.__module__ == kernels.__name__ == kernels.sparse_decode.__module__


def test_triton_backend_unavailable_is_explained(monkeypatch):
    x, W, b = _encoder(5, 6, 12, torch.float32)
    x, W, b = x.cpu(), W.cpu(), b.cpu()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.topk_encode(x, W, b, 3, backend="triton")
    monkeypatch.setattr(kernels, "_triton_error", lambda: "triton is not installed (simulated)")
    with pytest.raises(RuntimeError, match="not installed"):
        kernels.sparse_decode(torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1), W.T, backend="triton")
    kernels.topk_encode(x.to(DEVICE), W.to(DEVICE), b.to(DEVICE), 3)  # "auto" falls back to torch


# the model on the Triton backend

def test_training_on_triton_matches_torch():
    X = unit(np.random.default_rng(0), 96, 16)
    models = {}
    for backend in ("torch", "triton"):
        model = ce.CompresSAE(d=16, h=64, k=4, seed=0)
        model.backend = backend
        models[backend] = ce.train(X, model=model, steps=3, batch_size=32, lr=1e-2, warmup=0.0, progress=False)
    a, b = models["torch"], models["triton"]
    # CUDA trains under bf16 autocast, where a near-tie may select another latent (an Adam step is ~lr)
    atol, param_atol = (1e-4, 1e-4) if DEVICE == "cpu" else (2e-2, 5e-2)
    assert [r["step"] for r in a.history] == [r["step"] for r in b.history] == [1, 3]
    for ra, rb in zip(a.history, b.history):
        assert abs(ra["loss"] - rb["loss"]) < atol and abs(ra["cos_k"] - rb["cos_k"]) < atol
    assert (a.W_enc - ce.CompresSAE(d=16, h=64, k=4, seed=0).W_enc).abs().max() > 1e-3, "the run must train"
    for name in ("W_enc", "b_enc", "W_dec"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=param_atol, rtol=0)


# the benchmark, at tiny shapes, so that it cannot rot

def test_gpu_benchmark_runs_tiny(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    gpu_kernels = importlib.import_module("benchmarks.gpu_kernels")
    path = gpu_kernels.main(["--tiny", "--out", str(tmp_path)])
    assert Path(path).parent == tmp_path
    record = json.loads(Path(path).read_text())
    measures = [r["measure"] for r in record["results"]]
    assert measures[:4] == ["encode k=2", "encode k=8", "training step", "training step peak memory"]
    assert any("pinned loop" in m for m in measures) and any("csae_engine.train" in m for m in measures)
    assert record["config"]["batch_size"] == 32
    for r in record["results"][:3]:
        assert r["torch"] > 0 and r["triton"] > 0
    for r in record["results"][:2]:
        assert r["rows_same_selection"] >= (1.0 if DEVICE == "cpu" else 0.75)  # bf16 near-ties on CUDA
    md = Path(path).with_suffix(".md").read_text()
    assert "training step" in md and "Targets" in md
