"""Likelihood bounds of discrete diffusion models: the negative ELBO per sequence and the
perplexity upper bound of a data set (the metric of SEDD's, MDLM's and D3PM's results tables):
the continuous-time bound (:func:`nelbo`, :func:`perplexity_bound`) and D3PM's discrete-time
one (:func:`d3pm_nelbo`, :func:`d3pm_perplexity_bound`; section "D3PM" below).

A denoiser is a callable ``denoiser(x_t [B, L] int64, sigma [B] fp32) -> [B, L, V]``: raw
log-scores (``log s(x_t)_{i, j}``, the log-ratio ``p_t(x_t with x_i = j) / p_t(x_t)``) for
``objective="sedd"`` (``graph="absorb"`` or ``"uniform"``), logits over ``x0`` for
``objective="mdlm"`` (MDLM SUBS, absorbing graph); for D3PM, ``denoiser(x_t, t [B] fp32)``
with the step ``t`` in ``1..T`` as a float, logits over ``x0``.
It runs under :func:`torch.inference_mode` on its own device (an ``nn.Module``'s parameters
decide; else the tokens' device), and is called once per (time, noise draw) on a whole batch,
each sequence at its own time.

**The bound.** Every token is noised independently with the rate matrix ``dsigma(t) Q``
(absorbing or uniform graph, :func:`fastdiff.add_noise`). For the reverse process driven by the
model's ratios and started from a base distribution ``pi`` at ``t = 1``, the KL divergence of
the path measures given ``x0`` bounds the negative log-likelihood (SEDD, Lou et al. 2024)::

    -log p_theta(x0) <= NELBO(x0) = int_0^1 dsigma(t) E_{x_t ~ q_t(.|x0)}
                                        [ sum_i score_entropy_i(s(x_t, sigma(t)), x_t, x0) ] dt
                                    + KL(q_1(.|x0) || pi)

with the per-token denoising score entropy of :func:`fastdiff.score_entropy` (which already
carries the rates ``Q(y, x_t)`` of the neighbours). For masked diffusion (MDLM SUBS, the
reverse rates ``dsigma/expm1(sigma) p_theta(x0_i = j | x_t)``) the same path KL is::

    NELBO(x0) = int_0^1 dsigma/expm1(sigma) E_{x_t} [ sum_{i: x_t,i = m} -log p_theta(x0_i | x_t) ]
                dt + KL(q_1(.|x0) || pi)

(:func:`fastdiff.masked_diffusion_loss` with ``weight = schedule.loss_weight(t)``).

**The prior term** ``KL(q_1(.|x0) || pi)`` is exact, per token, from ``a = exp(-sigma(1))``
(:func:`prior_nats_per_token`). Uniform graph: ``pi`` is uniform on ``[0, V)`` (stationary),
``KL = p0 log1p((V - 1) a) + (1 - p0) log1p(-a)``, ``p0 = a + (1 - a)/V``. Absorbing graph and
masked diffusion: the all-mask limit has no support on the ``e^-sigma(1)`` chance of a clean
token (an infinite KL), so ``pi`` is ``(1 - a)`` on the mask plus ``a`` spread uniformly over
the ``V - 1`` other tokens (the ``t = 1`` marginal of uniform data), ``KL = a log(V - 1)``:
0 for schedules that mask everything at ``t = 1`` (``LinearAlpha``, ``CosineAlpha``).

**What is exact.** With the true ratios (or the true posterior ``p(x0_i | x_t)``) and
``sigma(0) = 0``, ``NELBO(x0) = -log p(x0) + E_{x_1 ~ q_1(.|x0)}[log p_1(x_1) / pi(x_1)]``:
per sequence, the integral equals ``-log p(x0) - KL(q_1(.|x0) || p_1)``; in expectation over
the data, the bound is the entropy plus ``KL(p_1 || pi)``, which vanishes as ``sigma(1)`` grows.
A schedule with ``sigma(0) > 0`` (``Geometric``) leaves the noise levels below ``sigma(0)`` out
of the integral, as SEDD's evaluation does.

**Estimators over t** (``num_t`` times per sequence, each with ``noise_draws`` draws of
``x_t``). All three integrate in ``u`` with ``t = u^p`` (weights ``p u^(p - 1)``;
``time_power``, default 1). ``"antithetic"``: ``u_k = (u + k/K) mod 1``, one uniform ``u`` per
sequence (a randomly shifted lattice); ``"stratified"``: ``u_k = (k + u_k')/K``; both
unbiased. ``"quadrature"``: Gauss-Legendre nodes and weights in ``u`` (:func:`gauss_legendre`),
only the noise random: a deterministic error that vanishes quickly as ``num_t`` grows. The
absorbing / masked integrand of an exact model is a polynomial of degree ``L - 1`` in ``t``
(``LogLinear``), integrated exactly by ``ceil(L / 2)`` nodes with ``p = 1``. ``p > 1`` puts more
times at small ``t``: the uniform-graph integrand of a ``LogLinear`` schedule is concentrated
there (on a toy language with 3 tokens and ``L = 3``, 16 nodes leave ``3e-6`` nats with
``p = 3``, ``0.04`` with ``p = 1``); for short absorbing / masked sequences ``p = 2`` bounds
the variance of a draw, which masks a token with probability ~``t`` and weighs it by ~``1/t``
(a variance ~``L/t``, whose integral over ``t`` diverges logarithmically), while for long ones
``p = 1`` keeps the integrand ~``L`` flat in ``t``. Times stay in
``[T_MIN, 1 - T_MIN]``. Randomness follows ``seed`` (or a seed drawn from ``generator``): the
times from a CPU generator seeded with it, the noising from :mod:`fastdiff.random` with that
key and one offset per draw.

:func:`perplexity_bound` streams over batches, repeats each estimate ``repeats`` times with
independent randomness and reports nats / bits per token, the perplexity bound
``exp(nats per token)`` and the Monte Carlo standard error from the spread of the repeats
(the data set is fixed: its own sampling variability is not included).

**Reporting conventions** (``t_min``, ``include_prior``). SEDD's and MDLM's evaluation draws
``t ~ U[t_min, 1]`` with ``t_min = 1e-3`` and reports the integral term alone. ``t_min > 0``
integrates over ``[t_min, 1]`` only (``t = t_min + (1 - t_min) u^p``; the weights carry the
factor ``1 - t_min``): the part over ``[0, t_min)`` is dropped, so the result is **not** a
strict bound on ``-log p_theta(x0)`` (it is lower by the integral there, which is small but
not zero; the papers' mean of the integrand over ``t ~ U[t_min, 1]`` is this integral divided
by ``1 - t_min``, 0.1% larger at ``1e-3``). ``include_prior=False`` drops
``KL(q_1(.|x0) || pi)`` (also no longer a strict bound unless that term is 0, as for
``LinearAlpha``); ``LikelihoodBound.prior_nats_per_token`` is then 0.0, the share actually
included. The defaults (``t_min=0``, ``include_prior=True``)
give the strict bound.

**D3PM** (:func:`d3pm_nelbo`, :func:`d3pm_perplexity_bound`; Austin et al. 2021). Discrete
time: ``T`` steps with one-step matrices ``Q_t`` and cumulative ``Qbar_t = Q_1 ... Q_t`` of a
:class:`fastdiff.transitions.TransitionSchedule`, ``q(x_t | x0) = Cat(Qbar_t[x0, :])`` per
token. The model's reverse step is the ``x0``-parameterized posterior
``p_theta(x_{t-1} | x_t) = softmax(d3pm_posterior_logits(model_output, x_t, q_step=Q_t,
qbar_next=Qbar_{t-1}))`` (docs/ops.md#d3pm-posterior), independent over positions, with
``model_output = denoiser(x_t, t)``; ``p_theta(x0 | x_1) = softmax(model_output at t = 1)``;
``x_T ~ pi``. The bound of a sequence ``x0 [L]``::

    NELBO(x0) = sum_{t=2..T} E_{q(x_t|x0)} [ sum_i KL(q(x_{t-1,i} | x_t,i, x0_i)
                                                  || p_theta(x_{t-1,i} | x_t)) ]
                + E_{q(x_1|x0)} [ sum_i -log p_theta(x0_i | x_1) ]
                + sum_i KL(Qbar_T[x0_i, :] || pi)
              = -log p_theta(x0) + KL(q(x_{1:T} | x0) || p_theta(x_{1:T} | x0))

with the true posterior ``q(x_{t-1} | x_t, x0) ∝ Q_t[:, x_t] ⊙ Qbar_{t-1}[x0, :]``
(:func:`fastdiff.d3pm_posterior`). Each step's term for one draw ``x_t``
(:func:`fastdiff.add_noise_dense`) is :func:`fastdiff.d3pm_hybrid_loss` with
``hybrid_lambda=0`` (the ``L_vb`` of the training loss :class:`fastdiff.nn.D3PMLoss`).
``num_t=None`` evaluates every step's term, each with one draw of ``x_t`` per sequence and
step (the expectation over ``x_t`` is Monte Carlo: exactly it would need all ``V^L`` states);
``num_t=K`` draws ``K`` steps per sequence stratified over ``1..T``, ``t_k = floor((k + u_k)
T / K) + 1`` with independent ``u_k ~ U(0, 1)``, each term weighted ``T / K``: every step is
drawn ``K / T`` times in expectation, so the estimate is unbiased (when ``K`` does not divide
``T`` two neighbouring strata can draw the same step). Steps come from a CPU generator seeded
with the run's key, the noising from :mod:`fastdiff.random` with that key and one offset per
draw.

The prior ``pi`` defaults to ``mean_v Qbar_T[v, :]``, the start distribution of
:func:`fastdiff.sample` with ``method="d3pm"`` (so the bound is that of the model the sampler
draws from): exactly uniform for doubly stochastic matrices (uniform, banded, Gaussian), the
one-hot mask once an absorbing chain has masked every token by step ``T`` (``beta_T = 1``).
Where ``Qbar_T`` has not reached that limit, the prior term is finite (``pi >= Qbar_T[v, :]
/ V``, so at most ``log V`` per token) and included; :func:`d3pm_prior_nats` gives it per
clean token. A ``prior`` passed in with no mass on a state ``Qbar_T[x0_i, :]`` reaches (the
one-hot mask for a chain that has not absorbed everything) makes the bound infinite: an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from fastdiff import checks
from fastdiff.d3pm import d3pm_hybrid_loss
from fastdiff.losses import masked_diffusion_loss, score_entropy
from fastdiff.noising import add_noise, add_noise_dense
from fastdiff.schedules import NoiseSchedule
from fastdiff.transitions import TransitionSchedule

__all__ = [
    "GaussianNELBOTerms",
    "LikelihoodBound",
    "d3pm_nelbo",
    "d3pm_perplexity_bound",
    "d3pm_prior_nats",
    "gauss_legendre",
    "gaussian_nelbo",
    "gaussian_nelbo_terms",
    "gaussian_perplexity_bound",
    "nelbo",
    "perplexity_bound",
    "prior_nats_per_token",
]

OBJECTIVES = ("mdlm", "sedd")
GRAPHS = ("absorb", "uniform")
METHODS = ("antithetic", "stratified", "quadrature")
T_MIN = 1e-9  # times are clamped to [T_MIN, 1 - T_MIN]: sigma(0) = 0 and sigma(1) may be inf

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class LikelihoodBound:
    """The upper bound on the negative log-likelihood of a data set.

    ``nats_per_token``: total NELBO / tokens; ``bits_per_token`` the same in bits;
    ``perplexity``: ``exp(nats_per_token)`` (inf past float64's range);
    ``stderr_nats_per_token``: its Monte Carlo standard error; ``prior_nats_per_token``: the
    share of the prior term (included).
    """

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    stderr_nats_per_token: float
    prior_nats_per_token: float
    num_tokens: int
    num_sequences: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Setup:
    objective: str
    graph: str
    schedule: NoiseSchedule
    vocab_size: int
    mask_id: int | None
    num_t: int
    method: str
    noise_draws: int
    power: float
    t_min: float
    include_prior: bool


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_objective(objective: str, graph: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if objective == "mdlm" and graph != "absorb":
        raise ValueError("objective 'mdlm' (masked diffusion) is defined on graph='absorb'")


def _check_model(graph: str, schedule: NoiseSchedule, vocab_size: int) -> int:
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            f"schedule must be a fastdiff.schedules.NoiseSchedule, got {type(schedule).__name__}"
        )
    return _positive_int("vocab_size", vocab_size, 2)


def _setup(
    objective,
    graph,
    schedule,
    vocab_size,
    mask_id,
    num_t,
    method,
    noise_draws,
    power,
    t_min,
    include_prior,
) -> _Setup:
    _check_objective(objective, graph)
    vocab = _check_model(graph, schedule, vocab_size)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power >= 1.0:
        raise ValueError(f"time_power must be a number >= 1, got {power!r}")
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must be a number in [0, 1), got {t_min!r}")
    if not isinstance(include_prior, bool):
        raise TypeError(f"include_prior must be a bool, got {type(include_prior).__name__}")
    if graph == "uniform":
        if mask_id is not None:
            raise ValueError("the uniform graph has no mask token: pass mask_id=None")
    elif isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise ValueError(f"graph {graph!r} needs a mask_id in [0, {vocab}), got {mask_id!r}")
    return _Setup(
        objective,
        graph,
        schedule,
        vocab,
        mask_id,
        _positive_int("num_t", num_t),
        method,
        _positive_int("noise_draws", noise_draws),
        float(power),
        float(t_min),
        include_prior,
    )


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre rule on ``[0, 1]``: ``(nodes [n], weights [n])`` in float64, nodes
    ascending in ``(0, 1)``, weights summing to 1; exact for polynomials of degree ``2n - 1``
    (Golub-Welsch: eigenvalues of the Jacobi matrix of the Legendre recurrence)."""
    _positive_int("n", n)
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    x, vectors = torch.linalg.eigh(jacobi)
    return (x + 1.0) / 2.0, vectors[0].square()


def prior_nats_per_token(*, graph: str, schedule: NoiseSchedule, vocab_size: int) -> float:
    """``KL(q_1(.|x0_i) || pi)`` per token (module docstring) of the ``graph``'s noising, from
    ``a = exp(-sigma(1))`` computed in float64; the same for every clean token."""
    v = _check_model(graph, schedule, vocab_size)
    sigma1 = float(schedule.sigma(torch.tensor(1.0, dtype=torch.float64)))
    a = math.exp(-sigma1)
    if graph != "uniform":
        return a * math.log(v - 1)
    p0 = a + (1.0 - a) / v
    rest = (v - 1) / v * -math.expm1(-sigma1)  # 1 - p0 without cancellation
    return p0 * math.log1p((v - 1) * a) + (rest * math.log1p(-a) if rest > 0 else 0.0)


def _key(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return seed
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (), generator=generator, device=device))


