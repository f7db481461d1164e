"""The models: CompresSAE (Kasalický et al., RecSys 2025) and CSR (Wen et al., ICML 2025), TopK sparse autoencoders
on L2-normalised embeddings.

CompresSAE (signed codes):
    z     = x @ W_enc + b_enc                      W_enc (d, h), b_enc (h,)
    code  = the k entries of largest |z|, signed
    x_hat = code @ W_dec                           W_dec (h, d), rows of unit L2 norm, no bias
    loss  = (1 - cos(x, x_hat_k)) + (1 - cos(x, x_hat_4k)) / 8

CSR (non-negative codes):
    z     = (x - b_pre) @ W_enc + b_enc            b_pre (d,): the pre-bias
    code  = ReLU of the k largest z                values >= 0
    x_hat = code @ W_dec + b_pre                   W_dec = W_enc.T when tied (the default), unit-norm directions
    loss  = |x - x_hat_k|^2 + |x - x_hat_4k|^2 / 8   squared error summed over d (= 2(1 - cos) near unit norm)

Both may add AuxK (dead latents reconstruct the residual, Gao et al. 2024) and an InfoNCE term on query/document
pairs; see train.py.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .codes import QUANTIZED_DTYPES, VALUE_DTYPES, SparseCodes, quantize_rows
from .data import as_matrix, iter_batches

MODEL_FORMAT_VERSION = 1
VARIANTS = ("compressae", "csr")
INITS = ("transpose", "random")
_METADATA_KEY = "csae_engine"


class CompresSAE(torch.nn.Module):
    """TopK sparse autoencoder: encode (n, d) embeddings into k-sparse codes over h latents and decode them back.

    init="transpose" starts the encoder as the decoder's transpose; "random" draws it independently (unit columns).
    """

    variant = "compressae"
    signed = True  # codes carry signs; CSR's are non-negative
    _tied = False  # CSR: the decoder is the encoder's transpose

    def __init__(self, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose"):
        super().__init__()
        for name, v in (("d", d), ("h", h)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        kernels.reference.check_k(int(k) if isinstance(k, np.integer) else k, int(h))
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.d, self.h, self.k = int(d), int(h), int(k)
        gen = torch.Generator().manual_seed(seed)
        W_dec = F.normalize(torch.randn(self.h, self.d, generator=gen), dim=1)
        if init == "transpose":
            W_enc = W_dec.T.contiguous()
        else:
            W_enc = F.normalize(torch.randn(self.h, self.d, generator=gen), dim=1).T.contiguous()
        self.W_enc = torch.nn.Parameter(W_enc)
        self.b_enc = torch.nn.Parameter(torch.zeros(self.h))
        if not self._tied:
            self.W_dec = torch.nn.Parameter(W_dec)
        self.backend = "auto"

    @property
    def k_multi(self) -> int:
        """The larger k of the multi-k loss: 4k, capped at h."""
        return min(4 * self.k, self.h)

    @property
    def default_aux_k(self) -> int:
        """Dead latents used by AuxK per item when aux_k is not given: max(2k, d/2), at most h."""
        return min(self.h, max(2 * self.k, self.d // 2))

    @property
    def decoder_bias(self) -> torch.Tensor | None:
        """The (d,) vector added after decoding (CSR's b_pre), or None: x_hat = code @ W_dec + decoder_bias."""
        return None

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def config(self) -> dict:
        return {"format_version": MODEL_FORMAT_VERSION, "variant": self.variant, "signed": self.signed,
                "d": self.d, "h": self.h, "k": self.k}

    # torch-level ops (used by training and by the engine)
    def _encoder_bias(self) -> torch.Tensor:
        """b with z = x @ W_enc + b."""
        return self.b_enc

    def encode_tensor(self, x: torch.Tensor, k: int | None = None):
        """indices (B, k) int64 and values (B, k) for unit-norm rows x (B, d), strongest first."""
        return kernels.topk_encode(x, self.W_enc, self._encoder_bias(), self.k if k is None else k,
                                   backend=self.backend, nonneg=not self.signed)

    def _decode_latents(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """code @ W_dec, without the decoder bias."""
        return kernels.sparse_decode(indices, values, self.W_dec, backend=self.backend)

    def decode_tensor(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The reconstruction (B, d): code @ W_dec, plus decoder_bias where the model has one."""
        return self._decode_latents(indices, values)

    def _recon_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(x_hat.float(), x.float(), dim=1)

    def _forward(self, x: torch.Tensor):
        """Multi-k reconstruction loss from one forward pass, cos_k per row, the top-k indices and values, x_hat_k."""
        indices, values = self.encode_tensor(x, self.k_multi)
        k = self.k
        x_hat_k = self.decode_tensor(indices[:, :k], values[:, :k])
        x_hat_multi = x_hat_k + self._decode_latents(indices[:, k:], values[:, k:]) if self.k_multi > k else x_hat_k
        loss = self._recon_error(x, x_hat_k).mean() + self._recon_error(x, x_hat_multi).mean() / 8
        cos_k = F.cosine_similarity(x_hat_k.float(), x.float(), dim=1)
        return loss, cos_k.detach(), indices[:, :k], values[:, :k], x_hat_k

    def loss(self, x: torch.Tensor):
        """Multi-k reconstruction loss; returns (loss, cos_k per row, indices of the top k)."""
        loss, cos_k, indices, _, _ = self._forward(x)
        return loss, cos_k, indices

    def _residual(self, x: torch.Tensor, x_hat: torch.Tensor):
        """What AuxK reconstructs, and the scale that maps the code's units onto it.

        The cosine loss leaves |x_hat| free, so the residual is taken at unit scale: x - x_hat / |x_hat|.
        """
        norm = x_hat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x - x_hat / norm, norm

    def aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
        """AuxK: the aux_k strongest dead latents of each row reconstruct the detached residual of x_hat.

        dead: (h,) bool. The aux reconstruction adds no decoder bias (x_hat already holds it); the residual is
        detached, so this loss trains only the dead latents (and the encoder bias terms they read). 0 when no
        latent is dead.
        """
        dead_ids = dead.nonzero().squeeze(1)
        if aux_k <= 0 or dead_ids.numel() == 0:
            return x.new_zeros(())
        idx, val = kernels.topk_encode(x, self.W_enc[:, dead_ids], self._encoder_bias()[dead_ids],
                                       min(aux_k, dead_ids.numel()), backend=self.backend, nonneg=not self.signed)
        target, scale = self._residual(x.float(), x_hat.detach().float())
        e_hat = self._decode_latents(dead_ids[idx], val).float()
        return ((target - e_hat / scale) ** 2).sum(dim=1).mean()

    def dense_codes(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """The k-sparse codes of x as dense (B, h) rows (differentiable through the values)."""
        idx, val = self.encode_tensor(x, k)
        return torch.zeros(x.shape[0], self.h, dtype=val.dtype, device=x.device).scatter(1, idx, val)

    def contrastive_loss(self, queries: torch.Tensor, docs: torch.Tensor, tau: float) -> torch.Tensor:
        """InfoNCE of queries against docs on the L2-normalised k-sparse codes, in-batch negatives.

        Row i of queries is paired with row i of docs; every other doc of the batch is a negative, except copies
        of the positive doc (several queries may share one). loss = mean_i -log softmax_j(cos(c_qi, c_dj) / tau)[i].
        """
        iq, vq = self.encode_tensor(queries)
        vq = F.normalize(vq.float(), dim=1)
        zd = F.normalize(self.dense_codes(docs).float(), dim=1)
        # cos(c_qi, c_dj) = sum_t vq[i, t] * zd[j, iq[i, t]]: O(B^2 k) rather than a dense (B, h) @ (h, B)
        logits = F.embedding_bag(iq, zd.T.contiguous(), per_sample_weights=vq, mode="sum") / tau
        with torch.no_grad():
            same = (docs.float() @ docs.float().T) > 1 - 1e-6
            same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))

    def _decoder_directions(self):
        """(parameter, dim) whose slices along dim are the decoder's unit directions."""
        return self.W_dec, 1

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        w, dim = self._decoder_directions()
        w.div_(w.norm(dim=dim, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_radial_grad_(self) -> None:
        """Project each decoder direction's gradient onto the tangent of the unit sphere at that direction."""
        w, dim = self._decoder_directions()
        if w.grad is not None:
            w.grad.sub_((w.grad * w).sum(dim=dim, keepdim=True) * w)

    # numpy-level API
    @torch.no_grad()
    def encode(self, X, k: int | None = None, *, batch_size: int = 8192, value_dtype=np.float16,
               progress: bool | None = None) -> SparseCodes:
        """SparseCodes of the rows of X (array, memmap or .npy path; rows are L2-normalised first).

        k defaults to the model's k; a smaller k gives the strongest k of the full code (adaptive k, no retraining).
        value_dtype: float16, float32, or 8 bits with a float16 scale per row: int8 (signed or not) or uint8
        (non-negative codes only, i.e. CSR).
        """
        k = self.k if k is None else k
        kernels.reference.check_k(k, self.h)
        try:
            value_dtype = np.dtype(value_dtype)
        except TypeError as e:
            raise ValueError(f"value_dtype must be float16, float32, int8 or uint8, got {value_dtype!r}") from e
        if value_dtype not in VALUE_DTYPES + QUANTIZED_DTYPES:
            raise ValueError(f"value_dtype must be float16, float32, int8 or uint8, got {value_dtype}")
        if value_dtype == np.uint8 and self.signed:
            raise ValueError("uint8 values need non-negative codes (a CSR model); this model's codes are signed: "
                             "use int8")
        quantized = value_dtype in QUANTIZED_DTYPES
        X = self._check_input(X)
        n = X.shape[0]
        indices = np.zeros((n, k), np.uint32)
        values = np.zeros((n, k), value_dtype)
        scales = np.zeros(n, np.float16) if quantized else None
        for start, batch in _progress(iter_batches(X, batch_size), n, batch_size, "encode", progress):
            x = torch.from_numpy(batch).to(self.device)
            with _autocast(self.device):
                idx, val = self.encode_tensor(x, k)
            rows = slice(start, start + len(batch))
            indices[rows] = idx.cpu().numpy()
            val = val.float().cpu().numpy()
            if quantized:
                values[rows], scales[rows] = quantize_rows(val, value_dtype)
            else:
                values[rows] = val
        return SparseCodes(indices, values, self.h, scales)

    @torch.no_grad()
    def decode(self, codes: SparseCodes, *, batch_size: int = 65536) -> np.ndarray:
        """Reconstructions (n, d) float32 of codes (8-bit values are dequantised)."""
        if not isinstance(codes, SparseCodes):
            raise TypeError(f"decode takes SparseCodes, got {type(codes).__name__}")
        if codes.h != self.h:
            raise ValueError(f"codes have h={codes.h}, the model has h={self.h}")
        out = np.empty((codes.n, self.d), np.float32)
        for start in range(0, codes.n, batch_size):
            rows = slice(start, start + batch_size)
            val = codes.values[rows].astype(np.float32)
            if codes.scales is not None:
                val *= codes.scales[rows].astype(np.float32)[:, None]
            idx = torch.from_numpy(codes.indices[rows].astype(np.int64)).to(self.device)
            out[rows] = self.decode_tensor(idx, torch.from_numpy(val).to(self.device)).float().cpu().numpy()
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


class CSR(CompresSAE):
    """Contrastive Sparse Representation (Wen et al., ICML 2025): non-negative TopK codes with a pre-bias.

    tied=True (CSR's choice) makes the decoder the encoder's transpose: W_dec is then W_enc.T (computed, read-only),
    not a parameter, and init must be "transpose". Decoder directions are kept at unit norm, as in CompresSAE.
    """

    variant = "csr"
    signed = False

    def __init__(self, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose",
                 tied: bool = True):
        if not isinstance(tied, bool):
            raise ValueError(f"tied must be True or False, got {tied!r}")
        if tied and init != "transpose":
            raise ValueError(f"a tied decoder is the encoder's transpose: init must be 'transpose', got {init!r}")
        self._tied = tied
        super().__init__(d, h, k, seed=seed, init=init)
        self.b_pre = torch.nn.Parameter(torch.zeros(self.d))

    def __getattr__(self, name):
        if name == "W_dec" and self.__dict__.get("_tied"):
            return self.W_enc.T.contiguous()  # a copy: embedding_bag on the strided view is ~10x slower
        return super().__getattr__(name)

    @property
    def tied(self) -> bool:
        return self._tied

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.b_pre

    def config(self) -> dict:
        return {**super().config(), "tied": self._tied}

    def _encoder_bias(self) -> torch.Tensor:
        # (x - b_pre) @ W_enc + b_enc, folded into the bias so the TopK op never needs a gradient for x
        return self.b_enc - self.b_pre @ self.W_enc

    def decode_tensor(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self._decode_latents(indices, values) + self.b_pre.to(values.dtype)

    def _recon_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return ((x.float() - x_hat.float()) ** 2).sum(dim=1)

    def _residual(self, x: torch.Tensor, x_hat: torch.Tensor):
        return x - x_hat, 1.0

    def _decoder_directions(self):
        return (self.W_enc, 0) if self._tied else (self.W_dec, 1)

    def __repr__(self) -> str:
        return f"CSR(d={self.d}, h={self.h}, k={self.k}, tied={self._tied})"


def new_model(variant: str, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose",
              tied: bool | None = None) -> CompresSAE:
    """An untrained model of the named variant ("compressae" or "csr")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "csr":
        return CSR(d, h, k, seed=seed, init=init, tied=True if tied is None else tied)
    if tied:
        raise ValueError("tied decoders are a CSR option; CompresSAE's decoder is free")
    return CompresSAE(d, h, k, seed=seed, init=init)


def load_model(path, device: str | torch.device = "cpu") -> CompresSAE:
    """Load a model written by save (CompresSAE or CSR); anything else is refused with a ValueError saying why."""
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
    if "signed" in cfg and cfg["signed"] != (variant == "compressae"):  # files before CSR carry no "signed"
        raise ValueError(f"{path!r}: config says signed={cfg['signed']!r}, but {variant} codes are "
                         f"{'signed' if variant == 'compressae' else 'non-negative'}")
    tied = cfg.get("tied") if variant == "csr" else None
    if variant == "csr" and not isinstance(tied, bool):
        raise ValueError(f"{path!r}: a CSR config needs tied true or false, got {tied!r}")
    try:
        model = new_model(variant, d, h, k, tied=tied)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path!r}: invalid model config ({e})") from e
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
