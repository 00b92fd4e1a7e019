"""Public Gaussian (continuous-state) diffusion ops: forward noising (with the Diffusion-LM
embedding gather), the eps / x0 regression loss, classifier-free guidance, DDPM and DDIM steps
and rounding to the nearest embedding (docs/ops.md#gaussian-noising,
docs/ops.md#gaussian-diffusion, docs/ops.md#classifier-free-guidance).

Shapes: a state ``x`` (``x0``, ``x_t``, model outputs, noise) is floating ``[*B, H]``: ``B``
the batch shape (e.g. ``[batch, length]``), ``H`` the feature (embedding) width. Token ids are
``[*B]``, an embedding table ``[V, H]``. Per-position scalars (``alpha_bar``,
``alpha_bar_next``, ``eta``, ``weight``, ``guidance_scale``) are a Python number or a tensor
whose shape is a prefix of ``B`` (per sequence or per position). ``fixed`` (bool, prefix of
``B``) marks positions that are never noised and never change (prompt, DiffuSeq source side,
padding).

Precision: fp16 / bf16 inputs are computed in float32, float64 inputs in float64; outputs
come back in the input dtype. Randomness: noise that is not passed in is drawn with
:func:`fastdiff.random.normal` keyed by ``(seed, offset, position, feature)`` with the flattened
position index, so the same ``seed`` gives the same noise on every backend and batch shape;
``generator`` / ``seed`` / ``offset`` as in :func:`fastdiff.sample_categorical`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.losses import _reduce, _row_weight
from fastdiff.reference import gaussian as ref

# diffusers' names -> the backends' ("eps" / "x0"; "beta" / "posterior")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0"}
VARIANCE_TYPES = {"fixed_small": "posterior", "fixed_large": "beta"}

Scalar = float | torch.Tensor


class GaussianNoised(NamedTuple):
    """Result of :func:`add_noise_gaussian`: all three are ``[*B, H]``."""

    x_t: torch.Tensor
    """The noised state ``sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise`` (``x0`` at fixed
    positions)."""
    noise: torch.Tensor
    """The noise used (the eps-prediction target); 0 at fixed positions."""
    x0: torch.Tensor
    """The clean state (the gathered embedding rows ``E[x0]`` for token input)."""


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _checking(value: Scalar) -> bool:
    """Whether to read a per-position value (numbers always; tensors when value checks are on)."""
    return checks.value_checks_enabled() or not isinstance(value, torch.Tensor)


def _checked(value: Scalar, t: torch.Tensor) -> torch.Tensor:
    """What the value checks read: the tensor, or a number as a host constant (not the expanded
    device tensor, whose values ``torch.compile`` cannot know)."""
    return t if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=t.dtype)


def _same_shape(name: str, t: torch.Tensor, ref_name: str, ref_t: torch.Tensor) -> None:
    if t.shape != ref_t.shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; expected {tuple(ref_t.shape)} (the shape of "
            f"{ref_name})"
        )


def _state(name: str, x: torch.Tensor) -> tuple[torch.Size, int, int]:
    """A floating ``[*B, H]`` state; returns ``(B, N = prod(B), H)``."""
    checks.floating(name, x, min_dim=1)
    batch_shape = x.shape[:-1]
    return batch_shape, batch_shape.numel(), x.shape[-1]


def _embedding(embedding: torch.Tensor) -> tuple[int, int]:
    """A floating ``[V, H]`` table with ``V >= 1``; returns ``(V, H)``."""
    checks.floating("embedding", embedding, min_dim=2)
    if embedding.dim() != 2:
        raise ValueError(f"embedding must have shape [V, H], got {tuple(embedding.shape)}")
    if embedding.shape[0] < 1:
        raise ValueError("embedding has no rows (V = 0)")
    return embedding.shape[0], embedding.shape[1]


def _real(
    name: str,
    value: Scalar,
    batch_shape: torch.Size,
    device: torch.device,
    *,
    nonnegative: bool = False,
) -> torch.Tensor:
    """A finite per-position scalar expanded to ``B`` and flattened: float64 ``[N]``."""
    t = checks.per_position(
        name, value, batch_shape, device=device, dtype=torch.float64, nonnegative=nonnegative
    )
    if _checking(value) and not bool(torch.isfinite(_checked(value, t)).all()):
        raise ValueError(f"{name} must be finite (got inf)")
    return t.reshape(-1)


def _abar(
    name: str,
    value: Scalar,
    batch_shape: torch.Size,
    device: torch.device,
    *,
    positive: bool = False,
    below_one: bool = False,
) -> torch.Tensor:
    """A cumulative alpha in ``[0, 1]`` (``(0, ...`` / ``..., 1)`` when asked), float64 ``[N]``."""
    t = checks.per_position(
        name,
        value,
        batch_shape,
        device=device,
        dtype=torch.float64,
        nonnegative=True,
        positive=positive,
    )
    if _checking(value):
        check = _checked(value, t)
        if below_one and bool((check >= 1).any()):
            raise ValueError(f"{name} must be < 1 here (1 - {name} is divided by); got 1 or more")
        if bool((check > 1).any()):
            raise ValueError(f"{name} must lie in [0, 1] (a cumulative product of alphas)")
    return t.reshape(-1)


def _guidance_weight(
    scale: Scalar,
    uncond: torch.Tensor | None,
    batch_shape: torch.Size,
    device: torch.device,
) -> torch.Tensor | None:
    """``w = guidance_scale - 1`` per row (the form the kernels take), or ``None`` without
    guidance."""
    if uncond is not None:
        return _real("guidance_scale", scale, batch_shape, device) - 1.0
    if isinstance(scale, torch.Tensor) or (
        isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1
    ):
        raise ValueError(
            "guidance_scale != 1 needs model_output_uncond (classifier-free guidance combines "
            "the conditional and the unconditional model outputs)"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number or a tensor, got {type(scale).__name__}")
    return None


def _optional_like(name: str, t: torch.Tensor | None, x_t: torch.Tensor) -> None:
    if t is not None:
        checks.floating(name, t)
        _same_shape(name, t, "x_t", x_t)


def _flat(t: torch.Tensor | None, n: int, h: int | None = None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.reshape(n) if h is None else t.reshape(n, h)


# --------------------------------------------------------------------------------------------
# forward noising and loss
# --------------------------------------------------------------------------------------------


def add_noise_gaussian(
    x0: torch.Tensor,
    *,
    alpha_bar: Scalar,
    noise: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> GaussianNoised:
    """Sample ``x_t ~ q(x_t | x0)``: ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``
    (docs/ops.md#gaussian-noising).

    Args:
        x0: the clean state, floating ``[*B, H]``; or, when ``embedding`` is given, token ids
            ``[*B]`` whose rows ``E[x0]`` are gathered (Diffusion-LM; fused with the noising).
        alpha_bar: ``alpha_bar_t`` in ``[0, 1]``, a number or a tensor whose shape is a prefix
            of ``B``.
        noise: ``eps`` ``[*B, H]``; when ``None`` it is drawn, ``N(0, 1)`` keyed by
            ``(seed, offset, flattened position, feature)`` and rounded to the output dtype.
            When ``noise`` is given, ``generator`` / ``seed`` are not used.
        embedding: ``[V, H]`` table for token input.
        fixed: optional bool ``[*B]`` (or prefix): positions left clean (``x_t = x0``, noise 0).
        generator / seed / offset: counter-based randomness (:mod:`fastdiff.random`).

    Returns:
        :class:`GaussianNoised` ``(x_t, noise, x0)``, each ``[*B, H]`` in the dtype of ``x0`` (of
        ``embedding`` for token input; a given ``noise`` is returned in its own dtype). The
        arithmetic runs in float32 for fp16 / bf16 and float64 for float64.
    """
    if embedding is not None:
        vocab, h = _embedding(embedding)
        x0 = checks.tokens("x0", x0)
        batch_shape = x0.shape
        n = batch_shape.numel()
    else:
        if isinstance(x0, torch.Tensor) and x0.dtype in (torch.int64, torch.int32):
            raise TypeError("x0 holds integer token ids: pass embedding=[V, H] to gather them")
        batch_shape, n, h = _state("x0", x0)
    if noise is not None:
        checks.floating("noise", noise)
        if noise.shape != (*batch_shape, h):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; expected {(*tuple(batch_shape), h)}"
            )
    fixed = checks.bool_mask("fixed", fixed, batch_shape)
    device = checks.same_device(x0=x0, embedding=embedding, noise=noise, fixed=fixed)
    if embedding is not None:
        checks.token_range("x0", x0, vocab)
        checks.finite("embedding", embedding)
    else:
        checks.finite("x0", x0)
    if noise is not None:
        checks.finite("noise", noise)
    a = _abar("alpha_bar", alpha_bar, batch_shape, device)
    checks.offset(offset)
    key = 0 if noise is not None else frandom.resolve_seed(seed, generator, device)
    impl = backend.resolve("q_sample", ref.q_sample, device)
    x_t, eps, clean = impl(
        _flat(x0, n, None if embedding is not None else h),
        a,
        _flat(noise, n, h),
        embedding,
        _flat(fixed, n),
        key,
        offset,
    )
    shape = (*batch_shape, h)
    return GaussianNoised(x_t.reshape(shape), eps.reshape(shape), clean.reshape(shape))


def gaussian_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: Scalar | None = None,
    ignore: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Gaussian diffusion regression loss (docs/ops.md#gaussian-loss), per position.

    ``loss = weight * sum_h (pred - target)^2``: the eps-prediction loss
    ``||eps - eps_hat||^2`` or the x0-prediction loss ``||x0 - x0_hat||^2`` (summed, not
    averaged, over the feature dimension).

    Args:
        pred, target: floating ``[*B, H]`` of the same shape.
        weight: optional per-position factor, a number or a tensor whose shape is a prefix of
            ``B``.
        ignore: optional bool ``[*B]`` (or prefix): positions excluded (padding, fixed source).
        reduction: ``"none"`` (``[*B]``), ``"sum"``, or ``"mean"`` over non-ignored positions.

    Computed in float32 (float64 when an input is float64); differentiable in both inputs.
    """
    reduction = checks.reduction(reduction)
    batch_shape, n, h = _state("pred", pred)
    checks.floating("target", target)
    _same_shape("target", target, "pred", pred)
    device = checks.same_device(pred=pred, target=target, ignore=ignore)
    ignore = checks.bool_mask("ignore", ignore, batch_shape)
    checks.finite("pred", pred)
    checks.finite("target", target)
    w = _row_weight(
        weight, ignore, batch_shape, device, ref.compute_dtype(pred.dtype, target.dtype)
    )
    impl = backend.resolve("gaussian_loss", ref.gaussian_loss, device)
    loss = impl(pred.reshape(n, h), target.reshape(n, h), w)
    return _reduce(loss, batch_shape, ignore, reduction)


# --------------------------------------------------------------------------------------------
# guidance
# --------------------------------------------------------------------------------------------


def classifier_free_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, *, guidance_scale: Scalar
) -> torch.Tensor:
    """Classifier-free guidance, diffusers' convention (docs/ops.md#classifier-free-guidance)::

        out = uncond + s (cond - uncond),   s = guidance_scale

    (``s = 1 + w`` for the ``(1 + w) cond - w uncond`` of Ho & Salimans, and LLaDA's
    ``cfg_scale = w``). Works for continuous model outputs (eps or x0, ``[*B, H]``) and for
    discrete logits (``[*B, V]``). It is computed as ``cond + (s - 1)(cond - uncond)``, so
    ``s = 1`` returns ``cond`` exactly and ``s = 0`` gives ``uncond``. Entries that are equal in
    both (``-inf`` logits of an excluded column included) are returned unchanged.

    Args:
        cond, uncond: floating tensors of the same shape ``[*B, D]``.
        guidance_scale: ``s``, a finite number or a tensor whose shape is a prefix of ``B``.

    Returns ``[*B, D]`` in the dtype of ``cond`` (computed in float32, float64 for float64).
    """
    batch_shape, n, d = _state("cond", cond)
    checks.floating("uncond", uncond)
    _same_shape("uncond", uncond, "cond", cond)
    device = checks.same_device(cond=cond, uncond=uncond)
    w = _real("guidance_scale", guidance_scale, batch_shape, device) - 1.0
    checks.finite("cond", cond, allow_neg_inf=True)
    checks.finite("uncond", uncond, allow_neg_inf=True)
    out = ref.classifier_free_guidance(cond.reshape(n, d), uncond.reshape(n, d), w)
    return out.to(cond.dtype).reshape(cond.shape)


