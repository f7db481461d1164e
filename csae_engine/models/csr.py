"""CSR, Contrastive Sparse Representation (Wen et al., ICML 2025): non-negative TopK codes with a pre-bias.

    z     = (x - b_pre) @ W_enc + b_enc            b_pre (d,): the pre-bias
    code  = ReLU of the k largest z                values >= 0
    x_hat = code @ W_dec + b_pre                   W_dec = W_enc.T when tied (the default), unit-norm directions
    loss  = |x - x_hat_k|^2 + |x - x_hat_4k|^2 / 8   squared error summed over d (= 2(1 - cos) near unit norm)

Training may add AuxK (on by default for CSR) and an InfoNCE term on query/document pairs; see
csae_engine.training.
"""
import torch

from .base import TopKSAE

__all__ = ["CSRAutoencoder"]


class CSRAutoencoder(TopKSAE):
    """The CSR model: a TopKSAE with non-negative codes (TopK then ReLU), a pre-bias and a squared-error loss.

    Takes TopKSAE's parameters (d, h, k, seed, init) and one more.

    Parameters
    ----------
    tied : bool
        True (CSR's choice) makes the decoder the encoder's transpose: W_dec is then W_enc.T (computed,
        read-only), not a parameter, and init must be "transpose". Decoder directions are kept at unit norm, as in
        CompresSAE.

    Raises
    ------
    TypeError
        tied not a bool, or any TypeError of TopKSAE.
    ValueError
        A tied decoder with init="random", or any ValueError of TopKSAE.
    """

    variant = "csr"
    signed = False

    def __init__(self, d: int, h: int = 4096, k: int = 32, *, seed: int = 0, init: str = "transpose",
                 tied: bool = True):
        if not isinstance(tied, bool):
            raise TypeError(f"tied must be True or False, got {type(tied).__name__} {tied!r}")
        if tied and init != "transpose":
            raise ValueError(f"a tied decoder is the encoder's transpose: init must be 'transpose', got {init!r}")
        self._tied = tied
        super().__init__(d, h, k, seed=seed, init=init)
        self.b_pre = torch.nn.Parameter(torch.zeros(self.d))

    def __getattr__(self, name):
        if name == "W_dec" and self.__dict__.get("_tied"):
            return self.W_enc.T.contiguous()  # a copy: embedding_bag on the strided view is ~10x slower
        return super().__getattr__(name)

    @property
    def tied(self) -> bool:
        """Whether the decoder is the encoder's transpose."""
        return self._tied

    @property
    def decoder_bias(self) -> torch.Tensor:
        """The pre-bias b_pre, added back after decoding."""
        return self.b_pre

    def config(self) -> dict:
        """TopKSAE.config() plus tied."""
        return {**super().config(), "tied": self._tied}

    def encoder_bias(self) -> torch.Tensor:
        # (x - b_pre) @ W_enc + b_enc, folded into the bias so the TopK op never needs a gradient for x
        return self.b_enc - self.b_pre @ self.W_enc

    def decode_tensor(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The reconstruction (B, d): code @ W_dec + b_pre."""
        return self._decode_latents(indices, values) + self.b_pre.to(values.dtype)

    def _recon_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return ((x.float() - x_hat.float()) ** 2).sum(dim=1)

    def _residual(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, float]:
        return x - x_hat, 1.0

    def _decoder_directions(self) -> tuple[torch.nn.Parameter, int]:
        return (self.W_enc, 0) if self._tied else (self.W_dec, 1)

    def __repr__(self) -> str:
        return f"CSRAutoencoder(d={self.d}, h={self.h}, k={self.k}, tied={self._tied})"
