"""Building blocks shared by the sampling kernels (``@triton.jit`` helpers over row tiles).

A sampling kernel works on a tile of ``[BLOCK_N rows, BLOCK_V columns]`` and streams the
vocabulary in blocks. It keeps, per row, the running winner of the exponential race
``argmax_j (log w_j - log E_j)`` (:func:`take`, lowest index on ties, as the reference) and,
where it needs the row's normalizer, a blockwise log-sum-exp (:func:`online_lse`,
:func:`lse_finish`). ``E_j`` comes from :mod:`fastdiff.kernels.philox_noise`, keyed like the
reference, so both backends race with the same noise.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastdiff.kernels.philox_noise import exponential_from_words, row_column_words, tile_words

MASK32 = 0xFFFFFFFF


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
