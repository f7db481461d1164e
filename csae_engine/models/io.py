"""Model files: one safetensors file holding the weights and, in its metadata, the JSON config; and the model hash
an index records.

The metadata key METADATA_KEY maps to the model's config(): format_version, variant ("compressae" or "csr"),
signed, d, h, k, and for CSR tied. Files written before CSR existed carry no "signed" and still load.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .base import TopKSAE

__all__ = ["MODEL_FORMAT_VERSION", "METADATA_KEY", "VARIANTS", "new_model", "load_model", "save_model", "model_hash"]

MODEL_FORMAT_VERSION = 1
METADATA_KEY = "csae_engine"
VARIANTS = ("compressae", "csr")


def new_model(variant: str, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose",
              tied: bool | None = None) -> TopKSAE:
    """An untrained model of the named variant.

    Parameters
    ----------
    variant : str
        "compressae" (CompresSAE) or "csr" (CSRAutoencoder).
    d, h, k, seed, init
        As for TopKSAE.
    tied : bool, optional
        CSR only: a decoder tied to the encoder's transpose (default True for CSR).

    Returns
    -------
    TopKSAE

    Raises
    ------
    ValueError
        An unknown variant, tied=True for CompresSAE, or any error of the model's constructor.
    """
    # imported here: the model classes import this module for the file format
    from .compressae import CompresSAE
    from .csr import CSRAutoencoder
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "csr":
        return CSRAutoencoder(d, h, k, seed=seed, init=init, tied=True if tied is None else tied)
    if tied:
        raise ValueError("tied decoders are a CSR option; CompresSAE's decoder is free")
    return CompresSAE(d, h, k, seed=seed, init=init)


def save_model(model: TopKSAE, path) -> None:
    """Write model to one safetensors file: weights plus config() in its metadata. The write is atomic.

    Parameters
    ----------
    model : TopKSAE
        The model to write.
    path : str or os.PathLike
        The file; a temporary path + ".tmp" is written first, then renamed.
    """
    from safetensors.torch import save_file
    path = os.fspath(path)
    tensors = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(model.config())})
    os.replace(tmp, path)


def load_model(path, device: str | torch.device = "cpu") -> TopKSAE:
    """Load a model written by save_model (TopKSAE.save): a CompresSAE or a CSRAutoencoder.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    device : str or torch.device
        Where to put the weights (default "cpu").

    Returns
    -------
    TopKSAE

    Raises
    ------
    FileNotFoundError
        No file at path.
    ValueError
        The file is damaged, foreign, of another format version, or inconsistent (the message says why).
    """
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
    if METADATA_KEY not in meta:
        raise ValueError(f"{path!r} is a safetensors file but not a csae model (no {METADATA_KEY!r} metadata)")
    try:
        cfg = json.loads(meta[METADATA_KEY])
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


def model_hash(model: TopKSAE) -> str:
    """SHA-256 of a model's config and weights (as float32), in hex: an index records it to find its model again.

    Parameters
    ----------
    model : TopKSAE

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
