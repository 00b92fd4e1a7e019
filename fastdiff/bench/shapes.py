"""The shapes and dtypes fastdiff is benchmarked at (one table for every benchmark).

A shape is ``N`` rows (tokens: batch x length flattened) by ``V`` columns (vocabulary, mask
included), plus ``H`` (hidden / embedding width) for the ops that have one. The mask token is
the last column in benchmarks because the SEDD-style baselines
(:mod:`fastdiff.bench.baselines`) require it; fastdiff itself accepts any column.

- ``CPU_SHAPES``: small enough for a laptop / 2-core CI machine; ``SMOKE_SHAPE`` (the smallest)
  is the shape that plain ``pytest`` (``--benchmark-disable``) runs.
- ``GPU_SHAPES``: realistic training / sampling sizes for the lent GPU (kernels.md).

Every benchmark case (:mod:`fastdiff.bench.cases`) draws its shapes from one
:class:`ShapeTable` (by the kind of its inputs), in one of four tiers: ``cpu-quick``
(``fastdiff bench --quick`` on a CPU: under a minute on two cores), ``cpu``, ``gpu-quick``
(``--quick`` on CUDA: the GPU shapes with the smallest ``N``) and ``gpu``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Shape:
    n: int  # rows (tokens)
    v: int  # vocabulary size, mask included (0 where the op has no vocabulary)
    note: str = ""
    h: int = 0  # hidden / embedding width (0 where the op has none)

    @property
    def id(self) -> str:
        parts = [f"N{self.n}"]
        if self.v:
            parts.append(f"V{self.v}")
        if self.h:
            parts.append(f"H{self.h}")
        return "x".join(parts)

    @property
    def mask_id(self) -> int:
        return self.v - 1

    @property
    def numel(self) -> int:
        return self.n * max(self.v, 1) * max(self.h, 1)

    def as_dict(self) -> dict[str, int | None]:
        """``{"n": N, "v": V or None, "h": H or None}`` (the JSON form of a shape)."""
        return {"n": self.n, "v": self.v or None, "h": self.h or None}

    def __str__(self) -> str:
        return "x".join(str(d) for d in (self.n, self.v, self.h) if d)


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

TIERS = ("cpu-quick", "cpu", "gpu-quick", "gpu")


@dataclass(frozen=True)
class ShapeTable:
    """The shapes of one kind of input, per tier; ``default_h`` fills ``H`` for a shape given
    as ``NxV`` on the command line (kinds without ``H`` have ``default_h = 0``)."""

    quick: tuple[Shape, ...]
    cpu: tuple[Shape, ...]
    gpu: tuple[Shape, ...]
    default_h: int = 0
    uses_v: bool = True

    def tier(self, name: str) -> tuple[Shape, ...]:
        """The shapes of tier ``name``: ``cpu-quick`` (``quick``), ``cpu``, ``gpu``, or
        ``gpu-quick`` (the ``gpu`` shapes with the smallest ``N``)."""
        if name not in TIERS:
            raise ValueError(f"unknown shape tier {name!r}; expected one of {TIERS}")
        if name == "cpu-quick":
            return self.quick
        if name == "gpu-quick":
            n = min(s.n for s in self.gpu)
            return tuple(s for s in self.gpu if s.n == n)
        return getattr(self, name)

    def smallest(self, tier: str) -> Shape:
        return min(self.tier(tier), key=lambda s: s.numel)

    def adapt(self, shape: Shape) -> Shape:
        """A user-given shape made fit for this kind: ``H`` filled in (or dropped), ``V``
        dropped where the kind has no vocabulary."""
        h = (shape.h or self.default_h) if self.default_h else 0
        return replace(shape, v=shape.v if self.uses_v else 0, h=h)


#: ``[N, V]`` scores / logits (losses, samplers, confidence unmasking).
SCORES = ShapeTable(
    quick=(Shape(256, 256), Shape(256, 1024), Shape(256, 4096)),
    cpu=CPU_SHAPES,
    gpu=GPU_SHAPES,
)

#: hidden states ``[N, H]`` and an output projection ``[V, H]`` (the fused linear losses).
LINEAR = ShapeTable(
    quick=tuple(Shape(128, v, h=128) for v in (256, 1024, 4096)),
    cpu=(Shape(1024, 8192, h=256), Shape(1024, 32768, h=256)),
    gpu=tuple(Shape(n, v, h=2048) for n in (4096, 16384) for v in (32768, 50258, 131072)),
    default_h=256,
)

#: tokens ``[N]`` and a dense ``[V, V]`` transition matrix (D3PM noising).
DENSE = ShapeTable(
    quick=(Shape(256, 128), Shape(256, 512), Shape(256, 2048)),
    cpu=(Shape(4096, 1024), Shape(4096, 4096)),
    gpu=tuple(Shape(n, v) for n in (16384, 65536) for v in (1024, 4096, 16384)),
)

#: Gaussian states ``[N, H]`` (DDPM / DDIM steps): no vocabulary, the sweep is over ``H``.
STATE = ShapeTable(
    quick=tuple(Shape(1024, 0, h=h) for h in (32, 128, 512)),
    cpu=(Shape(16384, 0, h=128), Shape(16384, 0, h=768)),
    gpu=tuple(Shape(n, 0, h=h) for n in (16384, 65536) for h in (128, 768, 1024, 4096)),
    default_h=768,
    uses_v=False,
)

#: token ids ``[N]`` gathered from an embedding table ``[V, H]`` and noised (Diffusion-LM
#: ``q_sample``): the sweep is over ``H``, ``V`` is fixed.
GATHER = ShapeTable(
    quick=tuple(Shape(1024, 512, h=h) for h in (32, 128, 512)),
    cpu=(Shape(16384, 8192, h=128), Shape(16384, 8192, h=768)),
    gpu=tuple(Shape(n, 50258, h=h) for n in (16384, 65536) for h in (128, 768, 1024, 4096)),
    default_h=768,
)

#: states ``[N, H]`` rounded to an embedding table ``[V, H]`` (Diffusion-LM clamping).
EMBED = ShapeTable(
    quick=tuple(Shape(256, v, h=64) for v in (256, 1024, 4096)),
    cpu=(Shape(4096, 8192, h=128), Shape(4096, 32768, h=128)),
    gpu=tuple(Shape(16384, v, h=768) for v in (8192, 32768, 50258, 131072)),
    default_h=128,
)

_SPEC = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")


def parse_shape(spec: str) -> Shape:
    """``"NxV"`` or ``"NxVxH"`` (e.g. ``4096x50258``, ``4096x50258x1024``) as a :class:`Shape`."""
    match = _SPEC.match(spec.strip().lower())
    if not match:
        raise ValueError(
            f"shape {spec!r}: expected NxV or NxVxH, e.g. 4096x50258 or 4096x50258x768"
        )
    n, v, h = (int(g) if g else 0 for g in match.groups())
    if n < 1 or v < 2:
        raise ValueError(f"shape {spec!r}: need N >= 1 and V >= 2")
    return Shape(n, v, h=h)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


DTYPES: dict[str, torch.dtype] = {
    dtype_name(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
}
