"""Building segments from codes: forward codes (dense mode), posting lists (sparse mode), optional pruning.

Forward values are the code's values divided by |x_hat|, so dense mode's cos(q, x_hat) is a sparse dot product with
p = W_dec q. Posting lists hold unit codes: by default the strongest index_terms entries of the forward code
rescaled, so a segment rebuilt from another's forward codes (compaction) is bit-identical to a fresh build; with
config["postings"] == "encoder" the encoder's own codes of index_terms entries (build gives them), and compaction
carries each item's posting entries over from its old lists.
"""
import numpy as np
import torch

from .. import _core
from ..codes import index_dtype
from ..compact import SCALE_BYTES, CompactCodes, index_bits, strongest_first, unpack_entries, unpack_stream
from .clusters import cluster_codes, clusters_for
from .segment import FORWARD_ARRAYS, Segment, header_bytes

__all__ = ["WINDOW_BITS", "forward_codes", "posting_codes", "posting_lists", "reconstruction_norms", "make_segment",
           "merge_segments", "prune_mask", "live_postings", "join_postings", "decode_forward"]

WINDOW_BITS = 16  # 65,536 items per window: a 256 KiB float accumulator, resident in L2


def forward_codes(model, codes, residual=None) -> dict:
    """The forward store of codes for dense mode, values divided by |x_hat|.

    SparseCodes give ``fwd_indices`` and float ``fwd_values``; with a decoder bias b (CSR), one more term per item:
    latent h with value 1 / |x_hat|, whose projection is q . b. CompactCodes give ``fwd_packed``: their rows with
    the scale s replaced by s / |x_hat| and, with a decoder bias or a residual, the weight 1 / |x_hat| as a second
    float16, then the residual codes (cpp/packed.h, RowLayout).

    Parameters
    ----------
    residual : (ResidualQuantizer, (n, m) uint8 codes), optional
        Compact codes only: x_hat then includes the residual's reconstruction.

    Raises
    ------
    ValueError
        A code is all zeros, or reconstructs to the zero vector.
    """
    if isinstance(codes, CompactCodes):
        indices, q = codes.unpack()
        vals = q.astype(np.float32) * codes.scales.astype(np.float32)[:, None]
    else:
        indices, vals = codes.indices, codes.float_values()
    nonzero = np.abs(vals).sum(axis=1) > 0
    if not nonzero.all():
        raise ValueError(f"code of item {int(np.argmin(nonzero))} is all zeros")
    if residual is not None and not isinstance(codes, CompactCodes):
        raise ValueError("residual codes go with compact codes (bytes_per_item)")
    inv_norm = 1 / reconstruction_norms(model, indices, vals, residual)
    has_bias = model.decoder_bias is not None
    if isinstance(codes, CompactCodes):
        header = [(codes.scales.astype(np.float32) * inv_norm).astype(np.float16)]
        if has_bias or residual is not None:
            header.append(inv_norm.astype(np.float16))
        parts = [np.stack(header, axis=1).view(np.uint8)]
        if residual is not None:
            parts.append(residual[1])
        return {"fwd_packed": np.ascontiguousarray(np.hstack(parts + [codes.packed[:, SCALE_BYTES:]]))}
    fwd_indices, fwd_values = indices, vals * inv_norm[:, None]
    if has_bias:
        fwd_indices = np.hstack([fwd_indices, np.full((codes.n, 1), codes.h)]).astype(index_dtype(codes.h + 1))
        fwd_values = np.hstack([fwd_values, inv_norm[:, None]])
    return {"fwd_indices": fwd_indices, "fwd_values": fwd_values}


