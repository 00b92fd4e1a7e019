"""Reference Gaussian (continuous-state) diffusion ops (docs/ops.md#gaussian-noising,
docs/ops.md#gaussian-diffusion) on flattened inputs.

Shapes: states and model outputs ``[N, H]`` (``N`` positions, ``H`` features), token ids
``[N]`` int64, an embedding table ``[V, H]``, per-row scalars (``abar``, ``abar_prev``,
``eta``, guidance scale) float64 ``[N]``, ``fixed`` bool ``[N]`` or ``None``.

Precision: per-row coefficients are formed in float64 and cast once; the ``[N, H]`` arithmetic
runs in the compute dtype, float64 when any floating input is float64 and float32 otherwise
(fp16 / bf16 are upcast after loading); results are written in the dtype of the state they
replace.

Randomness: Gaussian noise that is not passed in is :func:`fastdiff.random.normal` keyed by
``(seed, offset, row, column)`` with ``row`` the flattened position index and ``column`` the
feature index, so it does not depend on the batch shape, the chunking or the backend.
"""

from __future__ import annotations

import torch

from fastdiff import random as frandom

Seed = int | torch.Tensor

#: Upper bound on the bytes of one ``[rows, V]`` score block in :func:`round_to_embedding`.
SCORE_BLOCK_BYTES = 64 << 20


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 when any of ``dtypes`` is float64, float32 otherwise."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _col(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A per-row float64 coefficient ``[N]`` as a ``[N, 1]`` column in ``dtype``."""
    return v.to(dtype)[:, None]


def _std_normal(seed: Seed, offset: int, n: int, h: int, device: torch.device) -> torch.Tensor:
    """float64 ``N(0, 1)`` ``[n, h]`` keyed by ``(seed, offset, row, column)``."""
    return frandom.normal(seed, offset, torch.arange(n, device=device), h)


