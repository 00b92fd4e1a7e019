"""Categorical sampling kernel: one pass of Gumbel-max per row, filters without a sort.

Each program takes a tile of rows and streams the vocabulary in blocks. Rows of at most
``G = 256`` columns keep a running argmax of ``u_j - log E_j`` where ``u = log w / T``
(:mod:`fastdiff.kernels.race`); longer rows use the grouped race: pass 1 reduces each block to
group log-sum-exps of ``u`` and races the group keys, pass 2 re-reads the ``G`` columns of the
winning group and races them. Both follow the reference's Philox stream, so the same seed
draws the same token as the reference backend except where two keys tie within fp32 rounding;
ties go to the lowest group / index. The chosen token's probability comes from an online
log-sum-exp (of the group log-sums when grouped). No ``[N, V]`` tensor is written.

Filters (:func:`fastdiff.reference.sampling.filter_logits`), all without sorting, on a 32-bit
order-preserving key of each loaded value (exact: no rounding can merge two inputs):

- top-k: the k-th largest key (the largest ``t`` with ``#{key >= t} >= k``): by radix select,
  4 histogram passes of 8-bit digits, for tiles of at most 4 rows (long rows); built bit by bit
  from the top (32 counting passes) for tiles of many short rows; keep ``key >= t`` (ties kept);
- top-p: the largest ``t`` whose strictly-larger mass ``sum_{key > t} p`` is still ``>= top_p``,
  built the same way (32 mass passes after one log-sum-exp pass); keep ``key > t``: the
  smallest nucleus with its boundary ties, as the reference;
- min-p: keep ``u_j >= max u + log(min_p)``.

float64 inputs run the reference (the kernel computes in fp32).
"""

from __future__ import annotations

import math

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
    tile_rows,
    value_at,
)
from fastdiff.reference import sampling as ref_sampling


@triton.jit
def _order_key(v):
    """int64 key in ``[0, 2^32)`` ordered like the fp32 values ``v`` (``-0.0`` as ``+0.0``)."""
    bits = (v + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits.to(tl.int64) + 2**31, (~bits).to(tl.int64))


@triton.jit
def _load(
    w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG: tl.constexpr, BLOCK_V: tl.constexpr
):
    """Columns, in-range mask, order keys and tempered log-weights ``u`` of one block."""
    cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
    inside, key, u = _load_at(w_ptr, rows, row_ok, stride, cols[None, :], V, inv_t, IS_LOG)
    return cols, inside, key, u


@triton.jit
def _load_at(w_ptr, rows, row_ok, stride, cols, V, inv_t, IS_LOG: tl.constexpr):
    """In-range mask, order keys and ``u`` of the columns ``cols`` (``[1 or R, B]``) of rows."""
    inside = row_ok[:, None] & (cols < V)
    x = tl.load(w_ptr + rows[:, None] * stride + cols, mask=inside, other=0.0)
    x = x.to(tl.float32)
    lw = x if IS_LOG else tl.log(x)
    u = tl.where(inside, lw * inv_t, float("-inf"))
    return inside, _order_key(x), u


@triton.jit
def _kept(
    inside, key, u, t_k, t_p, u_min, TOP_K: tl.constexpr, TOP_P: tl.constexpr, MIN_P: tl.constexpr
):
    keep = inside
    if TOP_K:
        keep = keep & (key >= t_k[:, None])
    if TOP_P:
        keep = keep & (key > t_p[:, None])
    if MIN_P:
        keep = keep & (u >= u_min[:, None])
    return keep


# Row tiles of at most this many rows find the top-k threshold by radix select (a histogram of
# 256 bins per row); larger tiles (small vocabularies) keep the 32 counting passes.
RADIX_MAX_ROWS = tl.constexpr(4)


