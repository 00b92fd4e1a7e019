"""Shared helpers of the native wrappers: the op namespace and argument conversion."""

from __future__ import annotations

import torch

from fastdiff import _extension

_extension.load()  # registers torch.ops.fastdiff_native
ops = torch.ops.fastdiff_native


def seed_int(seed: int | torch.Tensor) -> int:
    """The Philox key as a signed 64-bit int (a 0-d tensor is read once; CPU tensors only)."""
    value = int(seed.item()) if isinstance(seed, torch.Tensor) else int(seed)
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)