def _keep_fixed(new: torch.Tensor, old: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    return new if fixed is None else torch.where(fixed[:, None], old, new)


def q_sample(
    x0: torch.Tensor,
    abar: torch.Tensor,
    noise: torch.Tensor | None,
    embedding: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward Gaussian noising: ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``.

    ``x0`` is ``[N, H]`` floating, or token ids ``[N]`` when ``embedding [V, H]`` is given (then
    ``x0 <- embedding[x0]``, the Diffusion-LM gather). ``eps`` is ``noise`` when given, else
    the keyed normal draw rounded to the dtype of ``x0`` (so the returned noise is exactly the
    one used). Fixed rows keep ``x_t = x0`` and return ``eps = 0``.

    Returns ``(x_t, eps, x0)`` with ``x_t`` and the drawn ``eps`` in the dtype of ``x0`` (the
    gathered embedding rows for token input).
    """
    if embedding is not None:
        x0 = embedding.index_select(0, x0)
    n, h = x0.shape
    if noise is None:
        noise = _std_normal(seed, offset, n, h, x0.device).to(x0.dtype)
    ct = compute_dtype(x0.dtype, noise.dtype)
    x_t = _col(abar.sqrt(), ct) * x0.to(ct) + _col((1.0 - abar).sqrt(), ct) * noise.to(ct)
    x_t = _keep_fixed(x_t.to(x0.dtype), x0, fixed)
    if fixed is not None:
        zero = torch.zeros((), dtype=noise.dtype, device=noise.device)
        noise = torch.where(fixed[:, None], zero, noise)
    return x_t, noise, x0


def gaussian_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row squared error ``sum_h (pred - target)^2`` ``[N]`` (eps- or x0-prediction MSE,
    docs/ops.md#gaussian-loss), times ``weight [N]`` when given (the public API zeroes the
    weight of ignored rows), in the compute dtype; differentiable through autograd."""
    ct = compute_dtype(pred.dtype, target.dtype)
    d = pred.to(ct) - target.to(ct)
    loss = (d * d).sum(-1)
    return loss if weight is None else loss * weight.to(ct)


def classifier_free_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``cond + w (cond - uncond)`` ``[N, H]`` in the compute dtype, ``w = scale [N]``.

    Equal to ``(1 + w) cond - w uncond`` (eps form) and ``u + (w + 1)(c - u)`` (logit form);
    written so that ``w = 0`` returns ``cond`` exactly. Entries equal in both inputs are
    returned as they are (so a ``-inf`` logit in both stays ``-inf`` instead of NaN).
    """
    ct = compute_dtype(cond.dtype, uncond.dtype)
    c, u = cond.to(ct), uncond.to(ct)
    return torch.where(c == u, c, c + _col(scale, ct) * (c - u))


def _model_output(
    model_output: torch.Tensor,
    uncond: torch.Tensor | None,
    scale: torch.Tensor | None,
    ct: torch.dtype,
) -> torch.Tensor:
    if uncond is None:
        return model_output.to(ct)
    return classifier_free_guidance(model_output, uncond, scale).to(ct)


def _step_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return compute_dtype(*(t.dtype for t in tensors if t is not None))


def ddpm_coefficients(
    abar: torch.Tensor, abar_prev: torch.Tensor, prediction: str, variance: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-row float64 coefficients ``(c_xt, c_out, sigma)`` of :func:`ddpm_step`:
    ``x_{t-1} = c_xt x_t + c_out out + sigma z`` (formulas in its docstring)."""
    alpha = abar / abar_prev
    beta = (abar_prev - abar) / abar_prev
    one_minus = 1.0 - abar
    if prediction == "eps":
        c_out = -beta / (one_minus.sqrt() * alpha.sqrt())
        c_xt = 1.0 / alpha.sqrt()
    else:
        c_out = abar_prev.sqrt() * beta / one_minus
        c_xt = alpha.sqrt() * (1.0 - abar_prev) / one_minus
    var = beta if variance == "beta" else beta * (1.0 - abar_prev) / one_minus
    var = torch.where(abar_prev == 1.0, torch.zeros_like(var), var)
    return c_xt, c_out, var.sqrt()


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    prediction: str,
    variance: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """DDPM ancestral step ``x_t -> x_{t-1}`` (docs/ops.md#ddpm-step), ``0 < abar < 1``,
    ``abar_prev >= abar``.

    With ``alpha = abar / abar_prev`` and ``beta = 1 - alpha``:

    - ``prediction="eps"``: ``mu = (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha)``;
    - ``prediction="x0"``: the posterior mean
      ``mu = sqrt(abar_prev) beta / (1 - abar) x0 + sqrt(alpha) (1 - abar_prev) / (1 - abar) x_t``;
    - ``x_{t-1} = mu + sigma z`` with ``sigma^2 = beta`` (``variance="beta"``) or
      ``beta (1 - abar_prev) / (1 - abar)`` (``"posterior"``), and ``sigma = 0`` where
      ``abar_prev == 1`` (the last step).

    The model output is first guided with ``model_output_uncond`` when given. ``z`` is
    ``noise`` or the keyed normal draw. Fixed rows keep ``x_t``. Output in the dtype of ``x_t``.
    """
    ct = _step_dtype(model_output, x_t, model_output_uncond, noise)
    out = _model_output(model_output, model_output_uncond, guidance_scale, ct)
    xt = x_t.to(ct)
    c_xt, c_out, sigma = ddpm_coefficients(abar, abar_prev, prediction, variance)
    if noise is None:
        noise = _std_normal(seed, offset, xt.shape[0], xt.shape[1], xt.device)
    new = _col(c_xt, ct) * xt + _col(c_out, ct) * out + _col(sigma, ct) * noise.to(ct)
    return _keep_fixed(new.to(x_t.dtype), x_t, fixed)


def ddim_coefficients(
    abar: torch.Tensor, abar_prev: torch.Tensor, eta: torch.Tensor, prediction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-row float64 coefficients ``(c1, c2, sig2, dir2)`` of :func:`ddim_step`: the
    other prediction is ``(x_t - c1 out) c2`` (``x0_hat`` for ``"eps"``, ``eps`` for ``"x0"``),
    ``sig2 = sig^2`` and ``dir2 = max(1 - abar' - sig^2, 0)``."""
    one_minus, one_minus_prev = 1.0 - abar, 1.0 - abar_prev
    if prediction == "eps":
        c1, c2 = one_minus.sqrt(), 1.0 / abar.sqrt()
    else:
        c1, c2 = abar.sqrt(), 1.0 / one_minus.sqrt()
    sig2 = eta.square() * one_minus_prev / one_minus * ((abar_prev - abar) / abar_prev)
    dir2 = torch.clamp(one_minus_prev - sig2, min=0.0)
    return c1, c2, sig2, dir2


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: torch.Tensor,
    prediction: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """DDIM step ``x_t -> x'`` from ``abar`` to ``abar' = abar_prev`` (docs/ops.md#ddim-step).

    ``prediction="eps"``: ``eps`` is the model output and
    ``x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``; ``prediction="x0"``: ``x0_hat`` is the
    model output and ``eps = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)``. Then::

        sig = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')
        x'  = sqrt(abar') x0_hat + sqrt(1 - abar' - sig^2) eps + sig z

    (``1 - abar' - sig^2`` clamped at 0, which only matters for ``eta > 1``). ``abar' = 1``
    returns ``x0_hat``; ``eta = 1`` is the DDPM posterior step. Guidance, noise and fixed rows
    as in :func:`ddpm_step`.
    """
    ct = _step_dtype(model_output, x_t, model_output_uncond, noise)
    out = _model_output(model_output, model_output_uncond, guidance_scale, ct)
    xt = x_t.to(ct)
    c1, c2, sig2, dir2 = ddim_coefficients(abar, abar_prev, eta, prediction)
    other = (xt - _col(c1, ct) * out) * _col(c2, ct)
    x0_hat, eps = (other, out) if prediction == "eps" else (out, other)
    new = _col(abar_prev.sqrt(), ct) * x0_hat + _col(dir2.sqrt(), ct) * eps
    if noise is not None or not bool((sig2 == 0).all()):  # deterministic DDIM draws nothing
        if noise is None:
            noise = _std_normal(seed, offset, xt.shape[0], xt.shape[1], xt.device)
        new = new + _col(sig2.sqrt(), ct) * noise.to(ct)
    return _keep_fixed(new.to(x_t.dtype), x_t, fixed)


def round_to_embedding(
    x: torch.Tensor, embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest embedding row of every ``x [N, H]`` (Diffusion-LM clamping,
    docs/ops.md#rounding-to-the-embedding).

    ``tokens = argmax_v 2 E_v . x - ||E_v||^2`` (``= argmin_v ||E_v - x||^2``; ties: lowest
    index), computed in float32 (float64 when an input is float64) over row chunks whose
    ``[rows, V]`` score block stays under :data:`SCORE_BLOCK_BYTES` (one block at a time, so
    memory is ``O(chunk x V)``). Returns ``(tokens [N] int64, embedding[tokens] [N, H])``, the
    rows in the dtype of ``x``.
    """
    n = x.shape[0]
    vocab = embedding.shape[0]
    ct = compute_dtype(x.dtype, embedding.dtype)
    e = embedding.to(ct)
    neg_norm = -(e * e).sum(-1)
    e_t = e.t()
    tokens = torch.empty(n, dtype=torch.int64, device=x.device)
    itemsize = torch.finfo(ct).bits // 8
    step = max(1, SCORE_BLOCK_BYTES // max(1, vocab * itemsize))
    for start in range(0, n, step):
        xc = x[start : start + step].to(ct)
        scores = torch.addmm(neg_norm, xc, e_t, alpha=2.0)
        tokens[start : start + step] = scores.argmax(-1)
    return tokens, embedding.index_select(0, tokens).to(x.dtype)
