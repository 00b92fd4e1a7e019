"""Native categorical sampling (``csrc/native/sampling.cpp``)."""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int


@torch.library.register_fake("fastdiff_native::sample_categorical")
def _(weights, is_log, seed, offset, temperature, top_k, top_p, min_p, return_prob):
    n = weights.shape[0]
    index = weights.new_empty((n,), dtype=torch.int64)
    return index, weights.new_empty((n if return_prob else 0,), dtype=torch.float32)


@register_native("sample_categorical")
def sample_categorical_native(
    weights: torch.Tensor,
    is_log: bool,
    seed: int | torch.Tensor,
    offset: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    return_prob: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fastdiff.reference.sampling.sample_categorical` in one fused pass per row."""
    index, prob = ops.sample_categorical(
        weights,
        is_log,
        seed_int(seed),
        offset,
        float(temperature),
        0 if top_k is None else int(top_k),
        1.0 if top_p is None else float(top_p),
        0.0 if min_p is None else float(min_p),
        return_prob,
    )
    return index, prob if return_prob else None
