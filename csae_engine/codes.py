"""SparseCodes: exactly k (index, value) pairs per item, and their .npz file format."""
import os

import numpy as np

CODES_FORMAT_VERSION = 1
VALUE_DTYPES = (np.float16, np.float32)


def index_dtype(h: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..h-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if h - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"h={h} is too large")


class SparseCodes:
    """Sparse codes of n items: ``indices`` (n, k) latent ids and ``values`` (n, k) signed weights.

    Each row holds k distinct latents ordered by |value| descending, so ``codes.truncate(k2)`` keeps the k2 strongest.
    """

    def __init__(self, indices: np.ndarray, values: np.ndarray, h: int):
        indices = np.asarray(indices)
        values = np.asarray(values)
        if indices.ndim != 2 or values.shape != indices.shape:
            raise ValueError(f"indices and values must both be (n, k); got {indices.shape} and {values.shape}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        if values.dtype not in VALUE_DTYPES:
            raise ValueError(f"values must be float16 or float32, got {values.dtype}")
        h = int(h)
        if indices.shape[1] > h:
            raise ValueError(f"k={indices.shape[1]} exceeds h={h}")
        if indices.size and (indices.min() < 0 or indices.max() >= h):
            raise ValueError(f"indices must lie in 0..{h - 1}")
        self.indices = indices.astype(index_dtype(h), copy=False)
        self.values = values
        self.h = h

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows) -> "SparseCodes":
        idx, val = self.indices[rows], self.values[rows]
        if idx.ndim == 1:
            idx, val = idx[None], val[None]
        return SparseCodes(idx, val, self.h)

    def __repr__(self) -> str:
        return (f"SparseCodes(n={self.n}, k={self.k}, h={self.h}, indices={self.indices.dtype}, "
                f"values={self.values.dtype}, {self.bytes_per_item} bytes/item)")

    @property
    def bytes_per_item(self) -> int:
        return self.k * (self.indices.itemsize + self.values.itemsize)

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.values.nbytes

    def truncate(self, k: int) -> "SparseCodes":
        """The k strongest entries of each row."""
        if not 0 < k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}, got {k}")
        return SparseCodes(self.indices[:, :k], self.values[:, :k], self.h)

    def to_csr(self):
        """scipy.sparse.csr_matrix (n, h) with float32 values."""
        import scipy.sparse as sp
        indptr = np.arange(0, self.n * self.k + 1, self.k, dtype=np.int64)
        return sp.csr_matrix((self.values.reshape(-1).astype(np.float32), self.indices.reshape(-1).astype(np.int32), indptr),
                             shape=(self.n, self.h))

    def to_postings(self):
        """Inverted lists (CSC layout): offsets (h + 1,) int64, item ids (n*k,) uint32, values (n*k,).

        Items of latent i are item_ids[offsets[i]:offsets[i+1]], in increasing item order.
        """
        from . import _core
        return _core.build_postings(self.indices, self.values, self.h)

    def latent_counts(self) -> np.ndarray:
        """How many items use each latent, (h,) int64."""
        return np.bincount(self.indices.reshape(-1), minlength=self.h).astype(np.int64)

    def save(self, path) -> None:
        """Write an .npz (no pickle); the write is atomic."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        np.savez(tmp, indices=self.indices, values=self.values, h=np.int64(self.h),
                 format_version=np.int64(CODES_FORMAT_VERSION))
        os.replace(tmp, path)


def load_codes(path) -> SparseCodes:
    """Read codes written by SparseCodes.save; a foreign or damaged file is refused with a ValueError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such codes file {path!r}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            missing = {"indices", "values", "h", "format_version"} - set(f.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            version = int(f["format_version"])
            if version != CODES_FORMAT_VERSION:
                raise ValueError(f"format version {version}, this build reads {CODES_FORMAT_VERSION}")
            return SparseCodes(f["indices"], f["values"], int(f["h"]))
    except ValueError as e:
        raise ValueError(f"{path!r} is not a valid csae codes file: {e}") from e
    except Exception as e:
        raise ValueError(f"{path!r} is not a valid csae codes file ({type(e).__name__}: {e})") from e
