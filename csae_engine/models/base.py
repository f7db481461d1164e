"""TopKSAE: the base class of the TopK sparse autoencoders, on L2-normalised embeddings.

Every variant encodes the same way and differs only in a few hooks:

    z     = x @ W_enc + encoder bias               W_enc (d, h)
    code  = the k strongest entries of z           signed (CompresSAE) or ReLU'd (CSRAutoencoder)
    x_hat = code @ W_dec + decoder_bias            W_dec (h, d), unit-norm directions
    loss  = err(x, x_hat_k) + err(x, x_hat_4k) / 8   the multi-k loss, one forward pass

A variant sets ``variant`` and ``signed`` and implements ``_recon_error`` (err above) and ``_residual`` (what AuxK
reconstructs); CSRAutoencoder also overrides the bias and decoder hooks. The training terms (the dense training
path, AuxK, InfoNCE) are in losses.py, the file format in io.py.
"""
import abc
import numpy as np
import torch
import torch.nn.functional as F

from .. import kernels
from ..compact import DEFAULT_INDEX_CODING
from ..data import as_matrix
from ..utils import positive_int
from .encoding import DEFAULT_VALUE_BITS, decode_codes, encode_compact, encode_rows
from .io import MODEL_FORMAT_VERSION, save_model
from .losses import ForwardOutput, TrainingLosses

__all__ = ["INITS", "ForwardOutput", "TopKSAE"]

INITS = ("transpose", "random")


