"""Reading embeddings (csae_engine/data.py): bad rows named by their number in the whole array."""
import numpy as np
import pytest

from csae_engine.data import as_matrix, unit_rows_at
from conftest import unit


@pytest.mark.parametrize("bad, message", [(np.nan, "X row 17 holds NaN or Inf"), (0.0, "X row 17 is all zeros")])
def test_unit_rows_at_names_the_bad_row_in_the_whole_array(tmp_path, bad, message):
    X = unit(np.random.default_rng(0), 30, 6)
    rows = np.array([2, 9, 17, 25])
    np.testing.assert_allclose(unit_rows_at(X, rows), X[rows], atol=1e-6)
    X[17] = bad
    np.save(tmp_path / "x.npy", X)
    for source in (X, as_matrix(tmp_path / "x.npy")):
        with pytest.raises(ValueError, match=message):
            unit_rows_at(source, rows)
    assert unit_rows_at(X, rows[:2], "Q").dtype == np.float32
