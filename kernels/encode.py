"""Fused TopK encoder: x @ W_enc + b_enc, then the k entries of largest |z| per row, without writing z.

Forward: each program owns BLOCK_B rows and walks over h in BLOCK_H-wide tiles. A tile of z is computed with
tl.dot (fp32 accumulation over BLOCK_D-deep slices of d), turned into sortable int64 keys

    key = |z| fp32 bits << 32  |  sign << 31  |  (2^31 - 1 - column)

(|z| >= 0, so its bits order like its value; equal |z| go negative first, then by smaller column; KP is k
rounded up to a power of two). Each row of the tile is cut to its top KP keys by a bitonic top-k network (_row_topk) and
merged into the row's running top KP, kept ascending in registers: the element-wise max of an ascending and a
descending list is a bitonic list holding the KP largest of both, which one bitonic merge sorts again. Only the k
best keys per row are decoded and written.

Backward: with G the (B, h) gradient of z, non-zero only at the k selected entries of each row,
dW_enc = x^T G and db_enc = column sums of G. G is never built: each (row, slot) pair atomically adds
g * x[row] into row `index` of an fp32 (h, d) buffer, i.e. dW_enc^T, whose rows are contiguous in d.
"""
import torch
import triton
import triton.language as tl

from . import reference
from .utils import FP_FUSION, on_device

__all__ = ["MAX_FUSED_K", "topk_encode_forward", "topk_encode_backward", "TopKEncode", "topk_encode"]

# The running top-k lives in registers: BLOCK_B x KP int64 keys. Past this KP (k > 256) it would spill, so larger k
# fall back to torch's matmul + topk over row chunks of _FALLBACK_ROWS (the backward stays the sparse kernel).
MAX_FUSED_K = 256
_FALLBACK_ROWS = 4096
# Column tile width; raised to KP when k needs more (a tile yields at most its width of candidates).
_BLOCK_H = 128


# Bitonic networks on a row block x (R, N) (powers of two), reshaped to a (2, 2, ..., 2) cube so that bit i of the
# column is axis ndim - 1 - i. A compare-and-swap finds each element's partner as (pair sum) - self: a reduction
# over a size-2 axis (integer wrap-around is harmless), vectorised under the interpreter as well.
@triton.constexpr_function
def _log2(n):
    return int(n).bit_length() - 1


@triton.constexpr_function
def _cube(numel):
    return [2] * (int(numel).bit_length() - 1)


@triton.constexpr_function
def _along(ndim, axis):
    return [1] * axis + [2] + [1] * (ndim - axis - 1)


@triton.jit
def _coord(ndim: tl.constexpr, axis: tl.constexpr):
    """The 0/1 coordinate along `axis` of an ndim-cube, broadcastable against it."""
    return tl.reshape(tl.arange(0, 2), _along(ndim, axis))


@triton.jit
def _compare_swap(y, ndim: tl.constexpr, axis: tl.constexpr, desc):
    partner = tl.sum(y, axis=axis, keep_dims=True) - y
    upper = (_coord(ndim, axis) ^ desc) != 0  # this slot takes the larger of the pair
    return tl.where((y > partner) != upper, partner, y)


@triton.jit
def _bitonic_merge(y, ndim: tl.constexpr, stage: tl.constexpr, desc):
    """Sorts every bitonic run of 2**stage consecutive columns; desc (0/1, or a cube) sets each run's direction."""
    for s in tl.static_range(stage):
        y = _compare_swap(y, ndim, ndim - stage + s, desc)
    return y


@triton.jit
def _row_topk(x, KP: tl.constexpr):
    """The KP largest entries of each row of x (R, N), descending; 2 <= KP <= N."""
    R: tl.constexpr = x.shape[0]
    N: tl.constexpr = x.shape[1]
    n: tl.constexpr = _log2(N)
    L: tl.constexpr = _log2(KP)
    ndim: tl.constexpr = _log2(R) + n
    y = tl.reshape(x, _cube(R * N))
    # sort runs of KP, alternately ascending and descending (bit `stage` of the column picks the direction)
    for stage in tl.static_range(1, L + 1):
        if stage < n:
            y = _bitonic_merge(y, ndim, stage, _coord(ndim, ndim - 1 - stage))
        else:
            y = _bitonic_merge(y, ndim, stage, 1)
    # halve the runs: the max of an ascending and a descending run is a bitonic run holding the KP largest of both
    for t in tl.static_range(L + 1, n + 1):
        y = tl.max(y, axis=ndim - (t - L) - L)  # the cube loses that axis
        if t < n:
            y = _bitonic_merge(y, ndim - (t - L), L, _coord(ndim - (t - L), ndim - (t - L) - 1 - L))
        else:
            y = _bitonic_merge(y, ndim - (t - L), L, 1)
    return tl.reshape(y, (R, KP))


