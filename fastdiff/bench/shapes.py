"""The shapes and dtypes fastdiff is benchmarked at (one table for every benchmark file).

A shape is ``N`` rows (tokens: batch x length flattened) by ``V`` columns (vocabulary, mask
included). The mask token is the last column in benchmarks because the SEDD-style baselines
(:mod:`benchmarks.baselines`) require it; fastdiff itself accepts any column.

- ``CPU_SHAPES``: small enough for a laptop / 2-core CI machine; ``CPU_SHAPES[0]`` is the
  smoke shape that plain ``pytest`` (``--benchmark-disable``) runs.
- ``GPU_SHAPES``: realistic training / sampling sizes for the lent GPU (kernels.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    n: int  # rows (tokens)
    v: int  # vocabulary size, mask included
    note: str = ""

    @property
    def id(self) -> str:
        return f"N{self.n}xV{self.v}"

    @property
    def mask_id(self) -> int:
        return self.v - 1

    @property
    def numel(self) -> int:
        return self.n * self.v

    def __str__(self) -> str:
        return f"{self.n}x{self.v}"


CPU_SHAPES: tuple[Shape, ...] = (
    Shape(1024, 1024, "smoke / tiny vocabulary"),
    Shape(4096, 1024),
    Shape(1024, 8192),
    Shape(4096, 8192),
    Shape(256, 50258, "GPT-2 vocabulary + mask"),
)

GPU_SHAPES: tuple[Shape, ...] = tuple(
    Shape(n, v, note)
    for n in (4096, 16384)
    for v, note in ((32768, "LLaMA-2 / Mistral"), (50258, "GPT-2 + mask"), (131072, "LLaMA-3"))
)

CPU_DTYPES: tuple[torch.dtype, ...] = (torch.float32,)
GPU_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)

SMOKE_SHAPE: Shape = min(CPU_SHAPES, key=lambda s: s.numel)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
