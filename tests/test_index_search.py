"""index/search.py: the search parameters and the merging of per-segment results."""
import numpy as np
import pytest

from csae_engine.index.search import DEFAULT_CANDIDATES, SearchParams, first_best, merge_top


def test_search_params_resolve_the_sparse_stage():
    assert SearchParams(10).sparse_top(1000) == 10
    assert SearchParams(10, "dense").sparse_top(5000) == DEFAULT_CANDIDATES == 1000, "dense mode reranks 1,000"
    assert SearchParams(300, "dense").sparse_top(5000) == 3000, "or 10 * top_k, when more"
    assert SearchParams(10, "dense").sparse_top(700) == 700, "never more than the items"
    assert SearchParams(10, "dense", candidates=5000).sparse_top(1000) == 1000, "never more than the items"
    assert SearchParams(10, "dense", candidates="all").scans_all
    assert not SearchParams(10, "sparse", candidates="all").scans_all


@pytest.mark.parametrize("params, error, message", [
    (SearchParams(2.0), TypeError, "top_k must be a positive int"),
    (SearchParams(0), ValueError, "top_k must be a positive int"),
    (SearchParams(20), ValueError, "exceeds the 10 indexed items"),
    (SearchParams(5, "dense", candidates=3), ValueError, "must be at least top_k"),
    (SearchParams(5, "dense", candidates=7.5), TypeError, "candidates must be a positive int"),
    (SearchParams(5, query_terms=1.0), TypeError, "query_terms must be a positive int"),
    (SearchParams(5, query_terms=9), ValueError, r"query_terms must be in 1..8"),
])
def test_search_params_name_what_is_wrong(params, error, message):
    with pytest.raises(error, match=message):
        params.check(n_items=10, k=8)


def test_merge_top_keeps_the_best_and_pads_with_minus_one_and_minus_inf():
    a = (np.array([[1, 2]]), np.array([[0.9, 0.1]], np.float32))
    b = (np.array([[7]]), np.array([[0.5]], np.float32))
    ids, scores = merge_top([a, b], 4)
    np.testing.assert_array_equal(ids, [[1, 7, 2, -1]])
    np.testing.assert_array_equal(scores, np.array([[0.9, 0.5, 0.1, -np.inf]], np.float32))
    ids, _ = merge_top([(np.array([[3]]), np.array([[0.2]])), (np.array([[4]]), np.array([[0.2]]))], 1)
    assert ids[0, 0] == 3, "a tie keeps the first part's result"


def test_first_best_picks_what_a_stable_descending_sort_picks():
    rng = np.random.default_rng(5)
    for _ in range(200):
        nq, m = int(rng.integers(1, 5)), int(rng.integers(1, 60))
        scores = rng.integers(0, 6, (nq, m)).astype(np.float32)  # many ties
        scores[rng.random((nq, m)) < 0.2] = -np.inf  # padding of short results
        n = int(rng.integers(1, m + 2))
        expected = np.zeros(scores.shape, bool)
        np.put_along_axis(expected, np.argsort(-scores, axis=1, kind="stable")[:, :n], True, 1)
        np.testing.assert_array_equal(first_best(scores, n), expected)
