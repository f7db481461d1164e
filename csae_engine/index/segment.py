"""One immutable part of the index, and the item ids it maps to rows.

A segment holds windowed posting lists (sparse mode), forward codes (dense mode), user ids (absent: first_id + row)
and a live mask (None: every row live). Updates never change a segment; they make new ones.
"""
import numpy as np

from .. import _core
from ..compact import SCALE_BYTES, index_bits

__all__ = ["ARRAYS", "FORWARD_ARRAYS", "CLUSTER_ARRAYS", "Segment", "as_id_array", "check_ids", "header_bytes"]

FORWARD_ARRAYS = ("fwd_indices", "fwd_values", "fwd_packed")  # plain (indices + values) or packed (compact codes)
CLUSTER_ARRAYS = ("cluster_rows", "centroid_offsets", "centroid_clusters", "centroid_weights")  # clustered only
ARRAYS = ("offsets", "local_ids", "post_values", *FORWARD_ARRAYS, *CLUSTER_ARRAYS, "ids")  # ids: only if given


class Segment:
    """One immutable part of the index.

    Parameters
    ----------
    arrays : dict
        ``offsets``, ``local_ids``, ``post_values`` (the windowed posting lists of cpp/index.h), the forward codes
        (values divided by |x_hat|): ``fwd_indices`` and ``fwd_values``, or ``fwd_packed`` (compact codes,
        cpp/rerank.h), and optionally ``ids`` (int64 user ids) and the CLUSTER_ARRAYS of a clustered segment
        (rows numbered cluster by cluster, index/clusters.py), which approximate search (probe < 1) routes with.
    config : dict
        The index's config: h, window_bits, and for packed forward codes k, value_bits, forward_bias,
        index_coding ("packed" or "ef") and residual_m (residual bytes per row, 0 for none).
    first_id : int
        Without ``ids``, row r has user id first_id + r.
    live : np.ndarray or None
        (n,) uint8, 0 = deleted; None when every row is live.
    files : dict or None
        name -> (path, sha256, inode) of the files the arrays are mapped from (lets a save link instead of copy).
    index : SegmentIndex, optional
        The checked C++ index of these very arrays (a delete keeps it: O(n), not O(postings)); default: made here.
    """

    def __init__(self, arrays: dict, config: dict, first_id: int = 0, live: np.ndarray | None = None,
                 files: dict | None = None, index=None):
        self.arrays, self.config, self.first_id, self.live = arrays, config, int(first_id), live
        packed = "fwd_packed" in arrays
        self.n = len(arrays["fwd_packed" if packed else "fwd_indices"])
        self.n_live = self.n if live is None else int(np.count_nonzero(live))  # once: searches read it
        self.files = files or {}
        self.index = index  # given: the SegmentIndex of these very arrays (without_rows), not checked again
        if index is None:
            self._make_index()
        if live is not None and live.shape != (self.n,):
            raise ValueError(f"live mask has shape {live.shape}, expected ({self.n},)")
        if "ids" in arrays and arrays["ids"].shape != (self.n,):
            raise ValueError(f"ids have shape {arrays['ids'].shape}, expected ({self.n},)")
        self._lookup = None

    def _make_index(self) -> None:
        """The SegmentIndex over the arrays, checked (O(postings)); with clusters, their layout too."""
        arrays, config, packed = self.arrays, self.config, "fwd_packed" in self.arrays
        postings = (arrays["offsets"], arrays["local_ids"], arrays["post_values"])
        h, window_bits = config["h"], config["window_bits"]
        if packed:
            self.index = _core.SegmentIndex.packed(*postings, arrays["fwd_packed"], self.n, h, window_bits,
                                                   config["k"], index_bits(h), config["value_bits"],
                                                   bool(config["forward_bias"]), config["index_coding"],
                                                   config["residual_m"])
        else:
            self.index = _core.SegmentIndex(*postings, arrays["fwd_indices"], arrays["fwd_values"], self.n, h,
                                            window_bits)
        if "cluster_rows" in arrays:
            self.index = self.index.with_clusters(*(arrays[name] for name in CLUSTER_ARRAYS))

    @property
    def clustered(self) -> bool:
        return self.index.n_clusters > 0

    def ids(self) -> np.ndarray:
        """User ids of every row (live or not), int64."""
        if "ids" in self.arrays:
            return np.asarray(self.arrays["ids"])
        return np.arange(self.first_id, self.first_id + self.n, dtype=np.int64)

    def user_ids(self, rows: np.ndarray) -> np.ndarray:
        """User ids of rows (-1 stays -1)."""
        if "ids" in self.arrays:
            return np.where(rows >= 0, self.arrays["ids"][np.maximum(rows, 0)], -1).astype(np.int64, copy=False)
        return np.where(rows >= 0, rows + self.first_id, -1)

    def rows_of(self, ids: np.ndarray, live_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(found (len(ids),) bool, rows of the found ids)."""
        if "ids" in self.arrays:
            if self._lookup is None:
                known = np.asarray(self.arrays["ids"])
                order = np.argsort(known, kind="stable")
                self._lookup = (known[order], order)
            sorted_ids, order = self._lookup
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, self.n - 1)
            found = sorted_ids[pos] == ids
            rows = order[pos]
        else:
            rows = ids - self.first_id
            found = (rows >= 0) & (rows < self.n)
            rows = np.where(found, rows, 0)
        if live_only and self.live is not None:
            found &= self.live[rows] != 0
        return found, rows[found]

    def without_rows(self, rows: np.ndarray) -> "Segment":
        """This segment with rows tombstoned (same arrays, a new live mask)."""
        if len(rows) == 0:
            return self
        live = np.ones(self.n, np.uint8) if self.live is None else self.live.copy()
        live[rows] = 0
        return Segment(self.arrays, self.config, self.first_id, live, self.files, self.index)

    def live_rows(self) -> np.ndarray:
        return np.arange(self.n) if self.live is None else np.flatnonzero(self.live)

    def allowed_rows(self, allow_ids: np.ndarray) -> np.ndarray:
        """(n,) uint8 mask of the live rows whose id is in allow_ids."""
        mask = np.zeros(self.n, np.uint8)
        mask[self.rows_of(allow_ids)[1]] = 1
        return mask

    def iter_codes(self, batch_size: int):
        """The live codes as sparse mode scores them: (ids (b,) int64, scipy.sparse.csr_matrix (b, h) float32)."""
        import scipy.sparse as sp
        win = 1 << self.index.window_bits
        for w in range(self.index.n_windows):
            first, size = w * win, min(win, self.n - w * win)
            rows, latents, values = self.index.window_postings(w)
            block = sp.csr_matrix((values, (rows, latents)), shape=(size, self.index.h))
            block.sort_indices()
            live = np.arange(size) if self.live is None else np.flatnonzero(self.live[first:first + size])
            ids = self.user_ids(live + first)
            for s in range(0, len(live), batch_size):
                yield ids[s:s + batch_size], block[live[s:s + batch_size]]

    def nbytes(self) -> dict:
        out = {name: int(arr.nbytes) for name, arr in self.arrays.items()}
        if self.clustered:
            out["cluster_layout"] = int(self.index.layout_bytes)  # derived on load, held in memory
        if self.live is not None:
            out["live"] = int(self.live.nbytes)
        return out


def header_bytes(config: dict) -> int:
    """Bytes before a packed forward row's bitstream (cpp/packed.h, RowLayout): the scale, a weight with a decoder
    bias or a residual, the residual code."""
    m = config["residual_m"]
    return SCALE_BYTES * (1 + bool(config["forward_bias"] or m)) + m


def as_id_array(ids, name: str) -> np.ndarray:
    """ids as a 1-D int64 array; ValueError naming `name` if they are not 1-D integers."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {ids.dtype}")
    return ids.astype(np.int64)


def check_ids(ids, n: int, required: bool = False) -> np.ndarray | None:
    """n distinct int64 ids, or None when ids is None and not required."""
    if ids is None:
        if required:
            raise ValueError("ids are required: one int64 per added row")
        return None
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per item, shape ({n},), got {ids.shape}")
    ids = as_id_array(ids, "ids")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"id {int(uniq[np.argmax(counts > 1)])} appears more than once")
    return ids