@triton.jit
def _radix_kth_key(
    w_ptr,
    rows,
    row_ok,
    stride,
    V,
    inv_t,
    top_k,
    IS_LOG: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """The k-th largest order key of each row by radix select: 4 passes, one per 8-bit digit
    from the top, each a histogram of the digit over the keys that share the digits found so
    far; the digit is the largest ``b`` with ``#{digit >= b} >= k'`` (``k'`` the rank left).
    The same threshold as the bitwise search: the largest ``t`` with ``#{key >= t} >= k``."""
    prefix = tl.zeros((BLOCK_N,), dtype=tl.int64)
    need = tl.zeros((BLOCK_N,), dtype=tl.int32) + top_k
    bins = tl.arange(0, 256)
    slot_row = tl.arange(0, BLOCK_N)[:, None] * 256
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        hist = tl.zeros((BLOCK_N, 256), dtype=tl.int32)
        for start in range(0, V, BLOCK_V):
            _, inside, key, _ = _load(w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG, BLOCK_V)
            match = inside
            if p > 0:
                match = match & ((key >> (shift + 8)) == prefix[:, None])
            slot = slot_row + ((key >> shift) & 255).to(tl.int32)
            h = tl.histogram(
                tl.reshape(slot, (BLOCK_N * BLOCK_V,)),
                BLOCK_N * 256,
                mask=tl.reshape(match, (BLOCK_N * BLOCK_V,)),
            )
            hist += tl.reshape(h, (BLOCK_N, 256))
        above = tl.sum(hist, axis=1)[:, None] - tl.cumsum(hist, axis=1)  # digits > b
        digit = tl.max(tl.where(above + hist >= need[:, None], bins[None, :], 0), axis=1)
        need -= tl.sum(tl.where(bins[None, :] == digit[:, None], above, 0), axis=1)
        prefix = prefix * 256 + digit.to(tl.int64)
    return prefix


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "inv_t", "top_k", "top_p", "log_min_p"])
def _categorical_kernel(
    w_ptr,
    out_ptr,
    prob_ptr,
    seed_ptr,
    N,
    V,
    stride,
    offset_lo,
    offset_hi,
    inv_t,
    top_k,
    top_p,
    log_min_p,
    IS_LOG: tl.constexpr,
    ARGMAX: tl.constexpr,
    WANT_PROB: tl.constexpr,
    TOP_K: tl.constexpr,
    TOP_P: tl.constexpr,
    MIN_P: tl.constexpr,
    GROUPED: tl.constexpr,
    NG: tl.constexpr,
    STRIDED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows, row_ok = tile_rows(N, BLOCK_N)
    seed = tl.load(seed_ptr)
    t_k = tl.zeros((BLOCK_N,), dtype=tl.int64)
    t_p = tl.zeros((BLOCK_N,), dtype=tl.int64)
    u_min = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    one = tl.full((), 1, tl.int64)
    if TOP_K and BLOCK_N <= RADIX_MAX_ROWS:  # the k-th largest key, 8 bits per pass
        t_k = _radix_kth_key(w_ptr, rows, row_ok, stride, V, inv_t, top_k, IS_LOG, BLOCK_N, BLOCK_V)
    elif TOP_K:  # the k-th largest key, one bit per counting pass
        for bit in range(31, -1, -1):
            cand = t_k | (one << bit)
            count = tl.zeros((BLOCK_N,), dtype=tl.int32)
            for start in range(0, V, BLOCK_V):
                cols, inside, key, u = _load(
                    w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG, BLOCK_V
                )
                count += tl.sum((inside & (key >= cand[:, None])).to(tl.int32), axis=1)
            t_k = tl.where(count >= top_k, cand, t_k)
    if TOP_P or MIN_P:  # max and log-sum-exp of the top-k-filtered distribution
        run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols, inside, key, u = _load(
                w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG, BLOCK_V
            )
            keep = _kept(inside, key, u, t_k, t_p, u_min, TOP_K, False, False)
            run_max, run_sum = online_lse(run_max, run_sum, tl.where(keep, u, float("-inf")))
        u_max = tl.max(run_max, axis=1)
        u_min = u_max + log_min_p
        if TOP_P:
            lse = lse_finish(run_max, run_sum)
            for bit in range(31, -1, -1):
                cand = t_p | (one << bit)
                mass = tl.zeros((BLOCK_N,), dtype=tl.float32)
                for start in range(0, V, BLOCK_V):
                    cols, inside, key, u = _load(
                        w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG, BLOCK_V
                    )
                    above = _kept(inside, key, u, t_k, t_p, u_min, TOP_K, False, False)
                    above = above & (key > cand[:, None])
                    p = tl.exp(tl.where(above, u, float("-inf")) - lse[:, None])
                    mass += tl.sum(p, axis=1)
                t_p = tl.where(mass >= top_p, cand, t_p)
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
    best_u = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    if GROUPED and not ARGMAX:
        # pass 1: group log-sums and the group race; pass 2: the race inside the winning group
        # (NG > 0: per-group max / sum in the loop, the group keys raced once after it)
        g_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        g_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if NG > 0:
            gmax, gsum = group_init(BLOCK_N, BLOCK_V, NG)
        for start in range(0, V, BLOCK_V):
            cols = block_columns(start, BLOCK_V, STRIDED and NG > 0)
            inside, key, u = _load_at(w_ptr, rows, row_ok, stride, cols[None, :], V, inv_t, IS_LOG)
            u = tl.where(
                _kept(inside, key, u, t_k, t_p, u_min, TOP_K, TOP_P, MIN_P), u, float("-inf")
            )
            if NG > 0:
                gmax, gsum = group_accumulate(gmax, gsum, u, start, BLOCK_N, BLOCK_V, STRIDED)
            else:
                lse_g = group_lse(u, BLOCK_N, BLOCK_V)
                seed = reload_seed(seed_ptr)
                best, best_idx = group_race(
                    best, best_idx, lse_g, seed, offset_lo, offset_hi, rows, start, BLOCK_V
                )
                if WANT_PROB:
                    g_max, g_sum = lse_merge(g_max, g_sum, lse_g)
        if NG > 0:
            seed = reload_seed(seed_ptr)
            best, best_idx, lse_g = group_keys(
                gmax, gsum, seed, offset_lo, offset_hi, rows, BLOCK_N
            )
            if WANT_PROB:
                g_max, g_sum = lse_merge(g_max, g_sum, lse_g)
        cols = span_columns(best_idx)
        inside, key, u = _load_at(w_ptr, rows, row_ok, stride, cols, V, inv_t, IS_LOG)
        u = tl.where(_kept(inside, key, u, t_k, t_p, u_min, TOP_K, TOP_P, MIN_P), u, float("-inf"))
        seed = reload_seed(seed_ptr)
        race_key = u + span_noise(seed, offset_lo, offset_hi, rows, cols)
        blk, best_idx = span_argmax(race_key, cols)
        tl.store(out_ptr + rows, best_idx, mask=row_ok)
        if WANT_PROB:
            best_u = tl.max(tl.where(cols == best_idx[:, None], u, float("-inf")), axis=1)
            tl.store(prob_ptr + rows, tl.exp(best_u - lse_merged(g_max, g_sum)), mask=row_ok)
    else:
        run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols, inside, key, u = _load(
                w_ptr, rows, row_ok, stride, start, V, inv_t, IS_LOG, BLOCK_V
            )
            u = tl.where(
                _kept(inside, key, u, t_k, t_p, u_min, TOP_K, TOP_P, MIN_P), u, float("-inf")
            )
            if ARGMAX:
                race_key = u
            else:
                race_key = u + race_noise(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
            blk, blk_idx = block_argmax(race_key, cols)
            best_u = tl.where(blk > best, value_at(u, cols, blk_idx), best_u)
            best, best_idx = take(best, best_idx, blk, blk_idx)
            if WANT_PROB:
                run_max, run_sum = online_lse(run_max, run_sum, u)
        tl.store(out_ptr + rows, best_idx, mask=row_ok)
        if WANT_PROB:
            tl.store(prob_ptr + rows, tl.exp(best_u - lse_finish(run_max, run_sum)), mask=row_ok)


def _register_bound(top_k: int, vocab: int, top_p: float, min_p: float) -> dict[str, int]:
    """``maxnreg`` for the filtered launches. Without an explicit bound ptxas held some filter
    combinations (top-p with min-p, all three filters) at 48 registers and spilled 8 bytes on
    sm_90; the bound lets it keep them in registers (checked by tests/test_gpu_compile.py)."""
    filtered = (0 < top_k < vocab) or top_p < 1.0 or min_p > 0.0
    return {"maxnreg": 128} if filtered else {}


@torch.library.custom_op("fastdiff::sample_categorical", mutates_args=())
def sample_categorical_op(
    weights: torch.Tensor,
    is_log: bool,
    seed: torch.Tensor,
    offset: int,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    want_prob: bool,
    block_v: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row of ``weights [N, V]``: ``(index [N] int64, prob [N] fp32 or [0])``.
    ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` switch a filter off."""
    n, vocab = weights.shape
    out = new_output((n,), torch.int64, weights.device)
    prob = new_output((n if want_prob else 0,), torch.float32, weights.device)
    if n:
        grid, tiles = row_tiles(n, vocab, race_block(vocab, block_v))
        argmax = temperature == 0.0
        # top-k launches keep the in-loop group race: with the radix-select state the hoisted
        # group state spilled (8 B stack at sm_90, V = 32768)
        n_groups = 0 if 0 < top_k < vocab else race_groups(vocab, tiles["BLOCK_V"])
        _categorical_kernel[grid](
            weights,
            out,
            prob if want_prob else out,
            seed,
            n,
            vocab,
            weights.stride(0),
            *split_offset(offset),
            1.0 if argmax else 1.0 / temperature,
            top_k,
            top_p,
            math.log(min_p) if min_p > 0.0 else float("-inf"),
            IS_LOG=is_log,
            ARGMAX=argmax,
            WANT_PROB=want_prob,
            TOP_K=0 < top_k < vocab,
            TOP_P=top_p < 1.0,
            MIN_P=min_p > 0.0,
            GROUPED=grouped(vocab),
            NG=n_groups,
            STRIDED=strided_groups(weights, tiles["BLOCK_V"], tiles["num_warps"]),
            **tiles,
            **_register_bound(top_k, vocab, top_p, min_p),
        )
    return out, prob


@sample_categorical_op.register_fake
def _(weights, is_log, seed, offset, temperature, top_k, top_p, min_p, want_prob, block_v):
    n = weights.shape[0]
    return (
        weights.new_empty(n, dtype=torch.int64),
        weights.new_empty(n if want_prob else 0, dtype=torch.float32),
    )


@register_kernel("sample_categorical")
def sample_categorical(
    weights: torch.Tensor,
    is_log: bool,
    seed: int | torch.Tensor,
    offset: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    return_prob: bool,
    *,
    block_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kernel for :func:`fastdiff.reference.sampling.sample_categorical`."""
    if weights.dtype == torch.float64:
        return ref_sampling.sample_categorical(
            weights, is_log, seed, offset, temperature, top_k, top_p, min_p, return_prob
        )
    index, prob = sample_categorical_op(
        weights.contiguous(),
        is_log,
        seed_tensor(seed, weights.device),
        offset,
        float(temperature),
        top_k or 0,
        1.0 if top_p is None else float(top_p),
        0.0 if min_p is None else float(min_p),
        return_prob,
        block_v,
    )
    return index, prob if return_prob else None
