"""Micro benchmarks at fixed sizes (pytest-benchmark): encode, sparse scoring, dense rerank, dense scan.

    pytest benchmarks/ --benchmark-only                          # run (plain `pytest` collects tests/ only)
    pytest benchmarks/ --benchmark-only --benchmark-save=NAME    # keep this run in .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare      # compare with the last saved run

A seeded random model (d=384, h=4096, k=32: the README's setting, untrained: speed does not depend on training)
and 65,536 random unit items, so no data or training is needed. Every search runs on one thread.
"""
import numpy as np
import pytest

import csae_engine as ce

D, H, K = 384, 4096, 32
N_ITEMS, N_ENCODE, N_QUERIES = 65536, 4096, 256


def _unit(n, seed):
    X = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    import torch
    torch.set_num_threads(1)
    return ce.CompresSAE(D, H, K, seed=0)


@pytest.fixture(scope="module")
def engine(model):
    return ce.Engine.from_codes(model.encode(_unit(N_ITEMS, 1)), model)


@pytest.fixture(scope="module")
def queries():
    return _unit(N_QUERIES, 2)


def test_encode(benchmark, model):
    X = _unit(N_ENCODE, 3)
    codes = benchmark(model.encode, X)
    assert codes.n == N_ENCODE and codes.k == K


def test_sparse_search(benchmark, engine, queries):
    ids, _ = benchmark(engine.search, queries, 10, mode="sparse", num_threads=1)
    assert ids.shape == (N_QUERIES, 10)


def test_dense_rerank(benchmark, engine, queries):
    ids, _ = benchmark(engine.search, queries, 10, mode="dense", candidates=1000, num_threads=1)
    assert ids.shape == (N_QUERIES, 10)


def test_dense_scan_all(benchmark, engine, queries):
    ids, _ = benchmark(engine.search, queries[:32], 10, mode="dense", candidates="all", num_threads=1)
    assert ids.shape == (32, 10)
