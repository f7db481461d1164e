"""CompactCodes: k-sparse codes bit-packed into a fixed number of bytes per item, so more non-zeros fit a budget.

A row holds a float16 scale s, then a bitstream of k entries, each the latent index in ceil(log2 h) bits followed
by the value as a value_bits two's-complement integer q; the entry's value is q * s. Bits run LSB-first: stream bit
t is bit (t & 7) of byte 2 + (t >> 3). Entries are strongest first, so the first m of a row are its m strongest.

    bytes per item = 2 + ceil(k * (index_bits + value_bits) / 8)
    h=4096 (12-bit indices), 4-bit values: 128 B hold k=63, 64 B k=31 (today's float16 codes: k=32 and 16)

The engine's packed forward store (cpp/rerank.h) reads the same bitstream, with s / |x_hat| in place of s.
"""
import math
import os

import numpy as np

from .codes import SparseCodes
from .utils import positive_int

__all__ = ["CompactCodes", "compact_k", "index_bits", "quantize_values", "pack_entries", "unpack_entries",
           "stream_bytes", "SCALE_BYTES", "COMPACT_FORMAT_VERSION"]

SCALE_BYTES = 2  # the float16 row scale
COMPACT_FORMAT_VERSION = 3  # the codes file format version of compact codes (codes.py writes 1 and 2)
MIN_VALUE_BITS, MAX_VALUE_BITS = 2, 16
_ROWS_PER_CHUNK = 16384  # bounds the (rows, k, bits) bit matrix of pack/unpack


def index_bits(h: int) -> int:
    """Bits that hold a latent index 0..h-1."""
    return max(1, math.ceil(math.log2(h)))


def compact_k(h: int, bytes_per_item: int, value_bits: int) -> int:
    """The most non-zeros a row of bytes_per_item bytes holds at h latents and value_bits bits per value (<= h).

    Raises
    ------
    TypeError
        bytes_per_item or value_bits is not an int.
    ValueError
        value_bits outside 2..16, or a budget too small for one non-zero.
    """
    bytes_per_item = positive_int(bytes_per_item, "bytes_per_item")
    _check_value_bits(value_bits)
    per_entry = index_bits(h) + value_bits
    k = (bytes_per_item - SCALE_BYTES) * 8 // per_entry
    if k < 1:
        need = SCALE_BYTES + math.ceil(per_entry / 8)
        raise ValueError(f"bytes_per_item={bytes_per_item} is too small for one non-zero: at h={h} and "
                         f"{value_bits}-bit values a code needs at least {need} bytes")
    return min(k, h)


def _check_value_bits(value_bits) -> None:
    if isinstance(value_bits, bool) or not isinstance(value_bits, (int, np.integer)):
        raise TypeError(f"value_bits must be an int, got {type(value_bits).__name__} {value_bits!r}")
    if not MIN_VALUE_BITS <= value_bits <= MAX_VALUE_BITS:
        raise ValueError(f"value_bits must be in {MIN_VALUE_BITS}..{MAX_VALUE_BITS}, got {value_bits}")


