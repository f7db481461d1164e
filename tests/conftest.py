import os

import numpy as np
import pytest
import torch

from csae_engine import datasets
from csae_engine.models import CSRAutoencoder

WORDNET = datasets.shared_dataset()

# Tolerances per dtype for comparing against the float64/float32 references: (atol, rtol).
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (1e-1, 5e-2)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def wordnet():
    """The shared real dataset: docs (float16 memmap), queries, gt_top100."""
    if not (WORDNET / "docs.npy").exists():
        if os.environ.get("CSAE_REQUIRE_SHARED") == "1":  # CI: the real-data tests must run
            pytest.fail(f"shared data not found at {WORDNET} (set CSAE_SHARED to its folder)")
        pytest.skip(f"shared data not found at {WORDNET}")
    return {
        "docs": np.load(WORDNET / "docs.npy", mmap_mode="r"),
        "queries": np.load(WORDNET / "queries.npy"),
        "gt": np.load(WORDNET / "gt_top100.npy"),
        "path": WORDNET,
    }


def unit(rng, n, d, dtype=np.float32):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(dtype)


def csr_model(d=10, h=40, k=3, tied=True, seed=1):
    """A CSR model with non-zero biases, so that the bias terms are exercised."""
    model = CSRAutoencoder(d, h, k, seed=seed, tied=tied)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.b_enc.copy_(torch.randn(h, generator=g) * 0.1)
        model.b_pre.copy_(torch.randn(d, generator=g) * 0.3)
    return model


def manual_z(model, x):
    """Pre-activations in float64: (x - b_pre) @ W_enc + b_enc, b_pre zero for CompresSAE."""
    b_pre = model.decoder_bias.detach().double() if model.decoder_bias is not None else 0
    return (x.double() - b_pre) @ model.W_enc.detach().double() + model.b_enc.detach().double()


def manual_code(z, k, nonneg):
    """Dense (B, h) code: the k largest z then ReLU (nonneg), or the k largest |z| signed."""
    keep = (z if nonneg else z.abs()).argsort(dim=1, descending=True)[:, :k]
    vals = z.gather(1, keep)
    return torch.zeros_like(z).scatter_(1, keep, vals.clamp_min(0) if nonneg else vals)
