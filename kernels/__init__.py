"""Compute kernels behind the model, one signature per op whatever the backend.

backend="auto" picks, on CUDA tensors with triton importable, the path measured fastest on that GPU
(FASTEST_ON_CUDA, FASTEST_BY_DEVICE), and the PyTorch reference otherwise;
on CPU tensors it stays on the reference even under TRITON_INTERPRET=1 (the interpreter is far too slow for the
model's training tests), so tests of the kernels on the CPU pass backend="triton". "torch" and "triton" force one;
"triton" raises if triton is missing, or if the tensors are on the CPU without TRITON_INTERPRET=1.
triton is imported only when a Triton kernel is first used, so the package works without it.
topk_encode(nonneg=True), CSR's TopK + ReLU, has no fused kernel: "auto" runs the reference (or, where the tables
say "select", cuBLAS then the Triton select).
"""
import functools
import importlib
import os

from . import reference

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=None)
def _triton_error() -> str | None:
    """Why triton cannot be used here, or None."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton is not installed or does not import ({type(e).__name__}: {e})"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# What backend="auto" runs on CUDA, per op: the path the committed GPU measurements support (benchmarks/results/).
# gpu_kernels_d768_h4096_k32_b100000.md (H100): torch's addmm + topk encodes 1.3x faster than the fused Triton
# encode at k=32 and 8x at k=128. The Triton select kernel (select.py) is not measured yet: torch.topk until
# benchmarks/gpu_train.py shows otherwise. FASTEST_BY_DEVICE overrides these for one GPU name (every shape measured
# so far ranks the paths alike, so the choice is per device only).
# topk_encode may also name "select": cuBLAS addmm, then the Triton select (select.matmul_then_select).
FASTEST_ON_CUDA = {"topk_encode": "torch", "topk_select": "torch", "sparse_decode": "triton"}
FASTEST_BY_DEVICE: dict = {}  # e.g. {"NVIDIA H100 80GB HBM3": {"topk_select": "triton"}}


def _fastest(op: str, device) -> str:
    import torch
    name = torch.cuda.get_device_name(device)
    return FASTEST_BY_DEVICE.get(name, {}).get(op, FASTEST_ON_CUDA[op])


def _resolve(backend: str, device, op: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda" or _triton_error() is not None:
            return "torch"
        return _fastest(op, device)
    if backend == "triton":
        if (why := _triton_error()) is not None:
            raise RuntimeError(f'backend="triton": {why}')
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError(f'backend="triton" needs CUDA tensors (got {device.type}) or TRITON_INTERPRET=1')
    return backend


def _triton_op(module: str, name: str):
    """The op `name` of the Triton submodule `module` (imported on first use)."""
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def topk_encode(x, W_enc, b_enc, k: int, backend: str = "auto", nonneg: bool = False):
    """Indices (B, k) int64 and values (B, k) of the k strongest entries of z = x @ W_enc + b_enc per row.

    nonneg=False (CompresSAE): the k largest |z|, signed, by |value| descending.
    nonneg=True (CSR): the k largest z with ReLU applied, so values >= 0, by value descending. It has no Triton
    kernel: "auto" runs the PyTorch reference for it on any device, and backend="triton" raises NotImplementedError.
    x (B, d), W_enc (d, h), b_enc (h,). Gradients flow to W_enc and b_enc through the selected entries only,
    not to x. Invalid k (not in 1..h) raises ValueError.
    """
    reference.check_k(k, W_enc.shape[1])
    if nonneg:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            raise NotImplementedError('topk_encode(nonneg=True) has no Triton kernel; use backend="torch" or "auto"')
        if backend == "auto" and _resolve(backend, x.device, "topk_encode") == "select":
            return _triton_op("select", "matmul_then_select")(x, W_enc, b_enc, k, True)
        return reference.topk_encode(x, W_enc, b_enc, k, nonneg=True)
    path = _resolve(backend, x.device, "topk_encode")
    if path == "select":  # only from the tables: cuBLAS addmm, then the Triton select
        return _triton_op("select", "matmul_then_select")(x, W_enc, b_enc, k, nonneg)
    if path == "triton":
        return _triton_op("encode", "topk_encode")(x, W_enc, b_enc, k)
    return reference.topk_encode(x, W_enc, b_enc, k)


def topk_select(z, k: int, nonneg: bool = False, backend: str = "auto"):
    """Indices (B, k) int64 and values (B, k) of the k strongest entries of each row of z (B, h), strongest first.

    nonneg=False: by |z|, values signed; nonneg=True: by z, values ReLU'd (CSR). Equal strengths go to the smaller
    column on the Triton path (torch.topk breaks ties its own way). Values are differentiable through z on both
    paths (gathered from z). Invalid k raises ValueError, a z that is not 2-D too.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (B, h), got shape {tuple(z.shape)}")
    reference.check_k(k, z.shape[1])
    if _resolve(backend, z.device, "topk_select") == "triton":
        return _triton_op("select", "topk_select")(z, k, nonneg)
    return reference.topk_select(z, k, nonneg)


def sparse_decode(indices, values, W_dec, backend: str = "auto"):
    """(B, d) = sum_j values[:, j] * W_dec[indices[:, j]]; indices, values (B, k), W_dec (h, d)."""
    if _resolve(backend, W_dec.device, "sparse_decode") == "triton":
        return _triton_op("decode", "sparse_decode")(indices, values, W_dec)
    return reference.sparse_decode(indices, values, W_dec)


__all__ = ["topk_encode", "topk_select", "sparse_decode", "reference", "BACKENDS", "FASTEST_ON_CUDA",
           "FASTEST_BY_DEVICE"]