class TopKSAE(TrainingLosses, torch.nn.Module, abc.ABC):
    """TopK sparse autoencoder: encode (n, d) embeddings into k-sparse codes over h latents and decode them back.

    The base class of CompresSAE and CSRAutoencoder; it is not instantiated itself.

    Parameters
    ----------
    d : int
        Embedding dimension.
    h : int
        Latents (default 4096).
    k : int
        Non-zeros per code, in 1..h (default 32).
    seed : int
        Seeds the initial weights.
    init : str
        "transpose" starts the encoder as the decoder's transpose; "random" draws it independently (unit columns).

    Raises
    ------
    TypeError
        d, h or k not an int.
    ValueError
        d or h not positive, k outside 1..h, or an unknown init.
    """

    variant: str  # the name in model files: "compressae" or "csr"
    signed: bool  # whether codes carry signs; CSR's are non-negative
    _tied = False  # CSR: the decoder is the encoder's transpose

    def __init__(self, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose"):
        super().__init__()
        d, h = positive_int(d, "d"), positive_int(h, "h")
        kernels.reference.check_k(int(k) if isinstance(k, np.integer) else k, h)
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
        """The device of the weights."""
        return self.W_enc.device

    def config(self) -> dict:
        """What a model file records besides the weights: format version, variant, signed, d, h, k."""
        return {"format_version": MODEL_FORMAT_VERSION, "variant": self.variant, "signed": self.signed,
                "d": self.d, "h": self.h, "k": self.k}

    # torch-level ops (used by training and by the engine)
    def encoder_bias(self) -> torch.Tensor:
        """b with z = x @ W_enc + b."""
        return self.b_enc

    def encode_tensor(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k codes of unit-norm rows.

        Parameters
        ----------
        x : torch.Tensor
            (B, d) unit-norm rows.
        k : int, optional
            Non-zeros per code (default the model's k).

        Returns
        -------
        tuple of torch.Tensor
            indices (B, k) int64 and values (B, k), strongest first.
        """
        return kernels.topk_encode(x, self.W_enc, self.encoder_bias(), self.k if k is None else k,
                                   backend=self.backend, nonneg=not self.signed)

    def _decode_latents(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """code @ W_dec, without the decoder bias."""
        return kernels.sparse_decode(indices, values, self.W_dec, backend=self.backend)

    def decode_tensor(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The reconstruction (B, d): code @ W_dec, plus decoder_bias where the model has one.

        Parameters
        ----------
        indices, values : torch.Tensor
            (B, k) codes, as from encode_tensor.

        Returns
        -------
        torch.Tensor
            (B, d) reconstructions.
        """
        return self._decode_latents(indices, values)

    @abc.abstractmethod
    def _recon_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """(B,) reconstruction error of each row: the loss term."""

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """The multi-k reconstruction loss from one forward pass, with what training needs besides.

        Parameters
        ----------
        x : torch.Tensor
            (B, d) unit-norm rows.

        Returns
        -------
        ForwardOutput
            loss, cos_k per row (detached), the top-k indices and values, and x_hat_k.
        """
        if self.uses_dense_step(x.device):  # step_path: dense matmuls on CUDA (losses.py)
            return self._forward_dense(x)
        indices, values = self.encode_tensor(x, self.k_multi)
        k = self.k
        x_hat_k = self.decode_tensor(indices[:, :k], values[:, :k])
        x_hat_multi = x_hat_k + self._decode_latents(indices[:, k:], values[:, k:]) if self.k_multi > k else x_hat_k
        loss = self._recon_error(x, x_hat_k).mean() + self._recon_error(x, x_hat_multi).mean() / 8
        cos_k = F.cosine_similarity(x_hat_k.float(), x.float(), dim=1)
        return ForwardOutput(loss, cos_k.detach(), indices[:, :k], values[:, :k], x_hat_k)

    @abc.abstractmethod
    def _residual(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """What AuxK reconstructs, and the scale that maps the code's units onto it."""

    def dense_codes(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """The codes of encode_tensor(x, k) as dense (B, h) rows, zero outside the top k, differentiable through
        the values."""
        idx, val = self.encode_tensor(x, k)
        return torch.zeros(x.shape[0], self.h, dtype=val.dtype, device=x.device).scatter(1, idx, val)

    def _decoder_directions(self) -> tuple[torch.nn.Parameter, int]:
        """(parameter, dim) whose slices along dim are the decoder's unit directions."""
        return self.W_dec, 1

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale each decoder direction to unit L2 norm, in place."""
        w, dim = self._decoder_directions()
        w.div_(w.norm(dim=dim, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_radial_grad_(self) -> None:
        """Project each decoder direction's gradient onto the tangent of the unit sphere at that direction."""
        w, dim = self._decoder_directions()
        if w.grad is not None:
            w.grad.sub_((w.grad * w).sum(dim=dim, keepdim=True) * w)

    # numpy-level API
    def encode(self, X, k: int | None = None, *, bytes_per_item: int | None = None, value_bits: int | None = None,
               index_coding: str | None = None, refit: bool | None = None, support: str | None = None,
               batch_size: int = 8192,
               value_dtype=np.float16, progress: bool | None = None):
        """Codes of the rows of X; rows are L2-normalised first.

        Two kinds: SparseCodes of k entries (the default: k = the model's k, float16 values), or, with a byte
        budget, CompactCodes: the most entries that fit bytes_per_item, bit-packed (csae_engine/compact.py).

        Parameters
        ----------
        X : array_like, np.memmap or path
            (n, d) embeddings, or a .npy file of them (read a batch at a time).
        k : int, optional
            Non-zeros per code; default the model's k. A smaller k gives the strongest k of the full code
            (adaptive k, no retraining).
        batch_size : int
            Rows encoded at once.
        bytes_per_item : int, optional
            A byte budget per item: returns CompactCodes with as many entries as fit (k must be None).
        value_bits : int, optional
            Bits per value of CompactCodes (2..16; default DEFAULT_VALUE_BITS).
        index_coding : {"packed", "ef"}, optional
            How CompactCodes store their latents (default DEFAULT_INDEX_CODING): "packed", ceil(log2 h) bits
            each, entries strongest first; "ef", the sorted set Elias-Fano coded (about log2(h / k) + 2 bits
            each, so more entries fit the budget), entries in increasing latent order (unpack_strongest gives
            them strongest first).
        support : {"encoder", "pursuit"}, optional
            How CompactCodes choose their latents: the encoder's top k (default), or orthogonal matching pursuit
            over the decoder (ValueRefit.pursuit: a better reconstruction, k decoder products per item).
        refit : bool, optional
            Replace the encoder's values by the least-squares values on the same latents (ValueRefit: never a
            worse reconstruction; signed models only). Default: on for CompactCodes, off for SparseCodes.
        value_dtype : dtype
            SparseCodes only: float16, float32, or 8 bits with a float16 scale per row: int8 (signed or not) or
            uint8 (non-negative codes only, i.e. CSR).
        progress : bool, optional
            A progress bar; None shows one for 200,000 rows or more.

        Returns
        -------
        SparseCodes or CompactCodes

        Raises
        ------
        ValueError
            k outside 1..h, an unknown value_dtype, uint8 for signed codes, a budget too small for one entry,
            refit on non-negative codes, or bad rows in X (named by row).
        """
        if bytes_per_item is None:
            if value_bits is not None or index_coding is not None or support is not None:
                raise ValueError("value_bits, index_coding and support apply to compact codes: give bytes_per_item "
                                 "too")
            return encode_rows(self, X, k, batch_size=batch_size, value_dtype=value_dtype, progress=progress,
                               refit=bool(refit))
        if k is not None:
            raise ValueError("give k or bytes_per_item, not both: a byte budget sets k")
        return encode_compact(self, X, bytes_per_item, value_bits=DEFAULT_VALUE_BITS if value_bits is None else
                              value_bits, index_coding=DEFAULT_INDEX_CODING if index_coding is None else
                              index_coding, batch_size=batch_size, progress=progress, refit=refit is not False,
                              support="encoder" if support is None else support)

    def decode(self, codes, *, batch_size: int = 65536) -> np.ndarray:
        """Reconstructions of SparseCodes or CompactCodes (quantised values are dequantised).

        Parameters
        ----------
        codes : SparseCodes or CompactCodes
            Codes over this model's h latents.
        batch_size : int
            Rows decoded at once.

        Returns
        -------
        np.ndarray
            (n, d) float32.

        Raises
        ------
        TypeError
            codes are neither SparseCodes nor CompactCodes.
        ValueError
            codes have another h.
        """
        return decode_codes(self, codes, batch_size=batch_size)

    def check_input(self, X, name: str = "X") -> np.ndarray:
        """X as a 2-D floating matrix of this model's d columns (see data.as_matrix); rows are not normalised.

        Parameters
        ----------
        X : array_like, np.memmap or path
            (n, d) embeddings or a .npy file of them.
        name : str
            What errors call X.

        Returns
        -------
        np.ndarray
            X, or a view of it (a FileMatrix for files).

        Raises
        ------
        FileNotFoundError
            X is a path that does not exist.
        ValueError
            X is not 2-D, empty, not floating, or has another number of columns than d.
        """
        X = as_matrix(X, name)
        if X.shape[1] != self.d:
            raise ValueError(f"{name} has d={X.shape[1]} columns, the model expects d={self.d}")
        return X

    def save(self, path) -> None:
        """Write the model to one safetensors file (weights, and config() in its metadata), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; io.load_model reads it back.
        """
        save_model(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, h={self.h}, k={self.k})"
