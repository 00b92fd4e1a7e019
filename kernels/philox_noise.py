"""Counter-based noise inside kernels: the same numbers as :mod:`fastdiff.random`.

Philox4x32-10 (``tl.philox``) with key = seed and counter ``(column // 2, row, offset_lo,
offset_hi)``; column ``2i`` takes words ``(r0, r1)`` of pair ``i`` and column ``2i + 1`` takes
``(r2, r3)``. The transforms follow the reference bit for bit; only the final floating-point
rounding differs (fp32 here where the reference uses fp64), so draws agree except at keys that
tie within rounding.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_seed(seed_ptr):
    """The 64-bit Philox key from a 1-element int64 tensor (device memory: graph-safe)."""
    return tl.load(seed_ptr)


@triton.jit
def column_words(seed, offset_lo, offset_hi, row, start, BLOCK: tl.constexpr):
    """The two 32-bit words (uint32) of columns ``start .. start + BLOCK`` of ``row``.

    ``start`` must be even and ``BLOCK`` a power of two >= 2.
    """
    pair = (start // 2 + tl.arange(0, BLOCK // 2)).to(tl.uint32)
    zero = pair * 0
    r0, r1, r2, r3 = tl.philox(
        seed,
        pair,
        zero + row.to(tl.uint32),
        zero + offset_lo.to(tl.uint32),
        zero + offset_hi.to(tl.uint32),
    )
    return tl.interleave(r0, r2), tl.interleave(r1, r3)


@triton.jit
def tile_pair_words(seed, offset_lo, offset_hi, rows, start, BLOCK: tl.constexpr):
    """The four Philox words (uint32 ``[R, BLOCK // 2]`` each) of the column pairs of
    columns ``start .. start + BLOCK`` of ``rows`` ``[R]`` (int64): counter
    ``(column // 2, row, offset_lo, offset_hi)``. ``start`` even, ``BLOCK`` a power of two."""
    pair = (start // 2 + tl.arange(0, BLOCK // 2)).to(tl.uint32)[None, :]
    row = rows.to(tl.uint32)[:, None]
    zero = pair * 0 + row * 0
    return tl.philox(
        seed,
        zero + pair,
        zero + row,
        zero + offset_lo.to(tl.uint32),
        zero + offset_hi.to(tl.uint32),
    )


@triton.jit
def tile_words(seed, offset_lo, offset_hi, rows, start, BLOCK: tl.constexpr):
    """:func:`column_words` for a tile: ``rows`` ``[R]`` (int64) gives ``[R, BLOCK]`` words."""
    r0, r1, r2, r3 = tile_pair_words(seed, offset_lo, offset_hi, rows, start, BLOCK)
    return tl.interleave(r0, r2), tl.interleave(r1, r3)


@triton.jit
def row_column_words(seed, offset_lo, offset_hi, rows, cols):
    """The two words of one column per row: ``cols [R]`` of ``rows [R]`` (both int64)."""
    pair = (cols // 2).to(tl.uint32)
    zero = pair * 0
    r0, r1, r2, r3 = tl.philox(
        seed,
        pair,
        zero + rows.to(tl.uint32),
        zero + offset_lo.to(tl.uint32),
        zero + offset_hi.to(tl.uint32),
    )
    odd = (cols % 2) == 1
    return tl.where(odd, r2, r0), tl.where(odd, r3, r1)


@triton.jit
def log1p_neg(w):
    """``log1p(-w)`` for ``0 <= w <= 1/2`` in fp32, accurate for tiny ``w`` (Goldberg's trick:
    ``log(u) * (-w) / (u - 1)`` with ``u = 1 - w`` rounded)."""
    u = 1.0 - w
    return tl.where(u == 1.0, -w, tl.log(u) * (-w) / (u - 1.0))


@triton.jit
def exponential_from_words(a, b):
    """``Exp(1)`` in fp32 from the words of a column: bit 31 of ``a`` picks the half and the
    other 63 bits give ``W = (k + 1/2) 2^-64`` in ``(0, 1/2)``; ``E = -log W`` (upper half)
    or ``-log1p(-W)`` (lower half). Both tails are exact to fp32 rounding."""
    hi = (a & 0x7FFFFFFF).to(tl.float32)
    w = hi * 2.3283064365386963e-10 + (b.to(tl.float32) + 0.5) * 5.421010862427522e-20
    upper = (a >> 31) != 0
    return tl.where(upper, -tl.log(w), -log1p_neg(w))


@triton.jit
def uniform52_from_words(a, b):
    """fp64 ``U(0, 1)`` ``(k + 1/2) 2^-52`` from the top 52 bits of ``a:b`` (never 0 or 1)."""
    k = (a.to(tl.uint64) << 20) | (b.to(tl.uint64) >> 12)
    return (k.to(tl.float64) + 0.5) * 2.220446049250313e-16


@triton.jit
def index_from_words(c, d, high):
    """``floor((c:d / 2^64) high)`` exactly, for ``high < 2^31``."""
    h = high.to(tl.uint64)
    return ((c.to(tl.uint64) * h + ((d.to(tl.uint64) * h) >> 32)) >> 32).to(tl.int64)
