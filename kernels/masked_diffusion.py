"""Masked-diffusion cross entropy kernel (MDLM SUBS, docs/ops.md#masked-diffusion-cross-entropy)
with the gradient fused in.

One program per row. Masked rows: a first pass keeps a running max and a running sum of
``exp(s - max)`` over the columns ``j != m`` (online softmax); a second pass, only when a
gradient is needed, writes ``w (softmax_j - [j = x0])`` with 0 in column ``m``. The mask column
is excluded by position, never by adding a large negative constant, so fp16 cannot overflow.
Unmasked rows store a zero loss (and a zero gradient row).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff.kernels.launch import num_warps


@triton.jit
def _mdlm_kernel(
    s_ptr,
    x_ptr,
    x0_ptr,
    w_ptr,
    loss_ptr,
    grad_ptr,
    V,
    stride_s,
    stride_g,
    mask_id,
    HAS_WEIGHT: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols0 = tl.arange(0, BLOCK_V)
    x = tl.load(x_ptr + row)
    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + row).to(tl.float32)
    g_row = grad_ptr + row * stride_g
    if x == mask_id:
        s_row = s_ptr + row * stride_s
        x0 = tl.load(x0_ptr + row)
        # log-sum-exp with one running max per row: the block's max is a reduction, so each
        # element costs one exp (a running max per lane would cost two)
        row_max = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + cols0
            keep = (cols < V) & (cols != mask_id)
            s = tl.load(s_row + cols, mask=keep, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(s, axis=0))
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)
            total = total * tl.exp(row_max - safe) + tl.sum(tl.exp(s - safe), axis=0)
            row_max = new_max
        safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        log_z = safe_max + tl.log(total)
        # every thread reads s[x0] before any gradient store (in-place use); an id out of range
        # (value checks off) reads nothing and gives a NaN loss
        x0_ok = (x0 >= 0) & (x0 < V)
        s_x0 = tl.load(s_row + x0, mask=x0_ok, other=float("nan")).to(tl.float32)
        tl.debug_barrier()
        tl.store(loss_ptr + row, w * (log_z - s_x0))
        if WRITE_GRAD:
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                inside = cols < V
                keep = inside & (cols != mask_id)
                s = tl.load(s_row + cols, mask=keep, other=float("-inf")).to(tl.float32)
                p = tl.exp(s - log_z)
                g = w * (p - tl.where(cols == x0, 1.0, 0.0))
                g = tl.where(keep, g, 0.0)
                tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)
    else:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            zero = tl.zeros((BLOCK_V,), dtype=grad_ptr.dtype.element_ty)
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                tl.store(g_row + cols, zero, mask=cols < V)


def launch_mdlm(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    mask_id: int,
    block: int,
) -> None:
    """Masked-diffusion cross entropy; ``coef`` unused (empty)."""
    g = grad if grad is not None else logits
    _mdlm_kernel[(logits.shape[0],)](
        logits,
        x_t,
        x0,
        weight if weight is not None else loss,
        loss,
        g,
        logits.shape[1],
        logits.stride(0),
        g.stride(0),
        mask_id,
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )
