"""Encoding arrays into SparseCodes and decoding them back, a batch at a time: the numpy side of a TopKSAE."""
import contextlib

import numpy as np
import torch

from .. import kernels
from ..codes import QUANTIZED_DTYPES, VALUE_DTYPES, SparseCodes, quantize_rows
from ..compact import DEFAULT_INDEX_CODING, CompactCodes, check_index_coding, compact_k, quantize_values
from ..data import iter_batches
from ..utils import positive_int, progress_bar

__all__ = ["SUPPORTS", "check_support", "DEFAULT_VALUE_BITS", "ValueRefit", "autocast", "encode_rows",
           "encode_compact", "decode_codes"]

REFIT_BATCH_BYTES = 1 << 28  # a refit batch's float64 Gram blocks stay near this size (k=170: 1,161 rows)
SUPPORTS = ("encoder", "pursuit")  # how compact codes choose their latents
DEFAULT_VALUE_BITS = 5  # compact codes: 4 and 5 tie at 64 B, 5 wins at 128 B (benchmarks/results/compact_*)


def check_support(support) -> str:
    """support, one of SUPPORTS; ValueError otherwise."""
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    return support


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


class ValueRefit:
    """Least-squares values for a fixed support: for the k latents S the encoder chose for x, the values v that
    minimise |x - b - v W_S| (b: the decoder bias), v = (W_S W_S^T)^-1 W_S (x - b). It never lowers cos(x, x_hat)
    below the encoder's own values, which are one candidate of the same least-squares problem.

    The Gram matrix W_dec W_dec^T (h x h) is made once; each batch gathers its k x k blocks and solves them in
    float64 (a 1e-6 ridge keeps a block of nearly parallel directions solvable).
    """

    RIDGE = 1e-6

    def __init__(self, model):
        if not model.signed:
            raise ValueError("refit gives values of either sign; it needs a model with signed codes (CompresSAE), "
                             "not non-negative CSR codes")
        self.W = model.W_dec.detach().float()
        self.gram = (self.W @ self.W.T).double()
        bias = model.decoder_bias
        self.bias = None if bias is None else bias.detach().float()

    def pursuit(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, values) of unit rows x (B, d) by orthogonal matching pursuit: k times, add the latent most
        correlated with what the code leaves out, then refit every value on the support; strongest first."""
        target = x.float() if self.bias is None else x.float() - self.bias
        indices = torch.empty((len(x), 0), dtype=torch.int64, device=x.device)
        residual = target
        for _ in range(k):
            corr = (residual @ self.W.T).abs()
            corr.scatter_(1, indices, -1.0)
            indices = torch.cat([indices, corr.argmax(dim=1, keepdim=True)], dim=1)
            indices, values = self(x, indices)
            residual = target - torch.bmm(values[:, None, :], self.W[indices]).squeeze(1)
        return indices, values

    def __call__(self, x: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, values) of unit rows x (B, d) on the support indices (B, k), strongest first."""
        target = x.float() if self.bias is None else x.float() - self.bias
        rhs = (target @ self.W.T).gather(1, indices).double()
        G = self.gram[indices[:, :, None], indices[:, None, :]]
        G.diagonal(dim1=1, dim2=2).add_(self.RIDGE)
        values = torch.linalg.solve(G, rhs.unsqueeze(2)).squeeze(2).float()
        order = values.abs().argsort(dim=1, descending=True)
        return indices.gather(1, order), values.gather(1, order)


def _encoded_batches(model, X, k: int, batch_size: int, progress, refit: bool, support: str = "encoder"):
    """(rows, indices (b, k) int64, values (b, k) float32) over the rows of X, a batch at a time; support
    "pursuit" picks the latents by ValueRefit.pursuit instead of the encoder (refit only)."""
    batch_size = positive_int(batch_size, "batch_size")
    X = model.check_input(X)
    n = X.shape[0]
    fit = ValueRefit(model) if refit else None
    if fit is not None:  # each row's float64 k x k Gram block: keep a batch's blocks near 256 MiB
        batch_size = min(batch_size, max(64, REFIT_BATCH_BYTES // (8 * k * k)))
    batches = progress_bar(iter_batches(X, batch_size), total=-(-n // batch_size), desc="encode", unit="batch",
                           progress=progress, items=n)
    for start, batch in batches:
        x = torch.from_numpy(batch).to(model.device)
        if support == "pursuit":
            idx, val = fit.pursuit(x, k)
        else:
            with autocast(model.device):
                idx, val = model.encode_tensor(x, k)
            if fit is not None:
                idx, val = fit(x, idx)
        yield slice(start, start + len(batch)), idx.cpu().numpy(), val.float().cpu().numpy()


@torch.no_grad()
def encode_rows(model, X, k: int | None = None, *, batch_size: int = 8192, value_dtype=np.float16,
                progress: bool | None = None, refit: bool = False) -> SparseCodes:
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
    quantized = value_dtype in QUANTIZED_DTYPES
    n = model.check_input(X).shape[0]
    indices = np.zeros((n, k), np.uint32)
    values = np.zeros((n, k), value_dtype)
    scales = np.zeros(n, np.float16) if quantized else None
    for rows, idx, val in _encoded_batches(model, X, k, batch_size, progress, refit):
        indices[rows] = idx
        if quantized:
            values[rows], scales[rows] = quantize_rows(val, value_dtype)
        else:
            values[rows] = val
    return SparseCodes(indices, values, model.h, scales)


@torch.no_grad()
def encode_compact(model, X, bytes_per_item: int | None = None, *, k: int | None = None,
                   value_bits: int = DEFAULT_VALUE_BITS, index_coding: str = DEFAULT_INDEX_CODING,
                   batch_size: int = 8192, progress: bool | None = None, refit: bool = True,
                   support: str = "encoder") -> CompactCodes:
    """CompactCodes of the rows of X: k entries, or the most that fit bytes_per_item bytes per item
    (compact.compact_k, which depends on index_coding); values refitted by least squares (refit=True), then
    quantised to value_bits bits. support: "encoder" (its top k) or "pursuit" (ValueRefit.pursuit)."""
    if check_support(support) == "pursuit" and not refit:
        raise ValueError("support='pursuit' refits the values: it needs refit=True")
    if (k is None) == (bytes_per_item is None):
        raise ValueError("give k or bytes_per_item (which sets k), not both")
    check_index_coding(index_coding)
    if k is None:
        k = compact_k(model.h, bytes_per_item, value_bits, index_coding)
    kernels.reference.check_k(k, model.h)
    n = model.check_input(X).shape[0]
    indices = np.zeros((n, k), np.int64)
    q = np.zeros((n, k), np.int32)
    scales = np.zeros(n, np.float16)
    for rows, idx, val in _encoded_batches(model, X, k, batch_size, progress, refit, support):
        indices[rows] = idx
        q[rows], scales[rows] = quantize_values(val, value_bits)
    return CompactCodes.pack(indices, q, scales, model.h, value_bits, index_coding)


@torch.no_grad()
def decode_codes(model, codes: SparseCodes, *, batch_size: int = 65536) -> np.ndarray:
    """(n, d) float32 reconstructions of codes under model: TopKSAE.decode, which documents the arguments."""
    if isinstance(codes, CompactCodes):
        codes = codes.to_sparse()
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"decode takes SparseCodes or CompactCodes, got {type(codes).__name__}")
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
