"""Native forward noising of tokens (``csrc/native/noising.cpp``): absorbing / uniform
(:func:`fastdiff.reference.noising.corrupt`) and dense D3PM transitions
(:func:`fastdiff.reference.noising.corrupt_dense`), same Philox stream as the reference."""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int


@torch.library.register_fake("fastdiff_native::corrupt")
def _(x0, sigma, fixed, seed, offset, absorb, vocab, mask_id):
    return torch.empty_like(x0)


@torch.library.register_fake("fastdiff_native::corrupt_dense")
def _(x0, transition, matrix_index, fixed, seed, offset):
    return torch.empty_like(x0)


@register_native("corrupt")
def corrupt_native(
    x0: torch.Tensor,
    sigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
    graph: str,
    vocab_size: int,
    mask_id: int,
) -> torch.Tensor:
    """``x0 [N]`` int64, float64 ``sigma [N]`` -> ``x_t [N]``: row ``i`` moves when its
    ``U_i < 1 - e^-sigma_i`` (and it is not fixed), to ``mask_id`` (``graph="absorb"``) or to
    its integer uniform ``K_i`` on ``[0, V)`` (``"uniform"``); one Philox call per row."""
    return ops.corrupt(
        x0, sigma, fixed, seed_int(seed), offset, graph == "absorb", vocab_size, mask_id
    )


@register_native("corrupt_dense")
def corrupt_dense_native(
    x0: torch.Tensor,
    transition: torch.Tensor,
    matrix_index: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """``x_t [N] ~ Cat(Qbar[x0, :])`` for ``transition [V, V]``, or ``[M, V, V]`` with
    ``matrix_index [N]``: the grouped race over the float64 ``log`` of each gathered row; fixed
    rows keep ``x0``."""
    return ops.corrupt_dense(x0, transition, matrix_index, fixed, seed_int(seed), offset)
