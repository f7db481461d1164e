"""csae-engine: compress dense embeddings into k-sparse codes (CompresSAE) and search them."""
from ._version import __version__
from .codes import SparseCodes, load_codes
from .engine import Engine
from .model import CompresSAE, load_model
from .train import train

__all__ = ["__version__", "train", "Engine", "CompresSAE", "load_model", "SparseCodes", "load_codes"]
