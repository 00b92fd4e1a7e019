"""Gaussian noise inside kernels: the numbers of :func:`fastdiff.random.normal`, to fp32 rounding.

The reference draws ``N(0, 1)`` by Box-Muller per column pair ``i`` of a row: Philox words
``(r0, r1)`` (counter ``(i, row, offset_lo, offset_hi)``) give the 52-bit uniform
``U = (k + 1/2) 2^-52``, word ``r2`` the angle ``theta = (r2 + 1/2) 2 pi 2^-32``, and columns
``2i`` / ``2i + 1`` are ``sqrt(-2 log U) cos theta`` / ``sqrt(-2 log U) sin theta``, in float64.

Here the same words go through fp32 arithmetic arranged so that every step keeps fp32 *relative*
precision (a plain fp32 transcription loses it where ``U`` is close to 1 or ``cos`` / ``sin`` is
close to 0):

- ``-log U``: the half of the unit interval is bit 31 of ``r0``; ``W = min(U, 1 - U)`` is built
  exactly from the bits (``1 - U`` is the bitwise complement of ``k``), then ``-log W`` or
  ``-log1p(-W)``, as :func:`fastdiff.kernels.philox_noise.exponential_from_words` does;
- the angle: the top 3 bits of ``r2`` are the octant; the remaining 29 bits (complemented in odd
  octants) give an angle ``t`` in ``(0, pi/4)`` exactly, so ``theta = q pi/2 +- t`` and
  ``cos theta``, ``sin theta`` are ``+-cos t`` / ``+-sin t``, evaluated by Taylor polynomials
  (error below 3e-9 on ``[0, pi/4]``, the same on every backend and in the interpreter).
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastdiff.kernels.philox_noise import log1p_neg, tile_pair_words

# Module-level numbers read inside @triton.jit functions must be constexpr: a plain float is a
# compile error on every GPU target ("Cannot access global variable"), though the interpreter
# accepts it.
_TWO_PI_2M32 = tl.constexpr(1.4629180792671596e-09)  # 2 pi 2^-32
# The complement of a uint32 word is ``x ^ 0xFFFFFFFF`` (a uint32 constant), not ``~x``: the
# interpreter of triton 3.8 builds ``~`` from an all-ones *signed* -1, which numpy 2 refuses to
# cast to uint32 ("Python integer -1 out of bounds for uint32"); the compiled code is the same.
_ALL_ONES_32 = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _sin_cos(t):
    """``(sin t, cos t)`` for ``0 <= t <= pi/4`` by Taylor polynomials (degree 9 and 10)."""
    t2 = t * t
    s = 2.755731922398589e-06 * t2 - 1.984126984126984e-04  # 1/9!, -1/7!
    s = s * t2 + 8.333333333333333e-03  # 1/5!
    s = s * t2 - 1.6666666666666666e-01  # -1/3!
    c = -2.755731922398589e-07 * t2 + 2.48015873015873e-05  # -1/10!, 1/8!
    c = c * t2 - 1.388888888888889e-03  # -1/6!
    c = c * t2 + 4.1666666666666664e-02  # 1/4!
    c = c * t2 - 0.5
    return t + t * t2 * s, 1.0 + t2 * c


@triton.jit
def normal_pair(r0, r1, r2):
    """The two fp32 normals ``(R cos theta, R sin theta)`` of one column pair (module
    docstring) from its Philox words ``r0, r1, r2`` (uint32, any shape)."""
    upper = (r0 >> 31) != 0  # U >= 1/2: W = 1 - U is the complement of the 52 bits
    a = tl.where(upper, r0 ^ _ALL_ONES_32, r0) & 0x7FFFFFFF
    b = tl.where(upper, r1 ^ _ALL_ONES_32, r1) >> 12
    w = a.to(tl.float32) * 2.3283064365386963e-10 + (b.to(tl.float32) + 0.5) * 2.220446049250313e-16
    minus_log_u = tl.where(upper, -log1p_neg(w), -tl.log(w))
    radius = tl.sqrt_rn(2.0 * minus_log_u)
    octant = r2 >> 29
    odd = (octant & 1) != 0
    t = ((tl.where(odd, r2 ^ _ALL_ONES_32, r2) & 0x1FFFFFFF).to(tl.float32) + 0.5) * _TWO_PI_2M32
    s, c = _sin_cos(t)
    s = tl.where(odd, -s, s)  # theta = q pi/2 + u with u = +-t
    q = ((octant + odd.to(tl.uint32)) >> 1) & 3
    cos_theta = tl.where(q == 0, c, tl.where(q == 1, -s, tl.where(q == 2, -c, s)))
    sin_theta = tl.where(q == 0, s, tl.where(q == 1, c, tl.where(q == 2, -s, -c)))
    return radius * cos_theta, radius * sin_theta


@triton.jit
def normal_tile(seed, offset_lo, offset_hi, rows, start, BLOCK_H: tl.constexpr):
    """fp32 ``N(0, 1)`` ``[R, BLOCK_H]`` for columns ``start .. start + BLOCK_H`` of ``rows``
    (int64 ``[R]``), equal to :func:`fastdiff.random.normal` to fp32 rounding. ``start`` must
    be even and ``BLOCK_H`` a power of two >= 2."""
    r0, r1, r2, _ = tile_pair_words(seed, offset_lo, offset_hi, rows, start, BLOCK_H)
    z_even, z_odd = normal_pair(r0, r1, r2)
    return tl.interleave(z_even, z_odd)
