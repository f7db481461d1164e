"""The CompresSAE model (Kasalický et al., RecSys 2025): a TopK sparse autoencoder on L2-normalised embeddings.

    z     = x @ W_enc + b_enc                      W_enc (d, h), b_enc (h,)
    code  = the k entries of largest |z|, signed
    x_hat = code @ W_dec                           W_dec (h, d), rows of unit L2 norm, no bias
    loss  = (1 - cos(x, x_hat_k)) + (1 - cos(x, x_hat_4k)) / 8
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .codes import VALUE_DTYPES, SparseCodes
from .data import as_matrix, iter_batches

MODEL_FORMAT_VERSION = 1
VARIANTS = ("compressae",)
_METADATA_KEY = "csae_engine"


class CompresSAE(torch.nn.Module):
    """TopK sparse autoencoder: encode (n, d) embeddings into k-sparse codes over h latents and decode them back."""

    variant = "compressae"

    def __init__(self, d: int, h: int = 4096, k: int = 32, *, seed: int = 0):
        super().__init__()
        for name, v in (("d", d), ("h", h)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        kernels.reference.check_k(int(k) if isinstance(k, np.integer) else k, int(h))
        self.d, self.h, self.k = int(d), int(h), int(k)
        gen = torch.Generator().manual_seed(seed)
        W_dec = F.normalize(torch.randn(self.h, self.d, generator=gen), dim=1)
        self.W_dec = torch.nn.Parameter(W_dec)
        self.W_enc = torch.nn.Parameter(W_dec.T.contiguous())  # encoder starts as the decoder's transpose
        self.b_enc = torch.nn.Parameter(torch.zeros(self.h))
        self.backend = "auto"

    @property
    def k_multi(self) -> int:
        """The larger k of the multi-k loss: 4k, capped at h."""
        return min(4 * self.k, self.h)

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def config(self) -> dict:
        return {"format_version": MODEL_FORMAT_VERSION, "variant": self.variant, "d": self.d, "h": self.h, "k": self.k}

    # torch-level ops (used by training and by the engine)
    def encode_tensor(self, x: torch.Tensor, k: int | None = None):
        """indices (B, k) int64 and signed values (B, k) for unit-norm rows x (B, d), strongest first."""
        return kernels.topk_encode(x, self.W_enc, self.b_enc, self.k if k is None else k, backend=self.backend)

    def decode_tensor(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return kernels.sparse_decode(indices, values, self.W_dec, backend=self.backend)

    def loss(self, x: torch.Tensor):
        """Multi-k cosine loss from one forward pass; returns (loss, cos_k per row, indices of the top k)."""
        indices, values = self.encode_tensor(x, self.k_multi)
        k = self.k
        x_hat_k = self.decode_tensor(indices[:, :k], values[:, :k])
        x_hat_multi = x_hat_k + self.decode_tensor(indices[:, k:], values[:, k:]) if self.k_multi > k else x_hat_k
        cos_k = F.cosine_similarity(x_hat_k.float(), x.float(), dim=1)
        cos_multi = F.cosine_similarity(x_hat_multi.float(), x.float(), dim=1)
        loss = (1 - cos_k).mean() + (1 - cos_multi).mean() / 8
        return loss, cos_k.detach(), indices[:, :k]

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_radial_grad_(self) -> None:
        """Project each decoder row's gradient onto the tangent of the unit sphere at that row."""
        g, w = self.W_dec.grad, self.W_dec
        if g is not None:
            g.sub_((g * w).sum(dim=1, keepdim=True) * w)

    # numpy-level API
    @torch.no_grad()
    def encode(self, X, k: int | None = None, *, batch_size: int = 8192, value_dtype=np.float16,
               progress: bool | None = None) -> SparseCodes:
        """SparseCodes of the rows of X (array, memmap or .npy path; rows are L2-normalised first).

        k defaults to the model's k; a smaller k gives the strongest k of the full code.
        """
        k = self.k if k is None else k
        kernels.reference.check_k(k, self.h)
        value_dtype = np.dtype(value_dtype)
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"value_dtype must be float16 or float32, got {value_dtype}")
        X = self._check_input(X)
        codes = SparseCodes(np.zeros((X.shape[0], k), np.uint32), np.zeros((X.shape[0], k), value_dtype), self.h)
        for start, batch in _progress(iter_batches(X, batch_size), X.shape[0], batch_size, "encode", progress):
            x = torch.from_numpy(batch).to(self.device)
            with _autocast(self.device):
                idx, val = self.encode_tensor(x, k)
            codes.indices[start:start + len(batch)] = idx.cpu().numpy()
            codes.values[start:start + len(batch)] = val.float().cpu().numpy()
        return codes

    @torch.no_grad()
    def decode(self, codes: SparseCodes, *, batch_size: int = 65536) -> np.ndarray:
        """Reconstructions (n, d) float32 of codes."""
        if not isinstance(codes, SparseCodes):
            raise TypeError(f"decode takes SparseCodes, got {type(codes).__name__}")
        if codes.h != self.h:
            raise ValueError(f"codes have h={codes.h}, the model has h={self.h}")
        out = np.empty((codes.n, self.d), np.float32)
        for start in range(0, codes.n, batch_size):
            idx = torch.from_numpy(codes.indices[start:start + batch_size].astype(np.int64)).to(self.device)
            val = torch.from_numpy(codes.values[start:start + batch_size].astype(np.float32)).to(self.device)
            out[start:start + len(idx)] = self.decode_tensor(idx, val).float().cpu().numpy()
        return out

    def _check_input(self, X, name: str = "X") -> np.ndarray:
        X = as_matrix(X, name)
        if X.shape[1] != self.d:
            raise ValueError(f"{name} has d={X.shape[1]} columns, the model expects d={self.d}")
        return X

    def save(self, path) -> None:
        """One safetensors file: weights plus the JSON config in its metadata. The write is atomic."""
        from safetensors.torch import save_file
        path = os.fspath(path)
        tensors = {n: p.detach().float().cpu().contiguous() for n, p in self.named_parameters()}
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={_METADATA_KEY: json.dumps(self.config())})
        os.replace(tmp, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, h={self.h}, k={self.k})"


