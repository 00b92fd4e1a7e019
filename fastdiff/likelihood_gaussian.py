"""Likelihood bound of Gaussian embedding diffusion (Diffusion-LM / PLAID-style models): the
discrete-time negative ELBO per sequence and the perplexity upper bound of a data set.

The model is the one :class:`fastdiff.nn.GaussianEmbeddingLoss` trains: a learned embedding
``E [V, H]``, a :class:`~fastdiff.schedules.GaussianSchedule` with ``T`` steps
(``alpha_bar_t = alphas_cumprod[t - 1]``, ``beta_t = betas[t - 1]``, ``t = 1..T``), a denoiser
``denoiser(x_t [B, L, H], j [B]) -> [B, L, H]`` called with the 0-based step ``j = t - 1`` as a
float, predicting ``e0 = E[w]`` (``prediction_type="sample"``), ``eps`` (``"epsilon"``) or
``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) e0`` (``"v_prediction"``), and the rounding
decoder ``p(w | x) = softmax(x W^T + b)`` (default ``W = E``, no bias). It runs under
:func:`torch.inference_mode` on its own device (an ``nn.Module``'s parameters decide; else the
tokens' device), once per drawn step on the whole batch, each sequence at its own step.

**The chain** (per token; positions and features are independent, every covariance is a
multiple of ``I``; states ``x_0 .. x_T`` in ``R^H``, ``e0 = E[w]``)::

    q(x_0 | w)       = N(e0, beta_1 I)                           embedding-space data noise
    q(x_1 | x_0)     = N(sqrt(alpha_1) x_0, beta_1^2 I)
    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I),         t = 2..T

so that ``q(x_t | w) = N(sqrt(alpha_bar_t) e0, (1 - alpha_bar_t) I)`` for every ``t >= 1``:
exactly the marginals the model is trained on (docs/ops.md#gaussian-noising, index
``j = t - 1``). ``x_0`` is Diffusion-LM's noisy embedding ``q(x_0 | w) = N(E[w], beta_0 I)``
with ``beta_0 = beta_1 = 1 - alpha_bar_1`` (the variance its code takes from the first
step), and the first step carries the remaining ``beta_1^2`` of noise. The generative model is
``x_T ~ N(0, I)``, ``p(x_{t-1} | x_t) = N(mu_t(x_t, e0_hat), s_t^2 I)`` for ``t = T..1``
with ``e0_hat`` the model's prediction at ``(x_t, j = t - 1)``, then ``w ~ p(w | x_0)`` (its
steps ``t >= 2`` are the ``ddpm`` sampler's; that sampler ends at ``e0_hat`` and rounds it
instead of drawing ``x_0`` and decoding it: the bound is of the model stated here).

**The bound** (the discrete-time variational bound, Jensen on
``q(x_{0:T} | w) = q(x_T | w) prod_t q(x_{t-1} | x_t, w)``), in nats per sequence::

    -log p(w) <= NELBO(w) = E_{q(x_0|w)} [ -log p(w | x_0) ]                         decoder
                          + sum_{t=1..T} E_{q(x_t|w)} KL(q(x_{t-1} | x_t, w) || p(x_{t-1} | x_t))
                          + KL(q(x_T | w) || N(0, I))                                  prior

summed over the ``L`` positions. The posteriors are Gaussian with the model's mean form::

    q(x_{t-1} | x_t, w) = N(c_t e0 + d_t x_t, vq_t I)
    p(x_{t-1} | x_t)    = N(c_t e0_hat + d_t x_t, s_t^2 I)
    t >= 2:  c_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
             d_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
             vq_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (posterior_variance)
    t  = 1:  c_1 = beta_1,  d_1 = sqrt(alpha_1),  vq_1 = beta_1^2

(for ``t >= 2`` the mean of :func:`fastdiff.ddpm_step` with the x0 prediction,
docs/ops.md#ddpm-step). ``s_t^2 = vq_t`` (``variance_type="fixed_small"``) or the forward
variance ``beta_t`` (``"fixed_large"``; ``beta_1^2`` at ``t = 1``, where the two agree). Each
term is closed form, in float64::

    KL_t   = H/2 (r_t - 1 - log r_t) + c_t^2 / (2 s_t^2) ||e0 - e0_hat||^2,    r_t = vq_t / s_t^2
    prior  = 1/2 (alpha_bar_T ||e0||^2 - H alpha_bar_T - H log(1 - alpha_bar_T))
    decoder: the exact cross entropy of softmax(x_0 W^T + b) at one draw x_0 = e0 + sqrt(beta_1) z

(``KL_1 = ||e0 - e0_hat||^2 / 2``: Diffusion-LM's ``t = 0`` regression to the clean
embedding). ``e0_hat`` is the output (``"sample"``), ``(x_t - sqrt(1 - alpha_bar) eps_hat) /
sqrt(alpha_bar)`` (``"epsilon"``) or ``sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v_hat``
(``"v_prediction"``). With the Bayes-optimal denoiser ``E[e0 | x_t]`` every KL is as small as a
Gaussian kernel of this mean form allows; the bound stays ``>= -log p(w)`` for any denoiser, so
its average over the data is ``>=`` the data's entropy.

**Estimators.** ``num_t=None``: all ``T`` KL terms, each at one draw of ``x_t``. ``num_t=K``
(``1 <= K <= T``): the steps ``1..T`` are cut into ``K`` contiguous strata
``[floor(kT/K), floor((k+1)T/K))`` (shifted by 1), one step is drawn uniformly in each stratum
per sequence and weighted by the stratum's size (``T/K`` when ``K`` divides ``T``): unbiased.
The prior is exact and the decoder term one draw of ``x_0``. Randomness follows ``seed`` (or a
seed drawn from ``generator``): the strata draws from a CPU generator seeded with it, the
normals from :mod:`fastdiff.random` with that key; an estimate that starts at offset ``o``
draws ``x_0``'s noise at offset ``o`` (row = flattened position, column = feature) and the
``x_t`` of its ``k``-th drawn step with :func:`fastdiff.add_noise_gaussian` at offset
``o + 1 + k``.

:func:`gaussian_perplexity_bound` streams over batches with ``repeats`` independent estimates
per batch and reports a :class:`fastdiff.likelihood.LikelihoodBound` (its
``prior_nats_per_token`` is the exact prior share of the data).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

import fastdiff.likelihood as _likelihood  # LikelihoodBound, read at call time (no import cycle)
from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.gaussian import add_noise_gaussian
from fastdiff.samplers.gaussian import PREDICTION_TYPES
from fastdiff.schedules import GaussianSchedule

__all__ = [
    "GaussianNELBOTerms",
    "gaussian_nelbo",
    "gaussian_nelbo_terms",
    "gaussian_perplexity_bound",
]

VARIANCE_TYPES = ("fixed_small", "fixed_large")

Denoiser = Callable[[Tensor, Tensor], Tensor]
Embedding = torch.nn.Module | Tensor
Decoder = torch.nn.Module | Tensor | tuple[Tensor, Tensor | None]


@dataclasses.dataclass(frozen=True)
class GaussianNELBOTerms:
    """One estimate of the bound's terms (module docstring), float64 on the denoiser's device.

    ``prior [B]``: ``KL(q(x_T | w) || N(0, I))`` (exact); ``decoder [B]``: ``-log p(w | x_0)``
    at one draw of ``x_0``; ``diffusion [B, K]``: ``KL_t`` at the drawn steps ``steps [B, K]``
    (int64, ``t`` in ``1..T``), one ``x_t`` each; ``weights [B, K]``: their weights (1 for all
    steps, the stratum size for a stratified draw). Each is summed over the ``L`` positions.
    """

    prior: Tensor
    decoder: Tensor
    diffusion: Tensor
    steps: Tensor
    weights: Tensor

    @property
    def nelbo(self) -> Tensor:
        """``prior + decoder + sum_k weights * diffusion``: the NELBO estimate ``[B]``."""
        return self.prior + self.decoder + (self.weights * self.diffusion).sum(-1)


@dataclasses.dataclass(frozen=True)
class _Setup:
    table: Tensor  # E [V, H]
    weight: Tensor  # W [V, H]
    bias: Tensor | None  # b [V]
    prediction_type: str
    num_t: int | None
    alpha_bar: Tensor  # [T] float64
    coef_sq: Tensor  # c_t^2 / (2 s_t^2), [T]
    const: Tensor  # (r_t - 1 - log r_t) / 2 per feature, [T]
    beta_first: float


def _table(embedding: Embedding) -> Tensor:
    weight = embedding if isinstance(embedding, Tensor) else getattr(embedding, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(
            "embedding must be an nn.Embedding (a module with .weight [V, H]) or a [V, H] "
            f"tensor, got {type(embedding).__name__}"
        )
    checks.floating("embedding", weight)
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"embedding must have shape [V, H] with V, H >= 1, got {weight.shape}")
    return weight.detach()


def _decoder(decoder: Decoder | None, table: Tensor) -> tuple[Tensor, Tensor | None]:
    if decoder is None:
        return table, None
    if isinstance(decoder, tuple):
        if len(decoder) != 2:
            raise TypeError("decoder must be a (weight [V, H], bias [V] or None) pair")
        weight, bias = decoder
    elif isinstance(decoder, Tensor):
        weight, bias = decoder, None
    elif isinstance(decoder, torch.nn.Module) and isinstance(
        getattr(decoder, "weight", None), Tensor
    ):
        weight, bias = decoder.weight, getattr(decoder, "bias", None)
    else:
        raise TypeError(
            "decoder must be None (tied to the embedding), a (weight, bias) pair, a [V, H] "
            f"weight tensor or a module with .weight [V, H], got {type(decoder).__name__}"
        )
    if not isinstance(weight, Tensor):
        raise TypeError(f"decoder weight must be a tensor, got {type(weight).__name__}")
    checks.floating("decoder weight", weight)
    if weight.shape != table.shape:
        raise ValueError(
            f"decoder weight must have the embedding's shape [V, H] = {tuple(table.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"decoder bias must be a tensor or None, got {type(bias).__name__}")
        checks.floating("decoder bias", bias)
        if bias.shape != (table.shape[0],):
            raise ValueError(
                f"decoder bias must have shape [V] = [{table.shape[0]}], got {tuple(bias.shape)}"
            )
        bias = bias.detach()
    return weight.detach(), bias


def _step_tables(
    schedule: GaussianSchedule, variance_type: str
) -> tuple[Tensor, Tensor, Tensor, float]:
    """``(alpha_bar, c_t^2 / (2 s_t^2), (r_t - 1 - log r_t) / 2, beta_1)``, float64 ``[T]``."""
    beta = schedule.betas.double()
    alpha_bar = schedule.alphas_cumprod.double()
    coef = schedule.alphas_cumprod_prev.double().sqrt() * beta / (1.0 - alpha_bar)
    var_q = schedule.posterior_variance.double().clone()
    beta_first = float(beta[0])
    coef[0] = beta_first
    var_q[0] = beta_first**2
    var_p = var_q if variance_type == "fixed_small" else torch.cat([var_q[:1], beta[1:]])
    ratio = var_q / var_p
    const = 0.5 * (ratio - 1.0 - torch.log(ratio))
    return alpha_bar, coef.square() / (2.0 * var_p), const, beta_first


def _setup(
    embedding: Embedding,
    schedule: GaussianSchedule,
    prediction_type: str,
    decoder: Decoder | None,
    variance_type: str,
    num_t: int | None,
) -> _Setup:
    table = _table(embedding)
    weight, bias = _decoder(decoder, table)
    if not isinstance(schedule, GaussianSchedule):
        raise TypeError(
            f"schedule must be a fastdiff.schedules.GaussianSchedule, got {type(schedule).__name__}"
        )
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
    steps = schedule.num_steps
    if num_t is not None and (
        isinstance(num_t, bool) or not isinstance(num_t, int) or not 1 <= num_t <= steps
    ):
        raise ValueError(
            f"num_t must be None (all steps) or an int in [1, T = {steps}], got {num_t!r}"
        )
    alpha_bar, coef_sq, const, beta_first = _step_tables(schedule, variance_type)
    if prediction_type == "epsilon" and not float(alpha_bar[-1]) > 0.0:
        raise ValueError(
            "prediction_type='epsilon' needs alpha_bar_t > 0 at every step (e0_hat divides by "
            "sqrt(alpha_bar)); the schedule reaches alpha_bar = 0 (a beta of 1)"
        )
    if checks.value_checks_enabled():
        checks.finite("embedding", table)
        checks.finite("decoder weight", weight)
        if bias is not None:
            checks.finite("decoder bias", bias)
    return _Setup(
        table, weight, bias, prediction_type, num_t, alpha_bar, coef_sq, const, beta_first
    )


def _check_x0(x0: Tensor, vocab_size: int) -> Tensor:
    if not isinstance(x0, Tensor) or x0.dtype not in (torch.int64, torch.int32):
        raise TypeError("x0 must be an int64 / int32 tensor of token ids [B, L]")
    if x0.dim() != 2 or x0.numel() == 0:
        raise ValueError(f"x0 must have shape [B, L] with B, L >= 1, got {tuple(x0.shape)}")
    checks.token_range("x0", x0, vocab_size)
    return x0.long()


def _steps(setup: _Setup, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(t [B, K] int64 in 1..T, weights [B, K] float64)`` on the CPU."""
    total = setup.alpha_bar.shape[0]
    if setup.num_t is None:
        steps = torch.arange(1, total + 1, dtype=torch.int64).expand(batch, total)
        return steps, torch.ones(batch, total, dtype=torch.float64)
    k = setup.num_t
    bounds = torch.arange(k + 1, dtype=torch.int64) * total // k
    low, size = bounds[:-1], bounds[1:] - bounds[:-1]
    u = _likelihood._uniform_open((batch, k), gen)
    within = torch.minimum((u * size).floor().long(), size - 1)
    return 1 + low + within, size.to(torch.float64).expand(batch, k)


