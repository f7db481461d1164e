"""CompactCodes: k-sparse codes bit-packed into a fixed number of bytes per item, so more non-zeros fit a budget.

A row holds a float16 scale s, then a bitstream; an entry's value is q * s for its value_bits two's-complement
integer q. Bits run LSB-first: stream bit t is bit (t & 7) of byte 2 + (t >> 3). Two index codings:

"packed" (fixed width): k entries, each the latent index in ceil(log2 h) bits followed by q. Entries are strongest
first, so the first m of a row are its m strongest.

    bytes per item = 2 + ceil(k * (index_bits + value_bits) / 8)
    h=4096 (12-bit indices), 4-bit values: 128 B hold k=63, 64 B k=31 (today's float16 codes: k=32 and 16)

"ef" (Elias-Fano): the entries in increasing latent order x_0 < ... < x_{k-1}, stored as k low parts
(x_i & (2^L - 1), L = ef_low_bits(h, k) bits each), then a bitmap of k + ((h - 1) >> L) + 1 bits with bit
(x_i >> L) + i set for each i, then the k values q in the same order (value_bits each). A sorted set costs about
L + 2 bits an index instead of ceil(log2 h):

    bytes per item = 2 + ceil((k * (L + 1 + value_bits) + ((h - 1) >> L) + 1) / 8)
    h=4096, 4-bit values: 128 B hold k=88 (L=5), 64 B k=39 (L=6)

The engine's packed forward store (cpp/packed.h, cpp/ef.h) reads the same bitstreams, with s / |x_hat| in place
of s.
"""
import math
import os

import numpy as np

from .codes import SparseCodes
from .utils import positive_int

__all__ = ["CompactCodes", "compact_k", "index_bits", "ef_low_bits", "stream_bits", "quantize_values", "pack_entries",
           "unpack_entries", "pack_ef", "unpack_ef", "pack_stream", "unpack_stream", "strongest_first",
           "stream_bytes", "check_index_coding", "SCALE_BYTES", "COMPACT_FORMAT_VERSION", "INDEX_CODINGS",
           "DEFAULT_INDEX_CODING"]

SCALE_BYTES = 2  # the float16 row scale
COMPACT_FORMAT_VERSION = 3  # the codes file format version of compact codes (codes.py writes 1 and 2)
MIN_VALUE_BITS, MAX_VALUE_BITS = 2, 16
_ROWS_PER_CHUNK = 16384  # bounds the (rows, k, bits) bit matrix of pack/unpack
INDEX_CODINGS = ("packed", "ef")  # fixed-width latents, strongest first; Elias-Fano coded sorted latents
DEFAULT_INDEX_CODING = "ef"  # 128 B: 80 entries, dense recall@10 0.832 against 0.803 (benchmarks/results/compact_*)


def index_bits(h: int) -> int:
    """Bits that hold a latent index 0..h-1."""
    return max(1, math.ceil(math.log2(h)))


