"""The transforms of :mod:`fastdiff.random` in C++ (``csrc/native/random_ops.cpp``), with the
same signatures: every number is a pure function of ``(seed, offset, row, column)``.

Uniforms and integer indices equal the reference's bit for bit; exponentials (C library
``log`` / ``log1p``) and normals (polynomial ``log`` / ``sin`` / ``cos``, ``csrc/native/lanes.h``)
agree to 1-2 ulp of float64, the reference using torch's (SLEEF) functions. ``rows`` hold int64
indices in ``[0, 2^32)`` (the Philox counter word); seeds are Python ints or CPU int64 tensors.
"""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int


@torch.library.register_fake("fastdiff_native::philox_draw")
def _(seed, offset, rows, n_cols, kind):
    return rows.new_empty((rows.numel(), n_cols), dtype=torch.float64)


@torch.library.register_fake("fastdiff_native::group_exponential")
def _(seed, offset, rows, n_groups):
    return rows.new_empty((rows.numel(), n_groups), dtype=torch.float64)


@torch.library.register_fake("fastdiff_native::row_uniform_and_index")
def _(seed, offset, rows, high):
    return rows.new_empty(rows.shape, dtype=torch.float64), torch.empty_like(rows)


@register_native("uniform")
def uniform(seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """float64 ``U(0, 1) = (k + 1/2) 2^-52`` ``[len(rows), n_cols]``
    (:func:`fastdiff.random.uniform`)."""
    return ops.philox_draw(seed_int(seed), offset, rows, n_cols, "uniform")


def exponential(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """float64 ``Exp(1)`` with exact tails ``[len(rows), n_cols]``
    (:func:`fastdiff.random.exponential`)."""
    return ops.philox_draw(seed_int(seed), offset, rows, n_cols, "exponential")


@register_native("normal")
def normal(seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """float64 ``N(0, 1)`` ``[len(rows), n_cols]`` by Box-Muller: pair ``i`` gives
    ``R = sqrt(-2 log U)`` (``U`` from words r0, r1) and the angle ``(r2 + 1/2) 2 pi 2^-32``;
    column ``2i`` is ``R cos``, ``2i + 1`` is ``R sin`` (:func:`fastdiff.random.normal`)."""
    return ops.philox_draw(seed_int(seed), offset, rows, n_cols, "normal")


def group_exponential(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """float64 ``Exp(1)`` ``[len(rows), n_groups]`` of the race's group draws (counter
    ``(2^30 + g, row)``, words r0, r1; :func:`fastdiff.random.group_exponential`)."""
    return ops.group_exponential(seed_int(seed), offset, rows, n_groups)


def row_uniform_and_index(
    seed: int | torch.Tensor, offset: int, rows: torch.Tensor, high: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (counter ``(0, row)``): float64 ``U(0, 1)`` from words (r0, r1) and the int64
    ``floor((r2 2^32 + r3) high / 2^64)`` on ``[0, high)``, ``1 <= high < 2^31``; both shaped
    like ``rows`` (:func:`fastdiff.random.row_uniform_and_index`)."""
    return ops.row_uniform_and_index(seed_int(seed), offset, rows, high)
