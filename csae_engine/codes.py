"""SparseCodes: exactly k (index, value) pairs per item, and their .npz file format.

Values are float16/float32, or 8-bit with one float16 scale per row (value = q * scale): int8 for signed codes,
uint8 for non-negative ones. Bytes per item: k * (index bytes + value bytes), plus 2 for an 8-bit row's scale;
at h=4096 (uint16 indices) k=32 float16 is 128 B and k=42 8-bit is 42 * 3 + 2 = 128 B.
"""
import os

import numpy as np

__all__ = ["SparseCodes", "load_codes", "index_dtype", "quantize_rows", "CODES_FORMAT_VERSION"]

CODES_FORMAT_VERSION = 2  # 2 added the "scales" array of 8-bit codes; float codes are still written as version 1
VALUE_DTYPES = (np.float16, np.float32)
QUANTIZED_DTYPES = (np.int8, np.uint8)
SCALE_DTYPE = np.float16


def index_dtype(h: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..h-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if h - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"h={h} is too large")


def quantize_rows(values: np.ndarray, dtype) -> tuple:
    """8-bit values and per-row float16 scales of float values (n, k): values ~= q * scale[:, None].

    int8 maps [-max|v|, max|v|] to [-127, 127]; uint8 maps [0, max v] to [0, 255] and refuses negative values.
    The scale is rounded up to float16 before quantising, so |v - q * scale| <= scale / 2 for every entry.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"8-bit values must be int8 or uint8, got {dtype!r}") from None
    if dtype not in QUANTIZED_DTYPES:
        raise ValueError(f"8-bit values must be int8 or uint8, got {dtype}")
    v = np.asarray(values, np.float32)
    if not np.isfinite(v).all():
        raise ValueError("values hold NaN or Inf")
    if dtype == np.uint8 and (v < 0).any():
        raise ValueError("uint8 values need non-negative codes (CSR); use int8 for signed codes")
    qmax = 127 if dtype == np.int8 else 255
    scale = np.abs(v).max(axis=1, initial=0.0) / qmax
    if scale.max(initial=0.0) >= np.finfo(SCALE_DTYPE).max:
        raise ValueError("values too large for a float16 scale")
    s16 = scale.astype(SCALE_DTYPE)
    low = s16.astype(np.float32) < scale
    s16[low] = np.nextafter(s16[low], SCALE_DTYPE(np.inf))
    s = s16.astype(np.float32)[:, None]
    q = np.divide(v, s, out=np.zeros_like(v), where=s > 0)
    q = np.clip(np.rint(q), -qmax if dtype == np.int8 else 0, qmax).astype(dtype)
    return q, s16


class SparseCodes:
    """Sparse codes of n items: ``indices`` (n, k) latent ids and ``values`` (n, k) weights.

    Each row holds k distinct latents ordered by |value| descending, so ``codes.truncate(k2)`` keeps the k2 strongest.
    8-bit values (int8/uint8) come with ``scales`` (n,) float16; ``float_values()`` gives the weights in float32
    whatever the storage. CSR codes are non-negative (``is_nonnegative``); ReLU may leave some values at 0.
    """

    def __init__(self, indices: np.ndarray, values: np.ndarray, h: int, scales: np.ndarray | None = None):
        indices = np.asarray(indices)
        values = np.asarray(values)
        if indices.ndim != 2 or values.shape != indices.shape:
            raise ValueError(f"indices and values must both be (n, k); got {indices.shape} and {values.shape}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        if values.dtype in QUANTIZED_DTYPES:
            if scales is None:
                raise ValueError(f"{values.dtype} values need per-row scales")
            scales = np.asarray(scales)
            if scales.shape != (values.shape[0],) or scales.dtype != SCALE_DTYPE:
                raise ValueError(f"scales must be ({values.shape[0]},) float16, got {scales.shape} {scales.dtype}")
            if not (np.isfinite(scales) & (scales >= 0)).all():
                raise ValueError("scales must be finite and >= 0")
        elif values.dtype in VALUE_DTYPES:
            if scales is not None:
                raise ValueError(f"scales apply to 8-bit values only, not {values.dtype}")
        else:
            raise ValueError(f"values must be float16 or float32 (or int8/uint8 with scales), got {values.dtype}")
        h = int(h)
        if indices.shape[1] > h:
            raise ValueError(f"k={indices.shape[1]} exceeds h={h}")
        if indices.size and (indices.min() < 0 or indices.max() >= h):
            raise ValueError(f"indices must lie in 0..{h - 1}")
        self.indices = indices.astype(index_dtype(h), copy=False)
        self.values = values
        self.scales = scales
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
        scales = None if self.scales is None else np.atleast_1d(self.scales[rows])
        if idx.ndim == 1:
            idx, val = idx[None], val[None]
        return SparseCodes(idx, val, self.h, scales)

    def __repr__(self) -> str:
        scale = "" if self.scales is None else " + float16 row scale"
        return (f"SparseCodes(n={self.n}, k={self.k}, h={self.h}, indices={self.indices.dtype}, "
                f"values={self.values.dtype}{scale}, {self.bytes_per_item} bytes/item)")

    @property
    def quantized(self) -> bool:
        """True for 8-bit values with per-row scales."""
        return self.scales is not None

    @property
    def is_nonnegative(self) -> bool:
        """True when no value is negative: what sparse-vector databases (Milvus, Elasticsearch, OpenSearch) accept."""
        return self.values.dtype == np.uint8 or bool((self.values >= 0).all())

    @property
    def bytes_per_item(self) -> int:
        """k * (index + value bytes), plus the scale's 2 bytes for 8-bit values."""
        scale = 0 if self.scales is None else self.scales.itemsize
        return self.k * (self.indices.itemsize + self.values.itemsize) + scale

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.values.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def float_values(self) -> np.ndarray:
        """The values as float32 (n, k), dequantised (q * scale) for 8-bit codes."""
        if self.scales is None:
            return self.values.astype(np.float32)
        return self.values.astype(np.float32) * self.scales.astype(np.float32)[:, None]

    def quantize(self, dtype="int8") -> "SparseCodes":
        """These codes with 8-bit values (int8, or uint8 for non-negative codes) and a float16 scale per row."""
        q, scales = quantize_rows(self.float_values(), dtype)
        return SparseCodes(self.indices, q, self.h, scales)

    def truncate(self, k: int) -> "SparseCodes":
        """The k strongest entries of each row (8-bit codes keep their row scales)."""
        if not 0 < k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}, got {k}")
        return SparseCodes(self.indices[:, :k], self.values[:, :k], self.h, self.scales)

    def to_csr(self):
        """scipy.sparse.csr_matrix (n, h) with float32 values (dequantised for 8-bit codes)."""
        import scipy.sparse as sp
        indptr = np.arange(0, self.n * self.k + 1, self.k, dtype=np.int64)
        return sp.csr_matrix((self.float_values().reshape(-1), self.indices.reshape(-1).astype(np.int32), indptr),
                             shape=(self.n, self.h))

    def to_postings(self):
        """Inverted lists (CSC layout): offsets (h + 1,) int64, item ids (n*k,) uint32, values (n*k,).

        Items of latent i are item_ids[offsets[i]:offsets[i+1]], in increasing item order. Values keep their float
        dtype; 8-bit codes give float32 (dequantised).
        """
        from . import _core
        values = self.values if self.scales is None else self.float_values()
        return _core.build_postings(self.indices, values, self.h)

    def latent_counts(self) -> np.ndarray:
        """How many items use each latent, (h,) int64; an entry whose value is 0 (ReLU) does not count."""
        used = self.indices.reshape(-1)[self.values.reshape(-1) != 0]
        return np.bincount(used, minlength=self.h).astype(np.int64)

    def save(self, path) -> None:
        """Write an .npz (no pickle); the write is atomic. 8-bit codes add a "scales" array (format version 2)."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        extra = {} if self.scales is None else {"scales": self.scales}
        version = 1 if self.scales is None else CODES_FORMAT_VERSION
        np.savez(tmp, indices=self.indices, values=self.values, h=np.int64(self.h),
                 format_version=np.int64(version), **extra)
        os.replace(tmp, path)


def load_codes(path):
    """Read codes written by SparseCodes.save or CompactCodes.save (returns that class); a foreign or damaged file
    is refused with a ValueError."""
    from .compact import COMPACT_FORMAT_VERSION, CompactCodes
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such codes file {path!r}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            version = int(f["format_version"]) if "format_version" in f.files else None
            if version == COMPACT_FORMAT_VERSION:
                coding = str(f["index_coding"]) if "index_coding" in f.files else "packed"  # written before ef
                return CompactCodes(f["packed"], int(f["h"]), int(f["k"]), int(f["value_bits"]), coding)
            missing = {"indices", "values", "h", "format_version"} - set(f.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            if version not in (1, CODES_FORMAT_VERSION):
                raise ValueError(f"format version {version}, this build reads 1..{COMPACT_FORMAT_VERSION}")
            scales = f["scales"] if "scales" in f.files else None
            return SparseCodes(f["indices"], f["values"], int(f["h"]), scales)
    except ValueError as e:
        raise ValueError(f"{path!r} is not a valid csae codes file: {e}") from e
    except Exception as e:
        raise ValueError(f"{path!r} is not a valid csae codes file ({type(e).__name__}: {e})") from e
