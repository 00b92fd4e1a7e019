"""Reverse-update kernels of discrete diffusion: SEDD Euler / analytic / denoise for both
graphs, MDLM ancestral and the D3PM draw, one pass over the model output per step.

One kernel serves every update. A row is *active* when it can change: masked and not fixed
(absorbing graph, MDLM) or not fixed (uniform graph, D3PM). Each program takes a tile of rows;
a tile with no active row reads nothing. For active rows the kernel races the move weights of
every column ``j != x`` (``log w_j - log E_j``, :mod:`fastdiff.kernels.race`) while it
accumulates what the stay weight needs, then races the stay option (column ``x``) with its own
noise. Rows longer than ``G = 256`` columns use the grouped race (:mod:`fastdiff.random`): the
pass over the row races the group log-sums of the move weights (and gives the totals the stay
weight needs), the stay key is compared with the best group key plus the per-row constant, and
if a move wins a second pass re-reads the ``G`` columns of the winning group and races them.
Noise is the reference's Philox stream keyed by (seed, offset, row, column), so the same seed
gives the same tokens as :mod:`fastdiff.reference.updates` except at fp32 rounding ties.

Per-row constants ``c0..c3`` (computed in float64 on the host, passed as fp32 ``[N, 4]``):

============  ==============================  =============================================
mode          move weight ``log w_j``          stay weight ``log w_x``
============  ==============================  =============================================
RATE          ``s_j + c0``                    ``log max(0, 1 - e^c0 sum_{j != x} e^s_j)``
DENOISE       ``s_j``                         none
MDLM          ``s_j - lse_{j != x} s + c0``   ``c1``
TWEEDIE       ``log max(0, c0 e^(s_j - L) - c1) + c2``  ``log max(0, c0 e^-L - c1) + c3``
PLAIN         ``s_j`` (every column)          none (D3PM: ``x`` is an ordinary column)
============  ==============================  =============================================

RATE is the Euler step (``c0 = log rate``, ``log(rate / V)`` on the uniform graph) and the
absorbing analytic step (``c0 = log expm1(D)``, in log space). TWEEDIE is the uniform analytic /
denoise step ``p = stag(S, D) T(x, D)`` with ``S_x = 1``, ``L = log sum_j S_j`` (a first pass
over the row), scaled by ``e^-D`` (the race ignores a per-row factor; nothing overflows):
``c0 = 1``, ``c1 = (1 - e^-D) / V``, ``c2 = log((1 - e^-D) / V)``, ``c3 = log(e^-D + e^c2)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.launch import new_output, row_tiles
from fastdiff.kernels.noising import seed_tensor
from fastdiff.kernels.race import (
    block_argmax,
    block_columns,
    column_noise,
    group_accumulate,
    group_init,
    group_keys,
    group_lse,
    group_race,
    grouped,
    lse_finish,
    lse_merge,
    lse_merged,
    online_lse,
    race_block,
    race_groups,
    race_noise,
    reload_seed,
    span_argmax,
    span_columns,
    span_noise,
    split_offset,
    strided_groups,
    take,
    tile_tokens,
)
from fastdiff.reference import d3pm as ref_d3pm
from fastdiff.reference.losses import log_expm1

RATE, DENOISE, MDLM, TWEEDIE, PLAIN = range(5)


@triton.jit
def _row_log_sum(s_ptr, rows, active, x, stride, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """``L = log sum_j S_j`` with ``S_x = 1`` (the TWEEDIE normalizer), one pass over the row."""
    run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        inside = active[:, None] & (cols < V)[None, :]
        s = tl.load(s_ptr + rows[:, None] * stride + cols[None, :], mask=inside, other=0.0)
        s = tl.where(cols[None, :] == x[:, None], 0.0, s.to(tl.float32))
        run_max, run_sum = online_lse(run_max, run_sum, tl.where(inside, s, float("-inf")))
    return lse_finish(run_max, run_sum)


@triton.jit
def _log_pos(v):
    """``log v`` where ``v > 0``, else ``-inf`` (clamped weights)."""
    # 2^-126, the smallest normal fp32 (1e-38 is subnormal: flushed to 0 on the GPU, and a
    # float64 constant for triton 3.8, which made the race key float64)
    return tl.where(v > 0.0, tl.log(tl.maximum(v, 1.1754943508222875e-38)), float("-inf"))


@triton.jit
def _move_log_weights(
    s_ptr, c_ptr, rows, active, x, stride, cols, V, c0, c1, log_norm, MODE: tl.constexpr
):
    """Which of the columns ``cols [1 or R, B]`` may be drawn as moves and their ``log w_j``
    (before the per-row constants that every move shares; ``-inf`` where not kept)."""
    keep = active[:, None] & (cols < V)
    if MODE != 4:
        keep = keep & (cols != x[:, None])
    s = tl.load(s_ptr + rows[:, None] * stride + cols, mask=keep, other=float("-inf"))
    lw = s.to(tl.float32)
    if MODE == 3:
        lw = _log_pos(c0[:, None] * tl.exp(lw - log_norm[:, None]) - c1[:, None])
        lw += tl.load(c_ptr + rows * 4 + 2, mask=active, other=0.0)[:, None]
    return keep, tl.where(keep, lw, float("-inf"))


@triton.jit
def _grouped_update(
    s_ptr,
    c_ptr,
    rows,
    active,
    x,
    seed_ptr,
    stride,
    V,
    offset_lo,
    offset_hi,
    c0,
    c1,
    log_norm,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    STRIDED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """The grouped race of the move weights (pass 1: group log-sums, also giving the totals the
    stay weight needs; pass 2: the ``G`` columns of the winning group), the stay option raced
    against the best group key plus the row constant. Returns the drawn column or ``x``."""
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_g = tl.zeros((BLOCK_N,), dtype=tl.int64)
    g_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    g_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if NG > 0:  # per-group max / sum in the loop, the group keys raced once after it
        gmax, gsum = group_init(BLOCK_N, BLOCK_V, NG)
    for start in range(0, V, BLOCK_V):
        cols = block_columns(start, BLOCK_V, STRIDED and NG > 0)
        keep, lw = _move_log_weights(
            s_ptr, c_ptr, rows, active, x, stride, cols[None, :], V, c0, c1, log_norm, MODE
        )
        if NG > 0:
            gmax, gsum = group_accumulate(gmax, gsum, lw, start, BLOCK_N, BLOCK_V, STRIDED)
        else:
            lse_g = group_lse(lw, BLOCK_N, BLOCK_V)
            seed = reload_seed(seed_ptr)
            best, best_g = group_race(
                best, best_g, lse_g, seed, offset_lo, offset_hi, rows, start, BLOCK_V
            )
            if MODE == 0:
                g_sum += tl.sum(tl.exp(lse_g), axis=1)
            if MODE == 2:
                g_max, g_sum = lse_merge(g_max, g_sum, lse_g)
    seed = reload_seed(seed_ptr)
    if NG > 0:
        best, best_g, lse_g = group_keys(gmax, gsum, seed, offset_lo, offset_hi, rows, BLOCK_N)
        if MODE == 0:
            g_sum += tl.sum(tl.exp(lse_g), axis=1)
        if MODE == 2:
            g_max, g_sum = lse_merge(g_max, g_sum, lse_g)
    stay_wins = rows < 0  # no stay option: all False
    if MODE != 1 and MODE != 4:
        if MODE == 0:
            best = best + c0
            log_stay = _log_pos(1.0 - tl.exp(c0) * g_sum)
        if MODE == 2:
            lse = lse_merged(g_max, g_sum)
            best = tl.where(best == float("-inf"), best, best - lse + c0)
            log_stay = c1
        if MODE == 3:
            c3 = tl.load(c_ptr + rows * 4 + 3, mask=active, other=0.0)
            log_stay = _log_pos(c0 * tl.exp(-log_norm) - c1) + c3
        stay_key = log_stay + column_noise(seed, offset_lo, offset_hi, rows, x)
        stay_wins = stay_key > best
        best = tl.maximum(best, stay_key)
    cols = span_columns(best_g)
    keep, lw = _move_log_weights(
        s_ptr, c_ptr, rows, active & ~stay_wins, x, stride, cols, V, c0, c1, log_norm, MODE
    )
    key = tl.where(keep, lw + span_noise(seed, offset_lo, offset_hi, rows, cols), float("-inf"))
    _, drawn = span_argmax(key, cols)
    drawn = tl.where(stay_wins, x, drawn)
    return tl.where(active & (best > float("-inf")), drawn, x)


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "mask_id"])
def _update_kernel(
    s_ptr,
    x_ptr,
    fixed_ptr,
    c_ptr,
    out_ptr,
    seed_ptr,
    N,
    V,
    stride,
    offset_lo,
    offset_hi,
    mask_id,
    MODE: tl.constexpr,
    MASKED_ONLY: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    GROUPED: tl.constexpr,
    NG: tl.constexpr,
    STRIDED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows, row_ok, x, active = tile_tokens(
        x_ptr, fixed_ptr, N, mask_id, BLOCK_N, MASKED_ONLY, HAS_FIXED
    )
    out = x
    if tl.max(active.to(tl.int32), axis=0) > 0:  # a tile with nothing to do reads nothing
        seed = tl.load(seed_ptr)
        c0 = tl.load(c_ptr + rows * 4, mask=active, other=0.0)
        c1 = tl.load(c_ptr + rows * 4 + 1, mask=active, other=0.0)
        log_norm = c0
        if MODE == 3:
            log_norm = _row_log_sum(s_ptr, rows, active, x, stride, V, BLOCK_N, BLOCK_V)
        if GROUPED:
            out = _grouped_update(
                s_ptr,
                c_ptr,
                rows,
                active,
                x,
                seed_ptr,
                stride,
                V,
                offset_lo,
                offset_hi,
                c0,
                c1,
                log_norm,
                MODE,
                NG,
                STRIDED,
                BLOCK_N,
                BLOCK_V,
            )
        else:
            best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
            best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
            run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
            total = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
                keep = active[:, None] & (cols < V)[None, :]
                if MODE != 4:
                    keep = keep & (cols[None, :] != x[:, None])
                ptrs = s_ptr + rows[:, None] * stride + cols[None, :]
                s = tl.load(ptrs, mask=keep, other=float("-inf")).to(tl.float32)
                lw = s
                if MODE == 3:
                    lw = _log_pos(c0[:, None] * tl.exp(s - log_norm[:, None]) - c1[:, None])
                    lw += tl.load(c_ptr + rows * 4 + 2, mask=active, other=0.0)[:, None]
                key = race_noise(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
                key = tl.where(keep, lw + key, float("-inf"))
                blk, blk_idx = block_argmax(key, cols)
                best, best_idx = take(best, best_idx, blk, blk_idx)
                if MODE == 0:
                    total += tl.exp(s)
                if MODE == 2:
                    run_max, total = online_lse(run_max, total, s)
            if MODE != 1 and MODE != 4:
                if MODE == 0:
                    best = best + c0
                    log_stay = _log_pos(1.0 - tl.exp(c0) * tl.sum(total, axis=1))
                if MODE == 2:
                    lse = lse_finish(run_max, total)
                    best = tl.where(best == float("-inf"), best, best - lse + c0)
                    log_stay = c1
                if MODE == 3:
                    c3 = tl.load(c_ptr + rows * 4 + 3, mask=active, other=0.0)
                    log_stay = _log_pos(c0 * tl.exp(-log_norm) - c1) + c3
                stay_key = log_stay + column_noise(seed, offset_lo, offset_hi, rows, x)
                best, best_idx = take(best, best_idx, stay_key, x)
            out = tl.where(active & (best > float("-inf")), best_idx, x)
    tl.store(out_ptr + rows, out, mask=row_ok)


@torch.library.custom_op("fastdiff::reverse_update", mutates_args=())
def reverse_update_op(
    scores: torch.Tensor,
    x: torch.Tensor,
    fixed: Optional[torch.Tensor],
    consts: torch.Tensor,
    seed: torch.Tensor,
    offset: int,
    mask_id: int,
    mode: int,
    masked_only: bool,
    block_v: int,
) -> torch.Tensor:
    """New tokens ``[N]`` from ``scores [N, V]``, ``x [N]`` and fp32 ``consts [N, 4]`` (module
    docstring); ``masked_only`` restricts the update to rows with ``x == mask_id``."""
    n, vocab = scores.shape
    out = new_output((n,), torch.int64, scores.device)
    if n:
        grid, tiles = row_tiles(n, vocab, race_block(vocab, block_v))
        _update_kernel[grid](
            scores,
            x,
            fixed.view(torch.uint8) if fixed is not None else x,
            consts,
            out,
            seed,
            n,
            vocab,
            scores.stride(0),
            *split_offset(offset),
            mask_id,
            MODE=mode,
            MASKED_ONLY=masked_only,
            HAS_FIXED=fixed is not None,
            GROUPED=grouped(vocab),
            NG=race_groups(vocab, tiles["BLOCK_V"]),
            STRIDED=strided_groups(scores, tiles["BLOCK_V"], tiles["num_warps"]),
            **tiles,
            # without a bound ptxas held the two-pass TWEEDIE mode at 48 registers and spilled
            # 8 bytes on sm_80 (tests/test_gpu_compile.py)
            **({"maxnreg": 128} if mode == TWEEDIE else {}),
        )
    return out


@reverse_update_op.register_fake
def _(scores, x, fixed, consts, seed, offset, mask_id, mode, masked_only, block_v):
    return torch.empty_like(x)


def _update(scores, x, fixed, consts, seed, offset, mask_id, mode, masked_only, block_v):
    table = torch.zeros(x.shape[0], 4, dtype=torch.float32, device=x.device)
    if consts:
        table[:, : len(consts)] = torch.stack(consts, dim=1)
    return reverse_update_op(
        scores.contiguous(),
        x.contiguous(),
        None if fixed is None else fixed.contiguous(),
        table,
        seed_tensor(seed, x.device),
        offset,
        -1 if mask_id is None else mask_id,
        mode,
        masked_only,
        block_v,
    )


def _tweedie(delta: torch.Tensor, vocab: int) -> list[torch.Tensor]:
    """TWEEDIE constants of the row scaled by ``e^-D`` (the race ignores a per-row factor), so
    that no constant overflows for any ``D``, ``inf`` included."""
    leave = -torch.expm1(-delta) / vocab
    return [torch.ones_like(delta), leave, leave.log(), (torch.exp(-delta) + leave).log()]


def _log_expm1_rate(delta: torch.Tensor) -> torch.Tensor:
    """``c0 = log expm1(D)`` in log space (finite for every finite ``D``); ``D = inf`` (no stay
    weight left) becomes the largest float32, which still makes every move beat the stay."""
    return torch.clamp(log_expm1(delta), max=torch.finfo(torch.float32).max)


@register_kernel("sedd_euler")
def sedd_euler(
    log_score, x, rate, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_euler`."""
    absorb = graph == "absorb"
    log_rate = torch.log(rate if absorb else rate / log_score.shape[-1])
    return _update(log_score, x, fixed, [log_rate], seed, offset, mask_id, RATE, absorb, block_v)