def _uniform_open(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Uniforms in the open interval ``(0, 1)``, float64 (53 random bits, half-ulp shifted)."""
    return (torch.randint(0, 2**53, shape, generator=gen, dtype=torch.int64) + 0.5) * 2.0**-53


def _times(setup: _Setup, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(t [B, K], weight [B, K])`` of one estimate, float64 on the CPU:
    ``t = t_min + (1 - t_min) u^p``, ``weight = (1 - t_min) w_u p u^(p - 1)``."""
    k = setup.num_t
    if setup.method == "quadrature":
        nodes, weights = gauss_legendre(k)
        u = nodes.expand(batch, k)
    else:
        grid = torch.arange(k, dtype=torch.float64) / k
        if setup.method == "antithetic":
            u = torch.remainder(_uniform_open((batch, 1), gen) + grid, 1.0)
        else:
            u = grid + _uniform_open((batch, k), gen) / k
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
    p, t_min = setup.power, setup.t_min
    t = t_min + (1.0 - t_min) * u**p
    return t.clamp(T_MIN, 1.0 - T_MIN), (1.0 - t_min) * weights * p * u ** (p - 1.0)


def _device(denoiser: Denoiser, x0: Tensor) -> torch.device:
    if isinstance(denoiser, torch.nn.Module):
        param = next(denoiser.parameters(), None)
        if param is not None:
            return param.device
    return x0.device


def _check_tokens(x0: Tensor, vocab_size: int) -> None:
    """Token ids ``[B, L]`` (int64 / int32, non-empty) in ``[0, vocab_size)``."""
    if not isinstance(x0, Tensor) or x0.dtype not in (torch.int64, torch.int32):
        raise TypeError("x0 must be an int64 / int32 tensor of token ids [B, L]")
    if x0.dim() != 2 or x0.numel() == 0:
        raise ValueError(f"x0 must have shape [B, L] with B, L >= 1, got {tuple(x0.shape)}")
    checks.token_range("x0", x0, vocab_size)


def _check_x0(x0: Tensor, setup: _Setup) -> Tensor:
    """Token ids ``[B, L]`` in range and never the mask (before the denoiser runs)."""
    _check_tokens(x0, setup.vocab_size)
    masked = setup.mask_id is not None and checks.value_checks_enabled()
    if masked and bool((x0 == setup.mask_id).any()):
        raise ValueError(f"x0 contains the mask token {setup.mask_id}")
    return x0.long()


def _model_output(denoiser: Denoiser, x_t: Tensor, sigma: Tensor, vocab: int) -> Tensor:
    out = denoiser(x_t, sigma)
    want = (*x_t.shape, vocab)
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the denoiser must return a tensor of shape {want}, got {got}")
    return out


def _estimate(
    denoiser: Denoiser, x0: Tensor, setup: _Setup, key: int, offset: int, gen: torch.Generator
) -> tuple[Tensor, int]:
    """One estimate of ``NELBO(x0)`` per sequence (float64 ``[B]``, the prior included if
    ``setup.include_prior``) and the next unused noise offset."""
    batch, length = x0.shape
    t_all, weights = _times(setup, batch, gen)
    graph = setup.graph
    total = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    for k in range(setup.num_t):
        t = t_all[:, k].to(x0.device)
        sigma, dsigma = setup.schedule(t)
        factor = setup.schedule.loss_weight(t) if setup.objective == "mdlm" else dsigma
        for _ in range(setup.noise_draws):
            x_t = add_noise(
                x0,
                sigma=sigma,
                graph=graph,
                vocab_size=setup.vocab_size,
                mask_id=setup.mask_id,
                seed=key,
                offset=offset,
            )
            offset += 1
            out = _model_output(denoiser, x_t, sigma.float(), setup.vocab_size)
            if setup.objective == "mdlm":
                loss = masked_diffusion_loss(
                    out, x_t, x0, mask_id=setup.mask_id, weight=factor, reduction="none"
                )
            else:
                loss = score_entropy(
                    out,
                    x_t,
                    x0,
                    sigma=sigma,
                    graph=graph,
                    mask_id=setup.mask_id,
                    weight=factor,
                    reduction="none",
                )
            total += loss.double().sum(-1) * weights[:, k].to(x0.device) / setup.noise_draws
    if not setup.include_prior:
        return total, offset
    prior = length * prior_nats_per_token(
        graph=graph, schedule=setup.schedule, vocab_size=setup.vocab_size
    )
    return total + prior, offset


def nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    objective: str,
    graph: str = "absorb",
    schedule: NoiseSchedule,
    vocab_size: int,
    mask_id: int | None = None,
    num_t: int = 8,
    method: str = "antithetic",
    noise_draws: int = 1,
    time_power: float = 1.0,
    t_min: float = 0.0,
    include_prior: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate of the negative ELBO of each sequence, in nats (module docstring).

    Args:
        denoiser: ``(x_t [B, L], sigma [B]) -> [B, L, V]`` log-scores (``"sedd"``) or logits
            over ``x0`` (``"mdlm"``).
        x0: clean tokens ``[B, L]`` (never the mask).
        objective: ``"mdlm"`` (masked diffusion, MDLM SUBS) or ``"sedd"`` (score entropy).
        graph: ``"absorb"`` (default; the only graph of ``"mdlm"``) or ``"uniform"``.
        schedule: a :class:`fastdiff.schedules.NoiseSchedule` (``LogLinear``, ...).
        vocab_size: ``V``, the mask included; mask_id: required except on ``"uniform"``.
        num_t: times per sequence; method: ``"antithetic"``, ``"stratified"`` or
            ``"quadrature"``; noise_draws: draws of ``x_t`` per time.
        time_power: ``p`` of the change of variable ``t = u^p`` (module docstring).
        t_min: integrate over ``[t_min, 1]`` only (``t = t_min + (1 - t_min) u^p``, the weights
            times ``1 - t_min``); ``t_min > 0`` drops the part of the integral over
            ``[0, t_min)``, so the result is no longer a strict bound (module docstring,
            "Reporting conventions"). Default 0: the strict bound.
        include_prior: add the prior term ``L * prior_nats_per_token(...)`` (default); False
            drops it, as SEDD's and MDLM's reported numbers do.
        seed / generator: the randomness (a fresh seed from torch's default generator when
            both are None).

    Returns the float64 estimate ``[B]`` on the denoiser's device; its expectation is the
    bound of each sequence (``"quadrature"``: up to the rule's error). The same seed gives the
    same times (up to the map from ``u``) and noise draws for every ``t_min`` and
    ``include_prior``.
    """
    setup = _setup(
        objective,
        graph,
        schedule,
        vocab_size,
        mask_id,
        num_t,
        method,
        noise_draws,
        time_power,
        t_min,
        include_prior,
    )
    x0 = _check_x0(x0, setup)
    key = _key(seed, generator)
    with torch.inference_mode():
        x0 = x0.to(_device(denoiser, x0))
        est, _ = _estimate(denoiser, x0, setup, key, 0, torch.Generator().manual_seed(key))
    return est


def perplexity_bound(
    denoiser: Denoiser,
    batches: Iterable[Tensor],
    *,
    objective: str,
    graph: str = "absorb",
    schedule: NoiseSchedule,
    vocab_size: int,
    mask_id: int | None = None,
    num_t: int = 8,
    method: str = "antithetic",
    noise_draws: int = 1,
    time_power: float = 1.0,
    t_min: float = 0.0,
    include_prior: bool = True,
    repeats: int = 2,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> LikelihoodBound:
    """The perplexity upper bound of a data set given as an iterable of token batches
    ``[B, L]`` (lengths may differ between batches), streamed one batch at a time.

    Each batch gets ``repeats`` (>= 2) independent estimates of :func:`nelbo` (same
    arguments), so a call costs ``repeats * num_t * noise_draws`` denoiser calls per batch.
    ``nats_per_token = sum of NELBO / tokens``; its standard error is
    ``sqrt(sum_b var_b) / tokens`` with ``var_b`` the sample variance of sequence ``b``'s
    repeats divided by ``repeats`` (sequences are randomized independently).
    ``prior_nats_per_token`` is the prior's share of ``nats_per_token``: 0.0 with
    ``include_prior=False`` (:func:`prior_nats_per_token` gives the dropped value).
    """
    setup = _setup(
        objective,
        graph,
        schedule,
        vocab_size,
        mask_id,
        num_t,
        method,
        noise_draws,
        time_power,
        t_min,
        include_prior,
    )
    _positive_int("repeats", repeats, 2)
    key = _key(seed, generator)
    gen = torch.Generator().manual_seed(key)
    offset, nats, var, tokens, sequences = 0, 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            x0 = _check_x0(batch, setup)
            x0 = x0.to(_device(denoiser, x0))
            runs = []
            for _ in range(repeats):
                est, offset = _estimate(denoiser, x0, setup, key, offset, gen)
                runs.append(est)
            runs = torch.stack(runs)
            nats += float(runs.mean(0).sum())
            var += float(runs.var(0).sum()) / repeats
            tokens += x0.numel()
            sequences += x0.shape[0]
    prior = prior_nats_per_token(graph=graph, schedule=schedule, vocab_size=vocab_size)
    return _bound(nats, var, prior if include_prior else 0.0, tokens, sequences)


def _bound(nats: float, var: float, prior: float, tokens: int, sequences: int) -> LikelihoodBound:
    """The :class:`LikelihoodBound` of summed NELBOs ``nats``, the summed variance ``var`` of
    their estimates and the prior's share per token ``prior``."""
    if tokens == 0:
        raise ValueError("batches held no tokens")
    per_token = nats / tokens
    return LikelihoodBound(
        nats_per_token=per_token,
        bits_per_token=per_token / math.log(2.0),
        perplexity=math.exp(per_token) if per_token < 709.0 else math.inf,
        stderr_nats_per_token=math.sqrt(var) / tokens,
        prior_nats_per_token=prior,
        num_tokens=tokens,
        num_sequences=sequences,
    )


# --------------------------------------------------------------------------------------------
# D3PM: the discrete-time bound
# --------------------------------------------------------------------------------------------


def _check_transitions(transitions: TransitionSchedule) -> TransitionSchedule:
    if not isinstance(transitions, TransitionSchedule):
        raise TypeError(
            "transitions must be a fastdiff.transitions.TransitionSchedule, got "
            f"{type(transitions).__name__}"
        )
    return transitions


def _check_num_t(num_t: int | None, num_steps: int) -> int:
    """The number of steps per estimate: ``T`` for ``None``, else an int in ``[1, T]``."""
    if num_t is None:
        return num_steps
    if isinstance(num_t, bool) or not isinstance(num_t, int) or not 1 <= num_t <= num_steps:
        raise ValueError(f"num_t must be None or an int in [1, T = {num_steps}], got {num_t!r}")
    return num_t


def d3pm_prior_nats(*, transitions: TransitionSchedule, prior: Tensor | None = None) -> Tensor:
    """The D3PM prior term per clean token: ``KL(q(x_T | x0 = v) || pi)`` for every ``v``
    (float64 ``[V]`` on the CPU; ``inf`` where ``pi`` has no mass on a state ``Qbar_T[v, :]``
    reaches).

    ``q(x_T | x0 = v) = Qbar_T[v, :]``. ``prior`` is ``pi``, probabilities ``[V]`` (>= 0,
    summing to 1 within 1e-6); the default ``pi = mean_v Qbar_T[v, :]`` is the start
    distribution of :func:`fastdiff.sample` with ``method="d3pm"`` (module docstring, "D3PM").
    """
    tables = _check_transitions(transitions)
    q = tables.q_bar[-1].detach().to("cpu", torch.float64)
    v = q.shape[-1]
    if prior is None:
        pi = q.mean(0)
    else:
        checks.floating("prior", prior)
        if prior.shape != (v,):
            raise ValueError(f"prior must have shape [V] = [{v}], got {tuple(prior.shape)}")
        pi = prior.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(pi).all()) or bool((pi < 0).any()):
            raise ValueError("prior must hold finite probabilities >= 0")
        if abs(float(pi.sum()) - 1.0) > 1e-6:
            raise ValueError(f"prior must sum to 1, got {float(pi.sum())!r}")
    kl = torch.special.xlogy(q, q).sum(-1) - torch.special.xlogy(q, pi).sum(-1)
    return kl.clamp_min(0.0)  # >= 0 exactly; rounding leaves ~1e-17 where Qbar_T[v] = pi


def _d3pm_prior_of(x0: Tensor, table: Tensor) -> Tensor:
    """``sum_i KL(q(x_T | x0_i) || pi)`` per sequence, float64 ``[B]`` on ``x0``'s device;
    raises if it is infinite for some token of ``x0`` (before the denoiser runs)."""
    per_token = table.to(x0.device)[x0]
    if bool(torch.isinf(per_token).any()):
        bad = sorted(set(x0[torch.isinf(per_token)].tolist()))
        raise ValueError(
            f"prior gives no mass to a state q(x_T | x0) reaches for the token(s) {bad} of x0: "
            "the prior KL, and the bound, would be infinite"
        )
    return per_token.sum(-1)


def _d3pm_steps(num_t: int, num_steps: int, batch: int, gen: torch.Generator) -> Tensor | None:
    """The stratified steps ``[B, K]`` (int64, CPU) of one estimate, or None for all ``T``:
    ``t_k = floor((k + u_k) T / K) + 1``, ``u_k ~ U(0, 1)`` independent per sequence and k."""
    if num_t == num_steps:
        return None
    u = _uniform_open((batch, num_t), gen)
    s = torch.floor((torch.arange(num_t, dtype=torch.float64) + u) * (num_steps / num_t))
    return s.long().clamp(0, num_steps - 1) + 1


def _d3pm_estimate(
    denoiser: Denoiser,
    x0: Tensor,
    tables: TransitionSchedule,
    prior: Tensor,
    num_t: int,
    key: int,
    offset: int,
    gen: torch.Generator,
) -> tuple[Tensor, int]:
    """One estimate of the D3PM ``NELBO(x0)`` per sequence (float64 ``[B]``, ``prior`` the
    prior term per sequence) and the next unused noise offset."""
    batch = x0.shape[0]
    num_steps, vocab = tables.num_steps, tables.vocab_size
    steps = _d3pm_steps(num_t, num_steps, batch, gen)
    total = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    for k in range(num_t):
        if steps is None:  # every step once: one [V, V] matrix for the whole batch
            t = k + 1
            level = torch.full((batch,), float(t), dtype=torch.float32, device=x0.device)
            first = t == 1
        else:  # one step per sequence: [B, V, V] matrices
            t = steps[:, k].to(x0.device)
            level, first = t.float(), t == 1
        x_t = add_noise_dense(x0, tables.cumulative(t), seed=key, offset=offset)
        offset += 1
        out = _model_output(denoiser, x_t, level, vocab)
        loss = d3pm_hybrid_loss(
            out,
            x_t,
            x0,
            q_step=tables.step(t),
            qbar_next=tables.qbar_prev(t),
            t_is_one=first,
            hybrid_lambda=0.0,
            reduction="none",
        )
        total += loss.double().sum(-1)
    return total * (num_steps / num_t) + prior, offset


def d3pm_nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    transitions: TransitionSchedule,
    num_t: int | None = None,
    prior: Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate of the D3PM discrete-time negative ELBO of each sequence, in nats (module
    docstring, "D3PM")::

        NELBO(x0) = sum_{t=2..T} E_{q(x_t|x0)} KL(q(x_{t-1}|x_t,x0) || p_theta(x_{t-1}|x_t))
                    + E_{q(x_1|x0)} [-log p_theta(x0|x_1)] + KL(q(x_T|x0) || pi)

    each term summed over positions.

    Args:
        denoiser: ``(x_t [B, L] int64, t [B] fp32) -> [B, L, V]`` logits of ``x0``, ``t`` the
            step ``1..T`` as a float (as :class:`fastdiff.nn.D3PMLoss` and
            :func:`fastdiff.sample` with ``method="d3pm"`` call it).
        x0: clean tokens ``[B, L]`` in ``[0, V)``.
        transitions: the :class:`fastdiff.transitions.TransitionSchedule` (``T`` steps, ``V``).
        num_t: None (default): every step's term, each with one draw of ``x_t`` per sequence
            (``T`` denoiser calls); an int ``K`` in ``[1, T]``: ``K`` steps per sequence
            stratified over ``1..T``, each term weighted ``T / K`` (unbiased; ``K = T`` is
            None). Each sequence then has its own step: the matrices are ``[B, V, V]``
            float64 per call, as in :class:`fastdiff.nn.D3PMLoss`.
        prior: ``pi`` ``[V]`` (default ``mean_v Qbar_T[v, :]``; :func:`d3pm_prior_nats`).
        seed / generator: the randomness (a fresh seed from torch's default generator when
            both are None).

    Returns the float64 estimate ``[B]`` on the denoiser's device; its expectation over the
    draws is ``NELBO(x0) >= -log p_theta(x0)``.
    """
    tables = _check_transitions(transitions)
    k = _check_num_t(num_t, tables.num_steps)
    _check_tokens(x0, tables.vocab_size)
    table = d3pm_prior_nats(transitions=tables, prior=prior)
    key = _key(seed, generator)
    with torch.inference_mode():
        x0 = x0.long().to(_device(denoiser, x0))
        prior_seq = _d3pm_prior_of(x0, table)
        if tables.q_bar.device != x0.device:
            tables = tables.to(x0.device)
        gen = torch.Generator().manual_seed(key)
        est, _ = _d3pm_estimate(denoiser, x0, tables, prior_seq, k, key, 0, gen)
    return est


def d3pm_perplexity_bound(
    denoiser: Denoiser,
    batches: Iterable[Tensor],
    *,
    transitions: TransitionSchedule,
    num_t: int | None = None,
    prior: Tensor | None = None,
    repeats: int = 2,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> LikelihoodBound:
    """The D3PM perplexity upper bound of a data set given as an iterable of token batches
    ``[B, L]`` (lengths may differ between batches), streamed one batch at a time.

    Each batch gets ``repeats`` (>= 2) independent estimates of :func:`d3pm_nelbo` (same
    arguments), ``repeats * num_t`` denoiser calls per batch (``num_t=None``: ``T``). The
    fields and the standard error are those of :func:`perplexity_bound`;
    ``prior_nats_per_token`` is the exact ``sum KL(q(x_T | x0_i) || pi) / tokens`` (included).
    """
    tables = _check_transitions(transitions)
    k = _check_num_t(num_t, tables.num_steps)
    _positive_int("repeats", repeats, 2)
    table = d3pm_prior_nats(transitions=tables, prior=prior)
    key = _key(seed, generator)
    gen = torch.Generator().manual_seed(key)
    offset, nats, var, prior_nats, tokens, sequences = 0, 0.0, 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            _check_tokens(batch, tables.vocab_size)
            x0 = batch.long().to(_device(denoiser, batch))
            prior_seq = _d3pm_prior_of(x0, table)
            if tables.q_bar.device != x0.device:
                tables = tables.to(x0.device)
            runs = []
            for _ in range(repeats):
                est, offset = _d3pm_estimate(denoiser, x0, tables, prior_seq, k, key, offset, gen)
                runs.append(est)
            runs = torch.stack(runs)
            nats += float(runs.mean(0).sum())
            var += float(runs.var(0).sum()) / repeats
            prior_nats += float(prior_seq.sum())
            tokens += x0.numel()
            sequences += x0.shape[0]
    return _bound(nats, var, prior_nats / tokens if tokens else 0.0, tokens, sequences)


# the Gaussian (embedding-space) bound lives in its own module, which reads this one's names
# at call time; re-exported here so every bound is under fastdiff.likelihood
from fastdiff.likelihood_gaussian import (  # noqa: E402
    GaussianNELBOTerms,
    gaussian_nelbo,
    gaussian_nelbo_terms,
    gaussian_perplexity_bound,
)
