"""Public D3PM ops (Austin et al. 2021; docs/ops.md#d3pm) for dense transition matrices.

Notation: ``Q_t`` is the one-step matrix (``q(x_t = j | x_{t-1} = i) = Q_t[i, j]``) and
``Qbar_{t-1} = Q_1 ... Q_{t-1}`` the cumulative one (the identity at ``t = 1``); build both in
float64 with :mod:`fastdiff.transitions` (:class:`fastdiff.transitions.TransitionSchedule`).

Shapes: ``model_output [*B, V]`` (the model's prediction of the clean token), tokens ``x_t``,
``x0`` ``[*B]``; ``q_step`` and ``qbar_next`` are ``[V, V]`` (shared by all positions) or
``[batch, V, V]`` (one per sequence, tokens of shape ``[batch, ...]``; each may be either).
Matrices must be row-stochastic (entries >= 0, rows summing to 1 within 1e-5).

- :func:`d3pm_posterior_logits`: ``log Q_t[:, x_t] + log(softmax(model_output) @ Qbar_{t-1})``;
- :func:`d3pm_posterior`: the true posterior ``q(x_{t-1} | x_t, x0)``;
- :func:`d3pm_step`: draw ``x_{t-1}`` from the posterior logits;
- :func:`d3pm_hybrid_loss`: ``L_vb + lambda * CE`` (docs/ops.md#d3pm-hybrid-loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.losses import _reduce, _row_weight
from fastdiff.noising import check_transition
from fastdiff.reference import d3pm as ref

__all__ = ["d3pm_hybrid_loss", "d3pm_posterior", "d3pm_posterior_logits", "d3pm_step"]


def _check_matrices(q_step: torch.Tensor, qbar_next: torch.Tensor, x: torch.Tensor) -> int:
    """Both matrices row-stochastic, of one vocabulary size, batched consistently with ``x``."""
    v = check_transition("q_step", q_step)
    v_prev = check_transition("qbar_next", qbar_next)
    if v != v_prev:
        raise ValueError(
            f"q_step is {v} x {v} but qbar_next is {v_prev} x {v_prev}: one vocabulary size"
        )
    for name, q in (("q_step", q_step), ("qbar_next", qbar_next)):
        if q.dim() == 3 and (x.dim() < 1 or q.shape[0] != x.shape[0]):
            raise ValueError(
                f"{name} holds {q.shape[0]} matrices (one per sequence): the tokens must have "
                f"shape [{q.shape[0]}, ...], got {tuple(x.shape)}"
            )
    return v


@dataclass
class _Inputs:
    logits: torch.Tensor  # [N, V]
    x_t: torch.Tensor  # [N]
    batch_shape: torch.Size
    device: torch.device
    vocab: int


def _prepare(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    q_step: torch.Tensor,
    qbar_next: torch.Tensor,
    **others: torch.Tensor | None,
) -> _Inputs:
    x_t = checks.tokens("x_t", x_t)
    vocab = checks.scores("model_output", model_output, x_t)
    checks.vocab_size(vocab, minimum=2)
    v = _check_matrices(q_step, qbar_next, x_t)
    if v != vocab:
        raise ValueError(f"model_output has {vocab} columns but the matrices are {v} x {v}")
    device = checks.same_device(
        model_output=model_output, x_t=x_t, q_step=q_step, qbar_next=qbar_next, **others
    )
    checks.token_range("x_t", x_t, vocab)
    checks.finite("model_output", model_output, allow_neg_inf=True)
    if (
        checks.value_checks_enabled()
        and model_output.numel()
        and bool(torch.isneginf(model_output.amax(-1)).any())
    ):
        raise ValueError("model_output has a row whose entries are all -inf (no x0 possible)")
    return _Inputs(model_output.reshape(-1, vocab), x_t.reshape(-1), x_t.shape, device, vocab)


def d3pm_posterior_logits(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    q_step: torch.Tensor,
    qbar_next: torch.Tensor,
) -> torch.Tensor:
    """Logits of the D3PM reverse step ``p_theta(x_{t-1} | x_t)`` (docs/ops.md#d3pm-posterior)::

        logits_j = log Q_t[j, x_t] + log( sum_k softmax(model_output)_k Qbar_{t-1}[k, j] )

    i.e. the log of column ``x_t`` of ``Q_t`` plus the log of the predicted-``x0`` mixture of
    the rows of ``Qbar_{t-1}``. Unnormalized (``softmax`` of it is the distribution).

    Args:
        model_output: ``[*B, V]`` logits of ``p_theta(x0 | x_t)`` (``-inf`` allowed).
        x_t: ``[*B]`` current tokens.
        q_step: ``Q_t``, ``[V, V]`` or ``[batch, V, V]``.
        qbar_next: ``Qbar_{t-1}`` (identity at ``t = 1``), ``[V, V]`` or ``[batch, V, V]``.

    Returns ``[*B, V]``, float64 for float64 logits and float32 otherwise (computed in float64),
    ``-inf`` where a factor is 0. Differentiable in ``model_output``.
    """
    st = _prepare(model_output, x_t, q_step, qbar_next)
    impl = backend.resolve("d3pm_posterior_logits", ref.d3pm_posterior_logits, st.device)
    out = impl(st.logits, st.x_t, q_step, qbar_next)
    return out.reshape(*st.batch_shape, st.vocab)


def d3pm_posterior(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    *,
    q_step: torch.Tensor,
    qbar_next: torch.Tensor,
) -> torch.Tensor:
    """The true posterior ``q(x_{t-1} | x_t, x0) ∝ Q_t[:, x_t] ⊙ Qbar_{t-1}[x0, :]``.

    By Bayes' rule it equals ``q(x_{t-1} | x0) q(x_t | x_{t-1}) / q(x_t | x0)``; the normalizer
    is ``Qbar_t[x0, x_t]``. Shapes: ``x0``, ``x_t`` ``[*B]``, matrices as in
    :func:`d3pm_posterior_logits`. Returns float64 probabilities ``[*B, V]``. Raises if some
    ``x_t`` is impossible given its ``x0`` (``Qbar_t[x0, x_t] = 0``) while value checks are on.
    """
    x_t = checks.tokens("x_t", x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    vocab = _check_matrices(q_step, qbar_next, x_t)
    device = checks.same_device(x0=x0, x_t=x_t, q_step=q_step, qbar_next=qbar_next)
    checks.token_range("x_t", x_t, vocab)
    checks.token_range("x0", x0, vocab)
    impl = backend.resolve("d3pm_posterior", ref.d3pm_posterior, device)
    out = impl(x0.reshape(-1), x_t.reshape(-1), q_step, qbar_next)
    if checks.value_checks_enabled() and bool(torch.isnan(out).any()):
        raise ValueError(
            "x_t is impossible given x0 under these matrices (Qbar_t[x0, x_t] = 0), so the "
            "posterior q(x_{t-1} | x_t, x0) is undefined"
        )
    return out.reshape(*x_t.shape, vocab)


def d3pm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    q_step: torch.Tensor,
    qbar_next: torch.Tensor,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """One D3PM reverse step: ``x_{t-1} ~ softmax(d3pm_posterior_logits(...))`` per position.

    The draw is the float64 exponential race keyed by ``(seed, offset, row, column)`` with the
    global flattened row index (:mod:`fastdiff.random`), so the same seed gives the same tokens
    on every backend. ``fixed`` (bool, ``[*B]`` or a prefix) marks positions that keep ``x_t``
    (prompt, infilling context, padding); a row whose logits are all ``-inf`` also keeps ``x_t``.

    Returns ``x_{t-1}`` (int64, ``[*B]``).
    """
    x_t_checked = checks.tokens("x_t", x_t)
    fixed = checks.bool_mask("fixed", fixed, x_t_checked.shape)
    st = _prepare(model_output, x_t, q_step, qbar_next, fixed=fixed)
    checks.offset(offset)
    key = frandom.resolve_seed(seed, generator, st.device)
    impl = backend.resolve("d3pm_step", ref.d3pm_step, st.device)
    flat_fixed = None if fixed is None else fixed.reshape(-1)
    out = impl(st.logits, st.x_t, q_step, qbar_next, flat_fixed, key, offset)
    return out.reshape(st.batch_shape)


def d3pm_hybrid_loss(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    q_step: torch.Tensor,
    qbar_next: torch.Tensor,
    t_is_one: bool | torch.Tensor,
    hybrid_lambda: float = 0.01,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """D3PM hybrid loss ``L_vb + hybrid_lambda * CE(x0, softmax(model_output))``
    (docs/ops.md#d3pm-hybrid-loss).

    ``L_vb`` per position is ``KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` with
    ``p_theta = softmax(d3pm_posterior_logits(model_output, x_t, q_step, qbar_next))``, except
    where ``t = 1``: there ``L_vb = -log p_theta(x0 | x_1)``, the cross entropy of
    ``model_output`` at ``x0``.

    Args:
        model_output: ``[*B, V]`` model logits of ``x0`` (differentiable).
        x_t, x0: ``[*B]`` noised and clean tokens (``x_t`` must be possible given ``x0``
            where ``t > 1``).
        q_step, qbar_next: ``Q_t`` and ``Qbar_{t-1}``, ``[V, V]`` or ``[batch, V, V]``.
        t_is_one: a python bool, or a bool tensor whose shape is a prefix of ``B`` (per
            sequence or per position), True where ``t = 1``.
        hybrid_lambda: weight of the auxiliary cross entropy (>= 0; D3PM uses 0.01 or 0.001).
        weight, ignore, reduction: as in :func:`fastdiff.score_entropy`.

    Returns the per-position loss ``[*B]`` (float64 for float64 logits, float32 otherwise), or
    its sum / mean over non-ignored positions. Computed in float64.
    """
    reduction = checks.reduction(reduction)
    if isinstance(hybrid_lambda, bool) or not isinstance(hybrid_lambda, (int, float)):
        raise TypeError(f"hybrid_lambda must be a number, got {type(hybrid_lambda).__name__}")
    if not hybrid_lambda >= 0.0 or hybrid_lambda == float("inf"):
        raise ValueError(f"hybrid_lambda must be a finite number >= 0, got {hybrid_lambda!r}")
    x_t_checked = checks.tokens("x_t", x_t)
    x0 = checks.tokens("x0", x0, x_t_checked.shape)
    batch_shape = x_t_checked.shape
    ignore = checks.bool_mask("ignore", ignore, batch_shape)
    if isinstance(t_is_one, bool):
        first = torch.full(batch_shape, t_is_one, dtype=torch.bool, device=x_t_checked.device)
    elif isinstance(t_is_one, torch.Tensor):
        first = checks.bool_mask("t_is_one", t_is_one, batch_shape)
    else:
        raise TypeError(f"t_is_one must be a bool or a bool tensor, got {type(t_is_one).__name__}")
    st = _prepare(model_output, x_t, q_step, qbar_next, x0=x0, t_is_one=first, ignore=ignore)
    checks.token_range("x0", x0, st.vocab)
    flat_x0 = x0.reshape(-1)
    flat_first = first.reshape(-1)
    if checks.value_checks_enabled() and not bool(flat_first.all()):
        w = ref.step_column(q_step, st.x_t) * ref.cumulative_row(qbar_next, flat_x0)
        impossible = (w.sum(-1) <= 0) & ~flat_first
        if ignore is not None:
            impossible &= ~ignore.reshape(-1)
        if bool(impossible.any()):
            raise ValueError(
                "x_t is impossible given x0 (Qbar_t[x0, x_t] = 0) at a position with t > 1: "
                "the posterior q(x_{t-1} | x_t, x0) is undefined"
            )
    w = _row_weight(weight, ignore, batch_shape, st.device, ref.compute_dtype(model_output.dtype))
    impl = backend.resolve("d3pm_hybrid_loss", ref.d3pm_hybrid_loss, st.device)
    loss = impl(st.logits, st.x_t, flat_x0, q_step, qbar_next, flat_first, float(hybrid_lambda), w)
    return _reduce(loss, batch_shape, ignore, reduction)
