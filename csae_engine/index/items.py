"""Items to index entries, as an index's config stores them: the forward code (a compact sparse code of the byte
budget and its residual code, or float16 codes) and the codes its posting lists hold. Engine.build and add use it."""
import numpy as np

from ..compact import DEFAULT_INDEX_CODING, SCALE_BYTES, check_index_coding, compact_k, stream_bits
from ..models.encoding import DEFAULT_VALUE_BITS, check_support, encode_compact

DEFAULT_SUPPORT = "encoder"  # how Engine.build's compact codes choose their latents (README, "Compact codes")
from ..residual import DEFAULT_TRAIN_SAMPLE, ResidualQuantizer, encode_residuals, residual_split, residuals_of
from ..utils import positive_int
from .build import forward_codes, posting_lists

__all__ = ["DEFAULT_SUPPORT", "forward_budget", "compact_config", "encode_items", "train_residual"]


def forward_budget(model, bytes_per_item: int | None, residual_bytes: int | None, value_bits: int | None,
                   index_coding: str | None, support: str | None = None) -> dict:
    """The compact forward code a byte budget buys: k, value_bits, index_coding, support, sparse_bytes (the sparse
    code's bytes) and residual_m (residual bytes; residual.residual_split divides the budget). No budget: the
    model's k entries as float16 codes (no compact options allowed).

    Raises
    ------
    ValueError
        A budget too small for one entry, residual_bytes out of range or leaving no room for the sparse code, or
        compact options without a budget.
    """
    if bytes_per_item is None:
        if residual_bytes or value_bits is not None or index_coding is not None or support is not None:
            raise ValueError("residual_bytes, value_bits, index_coding and support apply to compact codes: "
                             "give bytes_per_item too")
        return {"k": model.k, "value_bits": None, "index_coding": None, "residual_m": 0, "support": None}
    bytes_per_item = positive_int(bytes_per_item, "bytes_per_item")
    coding = DEFAULT_INDEX_CODING if index_coding is None else check_index_coding(index_coding)
    bits = DEFAULT_VALUE_BITS if value_bits is None else value_bits
    one_entry = SCALE_BYTES + -(-stream_bits(model.h, 1, bits, coding) // 8)
    sparse_bytes, m = residual_split(bytes_per_item, model.d, residual_bytes, one_entry)
    support = check_support(DEFAULT_SUPPORT if support is None else support)
    return {"k": compact_k(model.h, sparse_bytes, bits, coding), "value_bits": bits, "index_coding": coding,
            "sparse_bytes": sparse_bytes, "residual_m": m, "support": support}


def compact_config(config: dict) -> dict:
    """encode_compact's options for an index's config."""
    return {"k": config["k"], "value_bits": config["value_bits"], "index_coding": config["index_coding"],
            "support": config["support"]}


def train_residual(model, X, codes, m: int, *, seed: int = 0, progress: bool | None = None) -> ResidualQuantizer:
    """A ResidualQuantizer of m bytes, trained on the residuals of a random sample of the rows of X (at most
    residual.DEFAULT_TRAIN_SAMPLE) against their compact codes."""
    n = X.shape[0]
    rows = np.arange(n) if n <= DEFAULT_TRAIN_SAMPLE else np.sort(
        np.random.default_rng(seed).choice(n, DEFAULT_TRAIN_SAMPLE, replace=False))
    return ResidualQuantizer.train(residuals_of(model, X, codes, rows), m, seed=seed, progress=progress)


def encode_items(model, X, config: dict, residual: ResidualQuantizer | None, *, fit_residual: bool = False,
                 batch_size: int = 8192, progress: bool | None = None) -> tuple:
    """(forward arrays, posting lists or None, residual quantizer) of the rows of X under config. Posting lists
    None: they come from the forward codes (config["postings"] == "forward"). fit_residual: first train the
    residual quantizer on these rows' compact codes (train_residual) instead of using ``residual``."""
    if config["forward"] == "packed":
        codes = encode_compact(model, X, batch_size=batch_size, progress=progress, **compact_config(config))
    else:
        codes = model.encode(X, config["k"], batch_size=batch_size, progress=progress)
    residual_codes = None
    if config["residual_m"]:
        if fit_residual:
            residual = train_residual(model, X, codes, config["residual_m"], progress=progress)
        residual_codes = (residual, encode_residuals(model, X, codes, residual, progress=progress))
    forward = forward_codes(model, codes, residual_codes)
    if config["postings"] != "encoder":
        return forward, None, residual
    post = model.encode(X, config["index_terms"], batch_size=batch_size, value_dtype=np.float32, progress=False)
    return forward, posting_lists(post.indices, post.values, config), residual
