"""Concrete score matching kernels (the L_CSM of SEDD): loss and gradient in one pass.

One program per row streams the log-scores once: each block turns ``s`` into the ratios
``S = exp(s)``, subtracts the kernel's target ratios ``a`` and accumulates ``(S - a)^2``;
when a gradient is needed it writes ``w (S - a) S`` (times ``1/V`` on the uniform graph) in
the same pass. Per-row targets (``r = 1/expm1(sigma)``; the uniform ``ratio`` and
``1/ratio = 1 + V/e``) are computed in float64 on the host and stored fp32. The launchers run
under the custom op ``fastdiff::fused_loss`` (kinds ``csm_absorb``, ``csm_uniform``) of
:mod:`fastdiff.kernels.fused_loss`, which registers the kernels, their fake implementation
and the backward (a rescale of the gradient written here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff.kernels.launch import num_warps
from fastdiff.reference.losses import log_expm1, uniform_ratio


@triton.jit
def _csm_absorb_kernel(
    s_ptr,
    x_ptr,
    x0_ptr,
    r_ptr,
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
        acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + cols0
            inside = cols < V
            s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32)
            ratio = tl.where(inside & (cols != mask_id), tl.exp(s), 0.0)
            # x0 != m (checked), so the mask column has ratio 0 and target 0
            d = ratio - tl.where(cols == x0, r, 0.0)
            acc += d * d
            if WRITE_GRAD:
                tl.store(g_row + cols, (w * d * ratio).to(grad_ptr.dtype.element_ty), mask=inside)
        tl.store(loss_ptr + row, w * 0.5 * tl.sum(acc, axis=0))
    else:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            zero = tl.zeros((BLOCK_V,), dtype=grad_ptr.dtype.element_ty)
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                tl.store(g_row + cols, zero, mask=cols < V)


@triton.jit
def _csm_uniform_kernel(
    s_ptr,
    x_ptr,
    x0_ptr,
    ratio_ptr,
    inv_ratio_ptr,
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
    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + row).to(tl.float32)
    # target ratios: `ratio` everywhere when x = x0; else 1/ratio at x0 and 1 elsewhere
    same = x == x0
    a_other = tl.where(same, tl.load(ratio_ptr + row), 1.0)
    a_x0 = tl.where(same, a_other, tl.load(inv_ratio_ptr + row))
    s_row = s_ptr + row * stride_s
    g_row = grad_ptr + row * stride_g
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + cols0
        inside = cols < V
        s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32)
        keep = inside & (cols != x)
        ratio = tl.where(keep, tl.exp(s), 0.0)
        d = tl.where(keep, ratio - tl.where(cols == x0, a_x0, a_other), 0.0)
        acc += d * d
        if WRITE_GRAD:
            g = (w * inv_v) * d * ratio
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)
    tl.store(loss_ptr + row, w * (0.5 * inv_v) * tl.sum(acc, axis=0))


def launch_csm_absorb(
    scores: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    mask_id: int,
    block: int,
) -> None:
    """Absorbing graph; ``coef = r`` ``[1, N]`` (:func:`absorb_targets`)."""
    g = grad if grad is not None else scores
    _csm_absorb_kernel[(scores.shape[0],)](
        scores,
        x_t,
        x0,
        coef[0],
        weight if weight is not None else loss,
        loss,
        g,
        scores.shape[1],
        scores.stride(0),
        g.stride(0),
        mask_id,
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )


def launch_csm_uniform(
    scores: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    mask_id: int,
    block: int,
) -> None:
    """Uniform graph; ``coef = (ratio, 1/ratio)`` ``[2, N]`` (:func:`uniform_targets`);
    ``mask_id`` is unused."""
    g = grad if grad is not None else scores
    vocab = scores.shape[1]
    _csm_uniform_kernel[(scores.shape[0],)](
        scores,
        x_t,
        x0,
        coef[0],
        coef[1],
        weight if weight is not None else loss,
        loss,
        g,
        vocab,
        1.0 / vocab,
        scores.stride(0),
        g.stride(0),
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )


def absorb_targets(sigma: torch.Tensor) -> torch.Tensor:
    """``r = 1/expm1(sigma)`` in float64 math, fp32 ``[1, N]``."""
    return torch.exp(-log_expm1(sigma.detach().double()))[None].float()


def uniform_targets(sigma: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(ratio, 1/ratio)`` with ``ratio = e/(e + V)``, ``1/ratio = 1 + V/e``, fp32 ``[2, N]``."""
    sig = sigma.detach().double()
    ratio, _ = uniform_ratio(sig, vocab)
    return torch.stack((ratio, 1.0 + vocab / torch.expm1(sig))).float()
