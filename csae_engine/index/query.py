"""What a query needs from the model: its sparse code (sparse mode) and its projection p = W_dec q (dense mode).

A batch of up to SMALL_BATCH queries is encoded in one C++ call (cpp/encode.h) on copies of the encoder made once:
each query reads an int8 copy (a quarter of float32's bytes) and multiplies again in float32 only the latents that
could reach its top k, so the codes are those of the float32 product. No torch, no autograd. Larger batches go
through the model's torch path, whose GEMM is faster there.
"""
import numpy as np
import torch

from .. import _core
from ..data import unit_rows
from ..residual import CENTROIDS

__all__ = ["SMALL_BATCH", "query_rows", "query_codes", "int8_encoder", "QueryEncoder"]

# Queries the C++ encoder takes at once; from about 64 on, torch's GEMM takes less per query (the crossover table
# of benchmarks/query_path.py)
SMALL_BATCH = 64


def query_rows(model, Q) -> np.ndarray:
    """Q (an (nq, d) array) checked against the model and L2-normalised: float32, unit rows."""
    return unit_rows(model.check_input(Q, "Q")[:], 0, "Q")


def query_codes(model, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes of unit query rows as sparse mode scores them.

    Returns
    -------
    indices : (nq, k) int64
    values : (nq, k) float32, each row of unit norm; a code with no non-zero value (possible for CSR) stays all
        zeros and scores 0 everywhere.
    """
    with torch.inference_mode():
        idx, val = model.encode_tensor(torch.from_numpy(Q).to(model.device), k)
        val = val.float()
        norms = val.norm(dim=1, keepdim=True)
        val = torch.where(norms > 0, val / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(val))
    return idx.cpu().numpy().astype(np.int64, copy=False), val.cpu().numpy()


def int8_encoder(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An int8 copy of the encoder W (h, d) float32 for _core.encode_queries: (W8 (h, d rounded up to 32) int8,
    bounds (3, h) float32). Row j is about scale[j] * W8[j] (scale = max |W[j]| / 127). For unit queries q and their
    int8 rounding q8 at step t, W[j] . q lies within q_slack[j] |q| + w_norm[j] |q - t q8| of scale[j] t (W8[j] . q8):
    q_slack[j] is |W[j] - scale[j] W8[j]| plus the float32 product's own rounding, w_norm[j] is |scale[j] W8[j]|;
    both rounded up. bounds = (scale, q_slack, w_norm)."""
    h, d = W.shape
    if not np.isfinite(W).all():
        raise ValueError("the encoder's weights hold NaN or inf")
    W64 = W.astype(np.float64)
    row_max = np.abs(W64).max(axis=1, initial=0.0)
    scale = np.where(row_max > 0, row_max / 127, 1.0).astype(np.float32)
    levels = np.clip(np.rint(W64 / scale[:, None].astype(np.float64)), -127, 127)
    approx = levels * scale[:, None].astype(np.float64)
    float32_product = (d + 8) * 2.0 ** -23 * np.linalg.norm(W64, axis=1)
    q_slack = np.linalg.norm(W64 - approx, axis=1) + float32_product
    w_norm = np.linalg.norm(approx, axis=1)
    W8 = np.zeros((h, -(-d // 32) * 32), np.int8)
    W8[:, :d] = levels
    up = lambda x: np.nextafter(x.astype(np.float32), np.float32(np.inf))  # noqa: E731
    return W8, np.ascontiguousarray(np.stack([scale, up(q_slack), up(w_norm)]), np.float32)


class QueryEncoder:
    """Encodes unit query rows for one model; keeps a float32 copy of the encoder (small batches) and the decoder
    matrix (dense mode), made on first use: the model must not change afterwards (nor may the index's codes).

    Parameters
    ----------
    model : TopKSAE
    k : int
        Terms per query code: the index's k.
    residual : ResidualQuantizer, optional
        The index's residual quantizer: projections then end with its tables.
    """

    def __init__(self, model, k: int, residual=None):
        self.model, self.k, self.residual = model, k, residual
        self._decoder = None  # (h [+ 1], d) float32
        self._encoder = None  # (W_enc.T (h, d), encoder bias (h,)) float32 numpy, then int8_encoder's copy

    def codes(self, Q: np.ndarray, terms: int | None = None, num_threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """The strongest ``terms`` (default k) entries of each query's code, as query_codes gives them:
        C-contiguous (indices (nq, terms) int64, values (nq, terms) float32 of unit norm)."""
        if len(Q) <= SMALL_BATCH:
            idx, val = self.small_codes(Q, num_threads)
        else:
            idx, val = query_codes(self.model, Q, self.k)
        if terms is not None and terms < self.k:
            idx, val = np.ascontiguousarray(idx[:, :terms]), np.ascontiguousarray(val[:, :terms])
        return idx, val

    def small_codes(self, Q: np.ndarray, num_threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """query_codes(model, Q, k) in one C++ call (cpp/encode.h) on copies of the encoder made once (float32 and
        int8_encoder's): the path of batches up to SMALL_BATCH queries (any size works)."""
        if self._encoder is None:
            with torch.no_grad():
                W = self.model.W_enc.detach().T.to("cpu", torch.float32).contiguous().numpy()
                b = self.model.encoder_bias().detach().to("cpu", torch.float32).numpy().copy()
            self._encoder = (W, b, *int8_encoder(W))
        W, b, W8, bounds = self._encoder
        return _core.encode_queries(np.ascontiguousarray(Q, np.float32), W, b, self.k, not self.model.signed,
                                    num_threads, W8, bounds)

    def projections(self, Q: np.ndarray, num_threads: int = -1) -> np.ndarray:
        """p = W_dec q for each unit query: (nq, h) float32; with a decoder bias b, one more column q . b; with a
        residual quantizer, its tables (ResidualQuantizer.tables) after them. Up to SMALL_BATCH queries on the CPU:
        one C++ call (no torch threads); else torch."""
        with torch.no_grad():
            if self._decoder is None:  # a tied decoder is a fresh transpose copy: make it once, not per search
                W = self.model.W_dec.detach().float()
                b = self.model.decoder_bias
                self._decoder = (W if b is None else torch.cat([W, b.detach().float()[None]])).contiguous()
            W = self._decoder
            if len(Q) <= SMALL_BATCH and W.device.type == "cpu":
                proj = _core.project_queries(np.ascontiguousarray(Q, np.float32), W.numpy(), num_threads)
            else:
                proj = (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()
        if self.residual is None:
            return proj
        P = np.empty((len(Q), len(W) + self.residual.m * CENTROIDS), np.float32)
        P[:, :len(W)] = proj
        self.residual.tables(Q, out=P[:, len(W):])
        return P
