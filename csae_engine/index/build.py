"""Building segments from codes: forward codes (dense mode), posting lists (sparse mode), optional pruning.

Forward values are the code's values divided by |x_hat|, so dense mode's cos(q, x_hat) is a sparse dot product with
p = W_dec q. Posting values are the forward values rescaled to a unit code: a segment rebuilt from another's forward
codes (compaction) is bit-identical to a fresh build.
"""
import numpy as np
import torch

from .. import _core
from ..codes import SparseCodes, index_dtype
from .segment import Segment

__all__ = ["WINDOW_BITS", "forward_codes", "reconstruction_norms", "make_segment", "merge_segments", "prune_mask"]

WINDOW_BITS = 16  # 65,536 items per window: a 256 KiB float accumulator, resident in L2


def forward_codes(model, codes: SparseCodes) -> tuple[np.ndarray, np.ndarray]:
    """Forward codes for dense mode: indices and values / |x_hat| (float32).

    With a decoder bias b (CSR), one more term per item: latent h with value 1 / |x_hat|, whose projection is q . b.

    Raises
    ------
    ValueError
        A code is all zeros, or reconstructs to the zero vector.
    """
    vals = codes.float_values()
    nonzero = np.abs(vals).sum(axis=1) > 0
    if not nonzero.all():
        raise ValueError(f"code of item {int(np.argmin(nonzero))} is all zeros")
    inv_norm = 1 / reconstruction_norms(model, codes.indices, vals)
    fwd_indices, fwd_values = codes.indices, vals * inv_norm[:, None]
    if model.decoder_bias is not None:
        fwd_indices = np.hstack([fwd_indices, np.full((codes.n, 1), codes.h)]).astype(index_dtype(codes.h + 1))
        fwd_values = np.hstack([fwd_values, inv_norm[:, None]])
    return fwd_indices, fwd_values


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


def make_segment(fwd_indices: np.ndarray, fwd_values: np.ndarray, ids: np.ndarray | None, config: dict,
                 num_threads: int = -1, first_id: int = 0) -> Segment:
    """A segment from forward codes; config gives k, h, value_dtype, prune and window_bits."""
    k, h, value_dtype = config["k"], config["h"], np.dtype(config["value_dtype"])
    fwd_values = np.ascontiguousarray(fwd_values, dtype=value_dtype)
    code = fwd_values[:, :k].astype(np.float32)
    post = (code / np.linalg.norm(code, axis=1, keepdims=True)).astype(value_dtype)
    indices = np.ascontiguousarray(fwd_indices[:, :k])
    keep = None if config["prune"] is None else prune_mask(indices, post, h, config["prune"])
    offsets, local_ids, post_values = _core.build_windowed(indices, post, keep, h, config["window_bits"], num_threads)
    arrays = {"offsets": offsets, "local_ids": local_ids, "post_values": post_values,
              "fwd_indices": np.ascontiguousarray(fwd_indices), "fwd_values": fwd_values}
    if ids is not None:
        arrays["ids"] = np.ascontiguousarray(ids, dtype=np.int64)
    return Segment(arrays, h, config["window_bits"], first_id)


def merge_segments(parts: list, config: dict, num_threads: int = -1) -> Segment:
    """One segment of the live rows of parts, rebuilt from their forward codes."""
    rows = [seg.live_rows() for seg in parts]
    fwd_indices = np.concatenate([np.asarray(seg.arrays["fwd_indices"])[r] for seg, r in zip(parts, rows)])
    fwd_values = np.concatenate([np.asarray(seg.arrays["fwd_values"])[r] for seg, r in zip(parts, rows)])
    ids = np.concatenate([seg.ids()[r] for seg, r in zip(parts, rows)])
    return make_segment(fwd_indices, fwd_values, ids, config, num_threads)


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