@register_kernel("sedd_analytic")
def sedd_analytic(
    log_score, x, delta, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_analytic`."""
    if graph == "absorb":
        consts, mode = [_log_expm1_rate(delta)], RATE
    else:
        consts, mode = _tweedie(delta, log_score.shape[-1]), TWEEDIE
    return _update(
        log_score, x, fixed, consts, seed, offset, mask_id, mode, graph == "absorb", block_v
    )


@register_kernel("sedd_denoise")
def sedd_denoise(
    log_score, x, sigma, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_denoise`."""
    if graph == "absorb":
        return _update(log_score, x, fixed, [], seed, offset, mask_id, DENOISE, True, block_v)
    consts = _tweedie(sigma, log_score.shape[-1])
    return _update(log_score, x, fixed, consts, seed, offset, mask_id, TWEEDIE, False, block_v)


@register_kernel("mdlm_ancestral")
def mdlm_ancestral(
    logits, x, sigma_t, sigma_s, fixed, seed, offset, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.mdlm_ancestral`: unmask weight
    ``p_j (mc_t - mc_s)``, stay ``mc_s``, with ``p`` an online softmax over ``j != m``."""
    log_unmask = -sigma_s + torch.log(-torch.expm1(sigma_s - sigma_t))
    log_stay = torch.log(-torch.expm1(-sigma_s))
    consts = [log_unmask, log_stay]
    return _update(logits, x, fixed, consts, seed, offset, mask_id, MDLM, True, block_v)


@register_kernel("d3pm_step")
def d3pm_step(
    x0_logits, x_t, q_step, qbar_prev, fixed, seed, offset, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.d3pm.d3pm_step`: the posterior logits from torch
    matrix products (fp32, float64 for float64 inputs), then one race per row in the kernel."""
    with torch.no_grad():
        dtype = torch.float64 if x0_logits.dtype == torch.float64 else torch.float32
        logits = ref_d3pm.log_posterior(x0_logits, x_t, q_step, qbar_prev, dtype)
        return _update(logits, x_t, fixed, [], seed, offset, None, PLAIN, False, block_v)
