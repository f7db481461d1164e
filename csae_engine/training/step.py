"""One optimiser step, the same for train() and for the benchmarks, and the learning-rate schedule."""
from typing import NamedTuple

import torch

from ..models import TopKSAE, autocast
from .config import DEFAULT_AUX_WEIGHT, DEFAULT_PAIRS_WEIGHT, DEFAULT_TAU

__all__ = ["StepOutput", "train_step", "lr_factor"]


class StepOutput(NamedTuple):
    """What ``train_step`` returns.

    Attributes
    ----------
    loss : torch.Tensor
        The total loss of the step (reconstruction plus the weighted extra terms), detached.
    cos_k : torch.Tensor
        (B,) cosine between each row and its reconstruction from the top k (ForwardOutput.cos_k).
    indices : torch.Tensor
        (B, k) int64 latents of each row's top k (ForwardOutput.indices).
    values : torch.Tensor
        (B, k) their values, detached.
    terms : dict of str to torch.Tensor
        The extra terms that were on, unweighted and detached: "aux" (AuxK) and "ncl" (InfoNCE on the pairs).
    """

    loss: torch.Tensor
    cos_k: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    terms: dict


def train_step(model: TopKSAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, *,
               dead: torch.Tensor | None = None, aux_k: int = 0, aux_weight: float = DEFAULT_AUX_WEIGHT,
               pairs: tuple[torch.Tensor, torch.Tensor] | None = None, pairs_weight: float = DEFAULT_PAIRS_WEIGHT,
               tau: float = DEFAULT_TAU) -> StepOutput:
    """One training step: forward (in the device's autocast), the AuxK and InfoNCE terms when on, backward, the
    radial part of the decoder gradient removed, the optimiser step, and the decoder directions renormalised.

    The learning-rate schedule is the caller's: step it after this.

    Parameters
    ----------
    model : TopKSAE
        The model, in train mode, on x's device.
    optimizer : torch.optim.Optimizer
        Over the model's parameters.
    x : torch.Tensor
        (B, d) unit-norm rows.
    dead : torch.Tensor, optional
        (h,) bool, the dead latents; None (or none dead, or aux_k 0) leaves AuxK off.
    aux_k : int
        Dead latents per item for AuxK.
    aux_weight : float
        Weight of the AuxK term.
    pairs : tuple of torch.Tensor, optional
        (queries, docs), (P, d) unit-norm rows paired by row: adds InfoNCE over in-batch negatives.
    pairs_weight : float
        Weight of the InfoNCE term.
    tau : float
        InfoNCE temperature.

    Returns
    -------
    StepOutput
    """
    with autocast(x.device):
        loss, cos_k, indices, values, x_hat = model(x)
        terms = {}
        # the dense path never asks the device whether a latent is dead: its AuxK is 0 when none is
        if aux_k and dead is not None and (model.uses_dense_step(x.device) or dead.any()):
            terms["aux"] = model.aux_loss(x, x_hat, dead, aux_k)
            loss = loss + aux_weight * terms["aux"]
        if pairs is not None:
            terms["ncl"] = model.contrastive_loss(*pairs, tau)
            loss = loss + pairs_weight * terms["ncl"]
    del x_hat  # (B, d): let backward free it with the graph rather than hold it through the optimiser step
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.remove_radial_grad_()
    optimizer.step()
    model.normalize_decoder_()
    return StepOutput(loss.detach(), cos_k, indices, values.detach(), {name: t.detach() for name, t in terms.items()})


def lr_factor(step: int, steps: int, warmup: float, decay: float) -> float:
    """The learning rate of step ``step`` (from 0) of ``steps``, as a share of the base rate.

    It rises linearly over the first ``warmup`` share of the steps, stays at 1, then falls linearly to 0 over the
    last ``decay`` share.

    Parameters
    ----------
    step : int
        The step, from 0.
    steps : int
        Steps in the run.
    warmup, decay : float
        Shares of the steps, in [0, 1].

    Returns
    -------
    float
        In [0, 1].
    """
    warm = max(1, int(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    tail = int(decay * steps)
    if tail and step >= steps - tail:
        return max(0.0, (steps - step) / tail)
    return 1.0