def _predicted_e0(prediction_type: str, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """``e0_hat`` in float64 from the model output (``alpha_bar [B]``)."""
    if prediction_type == "sample":
        return out
    a = alpha_bar[:, None, None]
    if prediction_type == "epsilon":
        return (x_t - (1.0 - a).sqrt() * out) / a.sqrt()
    return a.sqrt() * x_t - (1.0 - a).sqrt() * out


def _model_output(denoiser: Denoiser, x_t: Tensor, level: Tensor) -> Tensor:
    out = denoiser(x_t, level)
    if not isinstance(out, Tensor) or out.shape != x_t.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the denoiser must return a tensor of shape {tuple(x_t.shape)}, got {got}"
        )
    checks.floating("the denoiser output", out)
    if checks.value_checks_enabled() and not bool(torch.isfinite(out).all()):
        raise ValueError("the denoiser returned non-finite values")
    return out


def _estimate(
    denoiser: Denoiser, x0: Tensor, setup: _Setup, key: int, offset: int, gen: torch.Generator
) -> tuple[GaussianNELBOTerms, int]:
    """One estimate of every term (``x0`` on the denoiser's device) and the next offset."""
    batch, length = x0.shape
    device = x0.device
    table = setup.table.to(device)
    e0 = table.double()[x0]  # [B, L, H]
    width = e0.shape[-1]
    alpha_bar = setup.alpha_bar.to(device)
    a_last = float(setup.alpha_bar[-1])
    prior = 0.5 * (
        a_last * e0.square().sum((1, 2)) - length * width * (a_last + math.log1p(-a_last))
    )
    rows = torch.arange(batch * length, dtype=torch.int64, device=device)
    draw = backend.draw_function("normal", frandom.normal, rows.device)
    z = draw(key, offset, rows, width).reshape(batch, length, width)
    x_data = e0 + math.sqrt(setup.beta_first) * z
    bias = None if setup.bias is None else setup.bias.to(device, torch.float64)
    logits = F.linear(x_data, setup.weight.to(device, torch.float64), bias)
    decoder = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none")
    decoder = decoder.reshape(batch, length).sum(-1)
    steps, weights = _steps(setup, batch, gen)
    steps, weights = steps.to(device), weights.to(device)
    coef_sq, const = setup.coef_sq.to(device), setup.const.to(device)
    diffusion = torch.empty(steps.shape, dtype=torch.float64, device=device)
    level_dtype = torch.get_default_dtype()
    for k in range(steps.shape[1]):
        index = steps[:, k] - 1
        a = alpha_bar[index]
        noised = add_noise_gaussian(
            x0, alpha_bar=a, embedding=table, seed=key, offset=offset + 1 + k
        )
        out = _model_output(denoiser, noised.x_t, index.to(level_dtype))
        e0_hat = _predicted_e0(setup.prediction_type, out.double(), noised.x_t.double(), a)
        error = (e0 - e0_hat).square().sum((1, 2))
        diffusion[:, k] = length * width * const[index] + coef_sq[index] * error
    terms = GaussianNELBOTerms(prior, decoder, diffusion, steps, weights)
    return terms, offset + 1 + steps.shape[1]


