"""Building segments from codes: forward codes (dense mode), posting lists (sparse mode), optional pruning.

Forward values are the code's values divided by |x_hat|, so dense mode's cos(q, x_hat) is a sparse dot product with
p = W_dec q. Posting values are the forward values rescaled to a unit code: a segment rebuilt from another's forward
codes (compaction) is bit-identical to a fresh build.
"""
import numpy as np
import torch

from .. import _core
from ..codes import index_dtype
from ..compact import SCALE_BYTES, CompactCodes, index_bits, strongest_first, unpack_entries, unpack_stream
from .segment import FORWARD_ARRAYS, Segment

__all__ = ["WINDOW_BITS", "forward_codes", "posting_codes", "reconstruction_norms", "make_segment", "merge_segments",
           "prune_mask"]

WINDOW_BITS = 16  # 65,536 items per window: a 256 KiB float accumulator, resident in L2


def forward_codes(model, codes) -> dict:
    """The forward store of codes for dense mode, values divided by |x_hat|.

    SparseCodes give ``fwd_indices`` and float ``fwd_values``; with a decoder bias b (CSR), one more term per item:
    latent h with value 1 / |x_hat|, whose projection is q . b. CompactCodes give ``fwd_packed``: their rows with
    the scale s replaced by s / |x_hat| (and, with a decoder bias, 1 / |x_hat| as a second float16).

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
    inv_norm = 1 / reconstruction_norms(model, indices, vals)
    has_bias = model.decoder_bias is not None
    if isinstance(codes, CompactCodes):
        header = [(codes.scales.astype(np.float32) * inv_norm).astype(np.float16)]
        if has_bias:
            header.append(inv_norm.astype(np.float16))
        head = np.stack(header, axis=1).view(np.uint8)
        return {"fwd_packed": np.ascontiguousarray(np.hstack([head, codes.packed[:, SCALE_BYTES:]]))}
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
        header = SCALE_BYTES * (1 + bool(config["forward_bias"]))
        if config["index_coding"] == "ef":
            indices, q = strongest_first(*unpack_stream(packed[:, header:], config["h"], config["k"],
                                                        config["value_bits"], "ef"))
            indices, q = indices[:, :m], q[:, :m]
        else:
            indices, q = unpack_entries(packed[:, header:], m, index_bits(config["h"]), config["value_bits"])
        scale = np.ascontiguousarray(packed[:, :SCALE_BYTES]).view(np.float16).astype(np.float32)
        return indices, q.astype(np.float32) * scale
    return np.ascontiguousarray(forward["fwd_indices"][:, :m]), np.asarray(forward["fwd_values"][:, :m], np.float32)


def reconstruction_norms(model, indices: np.ndarray, values: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """|x_hat| per item (float32), decoded in batches."""
    out = np.empty(len(indices), np.float32)
    with torch.no_grad():
        for s in range(0, len(indices), batch_size):
            idx = torch.from_numpy(indices[s:s + batch_size].astype(np.int64)).to(model.device)
            val = torch.from_numpy(values[s:s + batch_size]).to(model.device)
            out[s:s + len(idx)] = model.decode_tensor(idx, val).norm(dim=1).cpu().numpy()
    if not (out > 0).all():
        raise ValueError(f"item {int(np.argmin(out > 0))} reconstructs to the zero vector")
    return out


def make_segment(forward: dict, ids: np.ndarray | None, config: dict, num_threads: int = -1,
                 first_id: int = 0) -> Segment:
    """A segment from forward arrays (forward_codes); config gives h, index_terms, value_dtype, prune,
    window_bits and the forward format."""
    h, value_dtype = config["h"], np.dtype(config["value_dtype"])
    if "fwd_values" in forward:
        forward = dict(forward, fwd_values=np.ascontiguousarray(forward["fwd_values"], dtype=value_dtype))
    indices, code = posting_codes(forward, config)
    post = (code / np.linalg.norm(code, axis=1, keepdims=True)).astype(value_dtype)
    indices = np.ascontiguousarray(indices, dtype=np.uint32 if indices.dtype == np.int64 else indices.dtype)
    keep = None if config["prune"] is None else prune_mask(indices, post, h, config["prune"])
    offsets, local_ids, post_values = _core.build_windowed(indices, post, keep, h, config["window_bits"], num_threads)
    arrays = {"offsets": offsets, "local_ids": local_ids, "post_values": post_values,
              **{name: np.ascontiguousarray(arr) for name, arr in forward.items()}}
    if ids is not None:
        arrays["ids"] = np.ascontiguousarray(ids, dtype=np.int64)
    return Segment(arrays, config, first_id)


def merge_segments(parts: list, config: dict, num_threads: int = -1) -> Segment:
    """One segment of the live rows of parts, rebuilt from their forward codes."""
    rows = [seg.live_rows() for seg in parts]
    forward = {name: np.concatenate([np.asarray(seg.arrays[name])[r] for seg, r in zip(parts, rows)])
               for name in FORWARD_ARRAYS if name in parts[0].arrays}
    ids = np.concatenate([seg.ids()[r] for seg, r in zip(parts, rows)])
    return make_segment(forward, ids, config, num_threads)


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
