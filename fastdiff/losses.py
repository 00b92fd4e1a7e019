"""Public training losses: score entropy (SEDD) and masked-diffusion cross entropy (MDLM).

Each function validates its arguments, flattens ``[*B, V]`` scores to ``[N, V]``, picks the
backend (:mod:`fastdiff.backend`) and applies the per-position weight, the ignore mask and the
reduction. Backends implement the weighted per-row loss on flattened tensors (the weight, with
ignored rows zeroed, goes to the backend so a fused kernel folds it into the gradient), e.g.
``impl(log_score [N, V], x_t [N], x0 [N], sigma [N], mask_id, weight [N] | None) -> [N]``.
"""

from __future__ import annotations

import math

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
        w = checks.per_position(
            "weight", weight, batch_shape, device=device, dtype=dtype, nonnegative=True, finite=True
        )
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


def _check_token_pair(x_t: torch.Tensor, x0: torch.Tensor, vocab: int, mask_id: int | None) -> int:
    """Token ids of ``x_t`` and ``x0`` in range; with a ``mask_id`` (absorbing graph, masked
    diffusion) the mask id is valid and never a clean token. Returns the mask id or -1."""
    checks.vocab_size(vocab, minimum=2)
    checks.token_range("x_t", x_t, vocab)
    checks.token_range("x0", x0, vocab)
    if mask_id is None:
        return -1
    m = checks.mask_id(mask_id, vocab)
    if checks.value_checks_enabled() and bool((x0 == m).any()):
        raise ValueError(f"x0 contains the mask token {m}; clean tokens cannot be masked")
    return m


