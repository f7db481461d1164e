"""Plain PyTorch versions of every op: the CPU path, and the oracle the Triton kernels are tested against.

Shapes: x (B, d), W_enc (d, h), b_enc (h,), W_dec (h, d), indices/values (B, k).
"""
import torch
import torch.nn.functional as F

__all__ = ["check_k", "topk_encode", "topk_select", "sparse_decode"]


def check_k(k: int, h: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 < k <= h:
        raise ValueError(f"k must be in 1..h={h}, got k={k}")


class _TopKEncode(torch.autograd.Function):
    """TopK of z = x @ W_enc + b_enc; the backward is a sparse product with the k selected entries only.

    Signed: the k largest |z| with their signs. Non-negative: the k largest z, then ReLU (negatives become 0 and
    pass no gradient).
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, nonneg):
        z = torch.addmm(b_enc, x, W_enc)
        if nonneg:
            values, indices = z.topk(k, dim=1, sorted=True)
            values = values.clamp_min(0)
        else:
            _, indices = z.abs().topk(k, dim=1, sorted=False)
            values = z.gather(1, indices)
            order = values.abs().argsort(dim=1, descending=True)
            indices = indices.gather(1, order)
            values = values.gather(1, order)
        ctx.save_for_backward(x, indices, values)
        ctx.h, ctx.nonneg = W_enc.shape[1], nonneg
        ctx.mark_non_differentiable(indices)
        return indices, values

    @staticmethod
    def backward(ctx, _grad_indices, grad_values):
        x, indices, values = ctx.saved_tensors
        grad_x = grad_W = grad_b = None
        if ctx.nonneg:
            grad_values = grad_values * (values > 0)
        flat_idx = indices.reshape(-1)
        flat_grad = grad_values.reshape(-1).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = _scatter_rows(flat_idx, flat_grad, x, ctx.h).T
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(ctx.h, dtype=x.dtype, device=x.device).index_add_(0, flat_idx, flat_grad)
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("topk_encode does not differentiate with respect to x")
        return grad_x, grad_W, grad_b, None, None


def _scatter_rows(flat_idx, flat_weight, rows, h):
    """out[i] = sum over (b, j) with indices[b, j] == i of weight[b, j] * rows[b]: a (h, B) sparse @ (B, d)."""
    B = rows.shape[0]
    k = flat_idx.numel() // B
    batch_of = torch.arange(B, device=rows.device).repeat_interleave(k)
    S = torch.sparse_coo_tensor(torch.stack([flat_idx, batch_of]), flat_weight, (h, B), check_invariants=False)
    return torch.sparse.mm(S, rows)


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, nonneg: bool = False):
    """indices, values of the k strongest entries of z = x @ W_enc + b_enc per row, strongest first.

    nonneg=False: the k largest |z|, signed, ordered by |value| descending.
    nonneg=True: the k largest z, ReLU applied (values >= 0; fewer than k positive z leave zeros), by value descending.
    Gradients flow to W_enc and b_enc (only through the selected entries, and for nonneg only the positive ones),
    not to x.
    """
    check_k(k, W_enc.shape[1])
    return _TopKEncode.apply(x, W_enc, b_enc, k, bool(nonneg))


def topk_select(z: torch.Tensor, k: int, nonneg: bool = False):
    """indices (B, k) int64 and values of the k strongest entries of each row of z (B, h), strongest first.

    nonneg=False: by |z|, values signed; nonneg=True: by z, values ReLU'd. Values are differentiable through z.
    """
    check_k(k, z.shape[1])
    _, indices = (z if nonneg else z.abs()).topk(k, dim=1, sorted=True)
    values = z.gather(1, indices)
    return indices, (values.clamp_min(0) if nonneg else values)


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]], without building a (B, k, d) tensor."""
    return F.embedding_bag(indices.long(), W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