def _run(
    denoiser: Denoiser,
    x0: Tensor,
    setup: _Setup,
    seed: int | None,
    generator: torch.Generator | None,
) -> GaussianNELBOTerms:
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    x0 = _check_x0(x0, setup.table.shape[0])
    key = _likelihood._key(seed, generator)
    with torch.inference_mode():
        x0 = x0.to(_likelihood._device(denoiser, x0))
        terms, _ = _estimate(denoiser, x0, setup, key, 0, torch.Generator().manual_seed(key))
    return terms


def gaussian_nelbo_terms(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    embedding: Embedding,
    schedule: GaussianSchedule,
    prediction_type: str = "sample",
    decoder: Decoder | None = None,
    variance_type: str = "fixed_small",
    num_t: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> GaussianNELBOTerms:
    """The terms of one estimate of :func:`gaussian_nelbo` (same arguments), kept apart:
    prior, decoder and the KL of each drawn step with its weight (:class:`GaussianNELBOTerms`)."""
    setup = _setup(embedding, schedule, prediction_type, decoder, variance_type, num_t)
    return _run(denoiser, x0, setup, seed, generator)


def gaussian_nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    embedding: Embedding,
    schedule: GaussianSchedule,
    prediction_type: str = "sample",
    decoder: Decoder | None = None,
    variance_type: str = "fixed_small",
    num_t: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate of the discrete-time negative ELBO of each sequence, in nats (module docstring).

    Args:
        denoiser: ``(x_t [B, L, H], j [B] float) -> [B, L, H]``, the ``prediction_type``
            prediction at the 0-based step ``j``.
        x0: token ids ``[B, L]`` in ``[0, V)``.
        embedding: ``E``, an ``nn.Embedding`` (or a module with ``.weight [V, H]``) or a
            ``[V, H]`` tensor.
        schedule: the :class:`~fastdiff.schedules.GaussianSchedule` of the model (``T`` steps).
        prediction_type: ``"sample"`` (``e0``), ``"epsilon"`` or ``"v_prediction"``.
        decoder: the rounding decoder ``softmax(x W^T + b)``: ``None`` (tied to the embedding,
            no bias), a ``(W [V, H], b [V] | None)`` pair, a ``[V, H]`` tensor or a module with
            ``.weight`` (and ``.bias``), e.g. ``nn.Linear(H, V)``.
        variance_type: ``"fixed_small"`` (reverse variance = posterior variance) or
            ``"fixed_large"`` (= ``beta_t``).
        num_t: ``None`` for all ``T`` KL terms (``T`` denoiser calls), or ``K`` in ``[1, T]``
            stratified steps per sequence (``K`` calls), each weighted by its stratum's size.
        seed / generator: the randomness (a fresh seed from torch's default generator when
            both are None).

    Returns the float64 estimate ``[B]`` on the denoiser's device; its expectation is the bound
    of each sequence. :func:`gaussian_nelbo_terms` returns the terms apart.
    """
    setup = _setup(embedding, schedule, prediction_type, decoder, variance_type, num_t)
    return _run(denoiser, x0, setup, seed, generator).nelbo


def gaussian_perplexity_bound(
    denoiser: Denoiser,
    batches: Iterable[Tensor],
    *,
    embedding: Embedding,
    schedule: GaussianSchedule,
    prediction_type: str = "sample",
    decoder: Decoder | None = None,
    variance_type: str = "fixed_small",
    num_t: int | None = None,
    repeats: int = 2,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> _likelihood.LikelihoodBound:
    """The perplexity upper bound of a data set given as an iterable of token batches
    ``[B, L]`` (lengths may differ between batches), streamed one batch at a time.

    Each batch gets ``repeats`` (>= 2) independent estimates of :func:`gaussian_nelbo` (same
    arguments), so a call costs ``repeats * (num_t or T)`` denoiser calls per batch.
    ``nats_per_token = sum of NELBO / tokens``; its standard error is ``sqrt(sum_b var_b) /
    tokens`` with ``var_b`` the sample variance of sequence ``b``'s repeats divided by
    ``repeats``; ``prior_nats_per_token`` is the exact prior share (it depends on the data
    through ``||E[w]||^2``). As :func:`fastdiff.likelihood.perplexity_bound`, the data set is
    fixed: its own sampling variability is not included.
    """
    setup = _setup(embedding, schedule, prediction_type, decoder, variance_type, num_t)
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    _likelihood._positive_int("repeats", repeats, 2)
    key = _likelihood._key(seed, generator)
    gen = torch.Generator().manual_seed(key)
    offset, nats, var, prior, tokens, sequences = 0, 0.0, 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            x0 = _check_x0(batch, setup.table.shape[0])
            x0 = x0.to(_likelihood._device(denoiser, x0))
            runs = []
            for _ in range(repeats):
                terms, offset = _estimate(denoiser, x0, setup, key, offset, gen)
                runs.append(terms.nelbo)
            runs = torch.stack(runs)
            nats += float(runs.mean(0).sum())
            var += float(runs.var(0).sum()) / repeats
            prior += float(terms.prior.sum())
            tokens += x0.numel()
            sequences += x0.shape[0]
    if tokens == 0:
        raise ValueError("batches held no tokens")
    per_token = nats / tokens
    return _likelihood.LikelihoodBound(
        nats_per_token=per_token,
        bits_per_token=per_token / math.log(2.0),
        perplexity=math.exp(per_token) if per_token < 709.0 else math.inf,
        stderr_nats_per_token=math.sqrt(var) / tokens,
        prior_nats_per_token=prior / tokens,
        num_tokens=tokens,
        num_sequences=sequences,
    )
