"""compact.py: bit-packed codes, their byte budget and their file."""
import numpy as np
import pytest

import csae_engine as ce
from csae_engine.compact import CompactCodes, compact_k, index_bits, quantize_values


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
    codes = CompactCodes.pack(indices, q, scales, h, vb)
    assert codes.packed.shape == (300, codes.row_bytes) and codes.row_bytes == 2 + -(-k * (index_bits(h) + vb) // 8)
    back_idx, back_q = codes.unpack()
    np.testing.assert_array_equal(back_idx, indices)
    np.testing.assert_array_equal(back_q, q)
    np.testing.assert_array_equal(codes.scales, scales)
    np.testing.assert_array_equal(codes.unpack(slice(5, 9))[1], q[5:9])


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


@pytest.mark.parametrize("h", [2, 16, 100, 1024, 4096, 8192, 65536])
@pytest.mark.parametrize("vb", [2, 4, 5, 8, 16])
def test_byte_budget_holds_for_every_h_and_k(h, vb):
    width = index_bits(h) + vb
    assert 1 << index_bits(h) >= h
    for budget in (8, 32, 64, 96, 128, 192, 256):
        if (budget - 2) * 8 < width:
            with pytest.raises(ValueError, match="too small for one non-zero"):
                compact_k(h, budget, vb)
            continue
        k = compact_k(h, budget, vb)
        assert 2 + -(-k * width // 8) <= budget, "the codes fit the budget"
        assert k == h or 2 + -(-(k + 1) * width // 8) > budget, "and no more entries would"


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
    codes = CompactCodes.pack(*random_entries(rng, 50, 9, 300, 5), 300, 5)
    codes.save(tmp_path / "c.npz")
    back = ce.load_codes(tmp_path / "c.npz")
    assert isinstance(back, CompactCodes) and (back.h, back.k, back.value_bits) == (300, 9, 5)
    np.testing.assert_array_equal(back.packed, codes.packed)
    with pytest.raises(ValueError, match="packed rows have"):
        CompactCodes(codes.packed[:, :-1], 300, 9, 5)


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
