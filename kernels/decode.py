"""Sparse decoder: x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]], forward and backward.

Forward: each program owns a BLOCK_B x BLOCK_D tile of x_hat and adds one gathered W_dec row slice per code slot.
Backward: the same tiling; per slot, dv[b, j] = <grad_out[b], W_dec[i]> over the tile's d-slice (atomically summed
over d-slices when there are several) and grad_out[b] * v scatter-added into row i of dW_dec, so only the rows
that were selected are touched.
"""
import torch
import triton
import triton.language as tl

from .utils import FP_FUSION, on_device

__all__ = ["sparse_decode_forward", "sparse_decode_backward", "SparseDecode", "sparse_decode"]

# Tiles: a program holds a BLOCK_B x BLOCK_D fp32 accumulator. On CUDA one d-slice covers d <= 1024 (no dv atomics
# at the common d = 384 / 768); the interpreter uses small tiles so its numpy arrays stay small.
_CUDA_BLOCK_B = 16
_CUDA_MAX_BLOCK_D = 1024
_CPU_BLOCK_B, _CPU_BLOCK_D = 16, 32


@triton.jit
def _tile(B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows and d-slice of the (B, D) output (int64), and which of them are in range."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    ds = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    return rows, ds, rows < B, ds < D


@triton.jit
def _slot_latents(idx_ptr, rows, row_ok, j, stride_ib, stride_ij, H):
    """The latent (int64) in code slot j of each row, and which rows hold one in range (asserted on the device)."""
    i = tl.load(idx_ptr + rows * stride_ib + j * stride_ij, mask=row_ok, other=0).to(tl.int64)
    tl.device_assert((i >= 0) & (i < H), "latent index out of range")
    return i, row_ok & (i >= 0) & (i < H)


@triton.jit
def _sparse_decode_forward_kernel(idx_ptr, val_ptr, w_ptr, out_ptr, B, D, H, K,
                                  stride_ib, stride_ij, stride_vb, stride_vj, stride_wh, stride_wd,
                                  BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, ds, row_ok, d_ok = _tile(B, D, BLOCK_B, BLOCK_D)
    acc = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
    for j in range(K):
        i, ok = _slot_latents(idx_ptr, rows, row_ok, j, stride_ib, stride_ij, H)
        v = tl.load(val_ptr + rows * stride_vb + j * stride_vj, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + i[:, None] * stride_wh + ds[None, :] * stride_wd, mask=ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += v[:, None] * w
    tl.store(out_ptr + rows[:, None] * D + ds[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _sparse_decode_backward_kernel(idx_ptr, val_ptr, w_ptr, go_ptr, dv_ptr, dw_ptr, B, D, H, K,
                                   stride_ib, stride_ij, stride_vb, stride_vj, stride_wh, stride_wd,
                                   stride_gb, stride_gd,
                                   BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NEED_DV: tl.constexpr,
                                   NEED_DW: tl.constexpr, ONE_SLICE: tl.constexpr):
    rows, ds, row_ok, d_ok = _tile(B, D, BLOCK_B, BLOCK_D)
    go = tl.load(go_ptr + rows[:, None] * stride_gb + ds[None, :] * stride_gd,
                 mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    for j in range(K):
        i, ok = _slot_latents(idx_ptr, rows, row_ok, j, stride_ib, stride_ij, H)
        tile = ok[:, None] & d_ok[None, :]
        if NEED_DV:
            w = tl.load(w_ptr + i[:, None] * stride_wh + ds[None, :] * stride_wd, mask=tile, other=0.0)
            dv = tl.sum(go * w.to(tl.float32), axis=1)
            if ONE_SLICE:
                tl.store(dv_ptr + rows * K + j, dv, mask=row_ok)
            else:
                tl.atomic_add(dv_ptr + rows * K + j, dv, mask=row_ok, sem="relaxed")
        if NEED_DW:
            v = tl.load(val_ptr + rows * stride_vb + j * stride_vj, mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(dw_ptr + i[:, None] * D + ds[None, :], v[:, None] * go, mask=tile, sem="relaxed")


def _tiles(D: int, cuda: bool):
    if cuda:
        return _CUDA_BLOCK_B, min(triton.next_power_of_2(D), _CUDA_MAX_BLOCK_D)
    return _CPU_BLOCK_B, _CPU_BLOCK_D


def _check(indices, values, W_dec):
    if indices.dim() != 2 or indices.shape != values.shape or W_dec.dim() != 2:
        raise ValueError(f"want indices (B, k), values (B, k), W_dec (h, d); got {tuple(indices.shape)}, "
                         f"{tuple(values.shape)}, {tuple(W_dec.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if not (indices.device == values.device == W_dec.device):
        raise ValueError(f"indices, values, W_dec are on {indices.device}, {values.device}, {W_dec.device}; "
                         f"want one device")


def sparse_decode_forward(indices, values, W_dec):
    """x_hat (B, d) in W_dec.dtype.

    indices (B, k) int32/int64 in [0, h), values (B, k), W_dec (h, d). Equivalent torch:
        (values[:, :, None] * W_dec[indices]).sum(1)
    """
    _check(indices, values, W_dec)
    (B, K), (H, D) = indices.shape, W_dec.shape
    out = torch.empty(B, D, dtype=W_dec.dtype, device=W_dec.device)
    if B == 0 or D == 0:
        return out
    if K == 0:
        return out.zero_()
    BLOCK_B, BLOCK_D = _tiles(D, W_dec.is_cuda)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    with on_device(W_dec):
        _sparse_decode_forward_kernel[grid](
            indices, values, W_dec, out, B, D, H, K, indices.stride(0), indices.stride(1), values.stride(0),
            values.stride(1), W_dec.stride(0), W_dec.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
            num_warps=4 if BLOCK_D <= 256 else 8, enable_fp_fusion=FP_FUSION)
    return out


def sparse_decode_backward(indices, values, W_dec, grad_out, need_values: bool = True, need_W: bool = True):
    """dv (B, k) and dW_dec (h, d), both fp32; None where not needed.

    grad_out (B, d). Equivalent torch:
        dv = (grad_out[:, None, :] * W_dec[indices]).sum(2)
        dW = zeros(h, d).index_add_(0, indices.flatten(), (values[:, :, None] * grad_out[:, None, :]).flatten(0, 1))
    """
    (B, K), (H, D) = indices.shape, W_dec.shape
    if grad_out.shape != (B, D):
        raise ValueError(f"grad_out must be (B={B}, d={D}), got {tuple(grad_out.shape)}")
    BLOCK_B, BLOCK_D = _tiles(D, W_dec.is_cuda)
    n_slices = triton.cdiv(D, BLOCK_D)
    dv = None
    if need_values:
        dv = (torch.empty if n_slices == 1 else torch.zeros)(B, K, dtype=torch.float32, device=W_dec.device)
    dW = torch.zeros(H, D, dtype=torch.float32, device=W_dec.device) if need_W else None
    if B and K and D and (need_values or need_W):
        dummy = dv if dv is not None else dW
        with on_device(W_dec):
            _sparse_decode_backward_kernel[(triton.cdiv(B, BLOCK_B), n_slices)](
                indices, values, W_dec, grad_out, dummy if dv is None else dv, dummy if dW is None else dW,
                B, D, H, K, indices.stride(0), indices.stride(1), values.stride(0), values.stride(1), W_dec.stride(0),
                W_dec.stride(1), grad_out.stride(0), grad_out.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
                NEED_DV=need_values, NEED_DW=need_W, ONE_SLICE=n_slices == 1, num_warps=4 if BLOCK_D <= 256 else 8,
                enable_fp_fusion=FP_FUSION)
    elif dv is not None:
        dv.zero_()
    return dv, dW


class SparseDecode(torch.autograd.Function):
    """x_hat = sparse_decode_forward(indices, values, W_dec); gradients for values and W_dec."""

    @staticmethod
    def forward(ctx, indices, values, W_dec):
        out = sparse_decode_forward(indices, values, W_dec)
        ctx.save_for_backward(indices, values, W_dec)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, W_dec = ctx.saved_tensors
        need_v, need_w = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dv, dW = sparse_decode_backward(indices, values, W_dec, grad_out, need_v, need_w)
        return None, (dv.to(values.dtype) if need_v else None), (dW.to(W_dec.dtype) if need_w else None)


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """The Triton sparse decode with gradients for values and W_dec: see csae_engine.kernels.sparse_decode.

    Raises
    ------
    ValueError
        Shapes that do not match, or tensors on different devices.
    """
    return SparseDecode.apply(indices, values, W_dec)
