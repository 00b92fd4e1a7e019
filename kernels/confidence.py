"""Confidence-unmasking proposal kernel: the draw and its confidence in one pass per row.

For each masked, non-fixed row, with ``p = softmax(logits)`` over ``j != m``
(:func:`fastdiff.reference.updates.unmask_candidates`), one streaming pass keeps

- the proposal: a running argmax of ``l_j`` (temperature 0) or of ``l_j / T - log E_j`` on the
  reference's Philox stream, with the winner's logit; for rows longer than ``G = 256`` columns
  the grouped race (:mod:`fastdiff.random`): the pass races the group log-sums of ``l / T`` and
  a second pass races the ``G`` columns of the winning group;
- an online log-sum-exp ``lse`` of the logits and, for the entropy, ``sum_j e^(l_j - M)
  (l_j - M)`` rescaled with the running max ``M`` (relative to the max, so a peaked row does
  not cancel two large terms);
- the two largest logits (for the margin; a tie gives margin 0).

and finishes with ``p(xhat) = e^(l_xhat - lse)``, ``p1 - p2``, or
``sum_j p_j log p_j = sum_j p_j (l_j - M) - log sum_j e^(l_j - M)``. Other rows get ``x``
and ``-inf``. A tile with no masked row reads nothing.
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
    group_accumulate,
    group_init,
    group_keys,
    group_lse,
    group_race,
    grouped,
    lse_finish,
    lse_merge,
    lse_merged,
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
    value_at,
)

CONFIDENCE = {"prob": 0, "margin": 1, "entropy": 2}


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "mask_id", "inv_t"])
def _candidates_kernel(
    l_ptr,
    x_ptr,
    fixed_ptr,
    xhat_ptr,
    conf_ptr,
    seed_ptr,
    N,
    V,
    stride,
    offset_lo,
    offset_hi,
    mask_id,
    inv_t,
    ARGMAX: tl.constexpr,
    CONF: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    RACE_GROUPS: tl.constexpr,
    NG: tl.constexpr,
    STRIDED: tl.constexpr,
    UNIT_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows, row_ok, x, active = tile_tokens(x_ptr, fixed_ptr, N, mask_id, BLOCK_N, True, HAS_FIXED)
    xhat = x
    conf = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    if tl.max(active.to(tl.int32), axis=0) > 0:
        seed = tl.load(seed_ptr)
        best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
        best_l = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        top1 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        top2 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        run_dot = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        row_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        row_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        # the group log-sums give the row's log-sum-exp too when T = 1 (UNIT_T)
        ROW_FROM_GROUPS: tl.constexpr = RACE_GROUPS and NG > 0 and UNIT_T and CONF != 2
        if RACE_GROUPS and NG > 0:  # per-group max / sum in the loop, keys raced after it
            gmax, gsum = group_init(BLOCK_N, BLOCK_V, NG)
        for start in range(0, V, BLOCK_V):
            cols = block_columns(start, BLOCK_V, STRIDED and RACE_GROUPS and NG > 0)
            keep = active[:, None] & ((cols < V) & (cols != mask_id))[None, :]
            ptrs = l_ptr + rows[:, None] * stride + cols[None, :]
            lg = tl.load(ptrs, mask=keep, other=float("-inf")).to(tl.float32)
            if RACE_GROUPS and NG > 0:
                u = tl.where(keep, lg * inv_t, float("-inf"))
                gmax, gsum = group_accumulate(gmax, gsum, u, start, BLOCK_N, BLOCK_V, STRIDED)
            elif RACE_GROUPS:  # pass 1 of the grouped race: the group keys, block by block
                lse_g = group_lse(tl.where(keep, lg * inv_t, float("-inf")), BLOCK_N, BLOCK_V)
                seed = reload_seed(seed_ptr)
                best, best_idx = group_race(
                    best, best_idx, lse_g, seed, offset_lo, offset_hi, rows, start, BLOCK_V
                )
            else:
                if ARGMAX:
                    key = lg
                else:
                    noise = race_noise(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
                    key = tl.where(keep, lg * inv_t + noise, float("-inf"))
                blk, blk_idx = block_argmax(key, cols)
                best_l = tl.where(blk > best, value_at(lg, cols, blk_idx), best_l)
                best, best_idx = take(best, best_idx, blk, blk_idx)
            if ROW_FROM_GROUPS:
                pass
            elif RACE_GROUPS and CONF != 2:
                # per-row running log-sum-exp (one exp per element, two registers per row): the
                # two-pass kernel holds fewer values through its loop than with per-lane sums
                row_max, row_sum = lse_merge(row_max, row_sum, lg)
            else:
                # online log-sum-exp per lane, with sum e^(l - M)(l - M) for the entropy
                new_max = tl.maximum(run_max, lg)
                safe = tl.where(new_max == float("-inf"), 0.0, new_max)
                rescale = tl.exp(run_max - safe)
                e = tl.exp(lg - safe)
                if CONF == 2:
                    shift = tl.where(run_max == float("-inf"), 0.0, run_max - safe)
                    run_dot = rescale * (run_dot + shift * run_sum)
                    run_dot += tl.where(keep, e * (lg - safe), 0.0)
                run_sum = run_sum * rescale + e
                run_max = new_max
            if CONF == 1:
                b1, i1 = block_argmax(lg, cols)
                b2 = tl.max(tl.where(cols[None, :] == i1[:, None], float("-inf"), lg), axis=1)
                top2 = tl.maximum(tl.maximum(tl.minimum(top1, b1), top2), b2)
                top1 = tl.maximum(top1, b1)
        if RACE_GROUPS and NG > 0:
            seed = reload_seed(seed_ptr)
            best, best_idx, lse_g = group_keys(
                gmax, gsum, seed, offset_lo, offset_hi, rows, BLOCK_N
            )
            if ROW_FROM_GROUPS:
                row_max, row_sum = lse_merge(row_max, row_sum, lse_g)
        if RACE_GROUPS:  # pass 2: the race over the columns of the winning group
            cols2 = span_columns(best_idx)
            keep2 = active[:, None] & (cols2 < V) & (cols2 != mask_id)
            ptrs2 = l_ptr + rows[:, None] * stride + cols2
            lg2 = tl.load(ptrs2, mask=keep2, other=float("-inf")).to(tl.float32)
            seed = reload_seed(seed_ptr)
            noise2 = span_noise(seed, offset_lo, offset_hi, rows, cols2)
            key2 = tl.where(keep2, lg2 * inv_t + noise2, float("-inf"))
            _, best_idx = span_argmax(key2, cols2)
            best_l = tl.max(tl.where(cols2 == best_idx[:, None], lg2, float("-inf")), axis=1)
        if RACE_GROUPS and CONF != 2:
            lse = lse_merged(row_max, row_sum)
        else:
            lse = lse_finish(run_max, run_sum)
        if CONF == 0:
            value = tl.exp(best_l - lse)
        if CONF == 1:
            value = tl.exp(top1 - lse) - tl.exp(top2 - lse)
        if CONF == 2:  # sum p (l - M) - log S, both relative to the row max M
            top = tl.max(run_max, axis=1)[:, None]
            top = tl.where(top == float("-inf"), 0.0, top)
            lane = tl.exp(run_max - top)
            shift = tl.where(run_max == float("-inf"), 0.0, run_max - top)
            total = tl.sum(lane * run_sum, axis=1)
            value = tl.sum(lane * (run_dot + shift * run_sum), axis=1) / total - tl.log(total)
        done = active & (best > float("-inf"))
        xhat = tl.where(done, best_idx, x)
        conf = tl.where(done, value, conf)
    tl.store(xhat_ptr + rows, xhat, mask=row_ok)
    tl.store(conf_ptr + rows, conf, mask=row_ok)


@torch.library.custom_op("fastdiff::unmask_candidates", mutates_args=())
def unmask_candidates_op(
    logits: torch.Tensor,
    x: torch.Tensor,
    fixed: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: int,
    mask_id: int,
    temperature: float,
    confidence: int,
    block_v: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xhat [N] int64, confidence [N] fp32)`` from ``logits [N, V]`` and ``x [N]``;
    ``confidence`` indexes ``CONFIDENCE``."""
    n, vocab = logits.shape
    xhat = new_output((n,), torch.int64, logits.device)
    conf = new_output((n,), torch.float32, logits.device)
    if n:
        grid, tiles = row_tiles(n, vocab, race_block(vocab, block_v))
        argmax = temperature == 0.0
        _candidates_kernel[grid](
            logits,
            x,
            fixed.view(torch.uint8) if fixed is not None else x,
            xhat,
            conf,
            seed,
            n,
            vocab,
            logits.stride(0),
            *split_offset(offset),
            mask_id,
            1.0 if argmax else 1.0 / temperature,
            ARGMAX=argmax,
            CONF=confidence,
            HAS_FIXED=fixed is not None,
            RACE_GROUPS=grouped(vocab) and not argmax,
            NG=race_groups(vocab, tiles["BLOCK_V"]),
            STRIDED=strided_groups(logits, tiles["BLOCK_V"], tiles["num_warps"]),
            UNIT_T=temperature == 1.0,
            **tiles,
        )
    return xhat, conf


@unmask_candidates_op.register_fake
def _(logits, x, fixed, seed, offset, mask_id, temperature, confidence, block_v):
    return torch.empty_like(x), torch.empty(x.shape, dtype=torch.float32, device=x.device)


@register_kernel("unmask_candidates")
def unmask_candidates(
    logits: torch.Tensor,
    x: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    mask_id: int,
    temperature: float,
    confidence: str,
    *,
    block_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel for :func:`fastdiff.reference.updates.unmask_candidates`."""
    return unmask_candidates_op(
        logits.contiguous(),
        x.contiguous(),
        None if fixed is None else fixed.contiguous(),
        seed_tensor(seed, x.device),
        offset,
        mask_id,
        float(temperature),
        CONFIDENCE[confidence],
        block_v,
    )