def ef_low_bits(h: int, k: int) -> int:
    """L, the low bits per latent of an Elias-Fano coded set of k of h latents: max(0, floor(log2(h / k)))."""
    return max(0, (h // k).bit_length() - 1)


def stream_bits(h: int, k: int, value_bits: int, index_coding: str = DEFAULT_INDEX_CODING) -> int:
    """Bits of the bitstream of one row of k entries (the format above)."""
    if index_coding == "ef":
        low = ef_low_bits(h, k)
        return k * low + k + ((h - 1) >> low) + 1 + k * value_bits
    return k * (index_bits(h) + value_bits)


def compact_k(h: int, bytes_per_item: int, value_bits: int, index_coding: str = DEFAULT_INDEX_CODING) -> int:
    """The most non-zeros a row of bytes_per_item bytes holds at h latents, value_bits bits per value and the
    given index coding (<= h).

    Raises
    ------
    TypeError
        bytes_per_item or value_bits is not an int, or index_coding not a str.
    ValueError
        value_bits outside 2..16, an unknown index_coding, or a budget too small for one non-zero.
    """
    bytes_per_item = positive_int(bytes_per_item, "bytes_per_item")
    _check_value_bits(value_bits)
    check_index_coding(index_coding)
    budget = (bytes_per_item - SCALE_BYTES) * 8
    if index_coding == "ef":  # L shrinks as k grows, so the bits are not monotone in k: search down from a bound
        k = min(h, max(0, budget) // (1 + value_bits))  # an entry takes at least its bitmap bit and its value
        while k >= 1 and stream_bits(h, k, value_bits, "ef") > budget:
            k -= 1
        need_bits = stream_bits(h, 1, value_bits, "ef")
    else:
        k = budget // (index_bits(h) + value_bits)
        need_bits = index_bits(h) + value_bits
    if k < 1:
        need = SCALE_BYTES + math.ceil(need_bits / 8)
        raise ValueError(f"bytes_per_item={bytes_per_item} is too small for one non-zero: at h={h}, "
                         f"{value_bits}-bit values and {index_coding!r} indices a code needs at least {need} bytes")
    return min(k, h)


def check_index_coding(index_coding) -> str:
    """index_coding, one of INDEX_CODINGS; TypeError for a non-str, ValueError for an unknown name."""
    if not isinstance(index_coding, str):
        raise TypeError(f"index_coding must be a str, got {type(index_coding).__name__} {index_coding!r}")
    if index_coding not in INDEX_CODINGS:
        raise ValueError(f"index_coding must be one of {INDEX_CODINGS}, got {index_coding!r}")
    return index_coding


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


def _bits_of(x: np.ndarray, width: int) -> np.ndarray:
    """(n, m * width) uint8: the low `width` bits of each of x (n, m) (uint64), LSB first."""
    n = len(x)
    if width == 0:
        return np.zeros((n, 0), np.uint8)
    return ((x[:, :, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).reshape(n, -1)


def _fields_of(bits: np.ndarray, m: int, width: int) -> np.ndarray:
    """(n, m) uint64: m fields of `width` bits read from bits (n, >= m * width) uint8, LSB first."""
    if width == 0:
        return np.zeros((len(bits), m), np.uint64)
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    return (bits[:, :m * width].reshape(-1, m, width).astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)


def _signed(raw: np.ndarray, vb: int) -> np.ndarray:
    raw = raw.astype(np.int64)
    return np.where(raw >= 1 << (vb - 1), raw - (1 << vb), raw).astype(np.int32)


def pack_ef(indices: np.ndarray, q: np.ndarray, h: int, vb: int) -> np.ndarray:
    """(n, ceil(stream_bits / 8)) uint8 Elias-Fano bitstreams of (n, k) latent sets, each strictly increasing
    along the row, and their signed values q (vb bits), LSB-first."""
    n, k = indices.shape
    low_bits = ef_low_bits(h, k)
    nbits = stream_bits(h, k, vb, "ef")
    map_bits = k + ((h - 1) >> low_bits) + 1
    out = np.empty((n, -(-nbits // 8)), np.uint8)
    for s in range(0, n, _ROWS_PER_CHUNK):
        idx = indices[s:s + _ROWS_PER_CHUNK].astype(np.uint64)
        m = len(idx)
        bitmap = np.zeros((m, map_bits), np.uint8)
        bitmap[np.arange(m)[:, None], (idx >> np.uint64(low_bits)).astype(np.int64) + np.arange(k)] = 1
        values = (q[s:s + m].astype(np.int64) & ((1 << vb) - 1)).astype(np.uint64)
        bits = np.concatenate([_bits_of(idx & np.uint64((1 << low_bits) - 1), low_bits), bitmap,
                               _bits_of(values, vb)], axis=1)
        out[s:s + m] = np.packbits(bits, axis=1, bitorder="little")
    return out


def unpack_ef(stream: np.ndarray, h: int, k: int, vb: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n, k) int64 in increasing order, q (n, k) int32) of (n, >= stream bytes) Elias-Fano bitstreams.

    Raises
    ------
    ValueError
        A row whose bitmap does not hold exactly k set bits (named by row).
    """
    low_bits = ef_low_bits(h, k)
    map_bits = k + ((h - 1) >> low_bits) + 1
    stream = stream[:, :-(-stream_bits(h, k, vb, "ef") // 8)]
    idx = np.empty((len(stream), k), np.int64)
    q = np.empty((len(stream), k), np.int32)
    for s in range(0, len(stream), _ROWS_PER_CHUNK):
        bits = np.unpackbits(stream[s:s + _ROWS_PER_CHUNK], axis=1, bitorder="little")
        m = len(bits)
        low = _fields_of(bits, k, low_bits).astype(np.int64)
        bitmap = bits[:, k * low_bits:k * low_bits + map_bits]
        counts = bitmap.sum(axis=1, dtype=np.int64)
        if (counts != k).any():
            bad = int(np.argmax(counts != k))
            raise ValueError(f"row {s + bad}: the high-part bitmap holds {counts[bad]} set bits, expected k={k}")
        rows, pos = np.nonzero(bitmap)  # row-major: each row's k set bits in increasing order
        high = pos.reshape(m, k) - np.arange(k)
        idx[s:s + m] = (high << low_bits) | low
        q[s:s + m] = _signed(_fields_of(bits[:, k * low_bits + map_bits:], k, vb), vb)
    return idx, q


def pack_stream(indices: np.ndarray, q: np.ndarray, h: int, vb: int, index_coding: str) -> np.ndarray:
    """The bitstreams of (n, k) entries in the given index coding (ef: indices strictly increasing per row)."""
    if index_coding == "ef":
        return pack_ef(indices, q, h, vb)
    return pack_entries(indices, q, index_bits(h), vb)


def unpack_stream(stream: np.ndarray, h: int, k: int, vb: int, index_coding: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n, k) int64, q (n, k) int32) of bitstreams in the given index coding, in their stored order."""
    if index_coding == "ef":
        return unpack_ef(stream, h, k, vb)
    return unpack_entries(stream, k, index_bits(h), vb)


def strongest_first(indices: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of each row reordered by decreasing |q| (stable: ties keep their order)."""
    order = np.argsort(-np.abs(q.astype(np.int64)), axis=1, kind="stable")
    return np.take_along_axis(indices, order, 1), np.take_along_axis(q, order, 1)


class CompactCodes:
    """n bit-packed codes of k entries over h latents.

    Parameters
    ----------
    packed : (n, row_bytes) uint8
        Rows in the format above.
    h, k, value_bits : int
    index_coding : {"packed", "ef"}
        Fixed-width latents, strongest first, or Elias-Fano coded latents in increasing order.
    """

    def __init__(self, packed: np.ndarray, h: int, k: int, value_bits: int,
                 index_coding: str = DEFAULT_INDEX_CODING):
        packed = np.asarray(packed)
        h, k = positive_int(h, "h"), positive_int(k, "k")
        _check_value_bits(value_bits)
        check_index_coding(index_coding)
        if k > h:
            raise ValueError(f"k={k} exceeds h={h}")
        if packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError(f"packed must be a 2-D uint8 array, got {packed.ndim}-D {packed.dtype}")
        self.h, self.k, self.value_bits, self.index_coding = h, k, int(value_bits), index_coding
        if packed.shape[1] != self.row_bytes:
            raise ValueError(f"packed rows have {packed.shape[1]} bytes, k={k} {index_coding!r} entries with "
                             f"{value_bits}-bit values need {self.row_bytes}")
        self.packed = packed

    @classmethod
    def pack(cls, indices: np.ndarray, q: np.ndarray, scales: np.ndarray, h: int, value_bits: int,
             index_coding: str = DEFAULT_INDEX_CODING) -> "CompactCodes":
        """Codes from latent indices (n, k), integer values q (n, k) and float16 scales (n,). With "ef" the entries
        of each row are stored in increasing latent order (unpack returns them so).

        Raises
        ------
        ValueError
            An index outside 0..h-1, a q outside the value_bits range, or (ef) a latent twice in a row.
        """
        indices, q = np.asarray(indices), np.asarray(q)
        check_index_coding(index_coding)
        n, k = indices.shape
        if q.shape != indices.shape or np.shape(scales) != (n,):
            raise ValueError(f"indices {indices.shape}, q {q.shape} and scales {np.shape(scales)} disagree")
        if indices.size and (indices.min() < 0 or indices.max() >= h):
            raise ValueError(f"indices must lie in 0..{h - 1}")
        limit = 1 << (value_bits - 1)
        if q.size and (q.min() < -limit or q.max() >= limit):
            raise ValueError(f"q must fit {value_bits} signed bits")
        if index_coding == "ef":
            order = np.argsort(indices, axis=1, kind="stable")
            indices, q = np.take_along_axis(indices, order, 1), np.take_along_axis(q, order, 1)
            repeated = (np.diff(indices, axis=1) == 0).any(axis=1)
            if repeated.any():
                raise ValueError(f"row {int(np.argmax(repeated))} holds a latent twice: ef codes a set of latents")
        stream = pack_stream(indices, q, h, value_bits, index_coding)
        packed = np.empty((n, SCALE_BYTES + stream.shape[1]), np.uint8)
        packed[:, :SCALE_BYTES] = np.asarray(scales, np.float16).reshape(n, 1).view(np.uint8)
        packed[:, SCALE_BYTES:] = stream
        return cls(packed, h, k, value_bits, index_coding)

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    def __len__(self) -> int:
        return self.n

    @property
    def index_bits(self) -> int:
        """Bits per latent: ceil(log2 h) fixed-width, or (ef) L low bits + about 2 bitmap bits."""
        return ef_low_bits(self.h, self.k) if self.index_coding == "ef" else index_bits(self.h)

    @property
    def row_bytes(self) -> int:
        return SCALE_BYTES + -(-stream_bits(self.h, self.k, self.value_bits, self.index_coding) // 8)

    @property
    def bytes_per_item(self) -> int:
        return self.row_bytes

    @property
    def scales(self) -> np.ndarray:
        """(n,) float16 row scales."""
        return np.ascontiguousarray(self.packed[:, :SCALE_BYTES]).view(np.float16).reshape(-1)

    def unpack(self, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(indices (m, k) int64, q (m, k) int32) of the chosen rows, in their stored order (packed: strongest
        first; ef: increasing latent)."""
        block = np.asarray(self.packed[rows])[:, SCALE_BYTES:]
        return unpack_stream(block, self.h, self.k, self.value_bits, self.index_coding)

    def unpack_strongest(self, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """unpack, the entries of each row strongest first (ef: by decreasing |q|, stable), so the first m of a
        row are its m strongest."""
        indices, q = self.unpack(rows)
        return strongest_first(indices, q) if self.index_coding == "ef" else (indices, q)

    def float_values(self) -> np.ndarray:
        """The values q * s as float32 (n, k), in stored order."""
        return self.unpack()[1].astype(np.float32) * self.scales.astype(np.float32)[:, None]

    def to_sparse(self) -> SparseCodes:
        """The same codes as SparseCodes with float32 values (k * 6 bytes per item), strongest first."""
        indices, q = self.unpack_strongest()
        return SparseCodes(indices, q.astype(np.float32) * self.scales.astype(np.float32)[:, None], self.h)

    def __repr__(self) -> str:
        coding = (f"ef-coded indices ({self.index_bits} low bits)" if self.index_coding == "ef"
                  else f"{self.index_bits}-bit indices")
        return (f"CompactCodes(n={self.n}, k={self.k}, h={self.h}, {coding}, "
                f"{self.value_bits}-bit values, {self.bytes_per_item} bytes/item)")

    def save(self, path) -> None:
        """Write an .npz (codes file format version 3, kind "compact", and index_coding); the write is atomic."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        np.savez(tmp, packed=self.packed, h=np.int64(self.h), k=np.int64(self.k),
                 value_bits=np.int64(self.value_bits), format_version=np.int64(COMPACT_FORMAT_VERSION),
                 kind=np.array("compact"), index_coding=np.array(self.index_coding))
        os.replace(tmp, path)
