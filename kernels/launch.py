"""Launch parameters shared by the kernels."""

from __future__ import annotations

import torch
import triton

# 2048 columns over 8 warps: 8 values per thread (one 128-bit load of bf16, two of fp32). At
# 4096 the race kernels held 16 per thread and spilled or ran at 12.5% occupancy on sm_90.
MAX_BLOCK_V = 2048


MIN_BLOCK_V = 16


def block_size(vocab: int, max_block: int = MAX_BLOCK_V) -> int:
    """Columns per block for a row of ``vocab`` entries: the next power of two, at least
    ``MIN_BLOCK_V`` (column pairs share a Philox call), capped at ``max_block``."""
    return min(max(triton.next_power_of_2(max(vocab, 1)), MIN_BLOCK_V), max_block)


# Elements per program of the row-tiled kernels. Tests that push millions of rows through the
# interpreter (which runs programs one after another) raise it to run fewer, larger programs.
TILE_ELEMENTS = MAX_BLOCK_V


def rows_per_program(block_v: int, n_rows: int) -> int:
    """Rows per program for kernels that tile ``[rows, block_v]``: enough rows to fill a tile of
    ``TILE_ELEMENTS`` when the vocabulary is small (one row per program for large ones), never
    more than the next power of two of ``n_rows``."""
    return max(1, min(TILE_ELEMENTS // block_v, triton.next_power_of_2(max(n_rows, 1))))


def row_tiles(n_rows: int, vocab: int, block_v: int = 0) -> tuple[tuple[int], dict[str, int]]:
    """Grid and launch parameters (``BLOCK_N``, ``BLOCK_V``, ``num_warps``) of a row-tiled
    kernel over ``[n_rows, vocab]``; ``block_v = 0`` picks :func:`block_size`."""
    block = block_v or block_size(vocab)
    block_n = rows_per_program(block, n_rows)
    grid = (triton.cdiv(n_rows, block_n),)
    return grid, {"BLOCK_N": block_n, "BLOCK_V": block, "num_warps": num_warps(block * block_n)}


def num_warps(block: int) -> int:
    """Warps per program for a streaming block of ``block`` elements: at most 8 values per
    thread from 2048 elements up."""
    return 8 if block >= 2048 else 4 if block >= 1024 else 2


# Tests set this to fill every kernel output with NaN (or -1 for integers) before the launch,
# so that an element a kernel forgets to write fails the comparison with the reference.
POISON_OUTPUTS = False


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer for a kernel to fill (poisoned when ``POISON_OUTPUTS`` is set)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out
