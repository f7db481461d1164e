"""CompresSAE (Kasalický et al., RecSys 2025): signed TopK codes, cosine loss.

    z     = x @ W_enc + b_enc                      W_enc (d, h), b_enc (h,)
    code  = the k entries of largest |z|, signed
    x_hat = code @ W_dec                           W_dec (h, d), rows of unit L2 norm, no bias
    loss  = (1 - cos(x, x_hat_k)) + (1 - cos(x, x_hat_4k)) / 8

Training may add AuxK (dead latents reconstruct the residual, Gao et al. 2024) and an InfoNCE term on
query/document pairs; see csae_engine.training.
"""
import torch
import torch.nn.functional as F

from .base import TopKSAE

__all__ = ["CompresSAE"]


class CompresSAE(TopKSAE):
    """CompresSAE: a TopKSAE whose codes keep the k largest |z| with their signs, trained on the cosine loss.

    Takes TopKSAE's parameters (d, h, k, seed, init) and raises its errors.
    """

    variant = "compressae"
    signed = True

    def _recon_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(x_hat.float(), x.float(), dim=1)

    def _residual(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cosine loss leaves |x_hat| free, so the residual is taken at unit scale: x - x_hat / |x_hat|."""
        norm = x_hat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x - x_hat / norm, norm
