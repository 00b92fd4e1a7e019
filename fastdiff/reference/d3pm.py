"""Reference D3PM ops (docs/ops.md#d3pm, Austin et al. 2021) on flattened, validated inputs.

Shapes: ``x0_logits [N, V]`` (any float dtype), tokens ``x_t``, ``x0`` int64 ``[N]``, the
one-step matrix ``q_step`` (``Q_t``) and the cumulative ``qbar_prev`` (``Qbar_{t-1}``), each
``[V, V]`` (shared by every row) or ``[M, V, V]`` (one per sequence). With ``M`` matrices the
``N`` rows form ``M`` equal contiguous groups, row ``i`` using matrix ``i // (N / M)``: exactly
what flattening ``[M, ...]`` tokens gives.

Everything is computed in float64 (the mixture ``softmax(x0_logits) @ Qbar_{t-1}`` and the
logs of matrix entries lose the small probabilities in float32). Log-probabilities are ``-inf``
exactly where the factor is 0, and the zero entries never produce NaN gradients.
"""

from __future__ import annotations

import torch

from fastdiff.reference.losses import compute_dtype
from fastdiff.reference.sampling import race

Seed = int | torch.Tensor
F64 = torch.float64


def safe_log(a: torch.Tensor) -> torch.Tensor:
    """``log a`` with ``-inf`` where ``a <= 0`` and a zero (not NaN) gradient there."""
    pos = a > 0
    return torch.where(pos, torch.log(torch.where(pos, a, torch.ones_like(a))), -torch.inf)


def _sequence_of_rows(n: int, matrices: torch.Tensor) -> torch.Tensor:
    """Matrix index of each of ``n`` rows split into ``M`` contiguous equal groups."""
    per = n // matrices.shape[0]
    return torch.arange(n, device=matrices.device) // per


def step_column(q_step: torch.Tensor, x_t: torch.Tensor, dtype: torch.dtype = F64) -> torch.Tensor:
    """``Q_t[:, x_t]`` per row (``q(x_t | x_{t-1} = j)`` for every ``j``): ``[N, V]``."""
    q = q_step.to(dtype)
    if q.dim() == 2:
        return q.t().index_select(0, x_t)
    return q[_sequence_of_rows(x_t.shape[0], q), :, x_t]


