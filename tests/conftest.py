import os

import numpy as np
import pytest
import torch

from csae_engine import datasets

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


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
