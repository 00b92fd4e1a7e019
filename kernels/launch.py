"""Launch parameters shared by the kernels."""

from __future__ import annotations

import triton

MAX_BLOCK_V = 4096


def block_size(vocab: int, max_block: int = MAX_BLOCK_V) -> int:
    """Columns per block for a row of ``vocab`` entries: the next power of two, capped."""
    return min(triton.next_power_of_2(max(vocab, 1)), max_block)


def num_warps(block: int) -> int:
    """Warps per program for a streaming block of ``block`` elements."""
    return 8 if block >= 4096 else 4 if block >= 1024 else 2
