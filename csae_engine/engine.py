"""The search engine: an inverted index over sparse codes, searched exactly in C++, with a dense rerank.

    engine = Engine(model).build(X, ids=ids)
    ids, scores = engine.search(Q, top_k=10, mode="sparse" | "dense")

Sparse mode scores cos(code(q), code(x)) exactly through the windowed inverted index (cpp/index.h).
Dense mode takes sparse candidates (or every item) and scores cos(q, x_hat) as sum_j v_j p[i_j] / |x_hat|
with p = W_dec q computed once per query (cpp/rerank.h): O(k) per candidate, nothing reconstructed.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import _core
from .codes import SparseCodes, index_dtype
from .data import unit_rows
from .model import CompresSAE, load_model

INDEX_FORMAT_VERSION = 1
WINDOW_BITS = 16  # 65,536 items per window: a 256 KiB float accumulator, resident in L2
MODES = ("sparse", "dense")
_ARRAYS = ("offsets", "local_ids", "post_values", "fwd_indices", "fwd_values", "ids")  # ids: only if given


class Engine:
    """Compressed vector search over a CompresSAE model's codes. Not thread-safe while building; searching
    from many threads at once is safe.

    Parameters
    ----------
    model : CompresSAE
        Encodes items and queries; its decoder scores dense mode.
    num_threads : int
        Threads for build and search; -1 means all cores.
    """

    def __init__(self, model: CompresSAE, *, num_threads: int = -1):
        if not isinstance(model, CompresSAE):
            raise TypeError(f"Engine needs a CompresSAE model, got {type(model).__name__}")
        self.model = model.eval()
        self.num_threads = num_threads
        self._a: dict | None = None  # the index arrays, see _ARRAYS
        self.config: dict = {}
        self._decoder = None  # (h [+ 1], d) float32 for dense mode, made once per build

    # building
    @classmethod
    def from_codes(cls, codes: SparseCodes, model: CompresSAE, ids=None, *, prune: float | None = None,
                   num_threads: int = -1) -> "Engine":
        """An engine over codes already encoded by model."""
        return cls(model, num_threads=num_threads).build_codes(codes, ids, prune=prune)

    def build(self, X, ids=None, *, batch_size: int = 8192, prune: float | None = None,
              progress: bool | None = None) -> "Engine":
        """Encode the rows of X (array, memmap or .npy path) and index them.

        ids: one int64 per row, returned by search; default: the row numbers 0..n-1, which cost no memory.

        prune: keep only this share (0 < prune <= 1) of each posting list, its largest |values| (approximate).
        """
        X = self.model._check_input(X)
        codes = self.model.encode(X, batch_size=batch_size, progress=progress)
        return self.build_codes(codes, ids, prune=prune)

    def build_codes(self, codes: SparseCodes, ids=None, *, prune: float | None = None) -> "Engine":
        """Index codes encoded by this engine's model."""
        if not isinstance(codes, SparseCodes):
            raise TypeError(f"expected SparseCodes, got {type(codes).__name__}")
        if codes.h != self.model.h:
            raise ValueError(f"codes have h={codes.h}, the model has h={self.model.h}")
        if codes.n >= 2**32:
            raise ValueError(f"{codes.n} items exceed one index's 2^32 - 1")
        ids = _check_ids(ids, codes.n)
        vals = codes.float_values()  # 8-bit codes are dequantised and indexed as float16
        value_dtype = np.float16 if codes.quantized else codes.values.dtype
        norms = np.linalg.norm(vals, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise ValueError(f"code of item {int(np.argmin(norms[:, 0] > 0))} is all zeros")
        post_values = (vals / norms).astype(value_dtype)
        keep = None if prune is None else _prune_mask(codes, post_values, prune)
        offsets, local_ids, post_values = _core.build_windowed(codes.indices, post_values, keep, codes.h, WINDOW_BITS,
                                                               self.num_threads)
        inv_norm = 1 / self._reconstruction_norms(codes.indices, vals)
        fwd_indices, fwd_values = codes.indices, vals * inv_norm[:, None]
        if self.model.decoder_bias is not None:
            # x_hat = code @ W_dec + b: the bias rides as one more term, latent h, whose projection is q . b
            fwd_indices = np.hstack([fwd_indices, np.full((codes.n, 1), codes.h)]).astype(index_dtype(codes.h + 1))
            fwd_values = np.hstack([fwd_values, inv_norm[:, None]])
        self._a = {"offsets": offsets, "local_ids": local_ids, "post_values": post_values,
                   "fwd_indices": np.ascontiguousarray(fwd_indices),
                   "fwd_values": np.ascontiguousarray(fwd_values.astype(value_dtype))}
        if ids is not None:
            self._a["ids"] = ids
        self.config = {"n": codes.n, "h": codes.h, "k": codes.k, "window_bits": WINDOW_BITS, "prune": prune,
                       "value_dtype": str(np.dtype(value_dtype))}
        self._id_lookup = None
        self._decoder = None
        return self

    def _reconstruction_norms(self, indices: np.ndarray, values: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """|x_hat| per item, decoded in batches."""
        out = np.empty(len(indices), np.float32)
        with torch.no_grad():
            for s in range(0, len(indices), batch_size):
                idx = torch.from_numpy(indices[s:s + batch_size].astype(np.int64)).to(self.model.device)
                val = torch.from_numpy(values[s:s + batch_size]).to(self.model.device)
                out[s:s + len(idx)] = self.model.decode_tensor(idx, val).norm(dim=1).cpu().numpy()
        if not (out > 0).all():
            raise ValueError(f"item {int(np.argmin(out > 0))} reconstructs to the zero vector")
        return out

    # searching
    def search(self, Q, top_k: int = 10, mode: str = "sparse", *, candidates=None, query_terms: int | None = None,
               num_threads: int | None = None):
        """The top_k items for each query row of Q (nq, d).

        mode="sparse": cosine between sparse codes, exact over the index (unless built with prune).
        mode="dense": cosine between q and each item's reconstruction, over ``candidates`` from sparse mode
        (default 10 * top_k) or over every item with candidates="all".
        query_terms: use only the strongest terms of each query code in sparse mode (approximate, faster).
        Returns (ids (nq, top_k) int64, scores (nq, top_k) float32), best first.
        """
        a = self._require_built()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n = self.config["n"]
        if not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if top_k > n:
            raise ValueError(f"top_k={top_k} exceeds the {n} indexed items")
        Q = unit_rows(self.model._check_input(Q, "Q")[:], 0, "Q")
        threads = self.num_threads if num_threads is None else num_threads
        if mode == "dense" and isinstance(candidates, str):
            if candidates != "all":
                raise ValueError(f"candidates must be an int or 'all', got {candidates!r}")
            internal, scores = _core.dense_scan(a["fwd_indices"], a["fwd_values"], self._projections(Q), top_k, threads)
            return self._user_ids(internal), scores
        n_sparse = top_k
        if mode == "dense":
            n_sparse = min(n, 10 * top_k if candidates is None else int(candidates))
            if n_sparse < top_k:
                raise ValueError(f"candidates={candidates} must be at least top_k={top_k}")
        q_idx, q_val = self._encode_queries(Q, query_terms)
        internal, scores = _core.sparse_search(a["offsets"], a["local_ids"], a["post_values"], n, self.config["h"],
                                               self.config["window_bits"], q_idx, q_val, n_sparse, threads)
        if mode == "dense":
            internal, scores = _core.dense_rerank(a["fwd_indices"], a["fwd_values"], self._projections(Q), internal,
                                                  top_k, threads)
        return self._user_ids(internal), scores

    def _encode_queries(self, Q: np.ndarray, query_terms):
        k = self.config["k"]
        terms = k if query_terms is None else query_terms
        if not isinstance(terms, (int, np.integer)) or not 0 < terms <= k:
            raise ValueError(f"query_terms must be in 1..{k}, got {query_terms!r}")
        with torch.no_grad():
            idx, val = self.model.encode_tensor(torch.from_numpy(Q).to(self.model.device), k)
        val = val.float()
        val = (val / val.norm(dim=1, keepdim=True)).cpu().numpy()
        return np.ascontiguousarray(idx.cpu().numpy()[:, :terms]), np.ascontiguousarray(val[:, :terms])

    def _projections(self, Q: np.ndarray) -> np.ndarray:
        """p = W_dec q for each unit query: (nq, h) float32; with a decoder bias b, one more column q . b."""
        with torch.no_grad():
            if self._decoder is None:  # a tied decoder is a fresh transpose copy: make it once, not per search
                W = self.model.W_dec.float()
                b = self.model.decoder_bias
                self._decoder = (W if b is None else torch.cat([W, b.float()[None]])).contiguous()
            W = self._decoder
            return (torch.from_numpy(Q).to(W.device) @ W.T).cpu().numpy()

    def _user_ids(self, internal: np.ndarray) -> np.ndarray:
        if "ids" not in self._a:
            return internal
        ids = self._a["ids"]
        out = np.where(internal >= 0, ids[np.maximum(internal, 0)], -1)
        return out.astype(np.int64, copy=False)

    def internal_ids(self, ids) -> np.ndarray:
        """Row of each user id in the index (the order items were built in); unknown ids raise KeyError."""
        self._require_built()
        if self._id_lookup is None:
            known = self._a.get("ids", np.arange(len(self), dtype=np.int64))
            order = np.argsort(known, kind="stable")
            self._id_lookup = (known[order], order)
        sorted_ids, order = self._id_lookup
        ids = np.asarray(ids, np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != ids
        if missing.any():
            raise KeyError(f"unknown id {int(ids[missing][0])}")
        return order[pos]

    def __len__(self) -> int:
        return self.config.get("n", 0)

    def __repr__(self) -> str:
        if self._a is None:
            return f"Engine({self.model}, empty)"
        return f"Engine({self.model}, n={len(self)}, {self.bytes_per_item():.1f} bytes/item)"

    def nbytes(self) -> dict:
        """Bytes of each index array: everything a search keeps in memory besides the model."""
        return {name: int(arr.nbytes) for name, arr in self._require_built().items()}

    def bytes_per_item(self) -> float:
        return sum(self.nbytes().values()) / max(1, len(self))

    def _forward_width(self) -> int:
        """Terms per item in the forward codes: k, plus one for a decoder bias."""
        return self.config["k"] + (self.model.decoder_bias is not None)

    def _require_built(self) -> dict:
        if self._a is None:
            raise RuntimeError("the engine is empty: call build() first or Engine.load()")
        return self._a

    # files
    def save(self, path) -> None:
        """Write the index directory (manifest.json, the model, one .npy per array), atomically: a temporary
        directory beside it, renamed into place."""
        a = self._require_built()
        path = Path(path)
        if path.exists() and not (path / "manifest.json").exists():
            raise FileExistsError(f"{path} exists and is not a csae index; refusing to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else "."))
        try:
            self.model.save(tmp / "model.csae")
            files = {"model.csae": _sha256(tmp / "model.csae")}
            for name in a:
                np.save(tmp / f"{name}.npy", a[name], allow_pickle=False)
                files[f"{name}.npy"] = _sha256(tmp / f"{name}.npy")
            manifest = {"format": "csae-engine index", "format_version": INDEX_FORMAT_VERSION, **self.config,
                        "model_sha256": _model_hash(self.model), "files": files,
                        "dtypes": {name: str(a[name].dtype) for name in a}}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path, *, mmap: bool = True, model: CompresSAE | None = None, verify: bool = True,
             num_threads: int = -1) -> "Engine":
        """Open an index directory written by save. mmap=True maps the arrays instead of reading them.

        verify=True checks every file's SHA-256 (reads everything once); sizes and shapes are always checked.
        model: use this model instead of the saved one; it must be the model the index was built with.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no index directory at {path}")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} is not a csae index: no manifest.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}/manifest.json is damaged: {e}") from e
        if manifest.get("format") != "csae-engine index":
            raise ValueError(f"{path} is not a csae index (manifest format {manifest.get('format')!r})")
        if manifest.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{path}: index format version {manifest.get('format_version')}, "
                             f"this build reads {INDEX_FORMAT_VERSION}")
        files = manifest["files"]
        for name, digest in files.items():
            if not (path / name).exists():
                raise ValueError(f"{path}: {name} is missing")
            if verify and _sha256(path / name) != digest:
                raise ValueError(f"{path}: {name} is corrupted (checksum mismatch)")
        if model is None:
            model = load_model(path / "model.csae")
        if _model_hash(model) != manifest["model_sha256"]:
            raise ValueError(f"{path} was built with a different model than the one given")
        engine = cls(model, num_threads=num_threads)
        arrays = {}
        for name in manifest["dtypes"]:
            if name not in _ARRAYS:
                raise ValueError(f"{path}: unknown array {name!r} in the manifest")
            try:
                arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            except Exception as e:
                raise ValueError(f"{path}: {name}.npy is damaged or truncated ({e})") from e
            if str(arrays[name].dtype) != manifest["dtypes"][name]:
                raise ValueError(f"{path}: {name}.npy has dtype {arrays[name].dtype}, expected {manifest['dtypes'][name]}")
        engine.config = {key: manifest[key] for key in ("n", "h", "k", "window_bits", "prune", "value_dtype")}
        _check_shapes(arrays, engine.config, engine._forward_width(), path)
        engine._a = arrays
        engine._id_lookup = None
        return engine


def _check_ids(ids, n: int) -> np.ndarray | None:
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per item, shape ({n},), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"id {int(uniq[np.argmax(counts > 1)])} appears more than once")
    return ids


def _prune_mask(codes: SparseCodes, values: np.ndarray, keep_share: float) -> np.ndarray:
    """(n, k) mask keeping, in each latent's posting list, the ceil(keep_share * length) largest |values|."""
    if not 0 < keep_share <= 1:
        raise ValueError(f"prune must be in (0, 1], got {keep_share}")
    lat = codes.indices.reshape(-1).astype(np.int64)
    mag = np.abs(values.reshape(-1).astype(np.float32))
    order = np.lexsort((-mag, lat))  # by latent, strongest first
    counts = np.bincount(lat, minlength=codes.h)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(lat)) - np.repeat(starts, counts)
    keep_sorted = rank < np.ceil(keep_share * np.repeat(counts, counts))
    keep = np.empty(len(lat), np.uint8)
    keep[order] = keep_sorted
    return keep.reshape(codes.indices.shape)


def _check_shapes(a: dict, cfg: dict, fwd_width: int, path) -> None:
    n, h = cfg["n"], cfg["h"]
    windows = (n + (1 << cfg["window_bits"]) - 1) >> cfg["window_bits"]
    expected = {"offsets": (windows * h + 1,), "fwd_indices": (n, fwd_width), "fwd_values": (n, fwd_width),
                "ids": (n,)}
    missing = set(_ARRAYS) - {"ids"} - set(a)
    if missing:
        raise ValueError(f"{path}: the manifest lists no {sorted(missing)}")
    for name, shape in expected.items():
        if name in a and a[name].shape != shape:
            raise ValueError(f"{path}: {name}.npy has shape {a[name].shape}, expected {shape}")
    total = int(a["offsets"][-1])
    if a["local_ids"].shape != (total,) or a["post_values"].shape != (total,):
        raise ValueError(f"{path}: posting arrays do not match the offsets")


def _sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _model_hash(model: CompresSAE) -> str:
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
