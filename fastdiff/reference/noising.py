"""Reference forward noising of discrete tokens (docs/ops.md#noising) on flattened inputs.

Per row ``i`` one Philox call keyed by ``(seed, offset, i, 0)`` gives a float64 uniform ``u``
and an integer uniform ``k`` on ``[0, V)`` (:func:`fastdiff.random.row_uniform_and_index`);
a row moves when ``u < 1 - e^-sigma``. Fixed rows never move.
"""

from __future__ import annotations

import torch

from fastdiff import random as frandom
from fastdiff.reference.sampling import race

Seed = int | torch.Tensor


def corrupt(
    x0: torch.Tensor,
    sigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    vocab_size: int,
    mask_id: int,
) -> torch.Tensor:
    """``x0 [N]``, float64 ``sigma [N]`` -> ``x_t [N]``.

    absorbing: ``x_t = m`` with probability ``1 - e^-sigma``, else ``x0``.
    uniform: with probability ``1 - e^-sigma``, ``x_t`` is uniform on ``[0, V)`` (it may equal
    ``x0``), so ``P(x_t = x0) = e^-sigma + (1 - e^-sigma)/V``.
    """
    rows = torch.arange(x0.shape[0], device=x0.device)
    u, k = frandom.row_uniform_and_index(seed, offset, rows, vocab_size)
    move = u < -torch.expm1(-sigma.to(torch.float64))
    if fixed is not None:
        move &= ~fixed
    new = torch.full_like(x0, mask_id) if graph == "absorb" else k
    return torch.where(move, new, x0)


def corrupt_dense(
    x0: torch.Tensor,
    transition: torch.Tensor,
    matrix_index: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """``x_t ~ Cat(Qbar[x0, :])`` per row: ``x0 [N]``, ``transition`` ``[V, V]`` or ``[M, V, V]``
    (row-stochastic) with ``matrix_index [N]`` choosing the matrix of each row.

    Drawn with the exponential race over the gathered row, keyed by ``(seed, offset, row, col)``.
    """
    if transition.dim() == 2:
        weights = transition.index_select(0, x0)
    else:
        weights = transition[matrix_index, x0]
    rows = torch.arange(x0.shape[0], device=x0.device)
    x_t = race(torch.log(weights.to(torch.float64)), rows, seed, offset)
    if fixed is not None:
        x_t = torch.where(fixed, x0, x_t)
    return x_t
