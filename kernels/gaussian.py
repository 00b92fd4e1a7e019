"""Gaussian (embedding-space) diffusion kernels: forward noising with the embedding gather
(docs/ops.md#gaussian-noising), and the eps / x0 regression loss with its gradient
(docs/ops.md#gaussian-loss); the tile helpers that :mod:`fastdiff.kernels.gaussian_steps`
(DDPM / DDIM) shares.

Each kernel is one pass over ``[N, H]`` states in tiles of ``[BLOCK_N rows, BLOCK_H features]``
(int64 offsets, fp32 arithmetic on fp16 / bf16 / fp32 inputs, outputs in the reference's
dtype). ``q_sample`` forms ``sqrt(abar)`` and ``sqrt(1 - abar)`` in float64 inside the kernel
from the float64 ``abar`` row and casts them to fp32 once, as
:mod:`fastdiff.reference.gaussian` does; it gathers ``x0 = E[ids]`` in the same pass, and draws
the noise that is not passed in on the reference's Philox counters
(:mod:`fastdiff.kernels.gaussian_noise`), so for the same seed both backends agree to fp32
rounding. Fixed rows keep ``x_t = x0`` and get ``eps = 0``.

float64 inputs run the reference (the kernels compute in fp32). Both ops are differentiable:
``fastdiff::q_sample`` has an autograd formula (``d x_t / d x0 = sqrt(abar)``, scattered into
the embedding table for token input; ``d x_t / d noise = sqrt(1 - abar)``) and
``fastdiff::gaussian_loss`` a backward kernel (``fastdiff::gaussian_loss_backward``,
``+-2 g w (pred - target)``). The loss cannot fuse with the noising: the model runs between
them. Every op has a fake implementation, so the public functions trace under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.gaussian_noise import normal_tile
from fastdiff.kernels.launch import new_output
from fastdiff.kernels.noising import seed_tensor
from fastdiff.kernels.race import split_offset
from fastdiff.reference import gaussian as ref

#: Elements of one ``[BLOCK_N, BLOCK_H]`` tile; features per block at most ``MAX_BLOCK_H``
#: (``H = 768`` streams in three blocks of 256 without padding).
TILE_ELEMENTS = 2048
MAX_BLOCK_H = 256


def state_tiles(n: int, h: int, block_h: int = 0) -> tuple[tuple[int], dict[str, int]]:
    """Grid and ``BLOCK_N`` / ``BLOCK_H`` / ``num_warps`` for a ``[n, h]`` state
    (``block_h = 0`` picks the next power of two of ``h``, between 16 and ``MAX_BLOCK_H``)."""
    bh = block_h or min(max(triton.next_power_of_2(max(h, 1)), 16), MAX_BLOCK_H)
    bn = max(1, min(TILE_ELEMENTS // bh, triton.next_power_of_2(max(n, 1))))
    return (triton.cdiv(n, bn),), {"BLOCK_N": bn, "BLOCK_H": bh, "num_warps": 4}


def uses_float64(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def pointer_or(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A pointer argument for an absent optional tensor (never read: its flag is off)."""
    if t is None:
        return like
    return t.view(torch.uint8) if t.dtype == torch.bool else t


