"""CompresSAE (csae_engine/models/compressae.py): the cosine multi-k loss and AuxK's unit-scale residual, against
hand-written computations."""
import pytest
import torch
import torch.nn.functional as F

import csae_engine as ce
from conftest import manual_code, manual_z


def test_multi_k_loss_value_matches_hand_computation():
    torch.manual_seed(4)
    model = ce.CompresSAE(d=10, h=40, k=3, seed=1)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)
    x = F.normalize(torch.randn(6, 10), dim=1)
    loss, cos_k = model(x)[:2]
    z = x.double() @ model.W_enc.double() + model.b_enc.double()

    def recon(k):
        keep = z.abs().argsort(dim=1, descending=True)[:, :k]
        return torch.zeros_like(z).scatter_(1, keep, z.gather(1, keep)) @ model.W_dec.double()

    cos = lambda a: F.cosine_similarity(a, x.double(), dim=1)
    expected = (1 - cos(recon(3))).mean() + (1 - cos(recon(12))).mean() / 8
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(cos_k.double(), cos(recon(3)), atol=1e-5, rtol=1e-5)


def test_aux_loss_value_for_compressae_uses_the_unit_scale_residual():
    model = ce.CompresSAE(10, 40, 3, seed=1)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)
    x = F.normalize(torch.randn(7, 10), dim=1)
    x_hat = model(x).x_hat
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:20] = True
    aux = model.aux_loss(x, x_hat, dead, 5)
    z = manual_z(model, x)
    z_dead = z.masked_fill(~dead, 0.0)  # |z| = 0 never beats a dead latent here
    x_hat_ref = manual_code(z, 3, False) @ model.W_dec.double()
    norm = x_hat_ref.norm(dim=1, keepdim=True)
    e_hat = manual_code(z_dead, 5, False) @ model.W_dec.double()
    expected = ((x.double() - x_hat_ref / norm - e_hat / norm) ** 2).sum(dim=1).mean()
    assert aux.item() == pytest.approx(expected.item(), abs=1e-5)