def cumulative_row(qbar: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``Qbar[x0, :]`` per row (``q(x_{t-1} = j | x0)``): float64 ``[N, V]``."""
    q = qbar.to(F64)
    if q.dim() == 2:
        return q.index_select(0, x0)
    return q[_sequence_of_rows(x0.shape[0], q), x0]


def mixture(probs: torch.Tensor, qbar: torch.Tensor) -> torch.Tensor:
    """``probs @ Qbar`` per row (``[N, V]``, in the dtype of ``probs``), one matrix per row
    group when 3-D."""
    q = qbar.to(probs.dtype)
    if q.dim() == 2:
        return probs @ q
    m, v = q.shape[0], q.shape[-1]
    return torch.bmm(probs.reshape(m, -1, v), q).reshape(-1, v)


def log_posterior(
    x0_logits: torch.Tensor,
    x_t: torch.Tensor,
    q_step: torch.Tensor,
    qbar_prev: torch.Tensor,
    dtype: torch.dtype = F64,
) -> torch.Tensor:
    """``log Q_t[:, x_t] + log(softmax(x0_logits) @ Qbar_{t-1})`` (``[N, V]``, computed and
    returned in ``dtype``)."""
    if x_t.shape[0] == 0:
        return torch.empty(x0_logits.shape, dtype=dtype, device=x0_logits.device)
    probs = torch.softmax(x0_logits.to(dtype), dim=-1)
    return safe_log(step_column(q_step, x_t, dtype)) + safe_log(mixture(probs, qbar_prev))


def d3pm_posterior_logits(
    x0_logits: torch.Tensor, x_t: torch.Tensor, q_step: torch.Tensor, qbar_prev: torch.Tensor
) -> torch.Tensor:
    """Unnormalized log ``p_theta(x_{t-1} | x_t)``, per row ``[N, V]``
    (docs/ops.md#d3pm-posterior)::

        logits_j = log Q_t[j, x_t] + log sum_k softmax(x0_logits)_k Qbar_{t-1}[k, j]

    Computed in float64, returned in the compute dtype (fp64 stays fp64, else fp32);
    differentiable in ``x0_logits``.
    """
    return log_posterior(x0_logits, x_t, q_step, qbar_prev).to(compute_dtype(x0_logits.dtype))


def d3pm_posterior(
    x0: torch.Tensor, x_t: torch.Tensor, q_step: torch.Tensor, qbar_prev: torch.Tensor
) -> torch.Tensor:
    """The true posterior ``q(x_{t-1} | x_t, x0) ∝ Q_t[:, x_t] ⊙ Qbar_{t-1}[x0, :]`` (float64
    ``[N, V]``, rows sum to 1). A row whose ``x_t`` is impossible given ``x0`` is NaN."""
    if x_t.shape[0] == 0:
        return torch.empty((0, q_step.shape[-1]), dtype=F64, device=x_t.device)
    w = step_column(q_step, x_t) * cumulative_row(qbar_prev, x0)
    return w / w.sum(-1, keepdim=True)


def d3pm_step(
    x0_logits: torch.Tensor,
    x_t: torch.Tensor,
    q_step: torch.Tensor,
    qbar_prev: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """Draw ``x_{t-1}`` per row from :func:`d3pm_posterior_logits` (float64 race keyed by the
    global row index). Fixed rows, and rows whose logits are all ``-inf``, keep ``x_t``."""
    with torch.no_grad():
        logits = log_posterior(x0_logits.detach(), x_t, q_step, qbar_prev)
        active = torch.ones_like(x_t, dtype=torch.bool) if fixed is None else ~fixed
        rows = torch.nonzero(active).squeeze(1)
        lw = logits.index_select(0, rows)
        drawn = race(lw, rows, seed, offset)
        old = x_t.index_select(0, rows)
        drawn = torch.where(lw.amax(-1) > -torch.inf, drawn, old)
        return x_t.index_copy(0, rows, drawn)


def d3pm_hybrid_loss(
    x0_logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    q_step: torch.Tensor,
    qbar_prev: torch.Tensor,
    t_is_one: torch.Tensor,
    hybrid_lambda: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """D3PM hybrid loss per row (docs/ops.md#d3pm-hybrid-loss): ``L_vb + lambda * CE``, times
    ``weight [N]`` when
    given (the public API passes the weight with ignored rows set to 0).

    - ``CE = -log softmax(x0_logits)[x0]``;
    - rows with ``t_is_one``: ``L_vb = CE`` (``-log p_theta(x0 | x_1)``);
    - other rows: ``L_vb = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` with
      ``p_theta = softmax(d3pm_posterior_logits)``; terms with ``q = 0`` contribute 0.

    float64 inside, returned in the compute dtype; differentiable in ``x0_logits``.
    """
    out_dtype = compute_dtype(x0_logits.dtype)
    logits = x0_logits.to(F64)
    ce = torch.nn.functional.cross_entropy(logits, x0, reduction="none")
    rows = torch.nonzero(~t_is_one).squeeze(1)
    vb = ce
    if rows.numel():
        logp = torch.log_softmax(
            log_posterior(logits, x_t, q_step, qbar_prev).index_select(0, rows), dim=-1
        )
        col = step_column(q_step, x_t).index_select(0, rows)
        row = cumulative_row(qbar_prev, x0).index_select(0, rows)
        w = col * row
        q = w / w.sum(-1, keepdim=True)
        log_q = safe_log(col) + safe_log(row) - torch.log(w.sum(-1, keepdim=True))
        terms = torch.where(q > 0, q * (log_q - logp), q.new_zeros(()))
        vb = ce.index_copy(0, rows, terms.sum(-1))
    loss = vb + hybrid_lambda * ce
    if weight is not None:
        loss = loss * weight.to(F64)
    return loss.to(out_dtype)
