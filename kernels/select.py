"""Top-k selection over the rows of z (B, h): a radix select on packed integer keys, one row per program.

The candidate that pairs with cuBLAS: the encoder matmul writes z, this kernel reads it once. Each entry becomes a
key that orders like its strength and is unique in its row:

    key = strength << COL_BITS  |  (2^COL_BITS - 1 - column)

strength: the bits of |z| without its sign (by |z|), or z's bits mapped to an order-preserving unsigned integer
(by z, CSR). bf16 and fp16 keys fit int32 (16 bits of strength + up to 15 of column); float32 keys take int64.
Equal strengths go to the smaller column. The k-th largest key T is found bit by bit from the top: a bit stays set
when at least k keys are >= T with it, so exactly k keys end >= T. They are compacted by a prefix sum into a
scratch row, sorted there (tl.sort of k rounded up to a power of two) and decoded into columns; the values are
gathered from z afterwards. The launcher reads z through an integer view: the kernel never touches a float.
"""
import torch
import triton
import triton.language as tl

from . import reference
from .utils import FP_FUSION, on_device

__all__ = ["MAX_SELECT_H", "topk_select", "matmul_then_select"]

# A row lives in registers: past this h (or for float64) the launcher falls back to torch.topk.
MAX_SELECT_H = 16384


@triton.jit
def _select_kernel(bits_ptr, idx_ptr, scratch_ptr, h, k, stride_row,
                   BLOCK_H: tl.constexpr, KP: tl.constexpr, COL_BITS: tl.constexpr, KEY_BITS: tl.constexpr,
                   WIDE: tl.constexpr, BY_VALUE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    inside = cols < h
    bits = tl.load(bits_ptr + row * stride_row + cols, mask=inside, other=0)
    if WIDE:  # float32 bits in int32
        b = bits.to(tl.int64)
        if BY_VALUE:  # negatives: flip the magnitude bits so a larger magnitude sorts lower, then shift to >= 0
            strength = tl.where(b >= 0, b, b ^ 0x7FFFFFFF) + 0x80000000
        else:
            strength = b & 0x7FFFFFFF
    else:  # bf16 / fp16 bits in int16
        b = bits.to(tl.int32)
        if BY_VALUE:
            strength = tl.where(b >= 0, b, b ^ 0x7FFF) + 0x8000
        else:
            strength = b & 0x7FFF
    col_mask = (1 << COL_BITS) - 1
    key = (strength << COL_BITS) | (col_mask - cols)
    key = tl.where(inside, key, -1)  # padding never reaches a threshold, which is >= 0

    threshold = tl.max(key, axis=0) * 0  # a zero of the key's type
    for i in tl.static_range(KEY_BITS):
        candidate = threshold | (1 << (KEY_BITS - 1 - i))
        if tl.sum((key >= candidate).to(tl.int32), axis=0) >= k:
            threshold = candidate

    # the k keys >= threshold, compacted in column order into the scratch row; the slots past k hold -1
    chosen = key >= threshold
    slot = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
    slots = tl.arange(0, KP)
    tl.store(scratch_ptr + row * KP + slots, tl.full([KP], -1, key.dtype), mask=slots >= k)
    tl.store(scratch_ptr + row * KP + slot, key, mask=chosen)
    tl.debug_barrier()  # the stores above, by other threads of this program, are read back below
    best = tl.sort(tl.load(scratch_ptr + row * KP + slots), descending=True)
    column = col_mask - (best & col_mask)
    tl.store(idx_ptr + row * k + slots, column.to(tl.int64), mask=slots < k)


def topk_select(z: torch.Tensor, k: int, nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """indices (B, k) int64 and values (B, k) of the k strongest entries of each row of z (B, h), strongest first.

    Equivalent to reference.topk_select(z, k, nonneg) (by |z| signed, or by z with ReLU), with equal strengths
    going to the smaller column. float32, float16 or bfloat16 z with h <= MAX_SELECT_H; other z go to the
    reference. The values are gathered from z: differentiable through z (not through the choice, as any top-k).
    """
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (B, h), got shape {tuple(z.shape)}")
    reference.check_k(k, z.shape[1])
    B, h = z.shape
    if h > MAX_SELECT_H or z.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return reference.topk_select(z, k, nonneg)
    if z.stride(1) != 1:
        z = z.contiguous()
    wide = z.dtype == torch.float32
    bits = z.detach().view(torch.int32 if wide else torch.int16)
    col_bits = max(1, (h - 1).bit_length())
    key_bits = (32 if wide else 16) + col_bits
    kp = triton.next_power_of_2(k)
    block_h = max(triton.next_power_of_2(h), kp)
    idx = torch.empty(B, k, dtype=torch.int64, device=z.device)
    scratch = torch.empty(B, kp, dtype=torch.int64 if wide else torch.int32, device=z.device)
    if B:
        with on_device(z):
            _select_kernel[(B,)](bits, idx, scratch, h, k, bits.stride(0), BLOCK_H=block_h, KP=kp,
                                 COL_BITS=col_bits, KEY_BITS=key_bits, WIDE=wide, BY_VALUE=bool(nonneg),
                                 num_warps=min(16, max(4, block_h // 512)), enable_fp_fusion=FP_FUSION)
    values = z.gather(1, idx)
    return idx, (values.clamp_min(0) if nonneg else values)


def matmul_then_select(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, nonneg: bool = False):
    """topk_encode as cuBLAS writes it and this kernel reads it: z = addmm(b_enc, x, W_enc), then topk_select.

    The (B, h) z is written once (unlike the fused encode), so callers encode in row chunks that fit. Gradients
    reach W_enc and b_enc through the gathered values (a dense backward, x^T dz).
    """
    return topk_select(torch.addmm(b_enc, x, W_enc), k, nonneg)
