"""DDPM and DDIM step kernels (docs/ops.md#ddpm-step, docs/ops.md#ddim-step): guidance, the
mean, the variance choice, the noise and the last-step rule in one pass over ``[N, H]``.

One kernel serves both steps (``DDIM`` constexpr). Per row it forms the reference's float64
coefficients from ``abar`` / ``abar_prev`` (/ ``eta``) with the same formulas and casts them to
fp32; per element it guides the model output (``cond + w (cond - uncond)``, entries equal in
both unchanged), applies the reference's fp32 arithmetic in the same order and adds ``sigma z``
with ``z`` the given noise or the in-kernel draw on the reference's Philox counters. Rows whose
``sigma`` is 0 (the last DDPM step ``abar_prev = 1``, deterministic DDIM) add nothing, and a
tile made only of such rows never runs the generator. Fixed rows keep ``x_t``.

float64 states, and inputs that need a gradient, run the reference (the custom op
``fastdiff::gaussian_step`` computes in fp32 and has no autograd formula).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.gaussian import needs_grad, pointer_or, state_tile, state_tiles, uses_float64
from fastdiff.kernels.gaussian_noise import normal_tile
from fastdiff.kernels.launch import new_output
from fastdiff.kernels.noising import seed_tensor
from fastdiff.kernels.race import split_offset
from fastdiff.reference import gaussian as ref


@triton.jit
def _ddpm_coefs(a, a_prev, X0: tl.constexpr, POSTERIOR: tl.constexpr):
    """float64 ``(c_xt, c_out, sigma)`` of :func:`fastdiff.reference.gaussian.ddpm_step`.

    One float64 division per row (``r = 1 / (a a' (1 - a))``; every quotient of the reference is
    a product with ``r``, equal to it within a few float64 ulps): each IEEE float64 division
    compiles to a call of a slow-path routine whose saved registers spilled to the stack."""
    one_minus = 1.0 - a
    r = 1.0 / (a * a_prev * one_minus)
    inv_prev = a * one_minus * r  # 1 / a'
    inv_one_minus = a * a_prev * r  # 1 / (1 - a)
    alpha = a * inv_prev
    beta = (a_prev - a) * inv_prev
    if X0:
        c_out = tl.sqrt(a_prev) * beta * inv_one_minus
        c_xt = tl.sqrt(alpha) * (1.0 - a_prev) * inv_one_minus
    else:
        inv_alpha = a_prev * a_prev * one_minus * r  # a' / a
        c_xt = tl.sqrt(inv_alpha)  # 1 / sqrt(alpha)
        c_out = -beta * c_xt * tl.sqrt(inv_one_minus)  # -beta / (sqrt(1 - a) sqrt(alpha))
    if POSTERIOR:
        var = beta * (1.0 - a_prev) * inv_one_minus
    else:
        var = beta
    var = tl.where(a_prev == 1.0, 0.0, var)
    return c_xt, c_out, tl.sqrt(var)


@triton.jit
def _ddim_coefs(a, a_prev, eta, X0: tl.constexpr):
    """float64 ``(c_in, c_scale, c_x0, c_eps, sigma)`` of
    :func:`fastdiff.reference.gaussian.ddim_step`: ``x0_hat = (x_t - c_in eps) c_scale``
    (eps prediction; ``eps = (x_t - c_in x0_hat) c_scale`` for x0 prediction), then
    ``x' = c_x0 x0_hat + c_eps eps + sigma z``. One float64 division per row, as
    :func:`_ddpm_coefs`."""
    one_minus = 1.0 - a
    one_minus_prev = 1.0 - a_prev
    r = 1.0 / (a * a_prev * one_minus)
    inv_one_minus = a * a_prev * r
    if X0:
        c_in = tl.sqrt(a)
        c_scale = tl.sqrt(inv_one_minus)  # 1 / sqrt(1 - a)
    else:
        c_in = tl.sqrt(one_minus)
        c_scale = tl.sqrt(a_prev * one_minus * r)  # 1 / sqrt(a)
    sig2 = eta * eta * one_minus_prev * inv_one_minus * ((a_prev - a) * a * one_minus * r)
    dir2 = tl.maximum(one_minus_prev - sig2, 0.0)
    return c_in, c_scale, tl.sqrt(a_prev), tl.sqrt(dir2), tl.sqrt(sig2)


@triton.jit(do_not_specialize=["offset_lo", "offset_hi"])
def _step_kernel(
    out_ptr,
    x_ptr,
    pred_ptr,
    uncond_ptr,
    scale_ptr,
    abar_ptr,
    prev_ptr,
    eta_ptr,
    noise_ptr,
    fixed_ptr,
    seed_ptr,
    N,
    H,
    offset_lo,
    offset_hi,
    DDIM: tl.constexpr,
    X0: tl.constexpr,
    POSTERIOR: tl.constexpr,
    GUIDED: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, row_ok, offs = state_tile(N, H, BLOCK_N, BLOCK_H)
    a = tl.load(abar_ptr + rows, mask=row_ok, other=0.5).to(tl.float64)
    a_prev = tl.load(prev_ptr + rows, mask=row_ok, other=1.0).to(tl.float64)
    if DDIM:
        eta = tl.load(eta_ptr + rows, mask=row_ok, other=0.0).to(tl.float64)
        c_in, c_scale, c0, c1, sd = _ddim_coefs(a, a_prev, eta, X0)
        c_in = c_in.to(tl.float32)[:, None]
        c_scale = c_scale.to(tl.float32)[:, None]
    else:
        c0, c1, sd = _ddpm_coefs(a, a_prev, X0, POSTERIOR)
    c0 = c0.to(tl.float32)[:, None]
    c1 = c1.to(tl.float32)[:, None]
    noisy = row_ok & (sd != 0.0)  # rows whose noise term is not exactly 0
    sd = sd.to(tl.float32)[:, None]
    if GUIDED:
        w = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_FIXED:
        fixed = (tl.load(fixed_ptr + rows, mask=row_ok, other=0) != 0)[:, None]
    draw = False
    if not HAS_NOISE:
        draw = tl.max(noisy.to(tl.int32), axis=0) > 0  # a tile without noise draws nothing
        seed = tl.load(seed_ptr)
    for start in range(0, H, BLOCK_H):
        cols = start + offs
        inside = row_ok[:, None] & (cols < H)[None, :]
        at = rows[:, None] * H + cols[None, :]
        x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
        out = tl.load(pred_ptr + at, mask=inside, other=0.0).to(tl.float32)
        if GUIDED:  # cond + w (cond - uncond), entries equal in both unchanged
            u = tl.load(uncond_ptr + at, mask=inside, other=0.0).to(tl.float32)
            out = tl.where(out == u, out, out + w * (out - u))
        if DDIM:
            if X0:
                x0_hat = out
                eps = (x - c_in * x0_hat) * c_scale
            else:
                eps = out
                x0_hat = (x - c_in * eps) * c_scale
            new = c0 * x0_hat + c1 * eps
        else:
            new = c0 * x + c1 * out
        if HAS_NOISE:
            new = new + sd * tl.load(noise_ptr + at, mask=inside, other=0.0).to(tl.float32)
        elif draw:
            z = normal_tile(seed, offset_lo, offset_hi, rows, start, BLOCK_H)
            new = tl.where(noisy[:, None], new + sd * z, new)
        if HAS_FIXED:
            new = tl.where(fixed, x, new)
        tl.store(out_ptr + at, new.to(out_ptr.dtype.element_ty), mask=inside)


@torch.library.custom_op("fastdiff::gaussian_step", mutates_args=())
def gaussian_step_op(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: Optional[torch.Tensor],
    uncond: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    noise: Optional[torch.Tensor],
    fixed: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: int,
    x0_prediction: bool,
    posterior: bool,
    block_h: int,
) -> torch.Tensor:
    """One DDIM step when ``eta`` (float64 ``[N]``) is given, else one DDPM step (``posterior``
    picks the variance): ``x' [N, H]`` in the dtype of ``x_t``; per-row float64 ``abar``,
    ``abar_prev`` and guidance ``scale``."""
    n, h = x_t.shape
    out = new_output((n, h), x_t.dtype, x_t.device)
    if n and h:
        grid, tiles = state_tiles(n, h, block_h)
        _step_kernel[grid](
            out,
            x_t,
            model_output,
            pointer_or(uncond, x_t),
            pointer_or(scale, abar),
            abar,
            abar_prev,
            pointer_or(eta, abar),
            pointer_or(noise, x_t),
            pointer_or(fixed, abar),
            seed,
            n,
            h,
            *split_offset(offset),
            DDIM=eta is not None,
            X0=x0_prediction,
            POSTERIOR=posterior,
            GUIDED=uncond is not None,
            HAS_NOISE=noise is not None,
            HAS_FIXED=fixed is not None,
            **tiles,
        )
    return out


@gaussian_step_op.register_fake
def _(model_output, x_t, abar, abar_prev, eta, uncond, scale, noise, fixed, seed, offset, *_):
    return torch.empty_like(x_t)


def _step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: torch.Tensor | None,
    prediction: str,
    posterior: bool,
    uncond: torch.Tensor | None,
    scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    block_h: int,
) -> torch.Tensor:
    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.contiguous()

    return gaussian_step_op(
        model_output.contiguous(),
        x_t.contiguous(),
        abar.contiguous(),
        abar_prev.contiguous(),
        flat(eta),
        flat(uncond),
        flat(scale),
        flat(noise),
        flat(fixed),
        seed_tensor(seed, x_t.device),
        offset,
        prediction == "x0",
        posterior,
        block_h,
    )


def _step_reference(
    states: tuple[torch.Tensor | None, ...], per_row: tuple[torch.Tensor | None, ...]
) -> bool:
    """Steps defer to the reference for float64 states (the kernel computes in fp32) and when
    any input needs a gradient (the step op has no autograd formula)."""
    return uses_float64(*states) or needs_grad(*states, *per_row)


@register_kernel("ddpm_step")
def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    prediction: str,
    variance: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    *,
    block_h: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.gaussian.ddpm_step`."""
    states = (model_output, x_t, model_output_uncond, noise)
    if _step_reference(states, (abar, abar_prev, guidance_scale)):
        return ref.ddpm_step(
            model_output,
            x_t,
            abar,
            abar_prev,
            prediction,
            variance,
            model_output_uncond,
            guidance_scale,
            noise,
            fixed,
            seed,
            offset,
        )
    return _step(
        model_output,
        x_t,
        abar,
        abar_prev,
        None,
        prediction,
        variance == "posterior",
        model_output_uncond,
        guidance_scale,
        noise,
        fixed,
        seed,
        offset,
        block_h,
    )


@register_kernel("ddim_step")
def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: torch.Tensor,
    prediction: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    *,
    block_h: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.gaussian.ddim_step`."""
    states = (model_output, x_t, model_output_uncond, noise)
    if _step_reference(states, (abar, abar_prev, eta, guidance_scale)):
        return ref.ddim_step(
            model_output,
            x_t,
            abar,
            abar_prev,
            eta,
            prediction,
            model_output_uncond,
            guidance_scale,
            noise,
            fixed,
            seed,
            offset,
        )
    return _step(
        model_output,
        x_t,
        abar,
        abar_prev,
        eta,
        prediction,
        False,
        model_output_uncond,
        guidance_scale,
        noise,
        fixed,
        seed,
        offset,
        block_h,
    )
