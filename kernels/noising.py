"""Noising kernels (docs/ops.md#noising): absorbing / uniform corruption and dense-matrix rows.

Randomness is keyed by (seed, offset, row, column) exactly as in
:mod:`fastdiff.reference.noising`, so for the same seed the kernels and the reference give the
same tokens, whatever the block sizes: the per-row decision ``u < 1 - e^-sigma`` is made in
fp64 on the same 52-bit uniform and the uniform token uses the same integer formula (bit-exact);
the dense-matrix race (the grouped race of :mod:`fastdiff.random` for rows longer than 256
columns) differs only at keys that tie within fp32 rounding. Fixed rows are never
changed. Both are custom ops (``fastdiff::corrupt``, ``fastdiff::corrupt_dense``) with fake
implementations, so they trace under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.launch import new_output, num_warps
from fastdiff.kernels.philox_noise import (
    column_words,
    exponential_from_words,
    index_from_words,
    uniform52_from_words,
)
from fastdiff.kernels.race import (
    block_columns,
    group_accumulate,
    group_init,
    group_keys,
    group_lse,
    group_race,
    grouped,
    race_block,
    race_groups,
    reload_seed,
    span_argmax,
    span_columns,
    span_noise,
    strided_groups,
)

_BLOCK_ROWS = 1024
_MASK32 = 0xFFFFFFFF


def seed_tensor(seed: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The Philox key as a 1-element int64 tensor on ``device`` (kernels load it)."""
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    value = int(seed) & ((1 << 64) - 1)
    if value >= 1 << 63:
        value -= 1 << 64
    return torch.tensor([value], dtype=torch.int64, device=device)


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "vocab", "mask_id"])
def _corrupt_kernel(
    x0_ptr,
    p_ptr,
    fixed_ptr,
    out_ptr,
    seed_ptr,
    n,
    offset_lo,
    offset_hi,
    vocab,
    mask_id,
    ABSORB: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = rows < n
    seed = tl.load(seed_ptr)
    zero = (rows * 0).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(
        seed,
        zero,
        rows.to(tl.uint32),
        zero + offset_lo.to(tl.uint32),
        zero + offset_hi.to(tl.uint32),
    )
    u = uniform52_from_words(r0, r1)
    p = tl.load(p_ptr + rows, mask=inside, other=0.0)
    move = u < p
    if HAS_FIXED:
        move = move & (tl.load(fixed_ptr + rows, mask=inside, other=1) == 0)
    x0 = tl.load(x0_ptr + rows, mask=inside, other=0)
    if ABSORB:
        new = tl.full((BLOCK,), 0, tl.int64) + mask_id
    else:
        new = index_from_words(r2, r3, vocab)
    tl.store(out_ptr + rows, tl.where(move, new, x0), mask=inside)


@torch.library.custom_op("fastdiff::corrupt", mutates_args=())
def corrupt_op(
    x0: torch.Tensor,
    move_chance: torch.Tensor,
    fixed: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: int,
    absorb: bool,
    vocab_size: int,
    mask_id: int,
    block_rows: int,
) -> torch.Tensor:
    """``x_t [N]`` from ``x0 [N]``, fp64 ``move_chance = 1 - e^-sigma`` ``[N]``, the key in a
    1-element int64 tensor ``seed``; ``block_rows`` rows per program."""
    n = x0.shape[0]
    out = new_output(x0.shape, x0.dtype, x0.device)
    if n:
        _corrupt_kernel[(triton.cdiv(n, block_rows),)](
            x0,
            move_chance,
            fixed.view(torch.uint8) if fixed is not None else x0,
            out,
            seed,
            n,
            offset & _MASK32,
            (offset >> 32) & _MASK32,
            vocab_size,
            mask_id,
            ABSORB=absorb,
            HAS_FIXED=fixed is not None,
            BLOCK=block_rows,
        )
    return out


@corrupt_op.register_fake
def _(x0, move_chance, fixed, seed, offset, absorb, vocab_size, mask_id, block_rows):
    return torch.empty_like(x0)


@register_kernel("corrupt")
def corrupt(
    x0: torch.Tensor,
    sigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    graph: str,
    vocab_size: int,
    mask_id: int,
    *,
    block_rows: int = _BLOCK_ROWS,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.noising.corrupt` (``block_rows`` rows a program)."""
    return corrupt_op(
        x0.contiguous(),
        -torch.expm1(-sigma.to(torch.float64)).contiguous(),
        None if fixed is None else fixed.contiguous(),
        seed_tensor(seed, x0.device),
        offset,
        graph == "absorb",
        vocab_size,
        mask_id,
        block_rows,
    )


@triton.jit(do_not_specialize=["offset_lo", "offset_hi"])
def _dense_race_kernel(
    q_ptr,
    x0_ptr,
    mat_ptr,
    fixed_ptr,
    out_ptr,
    seed_ptr,
    V,
    stride_m,
    stride_r,
    offset_lo,
    offset_hi,
    HAS_MATS: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    GROUPED: tl.constexpr,
    NG: tl.constexpr,
    STRIDED: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x0 = tl.load(x0_ptr + row)
    keep_x0 = False
    if HAS_FIXED:
        keep_x0 = tl.load(fixed_ptr + row) != 0
    if keep_x0:
        tl.store(out_ptr + row, x0)
    else:
        seed = tl.load(seed_ptr)
        # an id out of range (value checks off) reads nothing: every weight 0, token 0
        x0_ok = (x0 >= 0) & (x0 < V)
        q_row = q_ptr + tl.where(x0_ok, x0, 0) * stride_r
        if HAS_MATS:
            q_row += tl.load(mat_ptr + row) * stride_m
        if GROUPED:  # the grouped race on a one-row tile: group keys, then g*'s columns
            rows = tl.zeros((1,), dtype=tl.int64) + row
            v_ok = tl.where(x0_ok, V, 0)  # columns to read: none for an out-of-range id
            best1 = tl.full((1,), float("-inf"), tl.float32)
            best_g = tl.zeros((1,), dtype=tl.int64)
            if NG > 0:  # per-group max / sum in the loop, the group keys raced after it
                gmax, gsum = group_init(1, BLOCK_V, NG)
            for start in range(0, V, BLOCK_V):
                cols = block_columns(start, BLOCK_V, STRIDED and NG > 0)[None, :]
                inside = cols < v_ok
                w = tl.load(q_row + cols, mask=inside, other=0.0).to(tl.float32)
                lw = tl.where(inside, tl.log(w), float("-inf"))
                if NG > 0:
                    gmax, gsum = group_accumulate(gmax, gsum, lw, start, 1, BLOCK_V, STRIDED)
                else:
                    lse_g = group_lse(lw, 1, BLOCK_V)
                    seed = reload_seed(seed_ptr)
                    best1, best_g = group_race(
                        best1, best_g, lse_g, seed, offset_lo, offset_hi, rows, start, BLOCK_V
                    )
            if NG > 0:
                seed = reload_seed(seed_ptr)
                best1, best_g, _ = group_keys(gmax, gsum, seed, offset_lo, offset_hi, rows, 1)
            cols = span_columns(best_g)
            inside = cols < v_ok
            w = tl.load(q_row + cols, mask=inside, other=0.0).to(tl.float32)
            seed = reload_seed(seed_ptr)
            noise = span_noise(seed, offset_lo, offset_hi, rows, cols)
            key = tl.where(inside, tl.log(w) + noise, float("-inf"))
            _, idx = span_argmax(key, cols)
            tl.store(out_ptr + rows, idx)
        else:
            best = tl.full((), float("-inf"), tl.float32)
            best_idx = tl.full((), 0, tl.int64)
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                a, b = column_words(seed, offset_lo, offset_hi, row, start, BLOCK_V)
                w = tl.load(q_row + cols, mask=cols < V, other=0.0).to(tl.float32)
                w = tl.where(x0_ok, w, 0.0)
                key = tl.log(w) - tl.log(exponential_from_words(a, b))
                key = tl.where(cols < V, key, float("-inf"))
                blk_best = tl.max(key, axis=0)
                blk_idx = tl.argmax(key, axis=0).to(tl.int64) + start
                take = blk_best > best
                best_idx = tl.where(take, blk_idx, best_idx)
                best = tl.where(take, blk_best, best)
            tl.store(out_ptr + row, best_idx)


@torch.library.custom_op("fastdiff::corrupt_dense", mutates_args=())
def corrupt_dense_op(
    x0: torch.Tensor,
    transition: torch.Tensor,
    matrix_index: Optional[torch.Tensor],
    fixed: Optional[torch.Tensor],
    seed: torch.Tensor,
    offset: int,
    block_v: int,
) -> torch.Tensor:
    """``x_t [N]`` drawn from rows ``transition[matrix_index, x0]`` (``[V, V]`` or
    ``[M, V, V]``) by the exponential race; one program per row."""
    n, vocab = x0.shape[0], transition.shape[-1]
    out = new_output(x0.shape, x0.dtype, x0.device)
    if n:
        block = race_block(vocab, block_v)
        _dense_race_kernel[(n,)](
            transition,
            x0,
            matrix_index if matrix_index is not None else x0,
            fixed.view(torch.uint8) if fixed is not None else x0,
            out,
            seed,
            vocab,
            transition.stride(0) if transition.dim() == 3 else 0,
            transition.stride(-2),
            offset & _MASK32,
            (offset >> 32) & _MASK32,
            HAS_MATS=matrix_index is not None,
            HAS_FIXED=fixed is not None,
            GROUPED=grouped(vocab),
            NG=race_groups(vocab, block),
            STRIDED=strided_groups(transition, block, num_warps(block)),
            BLOCK_V=block,
            num_warps=num_warps(block),
        )
    return out


@corrupt_dense_op.register_fake
def _(x0, transition, matrix_index, fixed, seed, offset, block_v):
    return torch.empty_like(x0)


@register_kernel("corrupt_dense")
def corrupt_dense(
    x0: torch.Tensor,
    transition: torch.Tensor,
    matrix_index: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    *,
    block_v: int = 0,
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.noising.corrupt_dense` (``block_v`` columns per
    step; 0 picks it)."""
    return corrupt_dense_op(
        x0.contiguous(),
        transition.contiguous(),
        None if matrix_index is None else matrix_index.contiguous(),
        None if fixed is None else fixed.contiguous(),
        seed_tensor(seed, x0.device),
        offset,
        block_v,
    )