def _graph_loss(
    op: str,
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: float | torch.Tensor,
    graph: str,
    mask_id: int | None,
    weight: float | torch.Tensor | None,
    ignore: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    """Checks, flattening, dispatch and reduction shared by the losses of a graph's ratios
    (:func:`score_entropy`, :func:`concrete_score_matching`): runs ``{op}_absorb`` /
    ``{op}_uniform`` (the reference functions of those names, or their kernels)."""
    graph = checks.graph(graph)
    reduction = checks.reduction(reduction)
    x_t = checks.tokens("x_t", x_t)
    vocab = checks.scores("model_output", log_score, x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    device = checks.same_device(model_output=log_score, x_t=x_t, x0=x0)
    batch_shape = x_t.shape
    ignore = checks.bool_mask("ignore", ignore, batch_shape)
    m = _check_token_pair(
        x_t, x0, vocab, checks.mask_id(mask_id, vocab) if graph == "absorb" else None
    )
    checks.finite("model_output", log_score, allow_neg_inf=True)
    dtype = ref.compute_dtype(log_score.dtype)
    sig = checks.per_position(
        "sigma", sigma, batch_shape, device=device, dtype=dtype, positive=True
    )
    w = _row_weight(weight, ignore, batch_shape, device, dtype)
    flat = (log_score.reshape(-1, vocab), x_t.reshape(-1), x0.reshape(-1), sig.reshape(-1))
    name = f"{op}_{graph}"
    impl = backend.resolve(name, getattr(ref, name), device)
    loss = impl(*flat, m, w) if graph == "absorb" else impl(*flat, w)
    return _reduce(loss, batch_shape, ignore, reduction)


def score_entropy(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    graph: str,
    mask_id: int | None = None,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Denoising score entropy of SEDD (docs/ops.md#score-entropy), per position.

    Args:
        model_output: raw log-scores ``s`` ``[*B, V]``; the entry at ``x_t``
            is ignored (the ratio of a state to itself is 1).
        x_t: noised tokens ``[*B]``; x0: clean tokens ``[*B]``.
        sigma: total noise, a number or a tensor whose shape is a prefix of ``B``; > 0.
        graph: ``"absorb"`` (needs ``mask_id``, any column) or ``"uniform"``.
        weight: optional per-position factor (the training objective uses ``dsigma``).
        ignore: optional bool ``[*B]`` (or prefix): positions excluded (padding).
        reduction: ``"mean"`` (default) over non-ignored positions, ``"sum"``, or ``"none"``
            (``[*B]``).

    Absorbing graph, rows with ``x_t = m`` (others give 0), ``r = 1/expm1(sigma)``::

        loss = sum_{j != m} e^{s_j} - r s_{x0} + r (log r - 1)

    Uniform graph: see :func:`fastdiff.reference.losses.score_entropy_uniform`.
    The loss is >= 0, exactly 0 at the true ratios, and differentiable in ``model_output``.

    Precision: fp16 / bf16 inputs are computed in fp32 and the loss is fp32. The gradient has
    the input's dtype; in fp16 it overflows where ``|weight (S_j - r)|`` passes 65504 (absorbing
    graph at sigma below about 1.5e-5), so train in bf16 or fp32 when sigma gets that small.
    """
    return _graph_loss(
        "score_entropy", model_output, x_t, x0, sigma, graph, mask_id, weight, ignore, reduction
    )


def masked_diffusion_loss(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    mask_id: int,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Masked-diffusion cross entropy (MDLM SUBS / LLaDA), per position
    (docs/ops.md#masked-diffusion-cross-entropy).

    ``logp = log_softmax(model_output with column m set to -inf)``; masked rows (``x_t = m``) give
    ``-weight * logp[x0]``, the others 0. ``weight`` is ``dsigma / expm1(sigma)`` in continuous
    time (:meth:`fastdiff.schedules.NoiseSchedule.loss_weight`) or ``1 / p_mask`` (LLaDA).

    Shapes: ``model_output [*B, V]`` (logits), ``x_t``, ``x0`` ``[*B]``; ``weight`` a number
    or a prefix of ``B``; ``ignore`` bool; ``reduction`` as in :func:`score_entropy`. The
    gradient is ``weight (softmax - onehot(x0))``, 0 in column ``m``.
    """
    reduction = checks.reduction(reduction)
    x_t = checks.tokens("x_t", x_t)
    vocab = checks.scores("model_output", model_output, x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    device = checks.same_device(model_output=model_output, x_t=x_t, x0=x0)
    ignore = checks.bool_mask("ignore", ignore, x_t.shape)
    m = _check_token_pair(x_t, x0, vocab, checks.mask_id(mask_id, vocab))
    checks.finite("model_output", model_output, allow_neg_inf=True)
    _check_masked_rows_have_a_token(model_output, x_t, ignore, m)
    w = _row_weight(weight, ignore, x_t.shape, device, ref.compute_dtype(model_output.dtype))
    impl = backend.resolve("masked_diffusion_loss", ref.masked_diffusion_loss, device)
    loss = impl(model_output.reshape(-1, vocab), x_t.reshape(-1), x0.reshape(-1), m, w)
    return _reduce(loss, x_t.shape, ignore, reduction)


def _check_masked_rows_have_a_token(
    model_output: torch.Tensor, x_t: torch.Tensor, ignore: torch.Tensor | None, mask_id: int
) -> None:
    """A masked, non-ignored row whose non-mask logits are all ``-inf`` gives the true token
    probability 0 (an infinite loss, NaN gradients): rejected, as :func:`fastdiff.mdlm_step`
    rejects the same row."""
    if not checks.value_checks_enabled() or not x_t.numel():
        return
    active = x_t == mask_id
    if ignore is not None:
        active &= ~ignore
    rows = model_output[active]
    if rows.numel():
        keep = torch.ones(rows.shape[-1], dtype=torch.bool, device=rows.device)
        keep[mask_id] = False
        if bool(torch.isneginf(rows[:, keep]).all(-1).any()):
            raise ValueError(
                "model_output has a masked row whose non-mask logits are all -inf "
                "(no token possible)"
            )


def _check_projection(
    hidden: torch.Tensor, projection: torch.Tensor, bias: torch.Tensor | None, x_t: torch.Tensor
) -> int:
    """``hidden [*B, H]``, ``projection [V, H]``, ``bias [V]``, all one float dtype."""
    checks.floating("hidden", hidden, min_dim=1)
    checks.floating("projection", projection, min_dim=2)
    if projection.dim() != 2 or projection.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"projection must have shape [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(projection.shape)}"
        )
    if hidden.shape[:-1] != x_t.shape:
        raise ValueError(
            f"hidden has shape {tuple(hidden.shape)}; expected {(*tuple(x_t.shape), 'H')}"
        )
    if bias is not None:
        checks.floating("bias", bias, min_dim=1)
        if bias.shape != (projection.shape[0],):
            raise ValueError(
                f"bias must have shape [{projection.shape[0]}], got {tuple(bias.shape)}"
            )
    dtypes = {hidden.dtype, projection.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1:
        raise TypeError(
            f"hidden, projection and bias must share one dtype, got {sorted(map(str, dtypes))}"
        )
    checks.finite("hidden", hidden)
    checks.finite("projection", projection)
    if bias is not None:
        checks.finite("bias", bias)
    return projection.shape[0]


def _scalar_reduce(
    total: torch.Tensor, batch_shape: torch.Size, ignore: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    if reduction == "none":
        raise ValueError(
            "the fused linear losses return a scalar: use reduction='sum' or 'mean' (a per-row "
            "loss would need the per-row gradient of the projection, which the fusion avoids)"
        )
    if reduction == "sum":
        return total
    count = batch_shape.numel() if ignore is None else (~ignore).sum()
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


def _check_chunk(chunk_rows: int | None) -> None:
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")


def linear_score_entropy(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    bias: torch.Tensor | None = None,
    graph: str,
    mask_id: int | None = None,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Score entropy of the logits ``hidden W^T + b`` without materializing them.

    ``hidden [*B, H]`` (the last hidden states), ``projection`` ``W [V, H]``, ``bias [V]``;
    everything else as in :func:`score_entropy`. Returns the sum (or mean over non-ignored
    positions) of ``weight * loss``; differentiable in ``hidden``, ``projection`` and ``bias``.
    On the Triton backend the rows are processed ``chunk_rows`` at a time (default: about 64 Mi
    logits per chunk) and only one chunk of logits exists at once; the reference computes the
    full logits.
    """
    graph = checks.graph(graph)
    reduction = checks.reduction(reduction)
    _check_chunk(chunk_rows)
    x_t = checks.tokens("x_t", x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    vocab = _check_projection(hidden, projection, bias, x_t)
    device = checks.same_device(hidden=hidden, projection=projection, bias=bias, x_t=x_t, x0=x0)
    batch_shape = x_t.shape
    ignore = checks.bool_mask("ignore", ignore, batch_shape)
    m = _check_token_pair(
        x_t, x0, vocab, checks.mask_id(mask_id, vocab) if graph == "absorb" else None
    )
    dtype = ref.compute_dtype(hidden.dtype)
    sig = checks.per_position(
        "sigma", sigma, batch_shape, device=device, dtype=dtype, positive=True
    )
    w = _row_weight(weight, ignore, batch_shape, device, dtype)
    impl = backend.resolve("linear_score_entropy", ref.linear_score_entropy, device)
    total = impl(
        hidden.reshape(-1, hidden.shape[-1]),
        projection,
        bias,
        x_t.reshape(-1),
        x0.reshape(-1),
        sig.reshape(-1),
        w,
        graph,
        m,
        chunk_rows,
    )
    return _scalar_reduce(total, batch_shape, ignore, reduction)


def linear_masked_diffusion_loss(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    mask_id: int,
    bias: torch.Tensor | None = None,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Masked-diffusion cross entropy of ``hidden W^T + b`` without materializing the logits;
    shapes and chunking as in :func:`linear_score_entropy`, the loss as in
    :func:`masked_diffusion_loss`. Only masked rows are projected on the Triton backend."""
    reduction = checks.reduction(reduction)
    _check_chunk(chunk_rows)
    x_t = checks.tokens("x_t", x_t)
    x0 = checks.tokens("x0", x0, x_t.shape)
    vocab = _check_projection(hidden, projection, bias, x_t)
    device = checks.same_device(hidden=hidden, projection=projection, bias=bias, x_t=x_t, x0=x0)
    ignore = checks.bool_mask("ignore", ignore, x_t.shape)
    m = _check_token_pair(x_t, x0, vocab, checks.mask_id(mask_id, vocab))
    w = _row_weight(weight, ignore, x_t.shape, device, ref.compute_dtype(hidden.dtype))
    impl = backend.resolve("linear_masked_diffusion_loss", ref.linear_masked_diffusion_loss, device)
    total = impl(
        hidden.reshape(-1, hidden.shape[-1]),
        projection,
        bias,
        x_t.reshape(-1),
        x0.reshape(-1),
        m,
        w,
        chunk_rows,
    )
    return _scalar_reduce(total, x_t.shape, ignore, reduction)


def scale_by_sigma(model_output: torch.Tensor, *, sigma: float | torch.Tensor) -> torch.Tensor:
    """SEDD's absorbing "scale by sigma" parameterization (a model-side helper,
    docs/ops.md#scale-by-sigma):
    ``s = logits - log(expm1(sigma)) - log(V - 1)``.

    ``model_output [*B, V]`` (the network's raw logits); ``sigma`` a number or a tensor whose
    shape is a prefix of ``B`` (> 0). Returns log-scores of the logits' dtype (computed in
    fp32 / fp64), so that a model outputting zeros starts at the ratio
    ``1 / ((V - 1) expm1(sigma))`` of a uniform guess.
    """
    logits = model_output
    checks.floating("model_output", logits, min_dim=1)
    vocab = logits.shape[-1]
    checks.vocab_size(vocab, minimum=2)
    dtype = ref.compute_dtype(logits.dtype)
    sig = checks.per_position(
        "sigma", sigma, logits.shape[:-1], device=logits.device, dtype=dtype, positive=True
    )
    shift = ref.log_expm1(sig) + math.log(vocab - 1)
    return (logits.to(dtype) - shift[..., None]).to(logits.dtype)


def concrete_score_matching(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    graph: str,
    mask_id: int | None = None,
    weight: float | torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Denoising concrete score matching (the L_CSM of SEDD), per position: an alternative
    objective to :func:`score_entropy` with the same arguments and conventions.

    ``1/2 sum_y w_y (S_y - a_y)^2`` over the neighbours ``y`` that move into ``x_t`` at rate
    ``w_y``, with ``S = exp(model_output)`` the predicted ratios and ``a_y = q(y | x0) /
    q(x_t | x0)`` the ratios of the noising kernel given ``x0``. Its expectation over ``x0``
    differs from the squared error against the true ratios ``p_t(y) / p_t(x_t)`` by a
    constant, so both have the same minimizer; the loss is 0 at ``S = a``.

    - absorbing graph, rows with ``x_t = m`` (others give 0), ``r = 1/expm1(sigma)``:
      ``loss = 1/2 sum_{j != m} (S_j - r [j = x0])^2``;
    - uniform graph, ``e = expm1(sigma)``, ``ratio = e / (e + V)``:
      ``loss = 1/(2V) sum_{j != x_t} (S_j - a_j)^2`` with ``a_j = ratio`` where ``x_t = x0``,
      else ``a_{x0} = 1 + V/e`` and ``a_j = 1`` for the other ``j``.

    Shapes, ``weight``, ``ignore`` and ``reduction`` as in :func:`score_entropy`; the gradient
    is ``weight w_j (S_j - a_j) S_j``, 0 at ``x_t`` (and at ``m``). The squares grow as
    ``1/sigma^2`` at small sigma (and ``S^2`` overflows fp32 for log-scores above 44): the
    reason SEDD prefers score entropy.
    """
    return _graph_loss(
        "concrete_score_matching",
        model_output,
        x_t,
        x0,
        sigma,
        graph,
        mask_id,
        weight,
        ignore,
        reduction,
    )
