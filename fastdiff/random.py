"""Counter-based randomness shared by every backend.

Every random number fastdiff draws is a pure function of ``(seed, offset, row, column)``:
Philox4x32-10 (Salmon et al. 2011, the generator of ``tl.philox`` and of CUDA's curand) with
key ``(seed_lo, seed_hi)`` and counter ``(column // 2, row, offset_lo, offset_hi)``. One
Philox call yields four 32-bit words: columns ``2i`` and ``2i + 1`` take words ``(r0, r1)``
and ``(r2, r3)``. A Triton kernel computes the very same words with ``tl.philox``, so the
reference backend and the kernels draw identical numbers whatever their block sizes.

Transforms from the 64 bits of a column:

- :func:`uniform` ``U`` in ``(0, 1)``: ``(k + 1/2) 2^-52`` from 52 bits, never 0 or 1.
- :func:`exponential` ``E ~ Exp(1)``: one bit picks the half of the unit interval and 63 bits
  give ``W`` in ``(0, 1/2)`` with full relative precision, then ``E = -log(W)`` (upper half of
  ``E``) or ``E = -log1p(-W)`` (lower half). Both tails are exact to float64 rounding: ``E``
  reaches ``2^-65`` and ``45`` (``65 log 2``), where float32 uniforms stop at ``6e-8`` and
  ``16.6``. This is what makes Gumbel-max sampling (``argmax w / E``) match float64 sampling
  for rare tokens.
- :func:`group_exponential`: the ``Exp(1)`` of the group draw of the grouped race below, from
  words ``(r0, r1)`` of counter ``(2^30 + g, row, offset_lo, offset_hi)`` for group ``g``.
- :func:`normal`: Box-Muller with a 52-bit radius uniform and a 32-bit angle (``z`` for even
  columns is ``R cos``, odd columns ``R sin`` of the same pair).

The grouped exponential race (every categorical draw of fastdiff). Columns form groups of
``RACE_GROUP = G = 256``: group ``g`` of a row holds columns ``[gG, (g + 1)G) ∩ [0, V)``.

- ``V <= G``: the plain race ``argmax_j (log w_j - log E_j)`` over the columns, with ``E_j``
  the column exponentials (counter ``(j // 2, row, ...)``).
- ``V > G``: group keys ``K_g = log W_g - log E'_g`` with ``W_g = sum_{j in g} w_j`` (``-inf``
  when the group has no positive weight) and ``E'_g`` from :func:`group_exponential`; the group
  ``g* = argmax_g K_g``, then the column ``j* = argmax_{j in g*} (log w_j - log E_j)`` with the
  usual column exponentials. Ties go to the lowest group and the lowest column.

This is exactly ``Cat(w)``: the minimum of independent exponentials makes ``P(g*) = W_g / W``
and, given ``g*``, ``j*`` an independent draw from ``w_j / W_g``; both stages keep the exact
tails. Column counters use ``c0 = j // 2 < 2^30`` (``V < 2^31`` is required), group counters
``c0 = 2^30 + g``, so the two never share a Philox call. A kernel then reads the row once for
the group totals and ``G`` columns of ``g*`` instead of generating noise for all ``V``.

Seeds: ops take ``seed`` (a Python int or an int64 tensor, possibly on the GPU) or a
``torch.Generator``; :func:`resolve_seed` draws a 63-bit seed from the generator with
``torch.randint`` (so the generator advances exactly as torch's own ops advance it, and CUDA
graph capture stays valid). Ops consume consecutive ``offset`` values for independent streams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Philox4x32 constants (Random123).
_M0 = 0xD2511F53
_M1 = 0xCD9E8D57
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF
PHILOX_ROUNDS = 10

_TWO_POW_M32 = 2.0**-32
_TWO_POW_M64 = 2.0**-64
_TWO_POW_M52 = 2.0**-52

# Columns per group of the grouped exponential race (module docstring); fixed, independent of
# any kernel's block size.
RACE_GROUP = 256
# Group g draws from counter word c0 = GROUP_COUNTER_BASE + g; column counters stay below it.
GROUP_COUNTER_BASE = 1 << 30
# The largest vocabulary the race accepts: columns 2^31 - 1 and below keep j // 2 < 2^30.
MAX_RACE_COLUMNS = (1 << 31) - 1

# Rows processed per chunk: keeps the integer temporaries of Philox in cache on the CPU.
_CHUNK_ELEMENTS = 1 << 16


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a holds values in [0, 2^32); the int64 product wraps modulo 2^64, which keeps all 64 bits.
    p = a * m
    return (p >> 32) & _MASK32, p & _MASK32


def philox4x32(
    seed: int | torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ``rounds`` rounds on int64 tensors holding unsigned 32-bit values.

    ``seed`` (int or 0-d int64 tensor, any 64-bit pattern) is the key ``(seed & 0xffffffff,
    seed >> 32)``; ``c0..c3`` broadcast together. Returns four int64 tensors in ``[0, 2^32)``.
    """
    if isinstance(seed, torch.Tensor):
        k0 = seed & _MASK32
        k1 = (seed >> 32) & _MASK32
    else:
        seed = int(seed) & ((1 << 64) - 1)
        k0, k1 = seed & _MASK32, seed >> 32
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def resolve_seed(
    seed: int | torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> int | torch.Tensor:
    """The Philox key of one op call.

    ``seed`` wins when given (int, or a 0-d int64 tensor that may live on the GPU). Otherwise a
    seed is drawn from ``generator`` (or the default generator of ``device``) with
    ``torch.randint``, which advances it as any torch random op would.
    """
    if seed is not None:
        if isinstance(seed, torch.Tensor):
            if seed.numel() != 1 or seed.dtype not in (torch.int64, torch.int32):
                raise ValueError("seed tensor must hold a single int32/int64 value")
            return seed.reshape(()).to(torch.int64)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
        return seed
    if generator is not None:
        device = generator.device
    return torch.randint(0, 2**63 - 1, (), generator=generator, device=device)


def _words(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 32-bit words of every (row, column): ``[len(rows), n_cols]`` each.

    One Philox call per row and column pair ``(2i, 2i + 1)``; ``rows`` is a column vector.
    """
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    pairs = torch.arange((n_cols + 1) // 2, dtype=torch.int64, device=rows.device)[None, :]
    off_lo, off_hi = offset & _MASK32, (offset >> 32) & _MASK32
    r0, r1, r2, r3 = philox4x32(seed, pairs + zero, rows + zero, zero + off_lo, zero + off_hi)
    # interleave: column 2i <- (r0, r1), column 2i + 1 <- (r2, r3)
    a = torch.stack((r0, r2), dim=-1).flatten(-2)[..., :n_cols]
    b = torch.stack((r1, r3), dim=-1).flatten(-2)[..., :n_cols]
    return a, b


def _uniform_from_words(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # (k + 0.5) 2^-52 with k the top 52 bits of a:b: exact in float64, so never 0 or 1.
    k = (a << 20) | (b >> 12)
    return (k.to(torch.float64) + 0.5) * _TWO_POW_M52


def _exponential_from_words(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Bit 31 of a picks the half; the other 63 bits give W = (k + 0.5) 2^-64 in (0, 1/2).
    k = ((a & 0x7FFFFFFF) << 32) | b
    w = (k.to(torch.float64) + 0.5) * _TWO_POW_M64
    upper = (a >> 31).bool()
    return torch.where(upper, -torch.log(w), -torch.log1p(-w))


def _draw(
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int | torch.Tensor,
    offset: int,
    rows: torch.Tensor,
    n_cols: int,
) -> torch.Tensor:
    """``transform(words)`` for every (row, column), in row chunks that stay in cache."""
    rows = rows.reshape(-1)
    out = torch.empty((rows.numel(), n_cols), dtype=torch.float64, device=rows.device)
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step, None]
        out[start : start + step] = transform(*_words(seed, offset, chunk, n_cols))
    return out


def uniform(seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """float64 ``U(0, 1)`` of shape ``[len(rows), n_cols]`` for int64 row indices ``rows``."""
    return _draw(_uniform_from_words, seed, offset, rows, n_cols)


def exponential(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """float64 ``Exp(1)`` of shape ``[len(rows), n_cols]`` with exact tails (module docstring).

    Row ``i`` of the result depends only on ``rows[i]``: drawing a subset of rows gives the
    same numbers as drawing all of them and indexing.
    """
    return _draw(_exponential_from_words, seed, offset, rows, n_cols)


def exponential_at(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """float64 ``Exp(1)`` of the columns ``cols [n, k]`` (int64) of ``rows [n]``: the same
    numbers as ``exponential(seed, offset, rows, V)[i, cols[i, c]]`` without drawing the rest."""
    rows = rows.reshape(-1, 1)
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    off_lo, off_hi = offset & _MASK32, (offset >> 32) & _MASK32
    r0, r1, r2, r3 = philox4x32(seed, cols // 2 + zero, rows + zero, zero + off_lo, zero + off_hi)
    odd = (cols % 2) == 1
    return _exponential_from_words(torch.where(odd, r2, r0), torch.where(odd, r3, r1))


def exponential_span(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, starts: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """float64 ``Exp(1)`` ``[n, n_cols]`` of the columns ``starts[i] + [0, n_cols)`` of
    ``rows[i]`` (``starts`` even): :func:`exponential_at` with one Philox call per column pair."""
    rows = rows.reshape(-1, 1)
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    pairs = starts.reshape(-1, 1) // 2 + torch.arange((n_cols + 1) // 2, device=rows.device)
    off_lo, off_hi = offset & _MASK32, (offset >> 32) & _MASK32
    r0, r1, r2, r3 = philox4x32(seed, pairs + zero, rows + zero, zero + off_lo, zero + off_hi)
    a = torch.stack((r0, r2), dim=-1).flatten(-2)[..., :n_cols]
    b = torch.stack((r1, r3), dim=-1).flatten(-2)[..., :n_cols]
    return _exponential_from_words(a, b)


def group_exponential(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """float64 ``Exp(1)`` ``[len(rows), n_groups]`` of the group draw of the grouped race.

    Group ``g`` of row ``r`` takes words ``(r0, r1)`` of Philox counter ``(2^30 + g, r,
    offset_lo, offset_hi)`` through the exponential transform of the columns (exact tails).
    """
    rows = rows.reshape(-1, 1)
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    groups = GROUP_COUNTER_BASE + torch.arange(n_groups, dtype=torch.int64, device=rows.device)
    off_lo, off_hi = offset & _MASK32, (offset >> 32) & _MASK32
    r0, r1, _, _ = philox4x32(
        seed, groups[None, :] + zero, rows + zero, zero + off_lo, zero + off_hi
    )
    return _exponential_from_words(r0, r1)


def normal(seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """float64 ``N(0, 1)`` of shape ``[len(rows), n_cols]``.

    Box-Muller per column pair: the Philox call of pair ``i`` gives a 52-bit uniform ``U``
    (words r0, r1) and a 32-bit angle (word r2); column ``2i`` is ``sqrt(-2 log U) cos``,
    column ``2i + 1`` the ``sin`` of the same pair.
    """
    rows = rows.reshape(-1)
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    out = torch.empty((rows.numel(), n_cols), dtype=torch.float64, device=rows.device)
    pairs = torch.arange((n_cols + 1) // 2, dtype=torch.int64, device=rows.device)[None, :]
    off_lo, off_hi = offset & _MASK32, (offset >> 32) & _MASK32
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step, None]
        r0, r1, r2, _ = philox4x32(seed, pairs + zero, chunk + zero, zero + off_lo, zero + off_hi)
        radius = torch.sqrt(-2.0 * torch.log(_uniform_from_words(r0, r1)))
        angle = (r2.to(torch.float64) + 0.5) * (2.0 * torch.pi * _TWO_POW_M32)
        z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
        out[start : start + step] = z.flatten(-2)[..., :n_cols]
    return out


def row_uniform_and_index(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, high: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row draws for noising: a float64 ``U(0, 1)`` and an integer uniform on ``[0, high)``.

    Both come from one Philox call per row (counter column 0): the uniform from words
    ``(r0, r1)``, the integer as ``floor(((r2 r3) / 2^64) high)`` computed exactly in integers
    (bias below ``high / 2^64``).
    """
    zero = torch.zeros((), dtype=torch.int64, device=rows.device)
    r0, r1, r2, r3 = philox4x32(
        seed, zero, rows, zero + (offset & _MASK32), zero + ((offset >> 32) & _MASK32)
    )
    u = _uniform_from_words(r0, r1)
    # floor((r2 * 2^32 + r3) * high / 2^64) = (r2 * high + ((r3 * high) >> 32)) >> 32
    index = (r2 * high + ((r3 * high) >> 32)) >> 32
    return u, index