def posting_codes(forward: dict, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The strongest config["index_terms"] entries of each item's forward code: (indices (n, m), float32 values),
    the terms its posting lists hold (values in any scale: posting values are normalised per item). Packed rows
    store their entries strongest first; ef rows store them by latent, so all k are decoded and ordered by |q|."""
    m = config["index_terms"]
    if "fwd_packed" in forward:
        packed = np.asarray(forward["fwd_packed"])
        header = header_bytes(config)
        if config["index_coding"] == "ef":
            indices, q = strongest_first(*unpack_stream(packed[:, header:], config["h"], config["k"],
                                                        config["value_bits"], "ef"))
            indices, q = indices[:, :m], q[:, :m]
        else:
            indices, q = unpack_entries(packed[:, header:], m, index_bits(config["h"]), config["value_bits"])
        scale = np.ascontiguousarray(packed[:, :SCALE_BYTES]).view(np.float16).astype(np.float32)
        return indices, q.astype(np.float32) * scale
    return np.ascontiguousarray(forward["fwd_indices"][:, :m]), np.asarray(forward["fwd_values"][:, :m], np.float32)


def reconstruction_norms(model, indices: np.ndarray, values: np.ndarray, residual=None,
                         batch_size: int = 65536) -> np.ndarray:
    """|x_hat| per item (float32), decoded in batches; residual: (ResidualQuantizer, codes) added to x_hat."""
    out = np.empty(len(indices), np.float32)
    with torch.no_grad():
        for s in range(0, len(indices), batch_size):
            idx = torch.from_numpy(indices[s:s + batch_size].astype(np.int64)).to(model.device)
            val = torch.from_numpy(values[s:s + batch_size]).to(model.device)
            x_hat = model.decode_tensor(idx, val).float()
            if residual is not None:
                x_hat += torch.from_numpy(residual[0].decode(residual[1][s:s + batch_size])).to(x_hat.device)
            out[s:s + len(idx)] = x_hat.norm(dim=1).cpu().numpy()
    if not (out > 0).all():
        raise ValueError(f"item {int(np.argmin(out > 0))} reconstructs to the zero vector")
    return out


def posting_lists(indices: np.ndarray, values: np.ndarray, config: dict) -> tuple:
    """(indices, unit values in value_dtype, keep mask or None): codes (n, m) ready for the posting lists, each row
    rescaled to unit norm, pruned when config["prune"] is set."""
    post = (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(config["value_dtype"])
    indices = np.ascontiguousarray(indices, dtype=np.uint32 if indices.dtype == np.int64 else indices.dtype)
    keep = None if config["prune"] is None else prune_mask(indices, post, config["h"], config["prune"])
    return indices, post, keep


def make_segment(forward: dict, ids: np.ndarray | None, config: dict, num_threads: int = -1,
                 first_id: int = 0, postings: tuple | None = None, cluster: bool = False) -> Segment:
    """A segment from forward arrays (forward_codes); config gives h, index_terms, value_dtype, prune,
    window_bits, cluster_size and the forward format. postings: (indices, values, keep) ready for the lists
    (posting_lists, live_postings); default: from the forward codes. cluster: with config["cluster_size"], number
    the rows cluster by cluster (index/clusters.py) for approximate search."""
    h, value_dtype = config["h"], np.dtype(config["value_dtype"])
    if "fwd_values" in forward:
        forward = dict(forward, fwd_values=np.ascontiguousarray(forward["fwd_values"], dtype=value_dtype))
    if postings is None:
        postings = posting_lists(*posting_codes(forward, config), config)
    extra = {}
    if cluster and config["cluster_size"]:
        forward, ids, postings, extra = _clustered(forward, ids, postings, config, first_id, num_threads)
    indices, post, keep = postings
    offsets, local_ids, post_values = _core.build_windowed(indices, post, keep, h, config["window_bits"], num_threads)
    arrays = {"offsets": offsets, "local_ids": local_ids, "post_values": post_values,
              **{name: np.ascontiguousarray(arr) for name, arr in forward.items()}, **extra}
    if ids is not None:
        arrays["ids"] = np.ascontiguousarray(ids, dtype=np.int64)
    return Segment(arrays, config, first_id)


def _clustered(forward: dict, ids, postings: tuple, config: dict, first_id: int, num_threads: int) -> tuple:
    """forward, ids and postings with their rows in cluster order, and the segment's cluster arrays."""
    indices, post, keep = postings
    n = len(indices)
    values = post.astype(np.float32) if keep is None else np.where(keep != 0, post.astype(np.float32), 0)
    clusters = cluster_codes(indices, values, config["h"], clusters_for(n, config["cluster_size"]),
                             num_threads=num_threads)
    order = clusters.order
    ids = first_id + order if ids is None else np.asarray(ids)[order]
    postings = (indices[order], post[order], None if keep is None else keep[order])
    forward = {name: np.asarray(arr)[order] for name, arr in forward.items()}
    offsets, lists_clusters, weights = clusters.lists
    return forward, ids, postings, {"cluster_rows": clusters.cluster_rows, "centroid_offsets": offsets,
                                    "centroid_clusters": lists_clusters, "centroid_weights": weights}


def merge_segments(parts: list, config: dict, num_threads: int = -1) -> Segment:
    """One segment of the live rows of parts, rebuilt from their forward codes (and, with encoder postings, their
    posting entries)."""
    rows = [seg.live_rows() for seg in parts]
    forward = {name: np.concatenate([np.asarray(seg.arrays[name])[r] for seg, r in zip(parts, rows)])
               for name in FORWARD_ARRAYS if name in parts[0].arrays}
    ids = np.concatenate([seg.ids()[r] for seg, r in zip(parts, rows)])
    postings = None
    if config["postings"] == "encoder":
        postings = join_postings([live_postings(seg, r, config) for seg, r in zip(parts, rows)])
    return make_segment(forward, ids, config, num_threads, postings=postings, cluster=True)


def live_postings(seg: Segment, rows: np.ndarray, config: dict) -> tuple:
    """(indices (len(rows), m) uint32, values in value_dtype, keep mask or None): the posting entries of the given
    rows of seg as its lists hold them (m = index_terms; keep marks the entries pruning left, when it left gaps)."""
    m = config["index_terms"]
    indices = np.zeros((seg.n, m), np.uint32)
    values = np.zeros((seg.n, m), config["value_dtype"])
    filled = np.zeros(seg.n, np.int64)
    win = 1 << seg.index.window_bits
    for w in range(seg.index.n_windows):
        local, latents, vals = seg.index.window_postings(w)
        row = local.astype(np.int64) + w * win
        order = np.argsort(row, kind="stable")
        row, latents, vals = row[order], latents[order], vals[order]
        slot = np.arange(len(row)) - np.searchsorted(row, row)  # rank of each entry within its row
        indices[row, slot], values[row, slot] = latents, vals
        np.add.at(filled, row, 1)
    keep = None if (filled == m).all() else (np.arange(m) < filled[:, None]).astype(np.uint8)
    return indices[rows], values[rows], None if keep is None else keep[rows]


def join_postings(parts: list) -> tuple:
    """live_postings of several segments, stacked."""
    indices = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    if all(p[2] is None for p in parts):
        return indices, values, None
    keep = np.concatenate([np.ones(p[0].shape, np.uint8) if p[2] is None else p[2] for p in parts])
    return indices, values, keep


def prune_mask(indices: np.ndarray, values: np.ndarray, h: int, keep_share: float) -> np.ndarray:
    """(n, k) mask keeping, in each latent's posting list, the ceil(keep_share * length) largest |values|."""
    lat = indices.reshape(-1).astype(np.int64)
    mag = np.abs(values.reshape(-1).astype(np.float32))
    order = np.lexsort((-mag, lat))  # by latent, strongest first
    counts = np.bincount(lat, minlength=h)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(lat)) - np.repeat(starts, counts)
    keep_sorted = rank < np.ceil(keep_share * np.repeat(counts, counts))
    keep = np.empty(len(lat), np.uint8)
    keep[order] = keep_sorted
    return keep.reshape(indices.shape)


