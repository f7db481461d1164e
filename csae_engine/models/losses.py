"""The training side of TopKSAE, mixed into it: the dense training forward, AuxK and InfoNCE.

Two paths give the same loss and gradients (tests/test_dense_step.py checks them against each other):

- "sparse" (TopKSAE.forward's own): topk_encode, then sparse decodes that gather k rows of W_dec per item; the
  backward touches only the selected entries. The CPU's path: it does a quarter of the dense path's flops.
- "dense": with 4k of h latents active per item, a block of items touches nearly every latent, so a sparse gather
  streams the whole decoder at about one flop per byte where a GPU matmul runs at hundreds. The dense path makes
  every product a matmul (the public TopK trainers do the same):

      z                 = x @ W_enc + b                 one addmm
      top 4k            = kernels.topk_select(z, 4k)    by |z| (CSR: by z), strongest first; the first k: the k-code
      Z_k, Z_4k         = the selected values of z scattered into zeros, one (B, 2h) matrix
      x_hat_k, x_hat_4k = [Z_k; Z_4k] @ W_dec           one matmul (backward: one for dZ, one for dW_dec)

  Autograd through the scatter and the gather gives a dense dz, so dW_enc = x^T dz is one matmul too: eight
  matmul-equivalents per step in all. Nothing asks the host for a value (AuxK's dead set stays a device mask).

``step_path``: "auto" (dense on CUDA, sparse elsewhere), "dense" or "sparse".
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import kernels

__all__ = ["STEP_PATHS", "ForwardOutput", "TrainingLosses"]

STEP_PATHS = ("auto", "dense", "sparse")


class ForwardOutput(NamedTuple):
    """What ``TopKSAE.forward`` returns for a batch x (B, d).

    Attributes
    ----------
    loss : torch.Tensor
        The multi-k reconstruction loss, a scalar.
    cos_k : torch.Tensor
        (B,) cosine between each row and its reconstruction from the top k, detached.
    indices : torch.Tensor
        (B, k) int64 latents of the top k, strongest first.
    values : torch.Tensor
        (B, k) their values.
    x_hat : torch.Tensor
        (B, d) the reconstruction from the top k (with the decoder bias), differentiable.
    """

    loss: torch.Tensor
    cos_k: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    x_hat: torch.Tensor


class TrainingLosses:
    """TopKSAE's training terms; the model supplies W_enc, W_dec, signed, k, h and the bias and residual hooks."""

    step_path = "auto"  # set on a model to force a path; see the module docstring

    def uses_dense_step(self, device: torch.device) -> bool:
        """Whether training on ``device`` takes the dense path (step_path "dense", or "auto" on CUDA)."""
        if self.step_path not in STEP_PATHS:
            raise ValueError(f"step_path must be one of {STEP_PATHS}, got {self.step_path!r}")
        return self.step_path == "dense" or (self.step_path == "auto" and torch.device(device).type == "cuda")

    def _select(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k strongest entries of each row of z, strongest first; values differentiable through z."""
        idx, _ = kernels.topk_select(z.detach(), k, nonneg=not self.signed, backend=self.backend)
        val = z.gather(1, idx)
        return idx, (val if self.signed else F.relu(val))

    def _train_topk(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_tensor(x, k) on the step's path: the dense one gives dW_enc as x^T dz, one matmul."""
        if not self.uses_dense_step(x.device):
            return self.encode_tensor(x, k)
        return self._select(torch.addmm(self.encoder_bias(), x, self.W_enc), k)

    def _forward_dense(self, x: torch.Tensor) -> ForwardOutput:
        """TopKSAE.forward on the dense path."""
        k, h, B = self.k, self.h, x.shape[0]
        idx, val = self._train_topk(x, self.k_multi)
        # columns 0..h-1 hold the k-code, h..2h-1 the 4k-code: viewed as (2B, h), one matmul decodes both
        codes = torch.zeros(B, 2 * h, dtype=val.dtype, device=x.device)
        codes = codes.scatter(1, torch.cat([idx[:, :k], idx + h], 1), torch.cat([val[:, :k], val], 1))
        x_hat = (codes.view(2 * B, h) @ self.W_dec).view(B, 2, -1)
        if (bias := self.decoder_bias) is not None:
            x_hat = x_hat + bias.to(x_hat.dtype)
        x_hat_k, x_hat_multi = x_hat[:, 0], x_hat[:, 1]
        loss = self._recon_error(x, x_hat_k).mean() + self._recon_error(x, x_hat_multi).mean() / 8
        cos_k = F.cosine_similarity(x_hat_k.float(), x.float(), dim=1)
        return ForwardOutput(loss, cos_k.detach(), idx[:, :k], val[:, :k], x_hat_k)

    def aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
        """AuxK: the aux_k strongest dead latents of each row reconstruct the detached residual of x_hat.

        The aux reconstruction adds no decoder bias (x_hat already holds it); the residual is detached, so this
        loss trains only the dead latents (and the encoder bias terms they read).

        Parameters
        ----------
        x : torch.Tensor
            (B, d) unit-norm rows.
        x_hat : torch.Tensor
            (B, d) their reconstructions (ForwardOutput.x_hat).
        dead : torch.Tensor
            (h,) bool, the dead latents.
        aux_k : int
            Dead latents per row, at most h.

        Returns
        -------
        torch.Tensor
            A scalar; 0 when no latent is dead or aux_k is 0 (the sparse path returns it without a gradient; the
            dense path, which never asks the device whether any latent is dead, as a product with zero).
        """
        if aux_k <= 0:
            return x.new_zeros(())
        if self.uses_dense_step(x.device):
            return self._aux_dense(x, x_hat, dead, aux_k)
        dead_ids = dead.nonzero().squeeze(1)
        if dead_ids.numel() == 0:
            return x.new_zeros(())
        idx, val = kernels.topk_encode(x, self.W_enc[:, dead_ids], self.encoder_bias()[dead_ids],
                                       min(aux_k, dead_ids.numel()), backend=self.backend, nonneg=not self.signed)
        target, scale = self._residual(x.float(), x_hat.detach().float())
        e_hat = self._decode_latents(dead_ids[idx], val).float()
        return ((target - e_hat / scale) ** 2).sum(dim=1).mean()

    def _aux_dense(self, x, x_hat, dead, aux_k):
        """aux_loss without a host sync: alive latents are zeroed in z, so they can only fill the top aux_k with
        zeros (contributing nothing, as when fewer than aux_k latents are dead)."""
        z = torch.addmm(self.encoder_bias(), x, self.W_enc).masked_fill(~dead, 0)
        idx, val = self._select(z, aux_k)
        e_hat = torch.zeros_like(z).scatter(1, idx, val) @ self.W_dec
        target, scale = self._residual(x.float(), x_hat.detach().float())
        return ((target - e_hat.float() / scale) ** 2).sum(dim=1).mean() * dead.any()

    def contrastive_loss(self, queries: torch.Tensor, docs: torch.Tensor, tau: float) -> torch.Tensor:
        """InfoNCE of queries against docs on the L2-normalised k-sparse codes, in-batch negatives.

        Row i of queries is paired with row i of docs; every other doc of the batch is a negative, except copies
        of the positive doc (several queries may share one). loss = mean_i -log softmax_j(cos(c_qi, c_dj) / tau)[i].

        Parameters
        ----------
        queries, docs : torch.Tensor
            (B, d) unit-norm rows, paired by row.
        tau : float
            Temperature.

        Returns
        -------
        torch.Tensor
            A scalar.
        """
        iq, vq = self._train_topk(queries, self.k)
        vq = F.normalize(vq.float(), dim=1)
        i_d, v_d = self._train_topk(docs, self.k)
        zd = torch.zeros(docs.shape[0], self.h, dtype=v_d.dtype, device=docs.device).scatter(1, i_d, v_d)
        zd = F.normalize(zd.float(), dim=1)
        # cos(c_qi, c_dj) = sum_t vq[i, t] * zd[j, iq[i, t]]: O(B^2 k) rather than a dense (B, h) @ (h, B)
        logits = F.embedding_bag(iq, zd.T.contiguous(), per_sample_weights=vq, mode="sum") / tau
        with torch.no_grad():
            same = (docs.float() @ docs.float().T) > 1 - 1e-6
            same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))
