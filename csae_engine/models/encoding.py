"""Encoding arrays into SparseCodes and decoding them back, a batch at a time: the numpy side of a TopKSAE."""
import contextlib

import numpy as np
import torch

from .. import kernels
from ..codes import QUANTIZED_DTYPES, VALUE_DTYPES, SparseCodes, quantize_rows
from ..data import iter_batches
from ..utils import positive_int, progress_bar

__all__ = ["autocast", "encode_rows", "decode_codes"]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The precision models run in on ``device``: bfloat16 autocast on CUDA, plain float32 elsewhere.

    Parameters
    ----------
    device : torch.device
        Where the model and its inputs are.

    Returns
    -------
    contextlib.AbstractContextManager
        A ``torch.autocast`` context to wrap the forward pass in.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def encode_rows(model, X, k: int | None = None, *, batch_size: int = 8192, value_dtype=np.float16,
                progress: bool | None = None) -> SparseCodes:
    """SparseCodes of the rows of X under model: TopKSAE.encode, which documents the arguments."""
    k = model.k if k is None else k
    kernels.reference.check_k(k, model.h)
    try:
        value_dtype = np.dtype(value_dtype)
    except TypeError as e:
        raise ValueError(f"value_dtype must be float16, float32, int8 or uint8, got {value_dtype!r}") from e
    if value_dtype not in VALUE_DTYPES + QUANTIZED_DTYPES:
        raise ValueError(f"value_dtype must be float16, float32, int8 or uint8, got {value_dtype}")
    if value_dtype == np.uint8 and model.signed:
        raise ValueError("uint8 values need non-negative codes (a CSR model); this model's codes are signed: "
                         "use int8")
    batch_size = positive_int(batch_size, "batch_size")
    quantized = value_dtype in QUANTIZED_DTYPES
    X = model.check_input(X)
    n = X.shape[0]
    indices = np.zeros((n, k), np.uint32)
    values = np.zeros((n, k), value_dtype)
    scales = np.zeros(n, np.float16) if quantized else None
    batches = progress_bar(iter_batches(X, batch_size), total=-(-n // batch_size), desc="encode", unit="batch",
                           progress=progress, items=n)
    for start, batch in batches:
        x = torch.from_numpy(batch).to(model.device)
        with autocast(model.device):
            idx, val = model.encode_tensor(x, k)
        rows = slice(start, start + len(batch))
        indices[rows] = idx.cpu().numpy()
        val = val.float().cpu().numpy()
        if quantized:
            values[rows], scales[rows] = quantize_rows(val, value_dtype)
        else:
            values[rows] = val
    return SparseCodes(indices, values, model.h, scales)


@torch.no_grad()
def decode_codes(model, codes: SparseCodes, *, batch_size: int = 65536) -> np.ndarray:
    """(n, d) float32 reconstructions of codes under model: TopKSAE.decode, which documents the arguments."""
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"decode takes SparseCodes, got {type(codes).__name__}")
    if codes.h != model.h:
        raise ValueError(f"codes have h={codes.h}, the model has h={model.h}")
    batch_size = positive_int(batch_size, "batch_size")
    out = np.empty((codes.n, model.d), np.float32)
    for start in range(0, codes.n, batch_size):
        rows = slice(start, start + batch_size)
        val = codes.values[rows].astype(np.float32)
        if codes.scales is not None:
            val *= codes.scales[rows].astype(np.float32)[:, None]
        idx = torch.from_numpy(codes.indices[rows].astype(np.int64)).to(model.device)
        out[rows] = model.decode_tensor(idx, torch.from_numpy(val).to(model.device)).float().cpu().numpy()
    return out
