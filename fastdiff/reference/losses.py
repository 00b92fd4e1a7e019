"""Reference losses on flattened, validated inputs (docs/ops.md#score-entropy,
docs/ops.md#concrete-score-matching, docs/ops.md#masked-diffusion-cross-entropy,
docs/ops.md#fused-linear-losses).

Shapes: ``log_score`` / ``logits`` ``[N, V]`` (any float dtype; fp16/bf16 computed in fp32),
tokens ``x_t``, ``x0`` int64 ``[N]``, per-row ``sigma`` / ``dsigma`` / ``weight`` ``[N]``,
Every function returns the per-row loss ``[N]`` (times the optional
per-row ``weight``, which a fused kernel folds into its gradient) in the compute dtype;
reductions are applied by the public API. Differentiable in the scores through autograd.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; every other float type is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_expm1(sigma: torch.Tensor) -> torch.Tensor:
    """``log(e^sigma - 1)`` without overflow for large sigma or cancellation for small."""
    return sigma + torch.log(-torch.expm1(-sigma))


def _scatter_rows(rows: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_copy(0, rows, values)


def score_entropy_absorb(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbing-graph denoising score entropy per row (times ``weight [N]`` when given).

    Rows with ``x_t != m`` give 0. For ``x_t = m``, with ``S = exp(s)`` and
    ``r = 1 / expm1(sigma)`` (the true ratio of ``x0`` to the mask)::

        loss = sum_{j != m} S_j - r s_{x0} + r (log r - 1)

    The entry ``s_m`` is ignored. Only masked rows are read.
    """
    n = x_t.shape[0]
    dtype = compute_dtype(log_score.dtype)
    rows = torch.nonzero(x_t == mask_id).squeeze(1)
    s = log_score.index_select(0, rows).to(dtype)
    r = torch.exp(-log_expm1(sigma.index_select(0, rows).to(dtype)))
    pos = s.index_fill(-1, torch.tensor([mask_id], device=s.device), -torch.inf).exp().sum(-1)
    neg = r * s.gather(-1, x0.index_select(0, rows)[:, None]).squeeze(-1)
    loss = pos - neg + absorb_const(r)
    if weight is not None:
        loss = loss * weight.index_select(0, rows).to(dtype)
    return _scatter_rows(rows, loss, n)


def uniform_ratio(sigma: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ratio, log ratio)`` with ``ratio = e / (e + V)``, ``e = expm1(sigma)``.

    Written as ``1 / (1 + V/e)``: exact for tiny sigma (where the published ``1 - V/(e + V)``
    cancels to 0) and for huge sigma (``e = inf`` gives 1).
    """
    v_over_e = vocab_size / torch.expm1(sigma)
    return 1.0 / (1.0 + v_over_e), -torch.log1p(v_over_e)


def uniform_const(
    ratio: torch.Tensor, log_ratio: torch.Tensor, same: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """The constant ``K`` of the uniform-graph loss: ``((V-1)/V) ratio (log ratio - 1)`` where
    ``x = x0`` (with ``0 log 0 = 0``, the limit at sigma -> 0), ``((-log ratio - 1)/ratio -
    (V-2)) / V`` elsewhere."""
    return torch.where(
        same,
        (vocab_size - 1) / vocab_size * (torch.special.xlogy(ratio, ratio) - ratio),
        ((-log_ratio - 1.0) / ratio - (vocab_size - 2)) / vocab_size,
    )


def absorb_const(r: torch.Tensor) -> torch.Tensor:
    """``r (log r - 1)`` with ``0 log 0 = 0`` (``r = 0`` at ``sigma = inf``)."""
    return torch.special.xlogy(r, r) - r


def score_entropy_uniform(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform-graph denoising score entropy per row (docs/ops.md#score-entropy-uniform-graph,
    stable ratio), times
    ``weight [N]`` when given.

    With ``e = expm1(sigma)``, ``ratio = e / (e + V)``, ``pos = (1/V) sum_{j != x} S_j`` and
    ``neg0 = (1/V) sum_{j != x} s_j``::

        x = x0:  loss = pos - ratio neg0 + ((V-1)/V) ratio (log ratio - 1)
        x != x0: loss = pos - (s_{x0}/e + neg0) + ((-log ratio - 1)/ratio - (V-2)) / V

    The entry ``s_x`` is ignored.
    """
    vocab = log_score.shape[-1]
    dtype = compute_dtype(log_score.dtype)
    s = log_score.to(dtype)
    sig = sigma.to(dtype)
    e = torch.expm1(sig)
    ratio, log_ratio = uniform_ratio(sig, vocab)
    col = x_t[:, None]
    pos = s.scatter(-1, col, -torch.inf).exp().sum(-1) / vocab
    neg0 = s.scatter(-1, col, 0.0).sum(-1) / vocab
    same = x_t == x0
    s_x0 = s.gather(-1, x0[:, None]).squeeze(-1)
    # the x != x0 branch reads s_{x0}; where x = x0 that entry is the ignored s_x
    s_x0 = torch.where(same, torch.zeros_like(s_x0), s_x0)
    neg = torch.where(same, ratio * neg0, s_x0 / e + neg0)
    const = uniform_const(ratio, log_ratio, same, vocab)
    loss = pos - neg + const
    return loss if weight is None else loss * weight.to(dtype)


