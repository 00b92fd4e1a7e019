"""Score entropy kernels (SEDD, docs/ops.md#score-entropy): loss and gradient in one pass.

The loss needs no normalization, so one program per row reads the log-scores once,
accumulates the loss terms and, when a gradient is needed, writes ``d loss / d s`` in the same
pass (possibly in place over the scores: every score is read before its gradient is written).
Per-row constants (``r = 1/expm1(sigma)``, the uniform ``ratio``, ``1/e`` and ``K``) are
computed in float64 and stored fp32 by :mod:`fastdiff.kernels.fused_loss`, so the kernels need no
``expm1`` / ``log1p`` of their own. Rows with ``x_t != m`` (absorbing) cost one store of zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff.kernels.launch import num_warps


@triton.jit
def _absorb_kernel(
    s_ptr,
    x_ptr,
    x0_ptr,
    r_ptr,
    c_ptr,
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
        r = tl.load(r_ptr + row)
        # read before the loop, and by every thread before any store (barrier): the gradient
        # may be written in place over the scores. An id out of range (value checks off)
        # reads nothing and gives a NaN loss.
        x0_ok = (x0 >= 0) & (x0 < V)
        s_x0 = tl.load(s_row + x0, mask=x0_ok, other=float("nan")).to(tl.float32)
        tl.debug_barrier()
        pos = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + cols0
            inside = cols < V
            s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32)
            keep = inside & (cols != mask_id)
            e = tl.where(keep, tl.exp(s), 0.0)
            pos += e
            if WRITE_GRAD:
                g = w * (e - tl.where(cols == x0, r, 0.0))
                tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)
        loss = tl.sum(pos, axis=0) - r * s_x0 + tl.load(c_ptr + row)
        tl.store(loss_ptr + row, w * loss)
    else:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            zero = tl.zeros((BLOCK_V,), dtype=grad_ptr.dtype.element_ty)
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                tl.store(g_row + cols, zero, mask=cols < V)


@triton.jit
def _uniform_kernel(
    s_ptr,
    x_ptr,
    x0_ptr,
    ratio_ptr,
    inv_e_ptr,
    c_ptr,
    w_ptr,
    loss_ptr,
    grad_ptr,
    V,
    inv_v,
    stride_s,
    stride_g,
    HAS_WEIGHT: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols0 = tl.arange(0, BLOCK_V)
    x = tl.load(x_ptr + row)
    x0 = tl.load(x0_ptr + row)
    ratio = tl.load(ratio_ptr + row)
    inv_e = tl.load(inv_e_ptr + row)
    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + row).to(tl.float32)
    same = x == x0
    # d loss / d s_j = S_j / V - c_j for j != x, with c_j = ratio/V (x = x0) or 1/V + [j = x0]/e
    c_same = ratio * inv_v
    s_row = s_ptr + row * stride_s
    g_row = grad_ptr + row * stride_g
    # read before the loop, and by every thread before any store (barrier): the gradient may
    # be written in place over the scores. An id out of range reads nothing: NaN loss.
    x0_ok = (x0 >= 0) & (x0 < V)
    s_x0 = tl.load(s_row + x0, mask=x0_ok, other=float("nan")).to(tl.float32)
    tl.debug_barrier()
    pos = tl.zeros((BLOCK_V,), dtype=tl.float32)
    neg = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + cols0
        inside = cols < V
        s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32)
        keep = inside & (cols != x)
        e = tl.where(keep, tl.exp(s), 0.0)
        pos += e
        neg += tl.where(keep, s, 0.0)
        if WRITE_GRAD:
            c = tl.where(same, c_same, inv_v + tl.where(cols == x0, inv_e, 0.0))
            g = tl.where(keep, w * (e * inv_v - c), 0.0)
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)
    neg0 = tl.sum(neg, axis=0) * inv_v
    if same:
        neg_term = ratio * neg0
    else:
        neg_term = s_x0 * inv_e + neg0
    loss = tl.sum(pos, axis=0) * inv_v - neg_term + tl.load(c_ptr + row)
    tl.store(loss_ptr + row, w * loss)


def launch_absorb(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    mask_id: int,
    block: int,
) -> None:
    """Absorbing graph; ``coef = (r, r (log r - 1))`` ``[2, N]``."""
    g = grad if grad is not None else log_score
    _absorb_kernel[(log_score.shape[0],)](
        log_score,
        x_t,
        x0,
        coef[0],
        coef[1],
        weight if weight is not None else loss,
        loss,
        g,
        log_score.shape[1],
        log_score.stride(0),
        g.stride(0),
        mask_id,
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )


def launch_uniform(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    mask_id: int,
    block: int,
) -> None:
    """Uniform graph; ``coef = (ratio, 1/e, K)`` ``[3, N]``; ``mask_id`` unused."""
    g = grad if grad is not None else log_score
    vocab = log_score.shape[1]
    _uniform_kernel[(log_score.shape[0],)](
        log_score,
        x_t,
        x0,
        coef[0],
        coef[1],
        coef[2],
        weight if weight is not None else loss,
        loss,
        g,
        vocab,
        1.0 / vocab,
        log_score.stride(0),
        g.stride(0),
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )
