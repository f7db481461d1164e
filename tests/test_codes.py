import numpy as np
import pytest

import csae_engine as ce
from csae_engine import _core


def random_codes(rng, n, k, h, value_dtype=np.float16):
    indices = np.stack([rng.choice(h, k, replace=False) for _ in range(n)])
    return ce.SparseCodes(indices, rng.standard_normal((n, k)).astype(value_dtype), h)


def test_index_dtype_is_the_smallest_that_fits():
    rng = np.random.default_rng(0)
    assert random_codes(rng, 3, 2, 256).indices.dtype == np.uint8
    assert random_codes(rng, 3, 2, 257).indices.dtype == np.uint16
    assert random_codes(rng, 3, 2, 65536).indices.dtype == np.uint16
    assert random_codes(rng, 3, 2, 65537).indices.dtype == np.uint32


def test_to_csr_matches_dense():
    rng = np.random.default_rng(1)
    codes = random_codes(rng, 20, 4, 50, np.float32)
    dense = np.zeros((20, 50), np.float32)
    np.put_along_axis(dense, codes.indices.astype(np.int64), codes.values, axis=1)
    np.testing.assert_array_equal(codes.to_csr().toarray(), dense)


@pytest.mark.parametrize("h", [200, 4096, 70000])
@pytest.mark.parametrize("value_dtype", [np.float16, np.float32])
def test_postings_are_the_transpose_of_the_codes(h, value_dtype):
    rng = np.random.default_rng(2)
    codes = random_codes(rng, 9001, 7, h, value_dtype)
    offsets, ids, values = codes.to_postings()
    assert offsets.dtype == np.int64 and ids.dtype == np.uint32 and values.dtype == value_dtype
    csc = codes.to_csr().tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(offsets, csc.indptr)
    np.testing.assert_array_equal(ids, csc.indices)
    np.testing.assert_array_equal(values, csc.data.astype(value_dtype))
    np.testing.assert_array_equal(np.diff(offsets), codes.latent_counts())


def test_postings_single_thread_equals_parallel():
    codes = random_codes(np.random.default_rng(3), 20000, 5, 300)
    a = _core.build_postings(codes.indices, codes.values, codes.h, num_threads=1)
    b = _core.build_postings(codes.indices, codes.values, codes.h, num_threads=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_postings_refuse_bad_input():
    with pytest.raises(ValueError, match="out of range for h=10"):
        _core.build_postings(np.array([[3, 12]], np.uint16), np.ones((1, 2), np.float32), 10)
    with pytest.raises(ValueError, match="same shape"):
        _core.build_postings(np.zeros((2, 3), np.uint16), np.ones((2, 2), np.float32), 10)
    with pytest.raises(ValueError, match="values must be float16 or float32"):
        _core.build_postings(np.zeros((2, 3), np.uint16), np.ones((2, 3), np.float64), 10)
    with pytest.raises(ValueError, match="indices must be uint8, uint16 or uint32"):
        _core.build_postings(np.zeros((2, 3), np.int64), np.ones((2, 3), np.float32), 10)


def test_codes_refuse_bad_construction():
    with pytest.raises(ValueError, match="lie in 0..9"):
        ce.SparseCodes(np.array([[1, 10]]), np.ones((1, 2), np.float16), 10)
    with pytest.raises(ValueError, match="k=3 exceeds h=2"):
        ce.SparseCodes(np.zeros((1, 3), int), np.ones((1, 3), np.float16), 2)
    with pytest.raises(ValueError, match="float16 or float32"):
        ce.SparseCodes(np.zeros((1, 2), int), np.ones((1, 2)), 4)


def test_save_load_round_trip_is_exact(tmp_path):
    codes = random_codes(np.random.default_rng(4), 100, 6, 4096)
    codes.save(tmp_path / "c.npz")
    back = ce.load_codes(tmp_path / "c.npz")
    assert back.h == 4096 and back.indices.dtype == np.uint16 and back.values.dtype == np.float16
    np.testing.assert_array_equal(back.indices, codes.indices)
    np.testing.assert_array_equal(back.values, codes.values)
    assert not list(tmp_path.glob("*.tmp*"))


def test_damaged_and_foreign_codes_files_are_refused(tmp_path):
    codes = random_codes(np.random.default_rng(5), 100, 6, 4096)
    codes.save(tmp_path / "c.npz")
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid csae codes file"):
        ce.load_codes(tmp_path / "trunc.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        ce.load_codes(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a valid csae codes file"):
        ce.load_codes(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        ce.load_codes(tmp_path / "missing.npz")
