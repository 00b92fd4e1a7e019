"""Native D3PM reverse step (``csrc/native/d3pm.cpp``)."""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int

Seed = int | torch.Tensor


@torch.library.register_fake("fastdiff_native::d3pm_step")
def _(x0_logits, x_t, q_step, qbar_prev, fixed, seed, offset):
    return torch.empty_like(x_t, dtype=torch.int64, memory_format=torch.contiguous_format)


@register_native("d3pm_step")
def d3pm_step_native(
    x0_logits: torch.Tensor,
    x_t: torch.Tensor,
    q_step: torch.Tensor,
    qbar_prev: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """:func:`fastdiff.reference.d3pm.d3pm_step`: per row ``[V]`` the float64 log-weights
    ``safe_log Q_t[:, x_t] + safe_log(softmax(x0_logits) @ Qbar_{t-1})`` (matrices ``[V, V]``
    or ``[M, V, V]``, one per contiguous group of ``N / M`` rows), raced; fixed rows and rows
    of only ``-inf`` keep ``x_t``."""
    return ops.d3pm_step(x0_logits, x_t, q_step, qbar_prev, fixed, seed_int(seed), offset)