def load_model(path, device: str | torch.device = "cpu") -> CompresSAE:
    """Load a model written by CompresSAE.save; anything else is refused with a ValueError saying why."""
    from safetensors import safe_open
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:
        raise ValueError(f"{path!r} is not a readable csae model file (damaged or not safetensors: {e})") from e
    if _METADATA_KEY not in meta:
        raise ValueError(f"{path!r} is a safetensors file but not a csae model (no {_METADATA_KEY!r} metadata)")
    try:
        cfg = json.loads(meta[_METADATA_KEY])
        version, variant, d, h, k = (cfg[key] for key in ("format_version", "variant", "d", "h", "k"))
    except Exception as e:
        raise ValueError(f"{path!r}: unreadable model config ({e})") from e
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path!r}: model format version {version}, this build reads {MODEL_FORMAT_VERSION}")
    if variant not in VARIANTS:
        raise ValueError(f"{path!r}: unknown variant {variant!r}")
    model = CompresSAE(d, h, k)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    found = {n: tuple(t.shape) for n, t in tensors.items()}
    if found != expected:
        raise ValueError(f"{path!r}: weights {found} do not match the config's shapes {expected}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{path!r}: weight {name} holds NaN or Inf")
    model.load_state_dict(tensors)
    return model.to(device)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _progress(iterable, n_rows, batch_size, desc, progress):
    from tqdm.auto import tqdm
    disable = (n_rows < 200_000) if progress is None else not progress
    return tqdm(iterable, total=-(-n_rows // batch_size), desc=desc, unit="batch", disable=disable)
