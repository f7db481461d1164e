"""csae-engine: compress dense embeddings into k-sparse codes (CompresSAE or CSR) and search them."""
from ._version import __version__
from .codes import SparseCodes, load_codes
from .engine import Engine
from .model import CSR, CompresSAE, load_model
from .train import train

__all__ = ["__version__", "train", "Engine", "CompresSAE", "CSR", "load_model", "SparseCodes", "load_codes"]
