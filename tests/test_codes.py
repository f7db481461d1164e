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


# 8-bit values with a float16 scale per row

@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_quantization_error_is_at_most_half_a_step(dtype):
    rng = np.random.default_rng(6)
    values = rng.standard_normal((500, 9)).astype(np.float32) * rng.uniform(1e-6, 30, (500, 1)).astype(np.float32)
    if dtype == "uint8":
        values = np.abs(values)
    values[3] = 0  # an all-zero row (CSR codes can have one)
    codes = ce.SparseCodes(np.tile(np.arange(9), (500, 1)), values, 4096).quantize(dtype)
    assert codes.values.dtype == np.dtype(dtype) and codes.scales.dtype == np.float16 and codes.quantized
    step = codes.scales.astype(np.float32)[:, None]
    err = np.abs(codes.float_values() - values)
    assert (err <= step / 2 * (1 + 1e-6)).all()
    qmax = 127 if dtype == "int8" else 255
    assert (step[:, 0] <= np.abs(values).max(axis=1) / qmax * (1 + 2 ** -10) + 1e-7).all(), "no wasted range"
    assert (codes.float_values()[3] == 0).all()


def test_bytes_per_item_of_8bit_codes_is_exact():
    rng = np.random.default_rng(7)
    f16 = random_codes(rng, 10, 32, 4096)
    q = random_codes(rng, 10, 42, 4096).quantize("int8")
    assert f16.bytes_per_item == 32 * (2 + 2) == 128
    assert q.bytes_per_item == 42 * (2 + 1) + 2 == 128
    assert q.nbytes == 10 * 128
    assert "int8 + float16 row scale, 128 bytes/item" in repr(q)


def test_8bit_codes_save_load_round_trip_and_dequantize(tmp_path):
    rng = np.random.default_rng(8)
    codes = random_codes(rng, 50, 6, 4096, np.float32)
    q = codes.quantize("int8")
    q.save(tmp_path / "q.npz")
    back = ce.load_codes(tmp_path / "q.npz")
    for name in ("indices", "values", "scales"):
        np.testing.assert_array_equal(getattr(back, name), getattr(q, name))
    with np.load(tmp_path / "q.npz") as f:
        assert int(f["format_version"]) == 2
    dense = np.zeros((50, 4096), np.float32)
    np.put_along_axis(dense, q.indices.astype(np.int64), q.float_values(), axis=1)
    np.testing.assert_array_equal(back.to_csr().toarray(), dense)
    offsets, ids, values = back.to_postings()
    assert values.dtype == np.float32 and np.isin(values, q.float_values()).all()
    # slicing and truncation keep each row's scale
    np.testing.assert_array_equal(q[5:9].float_values(), q.float_values()[5:9])
    np.testing.assert_array_equal(q[7].float_values(), q.float_values()[7:8])
    np.testing.assert_array_equal(q.truncate(2).float_values(), q.float_values()[:, :2])


def test_float_codes_are_still_written_and_read_as_version_1(tmp_path):
    codes = random_codes(np.random.default_rng(9), 20, 4, 300)
    codes.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as f:
        assert int(f["format_version"]) == 1 and "scales" not in f.files
    np.savez(tmp_path / "old.npz", indices=codes.indices, values=codes.values, h=np.int64(300),
             format_version=np.int64(1))  # as written before 8-bit codes
    back = ce.load_codes(tmp_path / "old.npz")
    np.testing.assert_array_equal(back.values, codes.values)
    assert back.scales is None and back.float_values().dtype == np.float32
    np.savez(tmp_path / "new.npz", indices=codes.indices, values=codes.values, h=np.int64(300),
             format_version=np.int64(4))  # from a future version
    with pytest.raises(ValueError, match="format version 4, this build reads 1..3"):
        ce.load_codes(tmp_path / "new.npz")


def test_8bit_codes_refuse_bad_construction():
    idx = np.zeros((2, 3), int) + np.arange(3)
    with pytest.raises(ValueError, match="int8 values need per-row scales"):
        ce.SparseCodes(idx, np.ones((2, 3), np.int8), 10)
    with pytest.raises(ValueError, match="scales apply to 8-bit values only"):
        ce.SparseCodes(idx, np.ones((2, 3), np.float16), 10, np.ones(2, np.float16))
    with pytest.raises(ValueError, match=r"scales must be \(2,\) float16"):
        ce.SparseCodes(idx, np.ones((2, 3), np.int8), 10, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        ce.SparseCodes(idx, np.ones((2, 3), np.int8), 10, np.array([1, np.nan], np.float16))
    with pytest.raises(ValueError, match="uint8 values need non-negative codes"):
        ce.SparseCodes(idx, -np.ones((2, 3), np.float32), 10).quantize("uint8")
    with pytest.raises(ValueError, match="8-bit values must be int8 or uint8"):
        ce.SparseCodes(idx, np.ones((2, 3), np.float32), 10).quantize("int4")


def test_nonnegative_check_and_latent_counts_skip_zero_values():
    idx = np.array([[0, 1, 2], [2, 3, 4]])
    signed = ce.SparseCodes(idx, np.array([[1, -1, 0.5], [1, 1, 1]], np.float16), 8)
    relu = ce.SparseCodes(idx, np.array([[1, 0.5, 0], [1, 0, 0]], np.float16), 8)
    assert not signed.is_nonnegative and relu.is_nonnegative and relu.quantize("uint8").is_nonnegative
    np.testing.assert_array_equal(relu.latent_counts(), [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(signed.latent_counts(), [1, 1, 2, 1, 1, 0, 0, 0])
