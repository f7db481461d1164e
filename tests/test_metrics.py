import numpy as np
import pytest

from csae_engine.metrics import exact_topk, recall
from conftest import unit


def test_exact_topk_matches_full_sort_across_batches():
    rng = np.random.default_rng(0)
    X, Q = unit(rng, 1000, 16), unit(rng, 7, 16)
    found = exact_topk(Q * 5, X, 20, batch_size=64)
    expected = np.argsort(-(Q @ X.T), axis=1)[:, :20]
    np.testing.assert_array_equal(found, expected)


def test_recall_counts_overlap_regardless_of_order():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 1], [0, 0, 0, 0]])
    assert recall(found, truth, 4) == pytest.approx(3 / 8)
    assert recall(found, truth, 2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 5 columns"):
        recall(found, truth, 5)
