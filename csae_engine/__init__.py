"""csae-engine: compress dense embeddings into k-sparse codes (CompresSAE or CSR) and search them."""
from ._version import __version__
from .codes import SparseCodes, load_codes
from .compact import CompactCodes
from .engine import Engine
from .models import CompresSAE, CSRAutoencoder, TopKSAE, load_model, new_model
from .training import TrainConfig, train

__all__ = ["__version__", "train", "TrainConfig", "Engine", "TopKSAE", "CompresSAE", "CSRAutoencoder", "load_model",
           "new_model", "SparseCodes", "CompactCodes", "load_codes"]
