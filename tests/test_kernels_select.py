"""The Triton top-k selection (kernels/select.py) against torch.topk: values exact, indices up to ties, which go to
the smaller column. On CUDA when present, else on the CPU under TRITON_INTERPRET=1 (small, odd shapes)."""
import copy
import importlib
import os

import pytest
import torch
import torch.nn.functional as F

try:
    import triton  # noqa: F401
except ImportError:
    pytest.skip("triton is not installed", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA, or TRITON_INTERPRET=1 to run them on the CPU", allow_module_level=True)

from csae_engine import kernels  # noqa: E402
from csae_engine.models import new_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, h, k): h not a power of two; k = 1, a non-power of two, k = h
SHAPES = [(5, 70, 5), (3, 70, 20), (4, 33, 1), (2, 24, 24), (3, 130, 64)]


def oracle(z, k, nonneg):
    """Indices of the k strongest entries per row, ties to the smaller column (a stable sort), and their values."""
    strength = (z if nonneg else z.abs()).double()
    order = torch.sort(-strength, dim=1, stable=True).indices[:, :k]
    values = z.gather(1, order)
    return order, (values.clamp_min(0) if nonneg else values)


@pytest.mark.parametrize("nonneg", [False, True], ids=["by |z|", "by z"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,h,k", SHAPES)
def test_select_matches_torch_topk(B, h, k, dtype, nonneg):
    z = torch.randn(B, h, generator=torch.Generator().manual_seed(h + k)).to(DEVICE, dtype)
    idx, val = kernels.topk_select(z, k, nonneg=nonneg, backend="triton")
    ref_idx, ref_val = kernels.topk_select(z, k, nonneg=nonneg, backend="torch")
    assert idx.dtype == torch.int64 and idx.shape == (B, k) and val.dtype == dtype
    strength = (lambda v: v) if nonneg else torch.abs  # +x and -x tie by |z|: torch may list them either way
    assert torch.equal(strength(val), strength(ref_val)), "the strengths, strongest first, are torch.topk's exactly"
    assert torch.equal(z.gather(1, idx).clamp_min(0) if nonneg else z.gather(1, idx), val)
    expected_idx, _ = oracle(z, k, nonneg)
    assert torch.equal(idx, expected_idx)


@pytest.mark.parametrize("nonneg", [False, True], ids=["by |z|", "by z"])
def test_ties_go_to_the_smaller_column(nonneg):
    # few distinct values: most strengths tie, +x and -x tie by |z|, and there are zeros and negatives
    z = torch.randint(-3, 4, (6, 45), generator=torch.Generator().manual_seed(0)).float().to(DEVICE)
    z[0] = 0
    for k in (1, 7, 45):
        idx, val = kernels.topk_select(z, k, nonneg=nonneg, backend="triton")
        expected_idx, expected_val = oracle(z, k, nonneg)
        assert torch.equal(idx, expected_idx) and torch.equal(val, expected_val), k
        assert (idx.sort(dim=1).values.diff(dim=1) > 0).all(), "no column twice"


def test_extreme_values_order_like_floats():
    z = torch.tensor([[0.0, -0.0, 1e-38, -1e-38, float("inf"), -float("inf"), 3.0, -3.0, 1e30, -1e-45]],
                     device=DEVICE)
    idx, val = kernels.topk_select(z, 10, nonneg=True, backend="triton")
    assert idx[0].tolist()[:5] == [4, 8, 6, 2, 0]  # inf, 1e30, 3, 1e-38, then the zeros (0 before -0: by column)
    assert idx[0].tolist()[-1] == 5  # -inf is the weakest by value
    idx, _ = kernels.topk_select(z, 4, backend="triton")
    assert idx[0].tolist() == [4, 5, 8, 6]  # by |z|: the two infinities first, by column


def test_non_contiguous_rows_and_an_empty_batch():
    z = torch.randn(7, 90, device=DEVICE)[:, 5:75]
    idx, val = kernels.topk_select(z, 9, backend="triton")
    assert torch.equal(val, kernels.topk_select(z, 9, backend="torch")[1])
    idx, val = kernels.topk_select(z[:0], 3, backend="triton")
    assert idx.shape == (0, 3) and val.shape == (0, 3)


def test_bad_input_is_refused_and_unsupported_input_falls_back():
    z = torch.randn(3, 20, device=DEVICE)
    with pytest.raises(ValueError, match="k must be in 1..h=20"):
        kernels.topk_select(z, 21, backend="triton")
    with pytest.raises(ValueError, match="must be 2-D"):
        importlib.import_module(f"{kernels.__name__}.select").topk_select(z[0], 2)
    with pytest.raises(ValueError, match="must be 2-D"):
        kernels.topk_select(z[None], 2, backend="torch")
    wide = z.double()  # no float64 keys: the reference answers
    assert torch.equal(kernels.topk_select(wide, 4, backend="triton")[0], wide.abs().topk(4).indices)


@pytest.mark.parametrize("variant", ["compressae", "csr"])
def test_dense_training_path_on_the_triton_select(variant):
    model = new_model(variant, 10, 48, 3, seed=1, tied=False if variant == "csr" else None).to(DEVICE)
    model.step_path = "dense"
    x = F.normalize(torch.randn(13, 10, device=DEVICE), dim=1)
    grads = {}
    for backend in ("torch", "triton"):
        m = copy.deepcopy(model)
        m.backend = backend
        out = m(x)
        out.loss.backward()
        grads[backend] = (out.loss.item(), out.indices, {n: p.grad for n, p in m.named_parameters()})
    assert grads["triton"][0] == pytest.approx(grads["torch"][0], rel=1e-6)
    assert torch.equal(grads["triton"][1], grads["torch"][1])
    for name, g in grads["torch"][2].items():
        torch.testing.assert_close(grads["triton"][2][name], g)


@pytest.mark.parametrize("nonneg", [False, True], ids=["by |z|", "by z"])
def test_matmul_then_select_is_topk_encode_with_its_gradients(nonneg):
    select = importlib.import_module(f"{kernels.__name__}.select")
    g = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(11, 9, generator=g), dim=1).to(DEVICE)
    W = torch.randn(9, 50, generator=g).to(DEVICE).requires_grad_()
    b = (torch.randn(50, generator=g) * 0.1).to(DEVICE).requires_grad_()
    results = []
    for encode in (select.matmul_then_select, kernels.reference.topk_encode):
        idx, val = encode(x, W, b, 6, nonneg)
        (val * torch.arange(1.0, 7.0, device=DEVICE)).sum().backward()  # weights slots apart: order matters
        results.append((idx, val.detach(), W.grad.clone(), b.grad.clone()))
        W.grad = b.grad = None
    (i1, v1, gw1, gb1), (i2, v2, gw2, gb2) = results
    assert torch.equal(i1, i2)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(gw1, gw2)
    torch.testing.assert_close(gb1, gb2)
    assert gw1.abs().sum() > 0


# benchmarks/gpu_train.py at tiny shapes: the parts that say something on the CPU (the timed parts run on a GPU)

def test_gpu_train_benchmark_runs_tiny_and_its_gradients_agree(tmp_path, monkeypatch):
    import json
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    gpu_train = importlib.import_module("benchmarks.gpu_train")
    skip = [] if DEVICE == "cuda" else ["--skip", "topk", "--skip", "encode", "--skip", "step"]
    path = gpu_train.main(["--tiny", "--out", str(tmp_path), *skip])
    record = json.loads(Path(path).read_text())
    rows = {r["measure"]: r for r in record["results"]}
    for variant in ("compressae", "csr"):
        row = rows[f"gradient agreement, {variant}"]
        assert 0 <= row["value"] <= gpu_train.GRAD_TOLERANCE and row["met"] is True
    for how in ("resident", "streamed from host"):
        row = rows[f"ce.train, {how}"]
        assert row["steps"] == 3 and row["samples_per_s"] > 0 and 0 < row["final_loss"] < 2
    assert record["config"]["batch_size"] == 16 and "triton" in record["machine"]
    assert "Gradients of the dense path" in Path(path).with_suffix(".md").read_text()
