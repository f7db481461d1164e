"""Training batches (csae_engine/training/batches.py): resident and streamed, each epoch every row once, rows
checked and normalised; and train() on either."""
import numpy as np
import pytest
import torch

import csae_engine as ce
from conftest import unit
from csae_engine.training import batches

DEVICE = torch.device("cpu")


def numbered(n=300, d=8, seed=0):
    """n distinct rows at various norms (float16, as on disk), and their unit float32 versions."""
    rng = np.random.default_rng(seed)
    X = (unit(rng, n, d) * rng.uniform(0.5, 3, (n, 1))).astype(np.float16)
    U = X.astype(np.float32)
    return X, U / np.linalg.norm(U, axis=1, keepdims=True)


def row_ids(batch, U):
    """Which row of U each batch row is (the one it has cosine ~1 with)."""
    sims = torch.as_tensor(U) @ batch.float().T
    assert torch.allclose(sims.max(dim=0).values, torch.ones(len(batch)), atol=1e-3), "rows are unit rows of X"
    return sims.argmax(dim=0).tolist()


def test_resident_items_are_normalised_once_and_batches_cover_each_epoch():
    X, U = numbered()
    items = batches.resident_items(X, DEVICE)
    assert items.dtype == torch.float32 and items.shape == X.shape
    torch.testing.assert_close(items, torch.as_tensor(U))
    seen = [row_ids(b, U) for b in batches.resident_batches(items, 64, 10, seed=3)]  # 640 rows: 2 epochs and more
    flat = sum(seen, [])
    assert sorted(flat[:300]) == list(range(300)) and sorted(flat[300:600]) == list(range(300))
    again = [row_ids(b, U) for b in batches.resident_batches(items, 64, 10, seed=3)]
    other = [row_ids(b, U) for b in batches.resident_batches(items, 64, 10, seed=4)]
    assert again == seen and other != seen


@pytest.mark.parametrize("workers", [1, 3])
def test_streamed_batches_cover_each_epoch_in_chunks(workers):
    X, U = numbered(n=2100)  # 2 rows per chunk
    flat = []
    for b in batches.streamed_batches(X, 500, 9, seed=1, device=DEVICE, workers=workers):
        assert b.dtype == torch.float32 and b.shape == (500, 8)
        flat += row_ids(b.clone(), U)
    for epoch in (flat[:2100], flat[2100:4200]):
        assert sorted(epoch) == list(range(2100))
    starts = flat[:2100:2]
    assert all(flat[i + 1] == flat[i] + 1 for i in range(0, 2100, 2)), "chunks of consecutive rows"
    assert starts != sorted(starts), "in a shuffled order"
    first = next(iter(batches.streamed_batches(X, 500, 9, seed=1, device=DEVICE, workers=2)))
    assert row_ids(first, U) == flat[:500], "the order depends on the seed only"


def test_stopping_a_streamed_run_early_ends_its_threads():
    X, _ = numbered(n=400)
    stream = batches.streamed_batches(X, 100, 1000, seed=0, device=DEVICE, workers=2)
    next(stream)
    stream.close()  # must not hang on the workers filling buffers ahead


@pytest.mark.parametrize("resident", [True, False])
def test_a_bad_row_is_named(resident):
    X, _ = numbered(n=400)
    X[123] = 0
    with pytest.raises(ValueError, match="X row 123 is all zeros"):
        ce.train(X, h=16, k=2, steps=5, batch_size=400, resident=resident, progress=False)
    X[123] = np.nan
    with pytest.raises(ValueError, match="X row 123 holds NaN"):
        ce.train(X, h=16, k=2, steps=5, batch_size=400, resident=resident, progress=False)


def test_only_data_that_fits_is_resident():
    assert batches.fits_resident(1000, 384, DEVICE)
    assert not batches.fits_resident(10**9, 384, DEVICE)  # 1.5 TB
    assert batches.resident_dtype(torch.device("cuda")) == torch.bfloat16


def test_training_streamed_and_resident_both_learn():
    X = unit(np.random.default_rng(0), 600, 16)
    for resident in (True, False):
        model = ce.train(X, h=64, k=4, steps=60, batch_size=100, lr=1e-2, resident=resident, progress=False)
        losses = [r["loss"] for r in model.history]
        assert losses[-1] < 0.8 * losses[0], resident
        assert [r["step"] for r in model.history][-2:] == [51, 60]
        assert set(model.history[-1]) == {"step", "loss", "cos_k", "dead", "seconds"}
    with pytest.raises(TypeError, match="resident must be True, False or None"):
        ce.TrainConfig(resident=1)