@triton.jit
def state_tile(N, H, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's rows (int64), which exist, and the feature offsets of a block."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < N, tl.arange(0, BLOCK_H).to(tl.int64)


# --------------------------------------------------------------------------------------------
# forward noising
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["offset_lo", "offset_hi"])
def _q_sample_kernel(
    src_ptr,
    ids_ptr,
    abar_ptr,
    noise_ptr,
    fixed_ptr,
    xt_ptr,
    eps_ptr,
    clean_ptr,
    seed_ptr,
    N,
    H,
    V,
    offset_lo,
    offset_hi,
    GATHER: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    WRITE_EPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_ok, offs = state_tile(N, H, BLOCK_N, BLOCK_H)
    abar = tl.load(abar_ptr + rows, mask=row_ok, other=1.0).to(tl.float64)
    c_x0 = tl.sqrt(abar).to(tl.float32)[:, None]
    c_eps = tl.sqrt(1.0 - abar).to(tl.float32)[:, None]
    if GATHER:
        # an id outside [0, V) (value checks off) reads nothing and gives NaN rows
        ids = tl.load(ids_ptr + rows, mask=row_ok, other=0)
        id_ok = (ids >= 0) & (ids < V)
        src_rows = tl.where(id_ok, ids, 0) * H
        row_ok_src = row_ok & id_ok
    else:
        src_rows = rows * H
        row_ok_src = row_ok
    if HAS_FIXED:
        fixed = (tl.load(fixed_ptr + rows, mask=row_ok, other=0) != 0)[:, None]
    if not HAS_NOISE:
        seed = tl.load(seed_ptr)
    for start in range(0, H, BLOCK_H):
        cols = start + offs
        inside = row_ok[:, None] & (cols < H)[None, :]
        at = rows[:, None] * H + cols[None, :]
        x0 = tl.load(
            src_ptr + src_rows[:, None] + cols[None, :],
            mask=row_ok_src[:, None] & (cols < H)[None, :],
            other=float("nan"),
        )
        if HAS_NOISE:
            eps = tl.load(noise_ptr + at, mask=inside, other=0.0)
        else:  # the reference rounds the draw to the dtype of x0 before using it
            z = normal_tile(seed, offset_lo, offset_hi, rows, start, BLOCK_H)
            eps = z.to(eps_ptr.dtype.element_ty)
        x_t = c_x0 * x0.to(tl.float32) + c_eps * eps.to(tl.float32)
        if HAS_FIXED:
            x_t = tl.where(fixed, x0.to(tl.float32), x_t)
            eps = tl.where(fixed, 0.0, eps.to(tl.float32)).to(eps_ptr.dtype.element_ty)
        tl.store(xt_ptr + at, x_t.to(xt_ptr.dtype.element_ty), mask=inside)
        if WRITE_EPS:
            tl.store(eps_ptr + at, eps, mask=inside)
        if GATHER:
            tl.store(clean_ptr + at, x0, mask=inside)


@torch.library.custom_op("fastdiff::q_sample", mutates_args=())
def q_sample_op(
    source: torch.Tensor,
    ids: Optional[torch.Tensor],
    abar: torch.Tensor,
    noise: Optional[torch.Tensor],
    fixed: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: int,
    block_h: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, eps, x0)`` ``[N, H]``: ``source`` is the state ``x0 [N, H]`` or, with ``ids
    [N]``, the embedding table ``[V, H]`` gathered in the kernel; ``abar`` float64 ``[N]``.
    ``eps`` is ``[0, H]`` when a given ``noise`` needs no copy (no fixed rows), ``x0`` is
    ``[0, H]`` without a gather (the caller returns its own tensors there)."""
    n = source.shape[0] if ids is None else ids.shape[0]
    h = source.shape[1]
    write_eps = noise is None or fixed is not None
    eps_dtype = source.dtype if noise is None else noise.dtype
    x_t = new_output((n, h), source.dtype, source.device)
    eps = new_output((n if write_eps else 0, h), eps_dtype, source.device)
    clean = new_output((n if ids is not None else 0, h), source.dtype, source.device)
    if n and h:
        grid, tiles = state_tiles(n, h, block_h)
        _q_sample_kernel[grid](
            source,
            pointer_or(ids, abar),
            abar,
            pointer_or(noise, source),
            pointer_or(fixed, abar),
            x_t,
            eps if write_eps else x_t,
            clean if ids is not None else x_t,
            seed,
            n,
            h,
            source.shape[0],
            *split_offset(offset),
            GATHER=ids is not None,
            HAS_NOISE=noise is not None,
            HAS_FIXED=fixed is not None,
            WRITE_EPS=write_eps,
            **tiles,
        )
    return x_t, eps, clean


@q_sample_op.register_fake
def _(source, ids, abar, noise, fixed, seed, offset, block_h):
    n = source.shape[0] if ids is None else ids.shape[0]
    h = source.shape[1]
    write_eps = noise is None or fixed is not None
    eps_dtype = source.dtype if noise is None else noise.dtype
    return (
        source.new_empty((n, h)),
        source.new_empty((n if write_eps else 0, h), dtype=eps_dtype),
        source.new_empty((n if ids is not None else 0, h)),
    )


def _q_sample_setup(ctx, inputs, output) -> None:
    source, ids, abar, noise, fixed = inputs[:5]
    ctx.source_shape = source.shape
    ctx.source_dtype = source.dtype
    ctx.noise_dtype = None if noise is None else noise.dtype
    ctx.save_for_backward(ids, abar, fixed)


def _q_sample_backward(ctx, g_xt, g_eps, g_clean):
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (``x0`` at fixed rows), ``eps`` out = the
    given noise (0 at fixed rows), ``x0`` out = the gathered rows: torch ops on ``[N, H]``."""
    ids, abar, fixed = ctx.saved_tensors
    a = abar[:, None]
    g_source = g_noise = None
    if ctx.needs_input_grad[0]:
        c_x0 = a.sqrt().float()
        if fixed is not None:
            c_x0 = torch.where(fixed[:, None], 1.0, c_x0)
        g_x0 = g_xt.float() * c_x0
        if ids is not None:
            g_x0 = g_x0 + g_clean.float()
            g_x0 = g_x0.new_zeros(ctx.source_shape).index_add_(0, ids, g_x0)
        g_source = g_x0.to(ctx.source_dtype)
    if ctx.noise_dtype is not None and ctx.needs_input_grad[3]:
        c_eps = (1.0 - a).sqrt().float()
        if fixed is not None:
            c_eps = torch.where(fixed[:, None], 0.0, c_eps)
        g_noise = g_xt.float() * c_eps
        if fixed is not None:
            g_noise = g_noise + torch.where(fixed[:, None], 0.0, g_eps.float())
        g_noise = g_noise.to(ctx.noise_dtype)
    return g_source, None, None, g_noise, None, None, None, None


q_sample_op.register_autograd(_q_sample_backward, setup_context=_q_sample_setup)


@register_kernel("q_sample")
def q_sample(
    x0: torch.Tensor,
    abar: torch.Tensor,
    noise: torch.Tensor | None,
    embedding: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    *,
    block_h: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel for :func:`fastdiff.reference.gaussian.q_sample` (``block_h`` features per
    block; 0 picks it)."""
    source = x0 if embedding is None else embedding
    if uses_float64(source, noise) or needs_grad(abar):
        return ref.q_sample(x0, abar, noise, embedding, fixed, seed, offset)
    x_t, eps, clean = q_sample_op(
        source.contiguous(),
        None if embedding is None else x0.contiguous(),
        abar.contiguous(),
        None if noise is None else noise.contiguous(),
        None if fixed is None else fixed.contiguous(),
        seed_tensor(seed, source.device),
        offset,
        block_h,
    )
    if noise is not None and fixed is None:
        eps = noise
    return x_t, eps, (x0 if embedding is None else clean)


# --------------------------------------------------------------------------------------------
# regression loss
# --------------------------------------------------------------------------------------------


@triton.jit
def _loss_kernel(
    pred_ptr,
    target_ptr,
    weight_ptr,
    loss_ptr,
    N,
    H,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_ok, offs = state_tile(N, H, BLOCK_N, BLOCK_H)
    acc = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        cols = start + offs
        inside = row_ok[:, None] & (cols < H)[None, :]
        at = rows[:, None] * H + cols[None, :]
        p = tl.load(pred_ptr + at, mask=inside, other=0.0).to(tl.float32)
        t = tl.load(target_ptr + at, mask=inside, other=0.0).to(tl.float32)
        d = p - t
        acc += d * d
    loss = tl.sum(acc, axis=1)
    if HAS_WEIGHT:
        loss = loss * tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


@triton.jit
def _loss_grad_kernel(
    grad_ptr,
    pred_ptr,
    target_ptr,
    weight_ptr,
    g_pred_ptr,
    g_target_ptr,
    N,
    H,
    HAS_WEIGHT: tl.constexpr,
    NEED_PRED: tl.constexpr,
    NEED_TARGET: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_ok, offs = state_tile(N, H, BLOCK_N, BLOCK_H)
    g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        g = g * tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    for start in range(0, H, BLOCK_H):
        cols = start + offs
        inside = row_ok[:, None] & (cols < H)[None, :]
        at = rows[:, None] * H + cols[None, :]
        p = tl.load(pred_ptr + at, mask=inside, other=0.0).to(tl.float32)
        t = tl.load(target_ptr + at, mask=inside, other=0.0).to(tl.float32)
        d_pred = 2.0 * (g[:, None] * (p - t))
        if NEED_PRED:
            tl.store(g_pred_ptr + at, d_pred.to(g_pred_ptr.dtype.element_ty), mask=inside)
        if NEED_TARGET:
            tl.store(g_target_ptr + at, (-d_pred).to(g_target_ptr.dtype.element_ty), mask=inside)


@torch.library.custom_op("fastdiff::gaussian_loss", mutates_args=())
def gaussian_loss_op(
    pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor], block_h: int
) -> torch.Tensor:
    """``weight * sum_h (pred - target)^2`` fp32 ``[N]`` (``weight`` fp32 ``[N]`` or None)."""
    n, h = pred.shape
    loss = new_output((n,), torch.float32, pred.device)
    if n:
        grid, tiles = state_tiles(n, h, block_h)
        _loss_kernel[grid](
            pred,
            target,
            pointer_or(weight, loss),
            loss,
            n,
            h,
            HAS_WEIGHT=weight is not None,
            **tiles,
        )
    return loss


@gaussian_loss_op.register_fake
def _(pred, target, weight, block_h):
    return pred.new_empty(pred.shape[0], dtype=torch.float32)


@torch.library.custom_op("fastdiff::gaussian_loss_backward", mutates_args=())
def gaussian_loss_backward_op(
    grad: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    need_pred: bool,
    need_target: bool,
    block_h: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d/d pred, d/d target) = +-2 grad weight (pred - target)`` in the dtypes of ``pred``
    / ``target`` (``[0, H]`` when not asked for)."""
    n, h = pred.shape
    g_pred = new_output((n if need_pred else 0, h), pred.dtype, pred.device)
    g_target = new_output((n if need_target else 0, h), target.dtype, pred.device)
    if n and h and (need_pred or need_target):
        grid, tiles = state_tiles(n, h, block_h)
        _loss_grad_kernel[grid](
            grad,
            pred,
            target,
            pointer_or(weight, grad),
            g_pred if need_pred else grad,
            g_target if need_target else grad,
            n,
            h,
            HAS_WEIGHT=weight is not None,
            NEED_PRED=need_pred,
            NEED_TARGET=need_target,
            **tiles,
        )
    return g_pred, g_target


@gaussian_loss_backward_op.register_fake
def _(grad, pred, target, weight, need_pred, need_target, block_h):
    n, h = pred.shape
    return pred.new_empty((n if need_pred else 0, h)), target.new_empty(
        (n if need_target else 0, h)
    )


def _loss_setup(ctx, inputs, output) -> None:
    pred, target, weight, block_h = inputs
    ctx.block_h = block_h
    ctx.save_for_backward(pred, target, weight)


def _loss_backward(ctx, grad):
    pred, target, weight = ctx.saved_tensors
    need_pred, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    g_pred, g_target = gaussian_loss_backward_op(
        grad.contiguous(), pred, target, weight, need_pred, need_target, ctx.block_h
    )
    return (g_pred if need_pred else None), (g_target if need_target else None), None, None


gaussian_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


@register_kernel("gaussian_loss")
def gaussian_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    block_h: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.gaussian.gaussian_loss` (fp32 ``[N]``). A weight
    that needs a gradient is applied outside the op (autograd then gives ``d/d weight``)."""
    if uses_float64(pred, target, weight):
        return ref.gaussian_loss(pred, target, weight)
    outside = needs_grad(weight)
    loss = gaussian_loss_op(
        pred.contiguous(),
        target.contiguous(),
        None if weight is None or outside else weight.float().contiguous(),
        block_h,
    )
    return loss * weight.float() if outside else loss