# --------------------------------------------------------------------------------------------
# reverse steps
# --------------------------------------------------------------------------------------------


@dataclass
class _Step:
    model_output: torch.Tensor  # [N, H]
    x_t: torch.Tensor  # [N, H]
    abar: torch.Tensor  # [N] float64
    abar_prev: torch.Tensor  # [N] float64
    uncond: torch.Tensor | None  # [N, H]
    scale: torch.Tensor | None  # [N] float64
    noise: torch.Tensor | None  # [N, H]
    fixed: torch.Tensor | None  # [N]
    seed: int | torch.Tensor
    shape: torch.Size
    batch_shape: torch.Size
    device: torch.device


def _prepare_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar: Scalar,
    alpha_bar_next: Scalar,
    prediction_type: str,
    uncond: torch.Tensor | None,
    guidance_scale: Scalar,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    generator: torch.Generator | None,
    seed: int | torch.Tensor | None,
) -> _Step:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {tuple(PREDICTION_TYPES)}, got {prediction_type!r}"
        )
    batch_shape, n, h = _state("x_t", x_t)
    checks.floating("model_output", model_output)
    _same_shape("model_output", model_output, "x_t", x_t)
    _optional_like("model_output_uncond", uncond, x_t)
    _optional_like("noise", noise, x_t)
    fixed = checks.bool_mask("fixed", fixed, batch_shape)
    device = checks.same_device(
        model_output=model_output, x_t=x_t, model_output_uncond=uncond, noise=noise, fixed=fixed
    )
    scale = _guidance_weight(guidance_scale, uncond, batch_shape, device)
    a = _abar("alpha_bar", alpha_bar, batch_shape, device, positive=True, below_one=True)
    a_prev = _abar("alpha_bar_next", alpha_bar_next, batch_shape, device, positive=True)
    if checks.value_checks_enabled() and bool((a_prev < a).any()):
        raise ValueError("alpha_bar_next must be >= alpha_bar (the reverse process removes noise)")
    checks.finite("model_output", model_output)
    checks.finite("x_t", x_t)
    if uncond is not None:
        checks.finite("model_output_uncond", uncond)
    if noise is not None:
        checks.finite("noise", noise)
    return _Step(
        model_output=model_output.reshape(n, h),
        x_t=x_t.reshape(n, h),
        abar=a,
        abar_prev=a_prev,
        uncond=_flat(uncond, n, h),
        scale=scale,
        noise=_flat(noise, n, h),
        fixed=_flat(fixed, n),
        seed=0 if noise is not None else frandom.resolve_seed(seed, generator, device),
        shape=x_t.shape,
        batch_shape=batch_shape,
        device=device,
    )


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    alpha_bar: Scalar,
    alpha_bar_next: Scalar,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: Scalar = 1.0,
    noise: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """One DDPM ancestral step ``x_t -> x_{t-1}`` (docs/ops.md#ddpm-step).

    With ``a = alpha_bar``, ``a' = alpha_bar_next``, ``alpha_t = a / a'`` and
    ``beta_t = 1 - alpha_t``::

        eps prediction: x_{t-1} = (x_t - beta_t / sqrt(1 - a) eps_hat) / sqrt(alpha_t)
                                  + sigma_t z
        x0 prediction:  x_{t-1} = sqrt(a') beta_t / (1 - a) x0_hat
                                  + sqrt(alpha_t) (1 - a') / (1 - a) x_t + sigma_t z

    (the same posterior mean when ``x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)``),
    ``sigma_t^2`` the posterior variance ``beta_t (1 - a') / (1 - a)``
    (``variance_type="fixed_small"``, diffusers' default) or ``beta_t`` (``"fixed_large"``).
    No noise is added at the last step, ``alpha_bar_next == 1``.

    Args:
        model_output: ``eps_hat`` or ``x0_hat`` ``[*B, H]`` (see ``prediction_type``).
        x_t: the current state ``[*B, H]``.
        alpha_bar, alpha_bar_next: ``alpha_bar_t`` in ``(0, 1)`` and ``alpha_bar_{t-1}`` in
            ``[alpha_bar_t, 1]``;
            numbers or tensors whose shape is a prefix of ``B``
            (``GaussianSchedule.alphas_cumprod[i]`` and ``.alphas_cumprod_prev[i]``).
        prediction_type: ``"epsilon"`` (``eps_hat``) or ``"sample"`` (``x0_hat``), diffusers'
            names.
        variance_type: ``"fixed_small"`` (posterior) or ``"fixed_large"`` (``beta_t``).
        model_output_uncond / guidance_scale: when given, the model output is first replaced by
            :func:`classifier_free_guidance` ``uncond + s (cond - uncond)`` (diffusers' ``s``;
            1 = no guidance).
        noise: ``z`` ``[*B, H]``; when ``None`` it is drawn, keyed by
            ``(seed, offset, flattened position, feature)``.
        fixed: optional bool ``[*B]`` (or prefix): positions that keep ``x_t``.

    Returns ``x_{t-1}`` ``[*B, H]`` in the dtype of ``x_t``.
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(
            f"variance_type must be one of {tuple(VARIANCE_TYPES)}, got {variance_type!r}"
        )
    checks.offset(offset)
    st = _prepare_step(
        model_output,
        x_t,
        alpha_bar,
        alpha_bar_next,
        prediction_type,
        model_output_uncond,
        guidance_scale,
        noise,
        fixed,
        generator,
        seed,
    )
    impl = backend.resolve("ddpm_step", ref.ddpm_step, st.device)
    out = impl(
        st.model_output,
        st.x_t,
        st.abar,
        st.abar_prev,
        PREDICTION_TYPES[prediction_type],
        VARIANCE_TYPES[variance_type],
        st.uncond,
        st.scale,
        st.noise,
        st.fixed,
        st.seed,
        offset,
    )
    return out.reshape(st.shape)


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    alpha_bar: Scalar,
    alpha_bar_next: Scalar,
    eta: Scalar = 0.0,
    prediction_type: str = "epsilon",
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: Scalar = 1.0,
    noise: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """One DDIM(eta) step from ``a = alpha_bar`` to ``a' = alpha_bar_next``
    (docs/ops.md#ddim-step).

    ``x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a)`` (eps prediction) or
    ``eps = (x_t - sqrt(a) x0_hat) / sqrt(1 - a)`` (x0 prediction); then::

        sig = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')
        x'  = sqrt(a') x0_hat + sqrt(1 - a' - sig^2) eps + sig z

    ``eta = 0`` is deterministic; ``eta = 1`` is the DDPM step with the posterior variance;
    ``a' = 1`` returns ``x0_hat``. ``1 - a' - sig^2`` is clamped at 0 (``eta > 1``).
    Steps may skip (``a'`` any value in ``[a, 1]``).

    Args:
        eta: ``>= 0``, a number or a tensor whose shape is a prefix of ``B``.
        Other arguments as in :func:`ddpm_step`.

    Returns ``x'`` ``[*B, H]`` in the dtype of ``x_t``.
    """
    checks.offset(offset)
    st = _prepare_step(
        model_output,
        x_t,
        alpha_bar,
        alpha_bar_next,
        prediction_type,
        model_output_uncond,
        guidance_scale,
        noise,
        fixed,
        generator,
        seed,
    )
    eta_t = _real("eta", eta, st.batch_shape, st.device, nonnegative=True)
    impl = backend.resolve("ddim_step", ref.ddim_step, st.device)
    out = impl(
        st.model_output,
        st.x_t,
        st.abar,
        st.abar_prev,
        eta_t,
        PREDICTION_TYPES[prediction_type],
        st.uncond,
        st.scale,
        st.noise,
        st.fixed,
        st.seed,
        offset,
    )
    return out.reshape(st.shape)


# --------------------------------------------------------------------------------------------
# rounding
# --------------------------------------------------------------------------------------------


def round_to_embedding(
    x0: torch.Tensor, embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round every vector to its nearest embedding row (Diffusion-LM clamping,
    docs/ops.md#rounding-to-the-embedding).

    ``token = argmin_v ||E_v - x||^2 = argmax_v 2 E_v . x - ||E_v||^2`` (ties: lowest index),
    a matmul plus a row argmax, computed in float32 (float64 when an input is float64). The
    reference holds one ``[rows, V]`` score block at a time (about 64 MB), never ``[N, V]``.

    Args:
        x0: floating ``[*B, H]`` (the clean state to round, e.g. the predicted ``x0_hat``).
        embedding: floating ``[V, H]``.

    Returns ``(tokens [*B] int64, E[tokens] [*B, H])``, the rows in the dtype of ``x0``; pass
    the rows to a step with ``prediction_type="sample"`` for the clamping trick.
    """
    x = x0
    batch_shape, n, h = _state("x0", x)
    vocab, width = _embedding(embedding)
    if width != h:
        raise ValueError(
            f"x0 has {h} features but the embedding rows have {width} (shape {(vocab, width)})"
        )
    device = checks.same_device(x0=x, embedding=embedding)
    checks.finite("x0", x)
    checks.finite("embedding", embedding)
    impl = backend.resolve("round_to_embedding", ref.round_to_embedding, device)
    tokens, rounded = impl(x.reshape(n, h), embedding)
    return tokens.reshape(batch_shape), rounded.reshape(x.shape)
