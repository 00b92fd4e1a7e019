"""Reference reverse (sampling) updates of discrete diffusion, flattened (docs/ops.md#sedd-sampling,
docs/ops.md#mdlm-ancestral-step, docs/ops.md#unmask-candidates).

Shapes: model output ``[N, V]``, tokens ``x [N]`` int64, per-row float64 scalars ``[N]``,
``fixed`` bool ``[N]`` or ``None``. Each update forms the row's transition weights in float64
(log space) and draws with the grouped race :func:`fastdiff.reference.sampling.race`, keyed
by the global row index; the stay option (the mask column of absorbing updates and MDLM, the
token ``x`` on the uniform graph) is raced on its own against the best group key. Rows with
nothing to do (unmasked rows of absorbing updates, fixed rows) keep their token and are not
read; a row whose weights are all zero keeps its token.
"""

from __future__ import annotations

import torch

from fastdiff.reference.losses import log_expm1
from fastdiff.reference.sampling import race

Seed = int | torch.Tensor


def _active_rows(x: torch.Tensor, fixed: torch.Tensor | None, mask_id: int | None) -> torch.Tensor:
    active = torch.ones_like(x, dtype=torch.bool) if mask_id is None else x == mask_id
    if fixed is not None:
        active &= ~fixed
    return torch.nonzero(active).squeeze(1)


