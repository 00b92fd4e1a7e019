"""Likelihood bounds of discrete diffusion models: the negative ELBO per sequence and the
perplexity upper bound of a data set (the metric of SEDD's and MDLM's results tables).

A denoiser is a callable ``denoiser(x_t [B, L] int64, sigma [B] fp32) -> [B, L, V]``: raw
log-scores (``log s(x_t)_{i, j}``, the log-ratio ``p_t(x_t with x_i = j) / p_t(x_t)``) for
``objective="sedd"`` (``graph="absorb"`` or ``"uniform"``), logits over ``x0`` for
``objective="mdlm"`` (MDLM SUBS, absorbing graph).
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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from fastdiff import checks
from fastdiff.losses import masked_diffusion_loss, score_entropy
from fastdiff.noising import add_noise
from fastdiff.schedules import NoiseSchedule

__all__ = [
    "LikelihoodBound",
    "gauss_legendre",
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
    objective, graph, schedule, vocab_size, mask_id, num_t, method, noise_draws, power
) -> _Setup:
    _check_objective(objective, graph)
    vocab = _check_model(graph, schedule, vocab_size)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power >= 1.0:
        raise ValueError(f"time_power must be a number >= 1, got {power!r}")
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
    """``(t [B, K], weight [B, K])`` of one estimate, float64 on the CPU."""
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
    p = setup.power
    return (u**p).clamp(T_MIN, 1.0 - T_MIN), weights * p * u ** (p - 1.0)


def _device(denoiser: Denoiser, x0: Tensor) -> torch.device:
    if isinstance(denoiser, torch.nn.Module):
        param = next(denoiser.parameters(), None)
        if param is not None:
            return param.device
    return x0.device


def _check_x0(x0: Tensor, setup: _Setup) -> Tensor:
    """Token ids ``[B, L]`` in range and never the mask (before the denoiser runs)."""
    if not isinstance(x0, Tensor) or x0.dtype not in (torch.int64, torch.int32):
        raise TypeError("x0 must be an int64 / int32 tensor of token ids [B, L]")
    if x0.dim() != 2 or x0.numel() == 0:
        raise ValueError(f"x0 must have shape [B, L] with B, L >= 1, got {tuple(x0.shape)}")
    checks.token_range("x0", x0, setup.vocab_size)
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
    """One estimate of ``NELBO(x0)`` per sequence (float64 ``[B]``, prior included) and the
    next unused noise offset."""
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
        seed / generator: the randomness (a fresh seed from torch's default generator when
            both are None).

    Returns the float64 estimate ``[B]`` on the denoiser's device; its expectation is the
    bound of each sequence (``"quadrature"``: up to the rule's error).
    """
    setup = _setup(
        objective, graph, schedule, vocab_size, mask_id, num_t, method, noise_draws, time_power
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
    """
    setup = _setup(
        objective, graph, schedule, vocab_size, mask_id, num_t, method, noise_draws, time_power
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
    if tokens == 0:
        raise ValueError("batches held no tokens")
    per_token = nats / tokens
    return LikelihoodBound(
        nats_per_token=per_token,
        bits_per_token=per_token / math.log(2.0),
        perplexity=math.exp(per_token) if per_token < 709.0 else math.inf,
        stderr_nats_per_token=math.sqrt(var) / tokens,
        prior_nats_per_token=prior_nats_per_token(
            graph=graph, schedule=schedule, vocab_size=vocab_size
        ),
        num_tokens=tokens,
        num_sequences=sequences,
    )
