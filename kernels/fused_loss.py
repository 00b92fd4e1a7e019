"""The custom op behind every fused loss kernel, and the kernels registered for the public
losses: ``score_entropy_absorb``, ``score_entropy_uniform``, ``masked_diffusion_loss`` and
``concrete_score_matching_absorb`` / ``_uniform``.

``fastdiff::fused_loss`` returns the weighted per-row loss ``[N]`` (fp32) and, when asked,
the gradient ``d loss_i / d scores_i`` ``[N, V]`` (input dtype) computed in the same pass: the
loss is the last layer, so backward only rescales that gradient by ``grad_output`` and skips
even that when ``grad_output`` is all ones. Its fake implementation and autograd formula are
registered, so the public functions trace under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastdiff.backend import register_kernel
from fastdiff.kernels.concrete_score import (
    absorb_targets,
    launch_csm_absorb,
    launch_csm_uniform,
    uniform_targets,
)
from fastdiff.kernels.launch import block_size, new_output
from fastdiff.kernels.masked_diffusion import launch_mdlm
from fastdiff.kernels.score_entropy import launch_absorb, launch_uniform
from fastdiff.reference import losses as ref
from fastdiff.reference.losses import absorb_const, log_expm1, uniform_const, uniform_ratio

_LAUNCHERS = {
    "absorb": launch_absorb,
    "uniform": launch_uniform,
    "mdlm": launch_mdlm,
    "csm_absorb": launch_csm_absorb,
    "csm_uniform": launch_csm_uniform,
}


@torch.library.custom_op("fastdiff::fused_loss", mutates_args=())
def fused_loss(
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
    """``kind`` in {absorb, uniform, mdlm, csm_absorb, csm_uniform}; ``coef`` ``[k, N]`` fp32
    per-row constants; ``weight`` ``[N]`` fp32 or None; ``block_v`` 0 picks the block size. Returns
    ``(loss [N] fp32, grad [N, V] or [0, V])``."""
    n, vocab = scores.shape
    loss = new_output((n,), torch.float32, scores.device)
    grad = new_output((n if need_grad else 0, vocab), scores.dtype, scores.device)
    if n:
        _LAUNCHERS[kind](
            scores,
            x_t,
            x0,
            coef,
            weight,
            loss,
            grad if need_grad else None,
            mask_id,
            block_v or block_size(vocab),
        )
    return loss, grad


@fused_loss.register_fake
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
        raise RuntimeError("fused_loss: the gradient was not computed in forward")
    # Eager: skip the rescale pass when grad_output is all ones (reading it is O(N)). Traced
    # (fake / functional tensors under torch.compile or AOT), values are unknown: rescale.
    traced = type(grad_loss) is not torch.Tensor or torch.compiler.is_compiling()
    if traced or not bool((grad_loss == 1).all()):
        grad = rescale_rows(grad, grad_loss)
    return grad, None, None, None, None, None, None, None, None


# fp32 elements per chunk of the backward rescale (64 MiB of fp32 temporaries at most)
RESCALE_CHUNK_ELEMENTS = 1 << 24


def rescale_rows(grad: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``grad * factor[:, None]`` computed in fp32 and rounded once to ``grad``'s dtype, in row
    chunks so the fp32 temporary stays under ``RESCALE_CHUNK_ELEMENTS``."""
    if grad.dtype in (torch.float32, torch.float64):
        return grad * factor[:, None].to(grad.dtype)
    out = torch.empty_like(grad)
    step = max(1, RESCALE_CHUNK_ELEMENTS // max(grad.shape[1], 1))
    for start in range(0, grad.shape[0], step):
        rows = slice(start, start + step)
        out[rows] = (grad[rows].float() * factor[rows, None].float()).to(grad.dtype)
    return out


fused_loss.register_autograd(_backward, setup_context=_setup_context)


def _run(
    kind: str,
    scores: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coef: torch.Tensor,
    weight: torch.Tensor | None,
    mask_id: int,
    block_v: int,
) -> torch.Tensor:
    grad_on = torch.is_grad_enabled()
    # A weight that needs a gradient is applied outside the op: autograd then gives
    # d/d weight = the per-row loss and rescales the fused gradient by grad_output * weight.
    outside = weight is not None and grad_on and weight.requires_grad
    loss, _ = fused_loss(
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


def use_reference(scores: torch.Tensor, *per_row: torch.Tensor | None) -> bool:
    """Whether a loss kernel defers to its reference: float64 inputs (the kernels compute in
    fp32) or a per-row input other than the weight that needs a gradient (sigma of a learned
    schedule: the kernels take it as a constant)."""
    if scores.dtype == torch.float64:
        return True
    grad_on = torch.is_grad_enabled()
    return any(t is not None and grad_on and t.requires_grad for t in per_row)


def absorb_coef(sigma: torch.Tensor) -> torch.Tensor:
    """``(r, r (log r - 1))`` with ``r = 1/expm1(sigma)``, float64 math, fp32 ``[2, N]``."""
    r = torch.exp(-log_expm1(sigma.detach().double()))
    return torch.stack((r, absorb_const(r))).float()


def uniform_coef(sigma: torch.Tensor, same: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(ratio, 1/e, K)`` of the uniform graph per row, fp32 ``[3, N]``
    (docs/ops.md#score-entropy-uniform-graph)."""
    sig = sigma.detach().double()
    ratio, log_ratio = uniform_ratio(sig, vocab)
    const = uniform_const(ratio, log_ratio, same, vocab)
    return torch.stack((ratio, 1.0 / torch.expm1(sig), const)).float()


@register_kernel("score_entropy_absorb")
def score_entropy_absorb(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.score_entropy_absorb` (fp32 ``[N]``)."""
    if use_reference(log_score, sigma):
        return ref.score_entropy_absorb(log_score, x_t, x0, sigma, mask_id, weight)
    return _run("absorb", log_score, x_t, x0, absorb_coef(sigma), weight, mask_id, block_v)


@register_kernel("score_entropy_uniform")
def score_entropy_uniform(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.score_entropy_uniform` (fp32 ``[N]``)."""
    if use_reference(log_score, sigma):
        return ref.score_entropy_uniform(log_score, x_t, x0, sigma, weight)
    coef = uniform_coef(sigma, x_t == x0, log_score.shape[-1])
    return _run("uniform", log_score, x_t, x0, coef, weight, -1, block_v)


@register_kernel("masked_diffusion_loss")
def masked_diffusion_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.losses.masked_diffusion_loss` (fp32 ``[N]``)."""
    if use_reference(logits):
        return ref.masked_diffusion_loss(logits, x_t, x0, mask_id, weight)
    coef = torch.empty((0, x_t.shape[0]), device=logits.device)
    return _run("mdlm", logits, x_t, x0, coef, weight, mask_id, block_v)


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
    return _run("csm_absorb", log_score, x_t, x0, absorb_targets(sigma), weight, mask_id, block_v)


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
    return _run("csm_uniform", log_score, x_t, x0, coef, weight, -1, block_v)
