"""csae_engine's C++ core (cpp/bindings.cpp): posting lists, the windowed inverted-index scorer and dense reranking.

Every function raises ValueError naming the array and the problem when an input has the wrong dtype or shape.
"""
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__version__: str

def build_postings(indices: NDArray[np.uint8 | np.uint16 | np.uint32], values: NDArray[np.float16 | np.float32],
                   h: int, num_threads: int = -1) -> tuple[NDArray[np.int64], NDArray[np.uint32], NDArray]:
    """Inverted lists of (n, k) codes: (offsets (h+1,) int64, item ids (n*k,) uint32, values (n*k,) in their dtype)."""

def assign_clusters(indices: NDArray[np.integer], values: ArrayLike, centroid_offsets: NDArray[np.int64],
                    centroid_clusters: NDArray[np.uint32], centroid_weights: NDArray[np.float32], n_clusters: int,
                    num_threads: int = -1) -> NDArray[np.int32]:
    """Each code's best cluster, argmax_c sum_j values[i, j] * centroid_c[indices[i, j]] (ties: the smaller c);
    the centroid lists as for SegmentIndex.with_clusters, h = len(centroid_offsets) - 1."""


def assign_clusters_grouped(indices: NDArray[np.integer], values: ArrayLike, group_offsets: NDArray[np.int64],
                            group_clusters: NDArray[np.uint32], group_weights: NDArray[np.float32],
                            centroid_offsets: NDArray[np.int64], centroid_clusters: NDArray[np.uint32],
                            centroid_weights: NDArray[np.float32], group_first: NDArray[np.int64],
                            probe_groups: int, num_threads: int = -1) -> NDArray[np.int32]:
    """assign_clusters for clusters numbered group by group (group g: [group_first[g], group_first[g + 1]), none
    empty), each code scoring only the clusters of its probe_groups best groups (by the group centroid lists)."""


def build_windowed(indices: NDArray[np.integer], values: NDArray[np.float16 | np.float32],
                   keep: ArrayLike | None, h: int, window_bits: int = 16,
                   num_threads: int = -1) -> tuple[NDArray[np.int64], NDArray[np.uint16], NDArray]:
    """The windowed index of (n, k) codes: (offsets (n_windows*h+1,) int64, local ids uint16, values); keep: (n, k) mask."""

