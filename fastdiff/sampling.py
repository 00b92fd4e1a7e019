"""Public categorical sampling (docs/ops.md#categorical-sampling)."""

from __future__ import annotations

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.reference import sampling as ref


def _check_filters(
    temperature: float, top_k: int | None, top_p: float | None, min_p: float | None, vocab: int
) -> None:
    checks.temperature(temperature)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if min_p is not None and not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")


def check_weights(name: str, x: torch.Tensor, is_log: bool) -> None:
    """Weights must be finite and >= 0 with a positive row sum; log-weights may hold ``-inf``
    but no NaN or ``+inf`` and no row of only ``-inf``."""
    if not checks.value_checks_enabled() or not x.numel():
        return
    if is_log:
        checks.finite(name, x, allow_neg_inf=True)
        if bool(torch.isneginf(x).all(-1).any()):
            raise ValueError(f"{name} has a row whose log-weights are all -inf (no token possible)")
    else:
        checks.finite(name, x)
        if bool((x < 0).any()):
            raise ValueError(f"{name} contains negative weights")
        if bool((x == 0).all(-1).any()):
            raise ValueError(f"{name} has a row whose weights are all zero (no token possible)")


def sample_categorical(
    probs: torch.Tensor | None = None,
    *,
    logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    return_prob: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw one category per row: ``argmax_j (log w_j + G_j)`` with float64-exact Gumbel tails.

    Args:
        probs: unnormalized weights ``[*B, V]`` (>= 0, zero weights never drawn); or
        logits: log-weights ``[*B, V]`` (``-inf`` allowed). Exactly one of the two.
        temperature: divides the log-weights; ``0`` takes the argmax.
        top_k, top_p, min_p: filters, applied in this order after the temperature (see
            :func:`fastdiff.reference.sampling.filter_logits`); ties at a boundary are kept.
        generator / seed / offset: randomness keyed by ``(seed, offset, row, column)``; the same
            ``seed`` gives the same draws on every backend (see :mod:`fastdiff.random`).
        return_prob: also return the chosen token's probability under the final (tempered,
            filtered, normalized) distribution; at temperature 0, under the filtered
            distribution at temperature 1.

    Returns int64 indices ``[*B]`` (and float32 probabilities ``[*B]``). Ties: lowest index.
    """
    if (probs is None) == (logits is None):
        raise ValueError("pass exactly one of probs (weights) or logits (log-weights)")
    is_log = logits is not None
    x = logits if is_log else probs
    name = "logits" if is_log else "probs"
    checks.floating(name, x, min_dim=1)
    vocab = x.shape[-1]
    checks.vocab_size(vocab)
    _check_filters(temperature, top_k, top_p, min_p, vocab)
    device = checks.same_device(**{name: x})
    check_weights(name, x, is_log)
    checks.tempered(name, x, float(temperature), is_log=is_log)
    checks.offset(offset)
    key = frandom.resolve_seed(seed, generator, device)
    impl = backend.resolve("sample_categorical", ref.sample_categorical, device)
    index, prob = impl(
        x.reshape(-1, vocab),
        is_log,
        key,
        offset,
        float(temperature),
        top_k,
        top_p,
        min_p,
        return_prob,
    )
    index = index.reshape(x.shape[:-1])
    if return_prob:
        return index, prob.reshape(x.shape[:-1])
    return index