def quantize_values(values: np.ndarray, value_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed integers q (n, k) int32 in [-(2^(b-1) - 1), 2^(b-1) - 1] and float16 row scales s with
    values ~= q * s; |values - q * s| <= s / 2. An all-zero row gets s = 0."""
    v = np.asarray(values, np.float32)
    qmax = (1 << (value_bits - 1)) - 1
    scale = (np.abs(v).max(axis=1, initial=0.0) / qmax).astype(np.float16)
    low = scale.astype(np.float32) < np.abs(v).max(axis=1, initial=0.0) / qmax  # round the scale up, never down
    scale[low] = np.nextafter(scale[low], np.float16(np.inf))
    s = scale.astype(np.float32)[:, None]
    q = np.divide(v, s, out=np.zeros_like(v), where=s > 0)
    return np.clip(np.rint(q), -qmax, qmax).astype(np.int32), scale


def stream_bytes(k: int, ib: int, vb: int) -> int:
    """Bytes of a bitstream of k entries of ib + vb bits."""
    return -(-k * (ib + vb) // 8)


def pack_entries(indices: np.ndarray, q: np.ndarray, ib: int, vb: int) -> np.ndarray:
    """(n, stream_bytes) uint8 bitstreams of (n, k) indices (ib bits) and signed values q (vb bits), LSB-first."""
    n, k = indices.shape
    width, nbytes = ib + vb, stream_bytes(k, ib, vb)
    out = np.empty((n, nbytes), np.uint8)
    shifts = np.arange(width, dtype=np.uint64)
    for s in range(0, n, _ROWS_PER_CHUNK):
        rows = slice(s, s + _ROWS_PER_CHUNK)
        entry = (indices[rows].astype(np.uint64)
                 | ((q[rows].astype(np.int64) & ((1 << vb) - 1)).astype(np.uint64) << np.uint64(ib)))
        bits = ((entry[:, :, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(len(entry), -1)
        out[rows] = np.packbits(bits, axis=1, bitorder="little")[:, :nbytes]
    return out


def unpack_entries(stream: np.ndarray, k: int, ib: int, vb: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n, k) int64, q (n, k) int32): the first k entries of (n, >= stream_bytes) bitstreams."""
    stream = stream[:, :stream_bytes(k, ib, vb)]
    width = ib + vb
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    idx = np.empty((len(stream), k), np.int64)
    q = np.empty((len(stream), k), np.int32)
    for s in range(0, len(stream), _ROWS_PER_CHUNK):
        bits = np.unpackbits(stream[s:s + _ROWS_PER_CHUNK], axis=1, bitorder="little")
        bits = bits[:, :k * width].reshape(-1, k, width).astype(np.uint64)
        entry = (bits * weights).sum(axis=2, dtype=np.uint64)
        idx[s:s + len(bits)] = (entry & np.uint64((1 << ib) - 1)).astype(np.int64)
        raw = (entry >> np.uint64(ib)).astype(np.int64)
        q[s:s + len(bits)] = np.where(raw >= 1 << (vb - 1), raw - (1 << vb), raw)
    return idx, q


class CompactCodes:
    """n bit-packed codes of k entries over h latents.

    Parameters
    ----------
    packed : (n, row_bytes) uint8
        Rows in the format above.
    h, k, value_bits : int
    """

    def __init__(self, packed: np.ndarray, h: int, k: int, value_bits: int):
        packed = np.asarray(packed)
        h, k = positive_int(h, "h"), positive_int(k, "k")
        _check_value_bits(value_bits)
        if k > h:
            raise ValueError(f"k={k} exceeds h={h}")
        if packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError(f"packed must be a 2-D uint8 array, got {packed.ndim}-D {packed.dtype}")
        self.h, self.k, self.value_bits = h, k, int(value_bits)
        if packed.shape[1] != self.row_bytes:
            raise ValueError(f"packed rows have {packed.shape[1]} bytes, k={k} entries of {self.index_bits} + "
                             f"{value_bits} bits need {self.row_bytes}")
        self.packed = packed

    @classmethod
    def pack(cls, indices: np.ndarray, q: np.ndarray, scales: np.ndarray, h: int, value_bits: int) -> "CompactCodes":
        """Codes from latent indices (n, k), integer values q (n, k) and float16 scales (n,).

        Raises
        ------
        ValueError
            An index outside 0..h-1 or a q outside the value_bits range.
        """
        indices, q = np.asarray(indices), np.asarray(q)
        n, k = indices.shape
        if q.shape != indices.shape or np.shape(scales) != (n,):
            raise ValueError(f"indices {indices.shape}, q {q.shape} and scales {np.shape(scales)} disagree")
        if indices.size and (indices.min() < 0 or indices.max() >= h):
            raise ValueError(f"indices must lie in 0..{h - 1}")
        limit = 1 << (value_bits - 1)
        if q.size and (q.min() < -limit or q.max() >= limit):
            raise ValueError(f"q must fit {value_bits} signed bits")
        packed = np.empty((n, SCALE_BYTES + stream_bytes(k, index_bits(h), value_bits)), np.uint8)
        packed[:, :SCALE_BYTES] = np.asarray(scales, np.float16).reshape(n, 1).view(np.uint8)
        packed[:, SCALE_BYTES:] = pack_entries(indices, q, index_bits(h), value_bits)
        return cls(packed, h, k, value_bits)

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    def __len__(self) -> int:
        return self.n

    @property
    def index_bits(self) -> int:
        return index_bits(self.h)

    @property
    def row_bytes(self) -> int:
        return SCALE_BYTES + stream_bytes(self.k, self.index_bits, self.value_bits)

    @property
    def bytes_per_item(self) -> int:
        return self.row_bytes

    @property
    def scales(self) -> np.ndarray:
        """(n,) float16 row scales."""
        return np.ascontiguousarray(self.packed[:, :SCALE_BYTES]).view(np.float16).reshape(-1)

    def unpack(self, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(indices (m, k) int64, q (m, k) int32) of the chosen rows."""
        block = np.asarray(self.packed[rows])[:, SCALE_BYTES:]
        return unpack_entries(block, self.k, self.index_bits, self.value_bits)

    def float_values(self) -> np.ndarray:
        """The values q * s as float32 (n, k)."""
        return self.unpack()[1].astype(np.float32) * self.scales.astype(np.float32)[:, None]

    def to_sparse(self) -> SparseCodes:
        """The same codes as SparseCodes with float32 values (k * 6 bytes per item)."""
        indices, q = self.unpack()
        return SparseCodes(indices, q.astype(np.float32) * self.scales.astype(np.float32)[:, None], self.h)

    def __repr__(self) -> str:
        return (f"CompactCodes(n={self.n}, k={self.k}, h={self.h}, {self.index_bits}-bit indices, "
                f"{self.value_bits}-bit values, {self.bytes_per_item} bytes/item)")

    def save(self, path) -> None:
        """Write an .npz (codes file format version 3, kind "compact"); the write is atomic."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        np.savez(tmp, packed=self.packed, h=np.int64(self.h), k=np.int64(self.k),
                 value_bits=np.int64(self.value_bits), format_version=np.int64(COMPACT_FORMAT_VERSION), kind=np.array("compact"))
        os.replace(tmp, path)
