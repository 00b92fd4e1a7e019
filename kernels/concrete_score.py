"""Concrete score matching kernels (the L_CSM of SEDD): loss and gradient in one pass.

One program per row streams the log-scores once: each block turns ``s`` into the ratios
``S = exp(s)``, subtracts the kernel's target ratios ``a`` and accumulates ``(S - a)^2``;
when a gradient is needed it writes ``w (S - a) S`` (times ``1/V`` on the uniform graph) in
the same pass. The loss is the last layer, so backward only rescales that gradient by
``grad_output`` (not at all when it is 1), as :mod:`fastdiff.kernels.fused_loss` does. Per-row
targets (``r = 1/expm1(sigma)``; the uniform ``ratio`` and ``1/ratio = 1 + V/e``) are
computed in float64 on the host and stored fp32. The custom op ``fastdiff::concrete_score``
has a fake implementation and an autograd formula, so the public function traces under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.fused_loss import rescale_rows, use_reference
from fastdiff.kernels.launch import block_size, new_output, num_warps
from fastdiff.reference import losses as ref
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


def _launch(scores, x_t, x0, coef, weight, loss, grad, kind, mask_id, block) -> None:
    g = grad if grad is not None else scores
    common = dict(
        HAS_WEIGHT=weight is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=block,
        num_warps=num_warps(block),
    )
    w = weight if weight is not None else loss
    vocab = scores.shape[1]
    grid = (scores.shape[0],)
    if kind == "absorb":
        _csm_absorb_kernel[grid](
            scores,
            x_t,
            x0,
            coef[0],
            w,
            loss,
            g,
            vocab,
            scores.stride(0),
            g.stride(0),
            mask_id,
            **common,
        )
    else:
        _csm_uniform_kernel[grid](
            scores,
            x_t,
            x0,
            coef[0],
            coef[1],
            w,
            loss,
            g,
            vocab,
            1.0 / vocab,
            scores.stride(0),
            g.stride(0),
            **common,
        )


@torch.library.custom_op("fastdiff::concrete_score", mutates_args=())
def concrete_score(
    scores: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: Optional[torch.Tensor],
    kind: str,
    mask_id: int,
    need_grad: bool,
    block_v: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kind`` in {absorb, uniform}; ``coef`` fp32 per-row targets (``[1, N]``: ``r``;
    ``[2, N]``: ``ratio``, ``1/ratio``); ``weight`` ``[N]`` fp32 or None; ``block_v`` 0 picks
    the block size. Returns ``(loss [N] fp32, grad [N, V] or [0, V])``."""
    n, vocab = scores.shape
    loss = new_output((n,), torch.float32, scores.device)
    grad = new_output((n if need_grad else 0, vocab), scores.dtype, scores.device)
    if n:
        block = block_v or block_size(vocab)
        _launch(
            scores, x_t, x0, coef, weight, loss, grad if need_grad else None, kind, mask_id, block
        )
    return loss, grad


@concrete_score.register_fake
def _(scores, x_t, x0, coef, weight, kind, mask_id, need_grad, block_v):
    n, vocab = scores.shape
    return scores.new_empty(n, dtype=torch.float32), scores.new_empty(
        (n if need_grad else 0, vocab)
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss: torch.Tensor, _unused: torch.Tensor | None):
    (grad,) = ctx.saved_tensors
    if grad.shape[0] != grad_loss.shape[0]:
        raise RuntimeError("concrete_score: the gradient was not computed in forward")
    traced = type(grad_loss) is not torch.Tensor or torch.compiler.is_compiling()
    if traced or not bool((grad_loss == 1).all()):
        grad = rescale_rows(grad, grad_loss)
    return grad, None, None, None, None, None, None, None, None


concrete_score.register_autograd(_backward, setup_context=_setup_context)


def _run(kind, scores, x_t, x0, coef, weight, mask_id, block_v) -> torch.Tensor:
    grad_on = torch.is_grad_enabled()
    # a weight that needs a gradient is applied outside the op (d/d weight = the row loss)
    outside = weight is not None and grad_on and weight.requires_grad
    loss, _ = concrete_score(
        scores.contiguous(),
        x_t.contiguous(),
        x0.contiguous(),
        coef,
        None if weight is None or outside else weight.float().contiguous(),
        kind,
        mask_id,
        grad_on and scores.requires_grad,
        block_v,
    )
    return loss * weight.float() if outside else loss


def absorb_targets(sigma: torch.Tensor) -> torch.Tensor:
    """``r = 1/expm1(sigma)`` in float64 math, fp32 ``[1, N]``."""
    return torch.exp(-log_expm1(sigma.detach().double()))[None].float()


def uniform_targets(sigma: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(ratio, 1/ratio)`` with ``ratio = e/(e + V)``, ``1/ratio = 1 + V/e``, fp32 ``[2, N]``."""
    sig = sigma.detach().double()
    ratio, _ = uniform_ratio(sig, vocab)
    return torch.stack((ratio, 1.0 + vocab / torch.expm1(sig))).float()


@register_kernel("concrete_score_matching_absorb")
def concrete_score_matching_absorb(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.concrete_score_matching_absorb` (fp32)."""
    if use_reference(log_score, sigma):
        return ref.concrete_score_matching_absorb(log_score, x_t, x0, sigma, mask_id, weight)
    return _run("absorb", log_score, x_t, x0, absorb_targets(sigma), weight, mask_id, block_v)


@register_kernel("concrete_score_matching_uniform")
def concrete_score_matching_uniform(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.concrete_score_matching_uniform` (fp32)."""
    if use_reference(log_score, sigma):
        return ref.concrete_score_matching_uniform(log_score, x_t, x0, sigma, weight)
    coef = uniform_targets(sigma, log_score.shape[-1])
    return _run("uniform", log_score, x_t, x0, coef, weight, -1, block_v)
