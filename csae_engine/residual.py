"""ResidualQuantizer: a product quantiser of what a sparse code leaves out, r = x - x_hat.

The d dimensions are cut into m contiguous subspaces of sub = ceil(d / m) or one fewer (zero-padded to sub); each
keeps CENTROIDS centroids, learnt by k-means on a sample of residuals, and a residual is stored as m bytes, its
nearest centroid in each subspace. Dense mode adds q . r_hat to q . x_hat as sum_j T[j, r_j], from tables
T[j, c] = q_j . centroid_jc made once per query (tables): m lookups per candidate (cpp/packed.h, residual_dot).
"""
import numpy as np
import torch

from .compact import CompactCodes
from .data import unit_rows_at
from .utils import positive_int, progress_bar

__all__ = ["ResidualQuantizer", "CENTROIDS", "DEFAULT_ITERATIONS", "DEFAULT_TRAIN_SAMPLE", "residuals_of",
           "encode_residuals", "residual_split", "DEFAULT_SPARSE_BYTES", "WEIGHT_BYTES"]

CENTROIDS = 256  # one byte per subspace
DEFAULT_ITERATIONS = 20
DEFAULT_TRAIN_SAMPLE = 65536  # residuals k-means sees; 256 centroids x 256 points each
# The sparse code's least bytes in a default split (the residual takes the rest). WordNet/MiniLM, dense recall@10
# (benchmarks/results/compact_*): 128 B with 96 residual bytes 0.925, 80: 0.919; 64 B with 40: 0.814, 32: 0.807,
# 48: 0.797 (README, "Compact codes")
DEFAULT_SPARSE_BYTES = 22
WEIGHT_BYTES = 2  # the float16 1 / |x_hat| a row with a residual carries
_DISTANCE_BYTES = 1 << 26  # bounds the (m, rows, CENTROIDS) distance block of assignment