@triton.jit
def _merge_into(best, cand, KP: tl.constexpr):
    """The KP largest of best (R, KP) ascending and cand (R, KP) descending, ascending."""
    R: tl.constexpr = best.shape[0]
    ndim: tl.constexpr = _log2(R * KP)
    y = tl.reshape(tl.maximum(best, cand), _cube(R * KP))
    return tl.reshape(_bitonic_merge(y, ndim, _log2(KP), 0), (R, KP))


@triton.jit
def _topk_encode_forward_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, val_ptr, B, D, H, K,
                                stride_xb, stride_xd, stride_wd, stride_wh,
                                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                                KP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    best = tl.full((BLOCK_B, KP), -1, tl.int64)  # ascending; -1 is below every real key
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H).to(tl.int64)
        col_ok = cols < H
        acc = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            d_ok = ds < D
            xt = tl.load(x_ptr + rows[:, None] * stride_xb + ds[None, :] * stride_xd,
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            wt = tl.load(w_ptr + ds[:, None] * stride_wd + cols[None, :] * stride_wh,
                         mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                xt, wt = xt.to(tl.float32), wt.to(tl.float32)
            acc = tl.dot(xt, wt, acc, input_precision=PRECISION)
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        z = acc + bias[None, :]
        mag = tl.abs(z).to(tl.int32, bitcast=True).to(tl.int64)
        neg = (z < 0).to(tl.int64)
        key = (mag << 32) | (neg << 31) | (cols ^ 0x7FFFFFFF)[None, :]  # 2^31 - 1 - column
        key = tl.where(col_ok[None, :], key, -1)
        best = _merge_into(best, _row_topk(key, KP), KP)
    # decode; best is ascending, so position p goes to output slot KP - 1 - p
    col = (best & 0x7FFFFFFF) ^ 0x7FFFFFFF
    mag = (best >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    val = tl.where(((best >> 31) & 1) == 1, -mag, mag)
    slot = KP - 1 - tl.arange(0, KP)
    out = rows[:, None] * K + slot[None, :]
    mask = row_ok[:, None] & (slot < K)[None, :]
    tl.store(idx_ptr + out, col, mask=mask)
    tl.store(val_ptr + out, val.to(val_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _topk_encode_backward_kernel(x_ptr, idx_ptr, g_ptr, dwt_ptr, db_ptr, B, D, H, K,
                                 stride_xb, stride_xd, stride_ib, stride_ij, stride_gb, stride_gj,
                                 BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NEED_DW: tl.constexpr,
                                 NEED_DB: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < B
    mask = row_ok[:, None] & (ds < D)[None, :]
    xt = tl.load(x_ptr + rows[:, None] * stride_xb + ds[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    for j in range(K):
        i = tl.load(idx_ptr + rows * stride_ib + j * stride_ij, mask=row_ok, other=0).to(tl.int64)
        tl.device_assert((i >= 0) & (i < H), "latent index out of range")
        ok = row_ok & (i >= 0) & (i < H)
        g = tl.load(g_ptr + rows * stride_gb + j * stride_gj, mask=ok, other=0.0).to(tl.float32)
        if NEED_DW:
            tl.atomic_add(dwt_ptr + i[:, None] * D + ds[None, :], g[:, None] * xt,
                          mask=ok[:, None] & mask, sem="relaxed")
        if NEED_DB:
            if pid_d == 0:
                tl.atomic_add(db_ptr + i, g, mask=ok, sem="relaxed")


def _kp(k: int) -> int:
    return max(triton.next_power_of_2(k), 2)


def _check_shapes(x, W_enc, b_enc):
    if x.dim() != 2 or W_enc.dim() != 2 or b_enc.dim() != 1:
        raise ValueError(f"want x (B, d), W_enc (d, h), b_enc (h,); got {tuple(x.shape)}, {tuple(W_enc.shape)}, "
                         f"{tuple(b_enc.shape)}")
    if x.shape[1] != W_enc.shape[0] or W_enc.shape[1] != b_enc.shape[0]:
        raise ValueError(f"shapes do not chain: x {tuple(x.shape)} @ W_enc {tuple(W_enc.shape)} + b_enc "
                         f"{tuple(b_enc.shape)}")
    if not (x.device == W_enc.device == b_enc.device):
        raise ValueError(f"x, W_enc, b_enc are on {x.device}, {W_enc.device}, {b_enc.device}; want one device")
    if not (x.dtype == W_enc.dtype == b_enc.dtype):
        raise TypeError(f"x, W_enc, b_enc must share a dtype (or run under autocast), got {x.dtype}, {W_enc.dtype}, "
                        f"{b_enc.dtype}")


def topk_encode_forward(x, W_enc, b_enc, k: int):
    """indices (B, k) int64 and values (B, k) in x.dtype of the k largest |x @ W_enc + b_enc| per row, strongest first.

    x (B, d), W_enc (d, h), b_enc (h,), one dtype (fp32, fp16 or bf16). Equivalent torch:
        z = torch.addmm(b_enc, x, W_enc); i = z.abs().topk(k, 1).indices; return i, z.gather(1, i)
    """
    _check_shapes(x, W_enc, b_enc)
    B, D = x.shape
    H = W_enc.shape[1]
    reference.check_k(k, H)
    indices = torch.empty(B, k, dtype=torch.int64, device=x.device)
    values = torch.empty(B, k, dtype=x.dtype, device=x.device)
    if B == 0:
        return indices, values
    KP = _kp(k)
    if KP > MAX_FUSED_K:
        for s in range(0, B, _FALLBACK_ROWS):
            z = torch.addmm(b_enc, x[s:s + _FALLBACK_ROWS], W_enc)
            i = z.abs().topk(k, dim=1, sorted=True).indices
            indices[s:s + _FALLBACK_ROWS], values[s:s + _FALLBACK_ROWS] = i, z.gather(1, i)
        return indices, values
    BLOCK_H = max(_BLOCK_H, KP)
    # register budget, checked with ptxas for sm_90 at 8 warps: no spills for 16-bit inputs (fp32 spills ~100 bytes);
    # fewer rows as the running top-k grows
    BLOCK_B = 64 if KP <= 64 else 32 if KP <= 128 else 16
    BLOCK_D = 64
    if x.element_size() == 4:
        BLOCK_B, BLOCK_D = min(BLOCK_B, 32), 32
    if not x.is_cuda:  # the interpreter: smaller tiles keep the numpy arrays small
        BLOCK_B, BLOCK_H, BLOCK_D = 16, max(32, KP), 16
    grid = (triton.cdiv(B, BLOCK_B),)
    with on_device(x):
        _topk_encode_forward_kernel[grid](
            x, W_enc, b_enc, indices, values, B, D, H, k,
            x.stride(0), x.stride(1), W_enc.stride(0), W_enc.stride(1),
            BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_D=BLOCK_D, KP=KP,
            PRECISION="ieee" if x.dtype == torch.float32 or not x.is_cuda else "tf32", UPCAST=not x.is_cuda,
            num_warps=8, num_stages=3, enable_fp_fusion=FP_FUSION)
    return indices, values


def topk_encode_backward(x, indices, grad_values, h: int, need_w: bool = True, need_b: bool = True):
    """dW_enc (d, h) and db_enc (h,), fp32, of the encoder through the selection; None where not needed.

    x (B, d), indices (B, k) int, grad_values (B, k). Equivalent torch, with G the dense (B, h) gradient of z:
        G = zeros(B, h).scatter_(1, indices, grad_values); return x.T @ G, G.sum(0)
    """
    B, D = x.shape
    if indices.shape != grad_values.shape or indices.shape[0] != B:
        raise ValueError(f"indices {tuple(indices.shape)} and grad_values {tuple(grad_values.shape)} must both be "
                         f"(B={B}, k)")
    K = indices.shape[1]
    dwt = torch.zeros(h, D, dtype=torch.float32, device=x.device) if need_w else None
    db = torch.zeros(h, dtype=torch.float32, device=x.device) if need_b else None
    if B and K and (need_w or need_b):
        BLOCK_B, BLOCK_D = (32, 128) if x.is_cuda else (16, 32)
        grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D) if need_w else 1)
        dummy = dwt if dwt is not None else db
        with on_device(x):
            _topk_encode_backward_kernel[grid](
                x, indices, grad_values, dwt if need_w else dummy, db if need_b else dummy, B, D, h, K,
                x.stride(0), x.stride(1), indices.stride(0), indices.stride(1), grad_values.stride(0),
                grad_values.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, NEED_DW=need_w, NEED_DB=need_b, num_warps=4,
                enable_fp_fusion=FP_FUSION)
    return (dwt.t() if need_w else None), db


def _compute_dtype(x):
    """The autocast dtype when autocast is on for x's device (as torch.addmm would run), else x's dtype."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class TopKEncode(torch.autograd.Function):
    """(indices, values) = topk_encode_forward(x, W_enc, b_enc, k); gradients for W_enc and b_enc, none for x."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k):
        dt = _compute_dtype(x)
        xc, Wc, bc = (t.to(dt) for t in (x, W_enc, b_enc))
        indices, values = topk_encode_forward(xc, Wc, bc, k)
        ctx.save_for_backward(xc, indices)
        ctx.h = W_enc.shape[1]
        ctx.dtypes = (W_enc.dtype, b_enc.dtype)
        ctx.mark_non_differentiable(indices)
        return indices, values

    @staticmethod
    def backward(ctx, _grad_indices, grad_values):
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("topk_encode does not differentiate with respect to x")
        x, indices = ctx.saved_tensors
        need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dW, db = topk_encode_backward(x, indices, grad_values, ctx.h, need_w, need_b)
        dW = dW.to(ctx.dtypes[0]).contiguous() if need_w else None
        db = db.to(ctx.dtypes[1]) if need_b else None
        return None, dW, db, None


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton TopK encode with gradients for W_enc and b_enc: see csae_engine.kernels.topk_encode.

    Raises
    ------
    ValueError
        k outside 1..h, or shapes that do not chain.
    """
    reference.check_k(k, W_enc.shape[1])
    return TopKEncode.apply(x, W_enc, b_enc, k)
