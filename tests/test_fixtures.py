"""Files written by an earlier version (tests/fixtures/, made at commit 1275bb1) still load and give the same results."""
from pathlib import Path

import numpy as np

import csae_engine as ce

FIXTURES = Path(__file__).parent / "fixtures"


def test_saved_model_and_codes_load_and_agree():
    model = ce.load_model(FIXTURES / "model_v1.csae")
    codes = ce.load_codes(FIXTURES / "codes_v1.npz")
    int8 = ce.load_codes(FIXTURES / "codes_v2_int8.npz")
    assert (model.d, model.h, model.k) == (16, 64, 4)
    assert codes.n == int8.n == 300 and int8.quantized
    np.testing.assert_array_equal(int8.indices, codes.indices)
    X = np.random.default_rng(7).standard_normal((300, 16)).astype(np.float32)
    again = model.encode(X)
    np.testing.assert_array_equal(again.indices, codes.indices)
    np.testing.assert_allclose(again.float_values(), codes.float_values(), atol=1e-3)


def test_saved_index_loads_and_searches_as_it_did():
    engine = ce.Engine.load(FIXTURES / "index_v3", mmap=False)
    expected = np.load(FIXTURES / "expected_v3.npz")
    assert len(engine) == 301 and 1004 not in engine and 5001 in engine
    for mode, candidates in (("sparse", None), ("dense", 50)):  # 50: the dense default then, 10 * top_k
        ids, scores = engine.search(expected["queries"], top_k=5, mode=mode, candidates=candidates)
        np.testing.assert_array_equal(ids, expected[f"{mode}_ids"])
        np.testing.assert_allclose(scores, expected[f"{mode}_scores"], rtol=1e-5, atol=1e-6)
