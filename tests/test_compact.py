"""compact.py: bit-packed codes, their byte budget and their file."""
import math

import numpy as np
import pytest

import csae_engine as ce
from csae_engine.compact import CompactCodes, compact_k, ef_low_bits, index_bits, quantize_values, stream_bits
from csae_engine.models.encoding import encode_compact


def random_entries(rng, n, k, h, vb):
    indices = np.argsort(rng.random((n, h)), axis=1)[:, :k]
    limit = (1 << (vb - 1)) - 1
    q = rng.integers(-limit, limit + 1, (n, k)).astype(np.int32)
    scales = rng.random(n).astype(np.float16)
    return indices, q, scales


@pytest.mark.parametrize("h, k, vb", [(4096, 63, 4), (4096, 50, 8), (1000, 7, 5), (65536, 3, 16), (16, 16, 2),
                                      (8192, 33, 3)])
def test_pack_unpack_round_trips_exactly(h, k, vb):
    rng = np.random.default_rng(h + k + vb)
    indices, q, scales = random_entries(rng, 300, k, h, vb)
    codes = CompactCodes.pack(indices, q, scales, h, vb, "packed")
    assert codes.packed.shape == (300, codes.row_bytes) and codes.row_bytes == 2 + -(-k * (index_bits(h) + vb) // 8)
    back_idx, back_q = codes.unpack()
    np.testing.assert_array_equal(back_idx, indices)
    np.testing.assert_array_equal(back_q, q)
    np.testing.assert_array_equal(codes.scales, scales)
    np.testing.assert_array_equal(codes.unpack(slice(5, 9))[1], q[5:9])


def ef_row_bytes(h, k, vb):
    """The ef format's bytes per row, from its definition."""
    low = max(0, math.floor(math.log2(h / k)))
    return 2 + -(-(k * low + k + ((h - 1) >> low) + 1 + k * vb) // 8)


@pytest.mark.parametrize("h, k, vb", [(4096, 88, 4), (4096, 63, 4), (4096, 1, 4), (4096, 4096, 2), (1000, 7, 5),
                                      (65536, 3, 16), (16, 16, 2), (16, 1, 8), (1, 1, 3), (2, 1, 2), (300, 200, 6),
                                      (8192, 33, 3), (100, 13, 16)])
def test_ef_pack_unpack_round_trips_exactly(h, k, vb):
    rng = np.random.default_rng(h + k + vb)
    indices, q, scales = random_entries(rng, 200, k, h, vb)
    codes = CompactCodes.pack(indices, q, scales, h, vb, "ef")
    assert codes.index_coding == "ef" and codes.index_bits == ef_low_bits(h, k)
    assert codes.packed.shape == (200, codes.row_bytes) and codes.row_bytes == ef_row_bytes(h, k, vb)
    order = np.argsort(indices, axis=1)
    want_idx, want_q = np.take_along_axis(indices, order, 1), np.take_along_axis(q, order, 1)
    back_idx, back_q = codes.unpack()
    np.testing.assert_array_equal(back_idx, want_idx)  # stored in increasing latent order
    np.testing.assert_array_equal(back_q, want_q)
    np.testing.assert_array_equal(codes.scales, scales)
    np.testing.assert_array_equal(codes.unpack(slice(5, 9))[0], want_idx[5:9])
    strong_idx, strong_q = codes.unpack_strongest()
    mags = np.abs(strong_q)
    assert (mags[:, :-1] >= mags[:, 1:]).all(), "strongest first"
    for row in range(0, 200, 37):  # the same entries, ties by increasing latent
        assert sorted(zip(strong_idx[row], strong_q[row])) == sorted(zip(want_idx[row], want_q[row]))
        tie = (mags[row, :-1] == mags[row, 1:])
        assert (strong_idx[row, :-1][tie] < strong_idx[row, 1:][tie]).all()
    sparse = codes.to_sparse()
    np.testing.assert_array_equal(sparse.indices, strong_idx)


def test_ef_bitstream_layout():
    """h=16, k=3, L=2: low parts, the bitmap (bit (x >> 2) + i), then the values; byte for byte."""
    codes = CompactCodes.pack(np.array([[9, 2, 14]]), np.array([[1, -1, -2]]), np.array([1.0], np.float16), 16, 3,
                              "ef")
    assert ef_low_bits(16, 3) == 2 and stream_bits(16, 3, 3, "ef") == 3 * 2 + 3 + 3 + 1 + 3 * 3
    # x = 2, 9, 14: lows 2, 1, 2; highs 0, 2, 3 -> bitmap bits 0, 3, 5; q = -1, 1, -2 -> 0b111, 0b001, 0b110
    bits = [0, 1, 1, 0, 0, 1] + [1, 0, 0, 1, 0, 1, 0] + [1, 1, 1, 1, 0, 0, 0, 1, 1]
    want = np.packbits(np.array(bits + [0] * (24 - len(bits)), np.uint8), bitorder="little")
    np.testing.assert_array_equal(codes.packed[0, 2:], want)


def test_ef_refuses_repeated_latents_and_bad_bitmaps():
    with pytest.raises(ValueError, match="row 1 holds a latent twice"):
        CompactCodes.pack(np.array([[1, 2], [3, 3]]), np.zeros((2, 2), np.int32), np.ones(2, np.float16), 8, 4, "ef")
    codes = CompactCodes.pack(np.array([[1, 2], [3, 4]]), np.zeros((2, 2), np.int32), np.ones(2, np.float16), 8, 4,
                              "ef")
    bad = codes.packed.copy()
    bad[1, 2] ^= 1 << (2 * ef_low_bits(8, 2) + 1)  # bitmap bit 1 of row 1 (its set bits: 0 and 2)
    with pytest.raises(ValueError, match="row 1: the high-part bitmap holds 3 set bits, expected k=2"):
        CompactCodes(bad, 8, 2, 4, "ef").unpack()
    with pytest.raises(ValueError, match="index_coding must be one of"):
        CompactCodes.pack(np.array([[1]]), np.zeros((1, 1), np.int32), np.ones(1, np.float16), 8, 4, "elias")
    with pytest.raises(TypeError, match="index_coding must be a str"):
        compact_k(4096, 128, 4, index_coding=1)


@pytest.mark.parametrize("vb", [2, 4, 6, 8, 12])
def test_quantised_values_are_within_half_a_step(vb):
    v = np.random.default_rng(vb).standard_normal((500, 40)).astype(np.float32)
    v[3] = 0  # an all-zero row
    q, s = quantize_values(v, vb)
    step = s.astype(np.float32)[:, None]
    assert (np.abs(v - q * step) <= step / 2 + 1e-7).all()
    assert (np.abs(q) <= (1 << (vb - 1)) - 1).all() and s[3] == 0 and (q[3] == 0).all()
    if vb <= 8:  # wider q may stop a step short: the float16 scale is rounded up
        assert (np.abs(q).max(axis=1)[np.arange(500) != 3] == (1 << (vb - 1)) - 1).all(), "each row uses its range"


@pytest.mark.parametrize("h", [1, 2, 16, 100, 1024, 4096, 8192, 65536])
@pytest.mark.parametrize("vb", [2, 4, 5, 8, 16])
@pytest.mark.parametrize("coding", ["packed", "ef"])
def test_byte_budget_holds_for_every_h_and_k(h, vb, coding):
    assert 1 << index_bits(h) >= h
    row_bytes = ef_row_bytes if coding == "ef" else lambda h, k, vb: 2 + -(-k * (index_bits(h) + vb) // 8)
    for budget in (3, 4, 8, 32, 64, 96, 128, 192, 256):
        if row_bytes(h, 1, vb) > budget:
            with pytest.raises(ValueError, match="too small for one non-zero"):
                compact_k(h, budget, vb, coding)
            continue
        k = compact_k(h, budget, vb, coding)
        assert row_bytes(h, k, vb) <= budget, "the codes fit the budget"
        assert 2 + -(-stream_bits(h, k, vb, coding) // 8) == row_bytes(h, k, vb)
        assert all(row_bytes(h, more, vb) > budget for more in range(k + 1, min(h, (budget - 2) * 8 // (1 + vb)) + 1)), \
            "and no more entries would"


def test_ef_fits_more_entries_than_fixed_width():
    assert (compact_k(4096, 128, 4, "ef"), compact_k(4096, 128, 4, "packed")) == (88, 63)
    assert (compact_k(4096, 64, 4, "ef"), compact_k(4096, 64, 4, "packed")) == (39, 31)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="too small for one non-zero"):
        compact_k(4096, 3, 4)
    with pytest.raises(ValueError, match="bytes_per_item must be a positive int"):
        compact_k(4096, -8, 4)
    with pytest.raises(TypeError, match="bytes_per_item must be a positive int"):
        compact_k(4096, 12.5, 4)
    with pytest.raises(ValueError, match="value_bits must be in 2..16"):
        compact_k(4096, 128, 1)
    model = ce.CompresSAE(8, 32, 4)
    with pytest.raises(ValueError, match="too small for one non-zero"):
        model.encode(np.ones((2, 8), np.float32), bytes_per_item=2)
    with pytest.raises(ValueError, match="not both"):
        model.encode(np.ones((2, 8), np.float32), k=4, bytes_per_item=64)


def test_compact_codes_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    codes = CompactCodes.pack(*random_entries(rng, 50, 9, 300, 5), 300, 5, "packed")
    codes.save(tmp_path / "c.npz")
    back = ce.load_codes(tmp_path / "c.npz")
    assert isinstance(back, CompactCodes) and (back.h, back.k, back.value_bits) == (300, 9, 5)
    np.testing.assert_array_equal(back.packed, codes.packed)
    with pytest.raises(ValueError, match="packed rows have"):
        CompactCodes(codes.packed[:, :-1], 300, 9, 5, "packed")
    ef = CompactCodes.pack(*random_entries(rng, 50, 9, 300, 5), 300, 5, "ef")
    ef.save(tmp_path / "ef.npz")
    back = ce.load_codes(tmp_path / "ef.npz")
    assert (back.index_coding, back.k, back.row_bytes) == ("ef", 9, ef.row_bytes)
    np.testing.assert_array_equal(back.packed, ef.packed)
    with np.load(tmp_path / "c.npz") as f:  # a file written before index codings: fixed-width
        np.savez(tmp_path / "old.npz", **{name: f[name] for name in f.files if name != "index_coding"})
    assert ce.load_codes(tmp_path / "old.npz").index_coding == "packed"


def test_encode_at_a_budget_fills_it_and_decodes_like_its_sparse_twin():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 24)).astype(np.float32)
    model = ce.CompresSAE(24, 256, 8, seed=0)
    codes = model.encode(X, bytes_per_item=64)
    assert isinstance(codes, CompactCodes) and codes.k == compact_k(256, 64, codes.value_bits)
    assert codes.bytes_per_item <= 64 and codes.k > 8
    sparse = codes.to_sparse()
    np.testing.assert_allclose(model.decode(codes), model.decode(sparse), atol=1e-6)
    mags = np.abs(sparse.values)
    assert (mags[:, :-1] >= mags[:, 1:] - 1e-6).all(), "entries are strongest first"


def test_encode_ef_at_a_budget_holds_the_same_support_as_packed_at_the_same_k():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((150, 24)).astype(np.float32)
    model = ce.CompresSAE(24, 256, 8, seed=0)
    codes = model.encode(X, bytes_per_item=64, index_coding="ef")
    vb = codes.value_bits
    assert codes.index_coding == "ef" and codes.k == compact_k(256, 64, vb, "ef") > compact_k(256, 64, vb, "packed")
    assert codes.bytes_per_item <= 64
    idx, _ = codes.unpack()
    assert (np.diff(idx, axis=1) > 0).all(), "stored by increasing latent"
    fixed = encode_compact(model, X, k=codes.k, index_coding="packed")
    np.testing.assert_array_equal(np.sort(fixed.unpack()[0], 1), idx)
    np.testing.assert_allclose(model.decode(codes), model.decode(fixed), atol=1e-6)
    with pytest.raises(ValueError, match="give bytes_per_item too"):
        model.encode(X, index_coding="ef")
