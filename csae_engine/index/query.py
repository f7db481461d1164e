"""What a query needs from the model: its sparse code (sparse mode) and its projection p = W_dec q (dense mode)."""
import numpy as np
import torch

from ..data import unit_rows
from ..residual import CENTROIDS

__all__ = ["query_rows", "query_codes", "QueryEncoder"]


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
    with torch.no_grad():
        idx, val = model.encode_tensor(torch.from_numpy(Q).to(model.device), k)
    val = val.float()
    norms = val.norm(dim=1, keepdim=True)
    val = torch.where(norms > 0, val / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(val))
    return idx.cpu().numpy().astype(np.int64), val.cpu().numpy()


class QueryEncoder:
    """Encodes unit query rows for one model; keeps the decoder matrix dense mode multiplies by, made once.

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

    def codes(self, Q: np.ndarray, terms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The strongest ``terms`` (default k) entries of each query's code: C-contiguous (indices, values)."""
        idx, val = query_codes(self.model, Q, self.k)
        if terms is not None and terms < self.k:
            idx, val = np.ascontiguousarray(idx[:, :terms]), np.ascontiguousarray(val[:, :terms])
        return idx, val

    def projections(self, Q: np.ndarray) -> np.ndarray:
        """p = W_dec q for each unit query: (nq, h) float32; with a decoder bias b, one more column q . b; with a
        residual quantizer, its tables (ResidualQuantizer.tables) after them."""
        with torch.no_grad():
            if self._decoder is None:  # a tied decoder is a fresh transpose copy: make it once, not per search
                W = self.model.W_dec.float()
                b = self.model.decoder_bias
                self._decoder = (W if b is None else torch.cat([W, b.float()[None]])).contiguous()
            W = self._decoder
            if self.residual is None:
                return (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()
            P = np.empty((len(Q), len(W) + self.residual.m * CENTROIDS), np.float32)
            P[:, :len(W)] = (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()
        self.residual.tables(Q, out=P[:, len(W):])
        return P