def decode_forward(model, forward: dict, config: dict, residual=None, batch_size: int = 4096) -> np.ndarray:
    """(n, d) float32: the vectors dense mode scores, x_hat / |x_hat| (x_hat including the decoder bias and the
    residual's reconstruction), decoded from forward arrays (forward_codes)."""
    W = model.W_dec.detach().float().cpu()
    bias = model.decoder_bias
    W = torch.cat([W, (torch.zeros(1, W.shape[1]) if bias is None else bias.detach().float().cpu()[None])])
    n = len(forward["fwd_packed" if "fwd_packed" in forward else "fwd_indices"])
    out = np.empty((n, W.shape[1]), np.float32)
    for s in range(0, n, batch_size):
        rows = slice(s, s + batch_size)
        if "fwd_packed" in forward:
            packed = np.asarray(forward["fwd_packed"][rows])
            half = lambda at: packed[:, at:at + 2].copy().view(np.float16)[:, 0].astype(np.float32)  # noqa: E731
            idx, q = unpack_stream(packed[:, header_bytes(config):], config["h"], config["k"], config["value_bits"],
                                   config["index_coding"])
            vals = q.astype(np.float32) * half(0)[:, None]
            weighted = config["forward_bias"] or config["residual_m"]
            weight = half(SCALE_BYTES) if weighted else np.zeros(len(packed), np.float32)
            idx, vals = np.hstack([idx, np.full((len(idx), 1), config["h"])]), np.hstack([vals, weight[:, None]])
        else:  # plain: a decoder bias is already the extra column h
            idx = np.asarray(forward["fwd_indices"][rows]).astype(np.int64)
            vals = np.asarray(forward["fwd_values"][rows], np.float32)
        x = torch.nn.functional.embedding_bag(torch.from_numpy(idx.astype(np.int64)), W,
                                              per_sample_weights=torch.from_numpy(vals), mode="sum").numpy()
        if residual is not None:
            m = config["residual_m"]
            start = header_bytes(config) - m
            x = x + weight[:, None] * residual.decode(np.ascontiguousarray(packed[:, start:start + m]))
        out[rows] = x
    return out
