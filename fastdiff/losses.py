"""Public training losses: score entropy (SEDD) and masked-diffusion cross entropy (MDLM).

Each function validates its arguments, flattens ``[*B, V]`` scores to ``[N, V]``, picks the
backend (:mod:`fastdiff.backend`) and applies the per-position weight, the ignore mask and the
reduction. Backends implement the weighted per-row loss on flattened tensors (the weight, with
ignored rows zeroed, goes to the backend so a fused kernel folds it into the gradient), e.g.
``impl(log_score [N, V], x_t [N], x0 [N], sigma [N], mask_id, weight [N] | None) -> [N]``.
"""

from __future__ import annotations

import torch

from fastdiff import backend, checks
from fastdiff.reference import losses as ref


def _row_weight(
    weight: float | torch.Tensor | None,
    ignore: torch.Tensor | None,
    batch_shape: torch.Size,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The per-row factor handed to the backend: ``weight`` with ignored rows set to 0."""
    if weight is None and ignore is None:
        return None
    w = torch.ones(batch_shape, device=device, dtype=dtype)
    if weight is not None:
        w = checks.per_position("weight", weight, batch_shape, device=device, dtype=dtype)
    if ignore is not None:
        w = torch.where(ignore, torch.zeros((), device=device, dtype=dtype), w)
    return w.reshape(-1)


def _reduce(
    loss: torch.Tensor,
    batch_shape: torch.Size,
    ignore: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    loss = loss.reshape(batch_shape)
    if ignore is not None:
        # the weight is 0 there already; this also clears inf / NaN of ignored rows
        loss = torch.where(ignore, torch.zeros((), dtype=loss.dtype, device=loss.device), loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.numel() if ignore is None else (~ignore).sum()
    return loss.sum() / torch.clamp(torch.as_tensor(count, device=loss.device), min=1)


def score_entropy(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: float | torch.Tensor,
    *,
    graph: str,
    mask_id: int | None = None,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "none",
) -> torch.Tensor:
    """Denoising score entropy of SEDD (ops.md 3a), per position.

    Args:
        log_score: raw log-scores ``s`` ``[*B, V]`` (the model output); the entry at ``x_t``
            is ignored (the ratio of a state to itself is 1).
        x_t: noised tokens ``[*B]``; x0: clean tokens ``[*B]``.
        sigma: total noise, a number or a tensor whose shape is a prefix of ``B``; > 0.
        graph: ``"absorb"`` (needs ``mask_id``, any column) or ``"uniform"``.
        weight: optional per-position factor (the training objective uses ``dsigma``).
        ignore: optional bool ``[*B]`` (or prefix): positions excluded (padding).
        reduction: ``"none"`` (``[*B]``), ``"sum"``, or ``"mean"`` over non-ignored positions.

    Absorbing graph, rows with ``x_t = m`` (others give 0), ``r = 1/expm1(sigma)``::

        loss = sum_{j != m} e^{s_j} - r s_{x0} + r (log r - 1)

    Uniform graph: see :func:`fastdiff.reference.losses.score_entropy_uniform`.
    The loss is >= 0, exactly 0 at the true ratios, and differentiable in ``log_score``.
    """
    graph = checks.graph(graph)
    reduction = checks.reduction(reduction)
    x_t = checks.tokens("x_t", x_t)
    vocab = checks.scores("log_score", log_score, x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    device = checks.same_device(log_score=log_score, x_t=x_t, x0=x0)
    checks.vocab_size(vocab, minimum=2)
    batch_shape = x_t.shape
    ignore = checks.bool_mask("ignore", ignore, batch_shape)
    checks.token_range("x_t", x_t, vocab)
    checks.token_range("x0", x0, vocab)
    if graph == "absorb":
        m = checks.mask_id(mask_id, vocab)
        if checks.value_checks_enabled() and bool((x0 == m).any()):
            raise ValueError(f"x0 contains the mask token {m}; clean tokens cannot be masked")
    checks.finite("log_score", log_score, allow_neg_inf=True)
    dtype = ref.compute_dtype(log_score.dtype)
    sig = checks.per_position(
        "sigma", sigma, batch_shape, device=device, dtype=dtype, positive=True
    )
    w = _row_weight(weight, ignore, batch_shape, device, dtype)
    flat = (log_score.reshape(-1, vocab), x_t.reshape(-1), x0.reshape(-1), sig.reshape(-1))
    if graph == "absorb":
        impl = backend.resolve("score_entropy_absorb", ref.score_entropy_absorb, device)
        loss = impl(*flat, m, w)
    else:
        impl = backend.resolve("score_entropy_uniform", ref.score_entropy_uniform, device)
        loss = impl(*flat, w)
    return _reduce(loss, batch_shape, ignore, reduction)


def masked_diffusion_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    mask_id: int,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "none",
) -> torch.Tensor:
    """Masked-diffusion cross entropy (MDLM SUBS / LLaDA, ops.md 3b), per position.

    ``logp = log_softmax(logits with column m set to -inf)``; masked rows (``x_t = m``) give
    ``-weight * logp[x0]``, the others 0. ``weight`` is ``dsigma / expm1(sigma)`` in continuous
    time (:meth:`fastdiff.schedules.NoiseSchedule.loss_weight`) or ``1 / p_mask`` (LLaDA).

    Shapes: ``logits [*B, V]``, ``x_t``, ``x0`` ``[*B]``; ``weight`` a number or a prefix of
    ``B``; ``ignore`` bool; ``reduction`` as in :func:`score_entropy`. The gradient is
    ``weight (softmax - onehot(x0))``, 0 in column ``m``.
    """
    reduction = checks.reduction(reduction)
    x_t = checks.tokens("x_t", x_t)
    vocab = checks.scores("logits", logits, x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    device = checks.same_device(logits=logits, x_t=x_t, x0=x0)
    checks.vocab_size(vocab, minimum=2)
    m = checks.mask_id(mask_id, vocab)
    ignore = checks.bool_mask("ignore", ignore, x_t.shape)
    checks.token_range("x_t", x_t, vocab)
    checks.token_range("x0", x0, vocab)
    if checks.value_checks_enabled() and bool((x0 == m).any()):
        raise ValueError(f"x0 contains the mask token {m}; clean tokens cannot be masked")
    checks.finite("logits", logits, allow_neg_inf=True)
    w = _row_weight(weight, ignore, x_t.shape, device, ref.compute_dtype(logits.dtype))
    impl = backend.resolve("masked_diffusion_loss", ref.masked_diffusion_loss, device)
    loss = impl(logits.reshape(-1, vocab), x_t.reshape(-1), x0.reshape(-1), m, w)
    return _reduce(loss, x_t.shape, ignore, reduction)
