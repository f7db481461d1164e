"""The dense training path (models/losses.py) against the sparse one, on the CPU in float32: the same loss and
gradients for every variant, with AuxK and InfoNCE; and kernels.topk_select, the selection it runs on."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import csae_engine as ce
from conftest import csr_model, manual_code, unit
from csae_engine import kernels
from csae_engine.training import train_step

VARIANTS = ["compressae", "csr tied", "csr untied"]


def model_of(variant, d=12, h=40, k=3):
    if variant == "compressae":
        model = ce.CompresSAE(d, h, k, seed=1)
        with torch.no_grad():
            model.b_enc.copy_(torch.randn(h, generator=torch.Generator().manual_seed(2)) * 0.1)
        return model
    return csr_model(d, h, k, tied=variant == "csr tied")


def losses_and_grads(model, path, x, dead=None, pairs=None):
    """Loss, AuxK, InfoNCE and every parameter's gradient of their sum, on the given step path."""
    model = copy.deepcopy(model)
    model.step_path = path
    out = model(x)
    aux = model.aux_loss(x, out.x_hat, dead, 5) if dead is not None else torch.zeros(())
    ncl = model.contrastive_loss(*pairs, 0.3) if pairs is not None else torch.zeros(())
    (out.loss + aux + ncl).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, aux, ncl, grads


@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_path_has_the_sparse_paths_loss_and_gradients(variant):
    model = model_of(variant)
    x = F.normalize(torch.randn(23, 12), dim=1)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    pairs = tuple(F.normalize(torch.randn(7, 12), dim=1) for _ in range(2))
    sparse = losses_and_grads(model, "sparse", x, dead, pairs)
    dense = losses_and_grads(model, "dense", x, dead, pairs)
    for name, a, b in zip(("loss", "aux", "ncl"), (sparse[0].loss, *sparse[1:3]), (dense[0].loss, *dense[1:3])):
        assert a.item() > 0 and b.item() == pytest.approx(a.item(), rel=1e-5, abs=1e-6), name
    assert torch.equal(dense[0].indices, sparse[0].indices)
    torch.testing.assert_close(dense[0].values, sparse[0].values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dense[0].x_hat, sparse[0].x_hat, atol=1e-6, rtol=1e-5)
    assert set(dense[3]) == set(sparse[3]) and len(dense[3]) >= 3
    for name, g in sparse[3].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(dense[3][name], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_dense_path_keeps_the_k_code_inside_the_multi_k_code():
    # k_multi = h: the 4k-code is every latent; the k-code still comes first, strongest first
    model = model_of("compressae", d=8, h=16, k=4)
    model.step_path = "dense"
    x = F.normalize(torch.randn(9, 8), dim=1)
    out = model(x)
    z = x @ model.W_enc.detach() + model.b_enc.detach()
    expected = manual_code(z.double(), 4, nonneg=False)
    got = torch.zeros(9, 16, dtype=torch.float64).scatter(1, out.indices, out.values.detach().double())
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", ["compressae", "csr untied"])
def test_dense_auxk_is_zero_without_dead_latents(variant):
    model = model_of(variant)
    model.step_path = "dense"
    x = F.normalize(torch.randn(6, 12), dim=1)
    out = model(x)
    aux = model.aux_loss(x, out.x_hat, torch.zeros(40, dtype=torch.bool), 5)
    assert aux.item() == 0
    aux.backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())
    # fewer dead latents than aux_k: the same loss as the sparse path, which takes them all
    few = torch.zeros(40, dtype=torch.bool)
    few[[3, 17]] = True
    model.step_path = "sparse"
    sparse = model.aux_loss(x, model(x).x_hat, few, 5)
    model.step_path = "dense"
    assert model.aux_loss(x, model(x).x_hat, few, 5).item() == pytest.approx(sparse.item(), rel=1e-5)


def test_step_path_is_checked_and_auto_follows_the_device():
    model = model_of("compressae")
    assert model.step_path == "auto"
    assert not model.uses_dense_step(torch.device("cpu")) and model.uses_dense_step(torch.device("cuda"))
    model.step_path = "dense"
    assert model.uses_dense_step(torch.device("cpu"))
    model.step_path = "fast"
    with pytest.raises(ValueError, match="step_path must be one of"):
        model(F.normalize(torch.randn(2, 12), dim=1))


@pytest.mark.parametrize("variant", ["compressae", "csr untied"])
def test_training_on_the_dense_path_matches_the_sparse_path(variant):
    X = unit(np.random.default_rng(0), 120, 12)
    trained = {}
    for path in ("sparse", "dense"):
        model = model_of(variant)
        model.step_path = path
        trained[path] = ce.train(X, model=model, steps=4, batch_size=40, lr=1e-2, warmup=0.0, dead_window=40,
                                 aux_k=5, progress=False)
    a, b = trained["sparse"], trained["dense"]
    assert [r["loss"] for r in b.history] == pytest.approx([r["loss"] for r in a.history], rel=1e-4)
    assert (a.W_enc - model_of(variant).W_enc).abs().max() > 1e-3, "the run must train"
    for name, p in a.named_parameters():
        torch.testing.assert_close(dict(b.named_parameters())[name], p, atol=1e-5, rtol=1e-4)


def test_train_step_on_the_dense_path_runs_auxk_without_asking_which_latents_are_dead():
    model = model_of("csr untied")
    model.step_path = "dense"
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = F.normalize(torch.randn(16, 12), dim=1)
    out = train_step(model, opt, x, dead=torch.zeros(40, dtype=torch.bool), aux_k=4)
    assert out.terms["aux"].item() == 0  # computed (no host check), and zero: nothing is dead
    model.step_path = "sparse"
    assert "aux" not in train_step(model, opt, x, dead=torch.zeros(40, dtype=torch.bool), aux_k=4).terms


# kernels.topk_select's reference path (its Triton kernel: tests/test_kernels_select.py)

@pytest.mark.parametrize("nonneg", [False, True])
def test_topk_select_reference_is_torch_topk_by_strength(nonneg):
    z = torch.randn(6, 30, requires_grad=True)
    idx, val = kernels.topk_select(z, 4, nonneg=nonneg, backend="torch")
    strength = z.detach() if nonneg else z.detach().abs()
    expected_idx = strength.topk(4, dim=1).indices
    assert torch.equal(idx, expected_idx)
    expected = z.detach().gather(1, expected_idx)
    torch.testing.assert_close(val.detach(), expected.clamp_min(0) if nonneg else expected)
    val.sum().backward()
    assert (z.grad != 0).sum() <= 6 * 4 and z.grad.gather(1, idx).abs().sum() > 0
    with pytest.raises(ValueError, match="k must be in 1..h=30"):
        kernels.topk_select(z, 31)
