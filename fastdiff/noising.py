"""Public forward noising of token sequences: absorbing, uniform and dense (D3PM) transitions."""

from __future__ import annotations

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.reference import noising as ref


def add_noise(
    x0: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    graph: str,
    vocab_size: int,
    mask_id: int | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x0)`` for the absorbing or uniform graph
    (docs/ops.md#absorbing-and-uniform-noising).

    Args:
        x0: clean tokens ``[*B]`` in ``[0, vocab_size)``.
        sigma: total noise >= 0, a number or a tensor whose shape is a prefix of ``B``.
        graph: ``"absorb"``: ``x_t = mask_id`` with probability ``1 - e^-sigma``;
            ``"uniform"``: with that probability ``x_t`` is uniform on ``[0, V)``.
        fixed: optional bool ``[*B]`` (or prefix): positions never noised (prompt, padding).
        generator / seed / offset: counter-based randomness (:mod:`fastdiff.random`).

    Returns ``x_t`` (int64, ``[*B]``).
    """
    graph = checks.graph(graph)
    x0 = checks.tokens("x0", x0)
    vocab = checks.vocab_size(vocab_size, minimum=2 if graph == "absorb" else 1)
    m = checks.mask_id(mask_id, vocab, required=graph == "absorb")
    fixed = checks.bool_mask("fixed", fixed, x0.shape)
    device = checks.same_device(x0=x0, fixed=fixed)
    checks.token_range("x0", x0, vocab)
    sig = checks.per_position(
        "sigma", sigma, x0.shape, device=device, dtype=torch.float64, nonnegative=True
    )
    checks.offset(offset)
    key = frandom.resolve_seed(seed, generator, device)
    impl = backend.resolve("corrupt", ref.corrupt, device)
    flat = x0.dim() == 1  # (no reshapes on the common flat call: they cost microseconds)
    out = impl(
        x0 if flat else x0.reshape(-1),
        sig if flat else sig.reshape(-1),
        fixed if fixed is None or flat else fixed.reshape(-1),
        key,
        offset,
        graph,
        vocab,
        -1 if m is None else m,
    )
    return out if flat else out.reshape(x0.shape)


def check_transition(name: str, q: torch.Tensor, atol: float = 1e-5) -> int:
    """A row-stochastic ``[V, V]`` or ``[M, V, V]`` matrix (entries >= 0, rows sum to 1)."""
    checks.floating(name, q, min_dim=2)
    if q.dim() > 3 or q.shape[-1] != q.shape[-2]:
        raise ValueError(f"{name} must have shape [V, V] or [M, V, V], got {tuple(q.shape)}")
    if checks.value_checks_enabled():
        checks.finite(name, q)
        if bool((q < 0).any()):
            raise ValueError(f"{name} has negative entries")
        err = (q.sum(-1, dtype=torch.float64) - 1.0).abs().max()
        if float(err) > atol:
            raise ValueError(f"{name} rows must sum to 1 (max deviation {float(err):.3g})")
    return q.shape[-1]


def add_noise_dense(
    x0: torch.Tensor,
    transition: torch.Tensor,
    *,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """D3PM noising with a dense transition matrix: ``x_t ~ Cat(Qbar_t[x0, :])``.

    ``transition`` is the cumulative ``Qbar_t`` ``[V, V]`` shared by all positions, or
    ``[batch, V, V]`` (one matrix per sequence, ``x0`` of shape ``[batch, ...]``), row-stochastic
    (build it in float64 with :mod:`fastdiff.transitions`). Fixed positions keep ``x0``.
    """
    x0 = checks.tokens("x0", x0)
    vocab = check_transition("transition", transition)
    fixed = checks.bool_mask("fixed", fixed, x0.shape)
    device = checks.same_device(x0=x0, transition=transition, fixed=fixed)
    checks.token_range("x0", x0, vocab)
    matrix_index = None
    if transition.dim() == 3:
        if x0.dim() < 1 or transition.shape[0] != x0.shape[0]:
            raise ValueError(
                f"a batch of {transition.shape[0]} matrices needs x0 of shape [batch, ...] with "
                f"batch = {transition.shape[0]}, got {tuple(x0.shape)}"
            )
        matrix_index = torch.arange(x0.shape[0], device=device)
        matrix_index = matrix_index.reshape((-1,) + (1,) * (x0.dim() - 1)).expand(x0.shape)
        matrix_index = matrix_index.reshape(-1)
    checks.offset(offset)
    key = frandom.resolve_seed(seed, generator, device)
    impl = backend.resolve("corrupt_dense", ref.corrupt_dense, device)
    out = impl(
        x0.reshape(-1),
        transition,
        matrix_index,
        None if fixed is None else fixed.reshape(-1),
        key,
        offset,
    )
    return out.reshape(x0.shape)