def _draw(
    log_w: torch.Tensor,
    x: torch.Tensor,
    rows: torch.Tensor,
    seed: Seed,
    offset: int,
    stay: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Race over ``log_w [len(rows), V]`` and write the draws into a copy of ``x``; ``stay``
    (the mask id, or per-row tokens) is the column of the stay option (see ``race``)."""
    if isinstance(stay, int):
        stay = torch.full((rows.shape[0],), stay, dtype=torch.int64, device=x.device)
    drawn = race(log_w, rows, seed, offset, stay)
    old = x.index_select(0, rows)
    drawn = torch.where(log_w.amax(-1) > -torch.inf, drawn, old)
    return x.index_copy(0, rows, drawn)


def _fill_column(t: torch.Tensor, col: int | torch.Tensor, value: float | torch.Tensor):
    """``t`` with ``t[i, col_i] = value_i`` (``col`` an int or a per-row index tensor)."""
    if isinstance(col, int):
        col = torch.full((t.shape[0],), col, dtype=torch.int64, device=t.device)
    if not isinstance(value, torch.Tensor):
        value = torch.full((t.shape[0],), value, dtype=t.dtype, device=t.device)
    return t.scatter(-1, col[:, None], value[:, None].to(t.dtype))


def _log_clamped(w: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.clamp(w, min=0.0))


def sedd_euler(
    log_score: torch.Tensor,
    x: torch.Tensor,
    rate: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """SEDD Euler step with ``rate = dt * dsigma`` per row (docs/ops.md#sedd-euler-step).

    absorbing, masked rows: ``w_j = rate S_j`` (j != m),
    ``w_m = max(0, 1 - rate sum_{j != m} S_j)``.
    uniform, every row: ``w_j = rate S_j / V`` (j != x),
    ``w_x = max(0, 1 - rate sum_{j != x} S_j / V)``.
    """
    absorb = graph == "absorb"
    rows = _active_rows(x, fixed, mask_id if absorb else None)
    s = log_score.index_select(0, rows).to(torch.float64)
    xr = x.index_select(0, rows)
    scale = rate.index_select(0, rows)
    if not absorb:
        scale = scale / s.shape[-1]
    stay_col = mask_id if absorb else xr
    log_w = s + torch.log(scale)[:, None]
    log_w = _fill_column(log_w, stay_col, -torch.inf)
    stay = 1.0 - torch.exp(log_w).sum(-1)
    log_w = _fill_column(log_w, stay_col, _log_clamped(stay))
    return _draw(log_w, x, rows, seed, offset, stay_col)


def _uniform_tweedie(s: torch.Tensor, xr: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Log of ``stag(S, D) * T(x, D)`` for the uniform graph, clamped at 0, up to a per-row
    factor (docs/ops.md#sedd-analytic-step)."""
    vocab = s.shape[-1]
    # S_x = 1; p is linear in S, so S is scaled by e^-max to keep exp finite, and stag by e^-D
    # (stag e^-D = S - (1 - e^-D) sum S / V): the race ignores per-row factors, and no term
    # overflows for any D, inf included
    s0 = _fill_column(s, xr, 0.0)
    score = torch.exp(s0 - s0.amax(-1, keepdim=True))
    d = delta[:, None]
    stag = score - (-torch.expm1(-d)) / vocab * score.sum(-1, keepdim=True)
    leave = -torch.expm1(-d) / vocab
    trans = _fill_column(leave.expand_as(s), xr, (torch.exp(-d) + leave).squeeze(-1))
    return _log_clamped(stag * trans)


def sedd_analytic(
    log_score: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """SEDD analytic (Tweedie tau-leaping) step with ``delta = sigma(t) - sigma(t - dt)``.

    absorbing, masked rows: ``p_j = expm1(D) S_j`` (j != m), ``p_m = max(0, 1 - expm1(D) sum S)``
    (``D = inf``: ``p_j ∝ S_j``, ``p_m = 0``).
    uniform: ``p = stag(S, D) * T(x, D)`` (docs/ops.md#sedd-analytic-step), negative products
    clamped at 0.
    """
    absorb = graph == "absorb"
    rows = _active_rows(x, fixed, mask_id if absorb else None)
    s = log_score.index_select(0, rows).to(torch.float64)
    d = delta.index_select(0, rows)
    if absorb:
        # log expm1(D) in log space: finite for every finite D (expm1 overflows past 709.8);
        # D = inf leaves no stay weight, and the moves race on S alone (a per-row factor)
        log_rate = log_expm1(d)
        never_stay = torch.isposinf(log_rate)
        log_rate = torch.where(never_stay, 0.0, log_rate)
        log_w = _fill_column(s + log_rate[:, None], mask_id, -torch.inf)
        stay = torch.where(never_stay, 0.0, 1.0 - torch.exp(log_w).sum(-1))
        log_w = _fill_column(log_w, mask_id, _log_clamped(stay))
        stay_col = mask_id
    else:
        stay_col = x.index_select(0, rows)
        log_w = _uniform_tweedie(s, stay_col, d)
    return _draw(log_w, x, rows, seed, offset, stay_col)


def sedd_denoise(
    log_score: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """Final denoising step at ``sigma_min`` (docs/ops.md#sedd-denoise-step): no token is left
    masked.

    absorbing, masked rows: ``p_j ∝ S_j`` over ``j != m``; uniform: the analytic product with
    ``D = sigma``.
    """
    absorb = graph == "absorb"
    rows = _active_rows(x, fixed, mask_id if absorb else None)
    s = log_score.index_select(0, rows).to(torch.float64)
    if absorb:
        log_w, stay_col = _fill_column(s, mask_id, -torch.inf), None
    else:
        stay_col = x.index_select(0, rows)
        log_w = _uniform_tweedie(s, stay_col, sigma.index_select(0, rows))
    return _draw(log_w, x, rows, seed, offset, stay_col)


def mdlm_ancestral(
    logits: torch.Tensor,
    x: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_s: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    mask_id: int,
) -> torch.Tensor:
    """MDLM ancestral step from time t to s < t (docs/ops.md#mdlm-ancestral-step), masked rows only.

    ``p = softmax(logits, m excluded)``, ``mc = 1 - e^-sigma``:
    ``q_j = p_j (mc_t - mc_s)`` (j != m), ``q_m = mc_s``.
    """
    rows = _active_rows(x, fixed, mask_id)
    lr = logits.index_select(0, rows).to(torch.float64)
    logp = torch.log_softmax(_fill_column(lr, mask_id, -torch.inf), -1)
    st, ss = sigma_t.index_select(0, rows), sigma_s.index_select(0, rows)
    # log(mc_t - mc_s) = log(e^-ss - e^-st) = -ss + log(-expm1(ss - st))
    log_unmask = -ss + torch.log(-torch.expm1(ss - st))
    log_stay = torch.log(-torch.expm1(-ss))
    log_w = _fill_column(logp + log_unmask[:, None], mask_id, log_stay)
    return _draw(log_w, x, rows, seed, offset, mask_id)


def unmask_candidates(
    logits: torch.Tensor,
    x: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    mask_id: int,
    temperature: float,
    confidence: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal and confidence per masked row (docs/ops.md#unmask-candidates).

    ``p = softmax(logits, m excluded)``; the proposal ``xhat`` is ``argmax p`` (temperature 0)
    or a Gumbel draw from ``p^(1/temperature)``; the confidence is ``p(xhat)`` (``"prob"``),
    ``p1 - p2`` (``"margin"``) or ``sum p log p`` (``"entropy"``, the negative entropy).
    Returns ``(xhat [N], confidence [N] float32)``: non-masked and fixed rows get ``x`` and
    ``-inf``.
    """
    rows = _active_rows(x, fixed, mask_id)
    lr = logits.index_select(0, rows).to(torch.float64)
    logp = torch.log_softmax(_fill_column(lr, mask_id, -torch.inf), -1)
    xhat = logp.argmax(-1) if temperature == 0.0 else race(logp / temperature, rows, seed, offset)
    p = torch.exp(logp)
    if confidence == "prob":
        conf = p.gather(-1, xhat[:, None]).squeeze(-1)
    elif confidence == "margin":
        top = torch.topk(p, min(2, p.shape[-1]), dim=-1).values
        conf = top[:, 0] - (top[:, 1] if top.shape[-1] > 1 else 0.0)
    else:
        conf = torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    out_x = x.index_copy(0, rows, xhat)
    out_conf = torch.full(x.shape, -torch.inf, dtype=torch.float32, device=x.device)
    return out_x, out_conf.index_copy(0, rows, conf.float())