class ResidualQuantizer:
    """m subspaces of sub dimensions, CENTROIDS centroids each.

    Parameters
    ----------
    codebook : (m, CENTROIDS, sub) float32
    d : int
        Dimensions of the vectors it codes, >= m; sub = ceil(d / m).
    """

    def __init__(self, codebook: np.ndarray, d: int):
        codebook = np.asarray(codebook)
        if codebook.ndim != 3 or codebook.shape[1] != CENTROIDS or codebook.shape[0] < 1:
            raise ValueError(f"codebook must have shape (m, {CENTROIDS}, sub), got {codebook.shape}")
        if not np.isfinite(codebook).all():
            raise ValueError("codebook holds a NaN or infinite value")
        self.m, _, self.sub = codebook.shape
        self.d = positive_int(d, "d")
        if self.m > self.d or self.sub != -(-self.d // self.m):
            raise ValueError(f"a codebook of {self.m} subspaces of {self.sub} dimensions does not fit d={self.d}: "
                             f"it needs m <= d and sub = ceil(d / m)")
        self.codebook = np.ascontiguousarray(codebook, np.float32)
        self._dims = _layout(self.d, self.m)  # (m, sub) dimensions of each subspace, d = padding
        self._codebook_t = torch.from_numpy(self.codebook).transpose(1, 2).contiguous()  # (m, sub, CENTROIDS)

    @classmethod
    def train(cls, R: np.ndarray, m: int, *, iterations: int = DEFAULT_ITERATIONS,
              sample: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0, progress: bool | None = None) -> "ResidualQuantizer":
        """k-means in each subspace on at most `sample` rows of R (n, d), from CENTROIDS distinct rows.

        Raises
        ------
        ValueError
            m outside 1..d, R empty or not finite.
        """
        R = np.asarray(R, np.float32)
        if R.ndim != 2 or len(R) == 0:
            raise ValueError(f"residuals must be a non-empty 2-D array, got shape {R.shape}")
        if not np.isfinite(R).all():
            raise ValueError("residuals hold a NaN or infinite value")
        d = R.shape[1]
        m = positive_int(m, "residual bytes (m)")
        if m > d:
            raise ValueError(f"{m} residual bytes exceed the {d} dimensions: at most one byte per dimension")
        iterations = positive_int(iterations, "iterations")
        rng = np.random.default_rng(seed)
        if len(R) > sample:
            R = R[np.sort(rng.choice(len(R), sample, replace=False))]
        X = torch.from_numpy(_split(R, _layout(d, m)))  # (m, n, sub)
        start = rng.permutation(len(R))[:CENTROIDS]
        C = X[:, np.resize(start, CENTROIDS)].clone()  # fewer rows than centroids: the rows, repeated
        for _ in progress_bar(range(iterations), total=iterations, desc="residual k-means", unit="iter",
                              progress=progress, items=len(R) * m * iterations // 1024):
            assign = _nearest(X, C)
            sums = torch.zeros_like(C).scatter_add_(1, assign[:, :, None].expand_as(X), X)
            counts = torch.zeros(C.shape[:2], dtype=torch.float32).scatter_add_(1, assign, torch.ones(assign.shape))
            empty = counts == 0
            C = torch.where(empty[:, :, None], C, sums / counts.clamp_min(1)[:, :, None])
            if empty.any():  # an empty cluster restarts at a random row of its subspace
                j, c = torch.nonzero(empty, as_tuple=True)
                C[j, c] = X[j, torch.from_numpy(rng.integers(0, len(R), len(j)))]
        return cls(C.numpy(), d)

    def encode(self, R: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        """(n, m) uint8: the nearest centroid of each subspace of each row of R (n, d)."""
        R = self._check(R, "residuals")
        out = np.empty((len(R), self.m), np.uint8)
        C = torch.from_numpy(self.codebook)
        for s in range(0, len(R), batch_size):
            out[s:s + batch_size] = _nearest(torch.from_numpy(_split(R[s:s + batch_size], self._dims)), C).T.numpy()
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, d) float32 reconstructions of codes (n, m)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.m or codes.dtype != np.uint8:
            raise ValueError(f"residual codes must be (n, {self.m}) uint8, got {codes.shape} {codes.dtype}")
        parts = self.codebook[np.arange(self.m), codes]  # (n, m, sub)
        out = np.zeros((len(codes), self.d + 1), np.float32)  # column d takes the padding
        out[:, self._dims.reshape(-1)] = parts.reshape(len(codes), -1)
        return out[:, :self.d]

    def tables(self, Q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(nq, m * CENTROIDS) float32: column j * CENTROIDS + c holds q_j . centroid_jc for each row q of Q;
        written into out (a float32 (nq, m * CENTROIDS) view, rows contiguous) when given."""
        parts = torch.from_numpy(_split(self._check(Q, "queries"), self._dims))  # (m, nq, sub)
        T = torch.bmm(parts, self._codebook_t)  # (m, nq, CENTROIDS)
        if out is None:
            out = np.empty((len(Q), self.m * CENTROIDS), np.float32)
        out.reshape(len(Q), self.m, CENTROIDS)[:] = T.numpy().transpose(1, 0, 2)
        return out

    def _check(self, A, what: str) -> np.ndarray:
        A = np.asarray(A, np.float32)
        if A.ndim != 2 or A.shape[1] != self.d:
            raise ValueError(f"{what} must have shape (n, {self.d}), got {A.shape}")
        return A

    def __repr__(self) -> str:
        return f"ResidualQuantizer(m={self.m}, sub={self.sub}, d={self.d}, {CENTROIDS} centroids)"


def _layout(d: int, m: int) -> np.ndarray:
    """(m, sub) int64: the dimensions of each subspace, j * d // m up to (j + 1) * d // m, padded with d."""
    sub = -(-d // m)
    starts = np.arange(m) * d // m
    stops = np.arange(1, m + 1) * d // m
    dims = starts[:, None] + np.arange(sub)
    return np.where(dims < stops[:, None], dims, d)


def _split(A: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """(m, n, sub) float32: the rows of A (n, d) cut into the subspaces dims (_layout), padding zero."""
    n, d = A.shape
    padded = np.zeros((n, d + 1), np.float32)
    padded[:, :d] = A
    return np.ascontiguousarray(padded[:, dims].transpose(1, 0, 2))


def _nearest(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """(m, n) int64: the nearest centroid C (m, CENTROIDS, sub) of each row of X (m, n, sub), per subspace."""
    m, n, _ = X.shape
    rows = max(1, _DISTANCE_BYTES // (4 * m * CENTROIDS))
    c2 = (C * C).sum(dim=2)[:, None, :]
    out = torch.empty((m, n), dtype=torch.int64)
    for s in range(0, n, rows):
        x = X[:, s:s + rows]
        out[:, s:s + rows] = torch.baddbmm(c2, x, C.transpose(1, 2), alpha=-2).argmin(dim=2)
    return out


def residuals_of(model, X, codes, rows: np.ndarray) -> np.ndarray:
    """(len(rows), d) float32: x - x_hat for the given rows (increasing) of X, with x L2-normalised and x_hat the
    model's reconstruction of those rows of codes (CompactCodes)."""
    x = unit_rows_at(X, rows)
    part = CompactCodes(codes.packed[rows], codes.h, codes.k, codes.value_bits, codes.index_coding)
    return x - model.decode(part)


def encode_residuals(model, X, codes, quantizer: ResidualQuantizer, batch_size: int = 16384,
                     progress: bool | None = None) -> np.ndarray:
    """(n, m) uint8: the residual codes of every row of X against its compact code."""
    n = len(codes)
    out = np.empty((n, quantizer.m), np.uint8)
    for s in progress_bar(range(0, n, batch_size), total=-(-n // batch_size), desc="residuals", unit="batch",
                          progress=progress, items=n):
        rows = np.arange(s, min(n, s + batch_size))
        out[rows] = quantizer.encode(residuals_of(model, X, codes, rows))
    return out


def residual_split(bytes_per_item: int, d: int, residual_bytes: int | None = None,
                   sparse_min: int = 1) -> tuple[int, int]:
    """(bytes of the compact sparse code, residual bytes m) of a forward code of bytes_per_item bytes: the residual
    takes m bytes and its float16 weight WEIGHT_BYTES, the sparse code the rest. Default: the sparse code gets a
    quarter of the budget less the weight, at least DEFAULT_SPARSE_BYTES, the residual the rest (at most d bytes);
    no residual when the sparse code would get under sparse_min bytes.

    Raises
    ------
    ValueError
        residual_bytes negative or above d, or leaving the sparse code under sparse_min bytes.
    """
    if residual_bytes is None:
        sparse = max(DEFAULT_SPARSE_BYTES, bytes_per_item // 4 - WEIGHT_BYTES)
        m = max(0, min(d, bytes_per_item - WEIGHT_BYTES - sparse))
        return (bytes_per_item - m - WEIGHT_BYTES, m) if m and bytes_per_item - m - WEIGHT_BYTES >= sparse_min \
            else (bytes_per_item, 0)
    if isinstance(residual_bytes, bool) or not isinstance(residual_bytes, (int, np.integer)):
        raise TypeError(f"residual_bytes must be an int, got {type(residual_bytes).__name__} {residual_bytes!r}")
    if not 0 <= residual_bytes <= d:
        raise ValueError(f"residual_bytes must be in 0..{d} (one byte per dimension at most), got {residual_bytes}")
    if residual_bytes == 0:
        return bytes_per_item, 0
    sparse = bytes_per_item - residual_bytes - WEIGHT_BYTES
    if sparse < sparse_min:
        raise ValueError(f"bytes_per_item={bytes_per_item} with residual_bytes={residual_bytes} leaves {sparse} bytes "
                         f"for the sparse code (after the residual's {WEIGHT_BYTES}-byte weight); it needs at least "
                         f"{sparse_min}")
    return sparse, int(residual_bytes)
