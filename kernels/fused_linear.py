"""Fused output projection + loss: the ``[N, V]`` logits never exist at once.

``loss = sum_i w_i L(hidden_i W^T + b, x_t_i, x0_i)`` for the score entropy (both graphs) and
the masked-diffusion cross entropy. The rows are processed in chunks: for each chunk the logits
``[C, V]`` are formed with one matmul, the fused loss kernel turns them in place into
``d loss / d logits``, and that chunk's gradient is immediately contracted into the gradients
of the hidden states (``g W``), of the projection (``g^T h``, accumulated over chunks in fp32)
and of the bias. Rows that cannot contribute (unmasked rows of the absorbing graph and of the
masked-diffusion loss) are skipped before the matmul. Peak extra memory is one ``[C, V]``
chunk plus the fp32 projection gradient, instead of ``2 N V`` for projection-then-loss.

The result is a scalar (sum over rows), so backward only scales the saved gradients by the
scalar ``grad_output`` (and skips that when it is 1). Registered as the custom op
``fastdiff::fused_linear_loss`` with a fake implementation and autograd.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastdiff.backend import register_kernel
from fastdiff.kernels.fused_loss import _LAUNCHERS, absorb_coef, uniform_coef, use_reference
from fastdiff.kernels.launch import block_size
from fastdiff.reference import losses as ref

# Logit elements per chunk (64 Mi elements: 128 MiB of bf16 logits) unless told otherwise.
CHUNK_ELEMENTS = 1 << 26


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk so that one chunk of logits holds about ``CHUNK_ELEMENTS`` entries."""
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


@torch.library.custom_op("fastdiff::fused_linear_loss", mutates_args=())
def fused_linear_loss(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: Optional[torch.Tensor],
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    row_weight: Optional[torch.Tensor],
    kind: str,
    mask_id: int,
    grad_hidden: bool,
    grad_projection: bool,
    grad_bias: bool,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(total fp32 [], d/d hidden [N, H] | [0], d/d projection fp32 [V, H] | [0],
    d/d bias fp32 [V] | [0])`` for ``hidden [N, H]``, ``projection [V, H]``; ``kind`` in
    {absorb, uniform, mdlm}; ``coef`` the per-row constants of :mod:`fused_loss` ``[k, N]``."""
    n, _ = hidden.shape
    vocab = projection.shape[0]
    dev = hidden.device
    need_grad = grad_hidden or grad_projection or grad_bias
    total = torch.zeros((), device=dev, dtype=torch.float32)
    g_hidden = torch.zeros_like(hidden) if grad_hidden else hidden.new_empty(0)
    g_proj = (
        torch.zeros(projection.shape, device=dev, dtype=torch.float32)
        if grad_projection
        else hidden.new_empty(0, dtype=torch.float32)
    )
    g_bias = (
        torch.zeros(vocab, device=dev, dtype=torch.float32)
        if grad_bias
        else hidden.new_empty(0, dtype=torch.float32)
    )
    if kind == "uniform":
        rows = torch.arange(n, device=dev)
    else:
        rows = torch.nonzero(x_t == mask_id).squeeze(1)
    launch = _LAUNCHERS[kind]
    block = block_size(vocab)
    for start in range(0, rows.numel(), chunk_rows):
        idx = rows[start : start + chunk_rows]
        h = hidden.index_select(0, idx)
        logits = torch.nn.functional.linear(h, projection, bias).contiguous()
        loss = torch.empty(idx.numel(), device=dev, dtype=torch.float32)
        w = None if row_weight is None else row_weight.index_select(0, idx).contiguous()
        launch(
            logits,
            x_t.index_select(0, idx),
            x0.index_select(0, idx),
            coef.index_select(1, idx).contiguous(),
            w,
            loss,
            logits if need_grad else None,
            mask_id,
            block,
        )
        total += loss.sum()
        if grad_hidden:
            g_hidden.index_copy_(0, idx, logits @ projection)
        if grad_projection:
            g_proj += (logits.t() @ h).float()
        if grad_bias:
            g_bias += logits.sum(0, dtype=torch.float32)
    return total, g_hidden, g_proj, g_bias


@fused_linear_loss.register_fake
def _(hidden, projection, bias, x_t, x0, coef, row_weight, kind, mask_id, gh, gp, gb, chunk_rows):
    f32 = torch.float32
    return (
        hidden.new_empty((), dtype=f32),
        hidden.new_empty(hidden.shape if gh else (0,)),
        hidden.new_empty(projection.shape if gp else (0,), dtype=f32),
        hidden.new_empty((projection.shape[0],) if gb else (0,), dtype=f32),
    )


def _setup_context(ctx, inputs, output) -> None:
    hidden, projection, bias = inputs[:3]
    ctx.dtypes = (hidden.dtype, projection.dtype, None if bias is None else bias.dtype)
    ctx.save_for_backward(*output[1:])


def _backward(ctx, g_total: torch.Tensor, *_unused):
    g_hidden, g_proj, g_bias = ctx.saved_tensors
    traced = type(g_total) is not torch.Tensor or torch.compiler.is_compiling()
    scale = None if not traced and bool(g_total == 1) else g_total

    def scaled(g: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor | None:
        if g.numel() == 0 or dtype is None:
            return None
        if scale is not None:
            g = g.float() * scale
        return g.to(dtype)

    hd, pd, bd = ctx.dtypes
    grads = (scaled(g_hidden, hd), scaled(g_proj, pd), scaled(g_bias, bd))
    return (*grads, None, None, None, None, None, None, None, None, None, None)


fused_linear_loss.register_autograd(_backward, setup_context=_setup_context)


def _run(
    kind: str,
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    row_weight: torch.Tensor | None,
    mask_id: int,
    chunk_rows: int | None,
) -> torch.Tensor:
    grad_on = torch.is_grad_enabled()
    total, *_ = fused_linear_loss(
        hidden.contiguous(),
        projection.contiguous(),
        bias,
        x_t.contiguous(),
        x0.contiguous(),
        coef,
        None if row_weight is None else row_weight.float().contiguous(),
        kind,
        mask_id,
        grad_on and hidden.requires_grad,
        grad_on and projection.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
        chunk_rows or default_chunk_rows(projection.shape[0]),
    )
    return total


@register_kernel("linear_score_entropy")
def linear_score_entropy(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None,
    graph: str,
    mask_id: int,
    chunk_rows: int | None,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.linear_score_entropy` (fp32 scalar).

    float64 inputs, or a sigma / weight that needs a gradient (learned schedules), take the
    unfused reference: the fused op treats them as constants."""
    if use_reference(hidden, sigma, weight):
        return ref.linear_score_entropy(
            hidden, projection, bias, x_t, x0, sigma, weight, graph, mask_id, chunk_rows
        )
    if graph == "absorb":
        coef = absorb_coef(sigma)
    else:
        coef = uniform_coef(sigma, x_t == x0, projection.shape[0])
    return _run(graph, hidden, projection, bias, x_t, x0, coef, weight, mask_id, chunk_rows)


@register_kernel("linear_masked_diffusion_loss")
def linear_masked_diffusion_loss(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None,
    chunk_rows: int | None,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.linear_masked_diffusion_loss` (fp32);
    float64 inputs or a weight that needs a gradient take the unfused reference."""
    if use_reference(hidden, weight):
        return ref.linear_masked_diffusion_loss(
            hidden, projection, bias, x_t, x0, mask_id, weight, chunk_rows
        )
    coef = torch.empty((0, x_t.shape[0]), device=hidden.device)
    return _run("mdlm", hidden, projection, bias, x_t, x0, coef, weight, mask_id, chunk_rows)
