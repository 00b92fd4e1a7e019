"""Building blocks shared by the sampling kernels (``@triton.jit`` helpers over row tiles).

A sampling kernel works on a tile of ``[BLOCK_N rows, BLOCK_V columns]`` and streams the
vocabulary in blocks. It keeps, per row, the running winner of the exponential race
``argmax_j (log w_j - log E_j)`` (:func:`take`, lowest index on ties, as the reference) and,
where it needs the row's normalizer, a blockwise log-sum-exp (:func:`online_lse`,
:func:`lse_finish`). ``E_j`` comes from :mod:`fastdiff.kernels.philox_noise`, keyed like the
reference, so both backends race with the same noise.

Rows longer than ``G = RACE_GROUP`` columns use the grouped race of :mod:`fastdiff.random`:
pass 1 streams the row in blocks of a multiple of ``G`` columns, reduces each block to its
group log-sum-exps (:func:`group_lse`) and races the group keys ``log W_g - log E'_g``
(:func:`group_noise`); pass 2 re-reads only the ``G`` columns of the winning group of each row
(:func:`span_columns`, :func:`span_noise`) and races them (:func:`span_argmax`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff import random as frandom
from fastdiff.kernels.launch import block_size
from fastdiff.kernels.philox_noise import exponential_from_words, row_column_words, tile_words

MASK32 = 0xFFFFFFFF
# the race's group size and group counter base, as constexprs (kernels read them)
GROUP = tl.constexpr(frandom.RACE_GROUP)
GROUP_BASE = tl.constexpr(frandom.GROUP_COUNTER_BASE)
# Pass 1 keeps the per-group max and sum of every group of the row in registers (``[BLOCK_N,
# NG]`` each, NG / (32 num_warps) values per thread) up to this many group slots, i.e. rows of
# up to 262144 columns; longer rows race the group keys block by block inside the loop.
MAX_HOISTED_GROUPS = 1024


def grouped(vocab: int) -> bool:
    """Whether a row of ``vocab`` columns is drawn by the grouped race (two passes)."""
    if vocab > frandom.MAX_RACE_COLUMNS:
        raise ValueError(f"the race supports fewer than 2^31 columns, got {vocab}")
    return vocab > frandom.RACE_GROUP


def race_block(vocab: int, block_v: int = 0) -> int:
    """The launch's ``BLOCK_V``: ``block_v`` (0 picks :func:`block_size`), raised to the group
    size for a grouped row, so that every block holds whole groups."""
    block = block_v or block_size(vocab)
    return max(block, frandom.RACE_GROUP) if grouped(vocab) else block


def race_groups(vocab: int, block_v: int) -> int:
    """The launch's ``NG``: group slots of the per-group state pass 1 keeps in registers (a power
    of two, at least the ``cdiv(vocab, block_v) * block_v // G`` groups the loop visits), or 0
    when the row is not grouped or needs more than :data:`MAX_HOISTED_GROUPS` slots (pass 1 then
    races the groups of each block in the loop). ``block_v`` is the launch's ``BLOCK_V``."""
    if not grouped(vocab):
        return 0
    slots = triton.next_power_of_2(triton.cdiv(vocab, block_v)) * (block_v // frandom.RACE_GROUP)
    return slots if slots <= MAX_HOISTED_GROUPS else 0


def strided_groups(t: torch.Tensor, block_v: int, num_warps: int) -> bool:
    """The launch's ``STRIDED``: whether pass 1 should permute the columns of each block (see
    :func:`block_columns`). Triton vectorizes the loads of a row only when the base pointer is
    16-byte aligned and the row stride divisible by 16 (V = 50258 is not); scalar loads give each
    thread the columns ``t, t + 256, ...`` of a 2048-column block, one per group, and every group
    reduction then crosses all 8 warps. Only for 2048-column blocks over 8 warps."""
    aligned = t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in t.stride()[:-1])
    return not aligned and block_v == 8 * frandom.RACE_GROUP and num_warps == 8


def split_offset(offset: int) -> tuple[int, int]:
    """The 64-bit Philox offset as the two 32-bit counter words the kernels take."""
    return offset & MASK32, (offset >> 32) & MASK32


