"""The models: TopK sparse autoencoders on L2-normalised embeddings, and their files.

- base.py: TopKSAE, the base class (encode/decode, the multi-k forward pass, AuxK and contrastive terms, save);
- compressae.py: CompresSAE (Kasalický et al., RecSys 2025), signed codes;
- csr.py: CSRAutoencoder (CSR, Wen et al., ICML 2025), non-negative codes with a pre-bias;
- encoding.py: arrays to SparseCodes and back, a batch at a time (TopKSAE.encode / decode);
- io.py: new_model, load_model, the file format and model_hash.
"""
from .base import INITS, ForwardOutput, TopKSAE
from .encoding import autocast
from .compressae import CompresSAE
from .csr import CSRAutoencoder
from .io import METADATA_KEY, MODEL_FORMAT_VERSION, VARIANTS, load_model, model_hash, new_model, save_model

__all__ = ["TopKSAE", "CompresSAE", "CSRAutoencoder", "ForwardOutput", "autocast", "new_model", "load_model",
           "save_model", "model_hash", "MODEL_FORMAT_VERSION", "METADATA_KEY", "VARIANTS", "INITS"]