def masked_diffusion_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked-diffusion (MDLM SUBS) cross entropy per row, times ``weight [N]`` when given.

    ``logp = log_softmax(logits with column m removed)``; masked rows give ``-logp[x0]``,
    the others 0. The mask column is excluded with a true ``-inf`` in the compute dtype
    (fp32 or fp64), never a large finite constant in fp16.
    """
    n = x_t.shape[0]
    dtype = compute_dtype(logits.dtype)
    rows = torch.nonzero(x_t == mask_id).squeeze(1)
    lr = logits.index_select(0, rows).to(dtype)
    lr = lr.index_fill(-1, torch.tensor([mask_id], device=lr.device), -torch.inf)
    nll = torch.nn.functional.cross_entropy(lr, x0.index_select(0, rows), reduction="none")
    if weight is not None:
        nll = nll * weight.index_select(0, rows).to(dtype)
    return _scatter_rows(rows, nll, n)


def linear_score_entropy(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None,
    graph: str,
    mask_id: int,
    chunk_rows: int | None,
) -> torch.Tensor:
    """``sum_i w_i score_entropy(hidden_i W^T + b)``: the unfused path (full ``[N, V]``
    logits), the oracle of the fused kernel. ``chunk_rows`` is ignored here."""
    logits = torch.nn.functional.linear(hidden, projection, bias)
    if graph == "absorb":
        return score_entropy_absorb(logits, x_t, x0, sigma, mask_id, weight).sum()
    return score_entropy_uniform(logits, x_t, x0, sigma, weight).sum()


def linear_masked_diffusion_loss(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None,
    chunk_rows: int | None,
) -> torch.Tensor:
    """``sum_i w_i CE_SUBS(hidden_i W^T + b)``, unfused (the oracle of the fused kernel)."""
    logits = torch.nn.functional.linear(hidden, projection, bias)
    return masked_diffusion_loss(logits, x_t, x0, mask_id, weight).sum()


def concrete_score_matching_absorb(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbing-graph denoising concrete score matching per row (times ``weight [N]``).

    The squared error between the predicted ratios ``S_j = exp(s_j)`` and the ratios of the
    noising kernel given ``x0`` over the neighbours ``j`` that move into ``x_t`` (rate 1 each):
    rows with ``x_t != m`` have none and give 0; for ``x_t = m``, with ``r = 1/expm1(sigma)``
    (the ratio ``q(x0 | x0) / q(m | x0)``; every other token has ratio 0)::

        loss = 1/2 sum_{j != m} (S_j - r [j = x0])^2,   d loss / d s_j = (S_j - r [j = x0]) S_j

    The entry ``s_m`` is ignored. Only masked rows are read.
    """
    n = x_t.shape[0]
    dtype = compute_dtype(log_score.dtype)
    rows = torch.nonzero(x_t == mask_id).squeeze(1)
    s = log_score.index_select(0, rows).to(dtype)
    r = torch.exp(-log_expm1(sigma.index_select(0, rows).to(dtype)))
    ratio = s.index_fill(-1, torch.tensor([mask_id], device=s.device), -torch.inf).exp()
    target = torch.zeros_like(ratio).scatter(-1, x0.index_select(0, rows)[:, None], r[:, None])
    loss = 0.5 * (ratio - target).square().sum(-1)
    if weight is not None:
        loss = loss * weight.index_select(0, rows).to(dtype)
    return _scatter_rows(rows, loss, n)


def concrete_score_matching_uniform(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform-graph denoising concrete score matching per row (times ``weight [N]``).

    Every ``j != x`` (``x = x_t``) moves into ``x`` at rate ``1/V``. The kernel ratios
    ``a_j = q(j | x0) / q(x | x0)``, with ``e = expm1(sigma)`` and ``ratio = e / (e + V)``:
    ``a_j = ratio`` for every ``j`` when ``x = x0``; when ``x != x0``, ``a_{x0} = 1/ratio =
    1 + V/e`` and ``a_j = 1`` for the other ``j``::

        loss = 1/(2V) sum_{j != x} (S_j - a_j)^2,   d loss / d s_j = (S_j - a_j) S_j / V

    The entry ``s_x`` is ignored.
    """
    vocab = log_score.shape[-1]
    dtype = compute_dtype(log_score.dtype)
    col = x_t[:, None]
    ratio_s = log_score.to(dtype).scatter(-1, col, -torch.inf).exp()
    ratio, _ = uniform_ratio(sigma.to(dtype), vocab)
    same = x_t == x0
    target = torch.where(same, ratio, torch.ones_like(ratio))[:, None].expand_as(ratio_s)
    a_x0 = torch.where(same, ratio, 1.0 + vocab / torch.expm1(sigma.to(dtype)))
    target = target.scatter(-1, x0[:, None], a_x0[:, None]).scatter(-1, col, 0.0)
    loss = 0.5 / vocab * (ratio_s - target).square().sum(-1)
    return loss if weight is None else loss * weight.to(dtype)