@triton.jit
def take(best, best_idx, key, idx):
    """Running argmax with the lowest index winning ties (elementwise over rows)."""
    better = (key > best) | ((key == best) & (idx < best_idx))
    return tl.where(better, key, best), tl.where(better, idx, best_idx)


@triton.jit
def block_argmax(key, cols):
    """Row-wise max of ``key [R, B]`` and its column ``cols [B]`` (lowest on ties)."""
    top = tl.max(key, axis=1)
    idx = tl.min(tl.where(key == top[:, None], cols[None, :], 2**62), axis=1)
    return top, idx


@triton.jit
def value_at(values, cols, idx):
    """``values[r, idx[r]]`` for a tile (``-inf`` where ``idx`` is not in this block)."""
    return tl.max(tl.where(cols[None, :] == idx[:, None], values, float("-inf")), axis=1)


@triton.jit
def race_noise(seed, offset_lo, offset_hi, rows, start, BLOCK_V: tl.constexpr):
    """``-log E`` for the columns ``start .. start + BLOCK_V`` of ``rows`` (``[R, BLOCK_V]``)."""
    a, b = tile_words(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
    return -tl.log(exponential_from_words(a, b))


@triton.jit
def column_noise(seed, offset_lo, offset_hi, rows, cols):
    """``-log E`` for one column ``cols [R]`` per row (the stay option of an update)."""
    a, b = row_column_words(seed, offset_lo, offset_hi, rows, cols)
    return -tl.log(exponential_from_words(a, b))


@triton.jit
def group_lse(lw, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """``log sum_{j in g} e^lw_j`` per group of ``GROUP`` columns of ``lw [BLOCK_N, BLOCK_V]``
    (``[BLOCK_N, BLOCK_V // GROUP]``; ``-inf`` for a group of ``-inf``), with a per-group max."""
    t = tl.reshape(lw, (BLOCK_N, BLOCK_V // GROUP, GROUP))
    top = tl.max(t, axis=2)
    safe = tl.where(top == float("-inf"), 0.0, top)
    return safe + tl.log(tl.sum(tl.exp(t - safe[:, :, None]), axis=2))


@triton.jit
def group_init(BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, NG: tl.constexpr):
    """Empty per-group state of pass 1: ``(gmax, gsum)`` ``[BLOCK_N, NG // GB, GB]`` with ``GB =
    BLOCK_V // GROUP`` (slot ``[r, b, k]`` is group ``b GB + k``: block ``b``'s ``k``-th)."""
    shape: tl.constexpr = (BLOCK_N, NG // (BLOCK_V // GROUP), BLOCK_V // GROUP)
    return tl.zeros(shape, dtype=tl.float32), tl.zeros(shape, dtype=tl.float32)


@triton.jit
def block_columns(start, BLOCK_V: tl.constexpr, STRIDED: tl.constexpr):
    """The columns (int64 ``[BLOCK_V]``) of pass 1's block at ``start``: in order, or, when
    ``STRIDED`` (scalar loads, 2048 columns over 8 warps: a thread holds positions ``p = 256 r
    + 32 w + l`` of the block, warp ``w``, lane ``l``), permuted to column ``256 w + 32 r + l``,
    so that warp ``w`` holds exactly group ``w`` of the block and the group reductions of
    :func:`group_accumulate` stay inside a warp. Only the order within the block changes."""
    p = tl.arange(0, BLOCK_V)
    if STRIDED:
        p = ((p // 32) % 8) * GROUP + (p // GROUP) * 32 + p % 32
    return start + p.to(tl.int64)


@triton.jit
def _group_max_sum(lw, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, STRIDED: tl.constexpr):
    """Per group of the block ``lw [BLOCK_N, BLOCK_V]`` (columns from :func:`block_columns`):
    the max (0 for a group of ``-inf``) and the sum of ``e^(lw - max)``, ``[BLOCK_N, GB]``."""
    if STRIDED:  # position 256 r + 32 w + l holds column 256 w + 32 r + l: group w
        t = tl.reshape(lw, (BLOCK_N, 8, 8, 32))
        top = tl.max(tl.max(t, axis=1), axis=2)
        safe = tl.where(top == float("-inf"), 0.0, top)
        total = tl.sum(tl.sum(tl.exp(t - safe[:, None, :, None]), axis=1), axis=2)
    else:
        t = tl.reshape(lw, (BLOCK_N, BLOCK_V // GROUP, GROUP))
        top = tl.max(t, axis=2)
        safe = tl.where(top == float("-inf"), 0.0, top)
        total = tl.sum(tl.exp(t - safe[:, :, None]), axis=2)
    return safe, total


@triton.jit
def group_accumulate(
    gmax, gsum, lw, start, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, STRIDED: tl.constexpr
):
    """Pass 1's work per block of ``lw [BLOCK_N, BLOCK_V]`` at column ``start``: each group's
    max (0 for a group of ``-inf``) and its sum of ``e^(lw - max)``, written into the slots of
    this block in ``gmax``, ``gsum`` (:func:`group_init`). No noise and no log in the loop: the
    group keys are raced once after it (:func:`group_keys`). A group lies in one block (blocks
    start at multiples of ``BLOCK_V``, a multiple of ``GROUP``), so nothing needs rescaling."""
    safe, total = _group_max_sum(lw, BLOCK_N, BLOCK_V, STRIDED)
    here = (tl.arange(0, gmax.shape[1]) == start // BLOCK_V)[None, :, None]
    gmax = tl.where(here, safe[:, None, :], gmax)
    gsum = tl.where(here, total[:, None, :], gsum)
    return gmax, gsum


@triton.jit
def group_keys(gmax, gsum, seed, offset_lo, offset_hi, rows, BLOCK_N: tl.constexpr):
    """Race all the groups of pass 1 at once: ``(best key, best group, lse_g)`` with ``lse_g =
    gmax + log gsum`` ``[BLOCK_N, NG]`` (``-inf`` for an empty group or a slot past the row) and
    keys ``lse_g - log E'_g`` (one Philox call per group, lowest group on ties): the same keys
    as :func:`group_race` in the loop, so the same group wins."""
    ng: tl.constexpr = gmax.shape[1] * gmax.shape[2]
    lse_g = tl.reshape(gmax, (BLOCK_N, ng)) + tl.log(tl.reshape(gsum, (BLOCK_N, ng)))
    groups = tl.arange(0, ng).to(tl.int64)
    key = lse_g + group_noise(seed, offset_lo, offset_hi, rows, groups)
    best, best_g = block_argmax(key, groups)
    return best, best_g, lse_g


@triton.jit
def reload_seed(seed_ptr):
    """The Philox key loaded again (volatile, so neither merged with an earlier load nor hoisted
    out of a loop): a kernel calls it in each block of a streaming loop and before pass 2, so
    that the compiler recomputes the key schedule there instead of holding its ~20 words in
    registers through the loop (which spilled at sm_90 / sm_80)."""
    return tl.load(seed_ptr, volatile=True)


@triton.jit
def group_noise(seed, offset_lo, offset_hi, rows, groups):
    """``-log E'_g`` for the groups ``groups [NG]`` (int64) of ``rows [R]``: ``[R, NG]``, words
    ``(r0, r1)`` of counter ``(2^30 + g, row, offset_lo, offset_hi)``."""
    c0 = (groups + GROUP_BASE).to(tl.uint32)[None, :]
    row = rows.to(tl.uint32)[:, None]
    zero = c0 * 0 + row * 0
    r0, r1, _, _ = tl.philox(
        seed, zero + c0, zero + row, zero + offset_lo.to(tl.uint32), zero + offset_hi.to(tl.uint32)
    )
    return -tl.log(exponential_from_words(r0, r1))


@triton.jit
def group_race(best, best_g, lse_g, seed, offset_lo, offset_hi, rows, start, BLOCK_V: tl.constexpr):
    """Race the group log-sums ``lse_g [R, BLOCK_V // GROUP]`` of the block at column ``start``
    into the running best group key ``best`` and group ``best_g`` (lowest group on ties)."""
    groups = start // GROUP + tl.arange(0, BLOCK_V // GROUP).to(tl.int64)
    key = lse_g + group_noise(seed, offset_lo, offset_hi, rows, groups)
    blk, blk_g = block_argmax(key, groups)
    return take(best, best_g, blk, blk_g)


@triton.jit
def span_columns(best_g):
    """The ``GROUP`` columns ``[R, GROUP]`` (int64) of group ``best_g [R]`` of each row."""
    return best_g[:, None] * GROUP + tl.arange(0, GROUP).to(tl.int64)[None, :]


@triton.jit
def span_noise(seed, offset_lo, offset_hi, rows, cols):
    """``-log E_j`` ``[R, B]`` for the columns ``cols [R, B]`` (int64) of ``rows [R]``: the
    column counters ``(j // 2, row, offset_lo, offset_hi)``, words ``(r0, r1)`` for even and
    ``(r2, r3)`` for odd ``j``. One Philox call per column (not per pair): the tile keeps the
    layout of ``cols``, where interleaving pair words would replicate it across threads."""
    pair = (cols // 2).to(tl.uint32)
    row = rows.to(tl.uint32)[:, None]
    zero = pair * 0 + row * 0
    r0, r1, r2, r3 = tl.philox(
        seed,
        zero + pair,
        zero + row,
        zero + offset_lo.to(tl.uint32),
        zero + offset_hi.to(tl.uint32),
    )
    odd = (cols % 2) == 1
    return -tl.log(exponential_from_words(tl.where(odd, r2, r0), tl.where(odd, r3, r1)))


@triton.jit
def span_argmax(key, cols):
    """Row-wise max of ``key [R, B]`` and its column from ``cols [R, B]`` (lowest on ties)."""
    top = tl.max(key, axis=1)
    idx = tl.min(tl.where(key == top[:, None], cols, 2**62), axis=1)
    return top, idx


@triton.jit
def lse_merge(run_max, run_sum, lse_g):
    """Fold the group log-sums ``lse_g [R, NG]`` of a block into a per-row running log-sum-exp
    (``run_max``, ``run_sum`` ``[R]``; finish with ``run_max + log(run_sum)``): per-row state
    instead of per-lane, so the accumulator costs two registers, not ``2 NG``."""
    top = tl.maximum(run_max, tl.max(lse_g, axis=1))
    safe = tl.where(top == float("-inf"), 0.0, top)
    return top, run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(lse_g - safe[:, None]), axis=1)


@triton.jit
def lse_merged(run_max, run_sum):
    """``log sum exp`` of everything :func:`lse_merge` folded (``-inf`` if empty)."""
    safe = tl.where(run_max == float("-inf"), 0.0, run_max)
    return safe + tl.log(run_sum)


@triton.jit
def online_lse(run_max, run_sum, x):
    """One step of a blockwise log-sum-exp: per-lane running max and rescaled sum."""
    new_max = tl.maximum(run_max, x)
    safe = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, run_sum * tl.exp(run_max - safe) + tl.exp(x - safe)


@triton.jit
def lse_finish(run_max, run_sum):
    """``log sum exp`` per row of the lanes kept by :func:`online_lse` (``-inf`` if empty)."""
    top = tl.max(run_max, axis=1)
    safe = tl.where(top == float("-inf"), 0.0, top)
    return safe + tl.log(tl.sum(run_sum * tl.exp(run_max - safe[:, None]), axis=1))


@triton.jit
def tile_rows(N, BLOCK_N: tl.constexpr):
    """This program's rows (int64 ``[BLOCK_N]``) and which of them exist."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < N


@triton.jit
def tile_tokens(
    x_ptr,
    fixed_ptr,
    N,
    mask_id,
    BLOCK_N: tl.constexpr,
    MASKED_ONLY: tl.constexpr,
    HAS_FIXED: tl.constexpr,
):
    """This program's rows, which exist, their tokens ``x`` and which rows may move: every
    existing row, or only masked ones (``MASKED_ONLY``), less the fixed ones."""
    rows, row_ok = tile_rows(N, BLOCK_N)
    x = tl.load(x_ptr + rows, mask=row_ok, other=0)
    active = row_ok
    if MASKED_ONLY:
        active = active & (x == mask_id)
    if HAS_FIXED:
        active = active & (tl.load(fixed_ptr + rows, mask=row_ok, other=1) == 0)
    return rows, row_ok, x, active