def encode_queries(queries: NDArray[np.float32], weights: NDArray[np.float32], bias: NDArray[np.float32] | None,
                   k: int, nonneg: bool = False, num_threads: int = 1, int8_weights: NDArray[np.int8] | None = None,
                   int8_bounds: NDArray[np.float32] | None = None) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Sparse codes of queries (nq, d): the k strongest entries of z = weights (h, d) @ q + bias, strongest first
    (signed: largest |z|; nonneg: largest z, ReLU'd), values of unit norm; (indices (nq, k), values (nq, k)).
    With an int8 copy of weights (int8_encoder), each query reads the copy and settles its candidates in float32:
    the same codes."""

def project_queries(queries: NDArray[np.float32], weights: NDArray[np.float32],
                    num_threads: int = 1) -> NDArray[np.float32]:
    """weights (h, d) @ q for each row q of queries (nq, d): (nq, h) float32."""

class SegmentIndex:
    """One index segment: windowed posting lists and forward codes, checked once, then queried.

    The arrays are held, never copied (they may be read-only memory maps), and must not change afterwards.

    Parameters
    ----------
    offsets : (n_windows * h + 1,) int64
        Postings of latent i in window w: ``offsets[i * n_windows + w] : offsets[i * n_windows + w + 1]``.
    local_ids : (n_postings,) uint16
        Each posting's row relative to its window's first row.
    post_values : (n_postings,) float16 or float32
    fwd_indices : (n, width) uint8, uint16 or uint32
        Forward codes: the latents of each row.
    fwd_values : (n, width) float16 or float32
    n : int
        Rows in the segment.
    h : int
        Latents.
    window_bits : int
        Windows hold ``2 ** window_bits`` rows, 1..16.

    Raises
    ------
    ValueError
        Naming the array and the problem (dtype, contiguity, shape, offsets, local ids outside their window).
    """

    def __init__(self, offsets: NDArray[np.int64], local_ids: NDArray[np.uint16],
                 post_values: NDArray[np.float16 | np.float32], fwd_indices: NDArray[np.uint8 | np.uint16 | np.uint32],
                 fwd_values: NDArray[np.float16 | np.float32], n: int, h: int, window_bits: int) -> None: ...

    @staticmethod
    def packed(offsets: NDArray[np.int64], local_ids: NDArray[np.uint16], post_values: NDArray[np.float16 | np.float32],
               fwd_packed: NDArray[np.uint8], n: int, h: int, window_bits: int, k: int, index_bits: int,
               value_bits: int, has_bias: bool, index_coding: Literal["packed", "ef"] = "packed",
               residual_m: int = 0) -> SegmentIndex:
        """A SegmentIndex whose forward codes are packed: k (latent, value) entries per row in a fixed number of bytes.

        rerank and scan score straight from the packed bytes: score = s * sum_j q_j * projections[q, latent_j]
        + w * (projections[q, h] (only with has_bias) + sum_m projections[q, h + has_bias + 256 m + r_m]) (the r_m
        terms only with residual_m > 0), so projections need h + has_bias + 256 * residual_m columns.

        Parameters
        ----------
        offsets, local_ids, post_values, n, h, window_bits
            The posting lists, as for SegmentIndex.
        fwd_packed : (n, row_bytes) uint8, C-contiguous
            Each row: bytes 0-1 the float16 scale s (little-endian); with has_bias or residual_m > 0, bytes 2-3 the
            float16 weight w; then residual_m bytes r_m, the residual code; then a bitstream read LSB-first (bit t is
            bit t % 8 of byte header + t // 8, header = 2 + 2 * (has_bias or residual_m > 0) + residual_m).
            index_coding "packed": entry j takes bits j * w to (j + 1) * w - 1, w = index_bits + value_bits: the
            latent (unsigned, < h), then the value q_j (two's complement); latents need not be sorted. Stream bits:
            k * w.
            index_coding "ef": the latents x_0 < ... < x_{k-1} Elias-Fano coded with L = max(0, floor(log2(h / k)))
            low bits: k low parts (x_i & (2^L - 1), L bits each), a bitmap of k + ((h - 1) >> L) + 1 bits with bit
            (x_i >> L) + i set for each i and no other, then the k values q_i (value_bits each, two's complement).
            row_bytes >= header + ceil(stream bits / 8); later bytes are padding. Entries with q_j = 0 contribute
            nothing.
        k : int
            Entries per row, >= 1 (ef: <= h).
        index_bits : int
            1..32; ignored with index_coding "ef" (L follows from h and k).
        value_bits : int
            2..16.
        has_bias : bool
        index_coding : {"packed", "ef"}, default "packed"
        residual_m : int, default 0
            Bytes of residual code per row, 0..65536.

        Raises
        ------
        ValueError
            Naming the problem: dtype, shape, contiguity, rows, bytes per row, bit widths, an unknown index_coding,
            a latent >= h (its row and entry), a scale or weight that is not finite; ef rows: a bitmap without
            exactly k set bits, or latents that do not strictly increase (the row and entry).
        """

    def search(self, query_indices: ArrayLike, query_values: ArrayLike, top_k: int, num_threads: int = -1,
               allowed: NDArray[np.uint8 | np.bool_] | None = None, probe: float = 1.0,
               min_items: int = 0) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-k rows by the dot product of sparse queries with the posting lists: exact with probe=1, else over the
        clusters each query routes to (with_clusters) until max(ceil(probe * allowed rows), min_items) rows are
        covered.

        Parameters
        ----------
        query_indices : (nq, q) int
            Latents, each in 0..h-1.
        query_values : (nq, q) float
        top_k : int
            Positive.
        num_threads : int, default -1 (all cores)
        allowed : None or (n,) uint8/bool
            Rows that may be returned (non-zero).
        probe : float in (0, 1], default 1
            Share of the allowed rows to visit; 1 scores every row (exact).
        min_items : int, default 0
            Rows to visit at least (probe < 1).

        Returns
        -------
        ids : (nq, top_k) int64
            Rows of the segment, best first; -1 pads when fewer rows are allowed.
        scores : (nq, top_k) float32
            -inf where ids is -1. Ties go to the smaller row.
        """

    def with_clusters(self, cluster_rows: NDArray[np.int64], centroid_offsets: NDArray[np.int64],
                      centroid_clusters: NDArray[np.uint32], centroid_weights: NDArray[np.float32],
                      num_threads: int = -1) -> SegmentIndex:
        """This segment (sharing its arrays) with the routing arrays of approximate search (search with probe < 1):
        cluster c is rows [cluster_rows[c], cluster_rows[c + 1]) (non-decreasing from 0 to n); the sparse centroids
        latent-major, latent l's entries [centroid_offsets[l], centroid_offsets[l + 1]) of (cluster < C, finite
        weight). ValueError naming the array and the problem."""

    @property
    def n_clusters(self) -> int:
        """Clusters of with_clusters; 0 for none."""
    @property
    def layout_bytes(self) -> int:
        """Bytes the cluster layout derives from the postings on load (h x pieces uint16 run starts); 0 when not
        clustered."""

    def rerank(self, projections: ArrayLike, candidates: ArrayLike, top_k: int,
               num_threads: int = -1) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-k of candidate rows by score = sum_j fwd_values[i, j] * projections[q, fwd_indices[i, j]].

        Packed codes score as given under SegmentIndex.packed.

        Parameters
        ----------
        projections : (nq, p) float
            p covers every forward index.
        candidates : (nq, c) int
            Rows to score; -1 = none.
        top_k : int
        num_threads : int, default -1

        Returns
        -------
        ids : (nq, top_k) int64
        scores : (nq, top_k) float32
        """

    def scan(self, projections: ArrayLike, top_k: int, num_threads: int = -1,
             allowed: NDArray[np.uint8 | np.bool_] | None = None) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Like rerank over every row (or the rows an (n,) uint8/bool mask allows): (ids, scores) (nq, top_k)."""

    def window_postings(self, w: int) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
        """Every posting of window w (rows ``w << window_bits`` onwards) in latent order.

        Returns
        -------
        rows : (m,) int32
            Rows relative to the window's first row.
        latents : (m,) int32
        values : (m,) float32
        """

    @property
    def n(self) -> int:
        """Rows in the segment."""
    @property
    def h(self) -> int:
        """Latents."""
    @property
    def window_bits(self) -> int:
        """Windows hold 2 ** window_bits rows."""
    @property
    def n_windows(self) -> int:
        """Windows: ceil(n / 2 ** window_bits)."""
    @property
    def forward_width(self) -> int:
        """Columns of the forward codes (packed: k + has_bias, as the plain format stores them)."""
    @property
    def n_postings(self) -> int:
        """Postings over all lists: offsets[-1]."""
    @property
    def is_packed(self) -> bool:
        """Whether the forward codes are packed rows."""
    @property
    def row_bytes(self) -> int:
        """Bytes per packed row; 0 for plain codes."""
    @property
    def index_bits(self) -> int:
        """Bits per packed latent (ef: low bits per latent); 0 for plain codes."""
    @property
    def index_coding(self) -> str:
        """How packed rows code their latents: 'packed' or 'ef'; '' for plain codes."""
    @property
    def value_bits(self) -> int:
        """Bits per packed value; 0 for plain codes."""
    @property
    def residual_m(self) -> int:
        """Residual bytes per packed row; 0 for none."""
