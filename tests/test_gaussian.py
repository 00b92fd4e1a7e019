"""Tests for fastdiff.gaussian: q_sample, gaussian_loss, guidance, DDPM / DDIM steps, rounding.

Exact properties are checked in float64 against closed forms (posterior mean, DDIM with the
true noise, eta = 1 == DDPM posterior step); the generated noise is checked statistically with
bounds stated next to each assertion (the draws are seeded, so the tests are deterministic).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.gaussian import (
    GaussianNoised,
    add_noise_gaussian,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    gaussian_loss,
    round_to_embedding,
)
from fastdiff.reference import gaussian as ref
from fastdiff.schedules import GaussianSchedule

F64 = torch.float64
F32 = torch.float32
FAST = settings(max_examples=30, deadline=None)
EXACT = dict(rtol=1e-10, atol=1e-10)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=F64).to(dtype)


@st.composite
def batch_and_abar(draw, lo: float = 0.0, hi: float = 1.0):
    """A batch shape, a width and an ``abar`` that is a number or a prefix-shaped tensor."""
    batch = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    h = draw(st.integers(1, 6))
    k = draw(st.integers(-1, len(batch)))  # -1: a Python number
    seed = draw(st.integers(0, 2**16))
    if k < 0:
        abar = draw(st.floats(lo, hi))
    else:
        abar = lo + (hi - lo) * torch.rand(batch[:k], generator=gen(seed), dtype=F64)
    return batch, h, abar, seed


def expand(value, batch: tuple[int, ...]) -> torch.Tensor:
    """A number or prefix-shaped tensor as a ``[*B, 1]`` float64 column."""
    t = torch.as_tensor(value, dtype=F64)
    return t.reshape(t.shape + (1,) * (len(batch) - t.dim() + 1)).expand(*batch, 1)


# --------------------------------------------------------------------------------------------
# q_sample
# --------------------------------------------------------------------------------------------


@FAST
@given(case=batch_and_abar())
def test_q_sample_formula_with_given_noise(case) -> None:
    batch, h, abar, seed = case
    x0, eps = randn(*batch, h, seed=seed), randn(*batch, h, seed=seed + 1)
    out = add_noise_gaussian(x0, alpha_bar=abar, noise=eps)
    assert isinstance(out, GaussianNoised)
    a = expand(abar, batch)
    torch.testing.assert_close(out.x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps, **EXACT)
    assert torch.equal(out.noise, eps) and torch.equal(out.x0, x0)


def test_q_sample_endpoints() -> None:
    x0, eps = randn(3, 5), randn(3, 5, seed=1)
    assert torch.equal(add_noise_gaussian(x0, alpha_bar=1.0, noise=eps).x_t, x0)
    assert torch.equal(add_noise_gaussian(x0, alpha_bar=0.0, noise=eps).x_t, eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32])
def test_q_sample_low_precision_matches_float64(dtype: torch.dtype) -> None:
    x0, eps = randn(4, 6, 8, dtype=dtype), randn(4, 6, 8, seed=1, dtype=dtype)
    abar = torch.rand(4, generator=gen(2), dtype=F64)
    out = add_noise_gaussian(x0, alpha_bar=abar, noise=eps)
    assert out.x_t.dtype == dtype
    exact = add_noise_gaussian(x0.double(), alpha_bar=abar, noise=eps.double()).x_t
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, F32: 1e-6}[dtype]
    torch.testing.assert_close(out.x_t.double(), exact, rtol=tol, atol=tol)
    drawn = add_noise_gaussian(x0, alpha_bar=abar, seed=3)
    assert drawn.x_t.dtype == drawn.noise.dtype == dtype


@FAST
@given(case=batch_and_abar(), vocab=st.integers(1, 9))
def test_q_sample_embedding_gather(case, vocab: int) -> None:
    batch, h, abar, seed = case
    emb = randn(vocab, h, seed=seed)
    tokens = torch.randint(0, vocab, batch, generator=gen(seed))
    out = add_noise_gaussian(tokens, alpha_bar=abar, embedding=emb, seed=seed, offset=2)
    assert torch.equal(out.x0, emb[tokens])
    # the gather is fused: same result and same noise as noising the gathered rows
    dense = add_noise_gaussian(emb[tokens], alpha_bar=abar, seed=seed, offset=2)
    assert torch.equal(out.x_t, dense.x_t) and torch.equal(out.noise, dense.noise)
    assert out.x_t.dtype == emb.dtype


def test_q_sample_fixed_positions_stay_clean() -> None:
    x0 = randn(3, 5, 4)
    fixed = torch.zeros(3, 5, dtype=torch.bool)
    fixed[:, :2] = True  # DiffuSeq source side
    fixed[1] = True
    free = add_noise_gaussian(x0, alpha_bar=torch.tensor([0.2, 0.5, 0.9], dtype=F64), seed=7)
    out = add_noise_gaussian(
        x0, alpha_bar=torch.tensor([0.2, 0.5, 0.9], dtype=F64), seed=7, fixed=fixed
    )
    assert torch.equal(out.x_t[fixed], x0[fixed])
    assert bool((out.noise[fixed] == 0).all())
    assert torch.equal(out.x_t[~fixed], free.x_t[~fixed])
    assert torch.equal(out.noise[~fixed], free.noise[~fixed])
    assert not torch.equal(free.x_t[fixed], x0[fixed])
    # a per-sequence (prefix) mask
    seq = add_noise_gaussian(x0, alpha_bar=0.5, seed=7, fixed=torch.tensor([True, False, True]))
    assert torch.equal(seq.x_t[0], x0[0]) and not torch.equal(seq.x_t[1], x0[1])


def test_q_sample_seed_reproducibility() -> None:
    x0 = torch.zeros(2, 3, 6, dtype=F64)
    a = add_noise_gaussian(x0, alpha_bar=0.0, seed=11).noise
    assert torch.equal(a, add_noise_gaussian(x0, alpha_bar=0.0, seed=11).noise)
    assert not torch.equal(a, add_noise_gaussian(x0, alpha_bar=0.0, seed=12).noise)
    assert not torch.equal(a, add_noise_gaussian(x0, alpha_bar=0.0, seed=11, offset=1).noise)
    # keyed by (seed, offset, flattened position, feature): independent of the batch shape
    flat = add_noise_gaussian(x0.reshape(6, 6), alpha_bar=0.0, seed=11).noise
    assert torch.equal(a.reshape(6, 6), flat)
    # the draw of fastdiff.random.normal; the native CPU kernels compute its float64 log / cos /
    # sin with their own polynomials, so the values may differ from torch's in the last bits
    eps = torch.finfo(F64).eps
    drawn = frandom.normal(11, 0, torch.arange(6), 6)
    torch.testing.assert_close(flat, drawn, rtol=4 * eps, atol=0)
    # a tensor seed and a torch.Generator
    assert torch.equal(a, add_noise_gaussian(x0, alpha_bar=0.0, seed=torch.tensor(11)).noise)
    g1, g2 = gen(5), gen(5)
    assert torch.equal(
        add_noise_gaussian(x0, alpha_bar=0.0, generator=g1).noise,
        add_noise_gaussian(x0, alpha_bar=0.0, generator=g2).noise,
    )
    assert not torch.equal(add_noise_gaussian(x0, alpha_bar=0.0, generator=g1).noise, a)


def _ks_statistic(z: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the sample ``z`` and N(0, 1)."""
    z = torch.sort(z.reshape(-1).double()).values
    n = z.numel()
    cdf = torch.special.ndtr(z)
    i = torch.arange(1, n + 1, dtype=F64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def test_generated_noise_is_standard_normal() -> None:
    rows, cols = 500, 200
    n = rows * cols
    z = add_noise_gaussian(
        torch.zeros(rows, cols, dtype=F64), alpha_bar=0.0, seed=2024, offset=3
    ).noise
    # mean: standard error 1/sqrt(n); variance: standard error sqrt(2/n) (normal kurtosis)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov at the ~1% level: D < 1.63 / sqrt(n)
    bound = 1.63 / math.sqrt(n)
    assert _ks_statistic(z) < bound
    assert _ks_statistic(z + 0.05) > bound  # the check has power: a 0.05 shift fails it
    assert _ks_statistic(torch.rand(n, generator=gen(0)) * 2 - 1) > bound
    # Box-Muller pairs (columns 2i, 2i + 1 share one Philox call) must be uncorrelated, as must
    # their squares (a radius shared without independent angles correlates z^2)
    even, odd = z[:, 0::2].reshape(-1), z[:, 1::2].reshape(-1)
    m = even.numel()
    assert abs(float(torch.corrcoef(torch.stack([even, odd]))[0, 1])) < 5 / math.sqrt(m)
    sq = torch.corrcoef(torch.stack([even.square(), odd.square()]))[0, 1]
    assert abs(float(sq)) < 5 / math.sqrt(m)
    # neighbouring rows (positions) are independent too
    r = torch.corrcoef(torch.stack([z[:-1].reshape(-1), z[1:].reshape(-1)]))[0, 1]
    assert abs(float(r)) < 5 / math.sqrt(n)


# --------------------------------------------------------------------------------------------
# gaussian_loss
# --------------------------------------------------------------------------------------------


def test_gaussian_loss_hand_computed() -> None:
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, -1.0]]], dtype=F64)
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]], dtype=F64)
    per = torch.tensor([[5.0, 13.0], [1.0, 2.0]], dtype=F64)
    assert torch.equal(gaussian_loss(pred, target, reduction="none"), per)
    assert float(gaussian_loss(pred, target, reduction="sum")) == 21.0
    assert float(gaussian_loss(pred, target, reduction="mean")) == 21.0 / 4
    w = torch.tensor([2.0, 0.5], dtype=F64)  # per sequence
    assert torch.equal(gaussian_loss(pred, target, weight=w, reduction="none"), per * w[:, None])
    assert torch.equal(gaussian_loss(pred, target, weight=3.0, reduction="none"), 3 * per)
    ignore = torch.tensor([[False, True], [False, False]])
    assert torch.equal(
        gaussian_loss(pred, target, ignore=ignore, reduction="none"),
        torch.tensor([[5.0, 0.0], [1.0, 2.0]], dtype=F64),
    )
    # mean over the 3 non-ignored positions
    assert float(gaussian_loss(pred, target, ignore=ignore, reduction="mean")) == 8.0 / 3
    got = gaussian_loss(pred, target, weight=w, ignore=ignore, reduction="sum")
    assert float(got) == 2 * 5 + 0.5 * (1 + 2)


def test_gaussian_loss_gradient_and_dtype() -> None:
    pred = randn(3, 4, 5).requires_grad_()
    target = randn(3, 4, 5, seed=1)
    w = torch.rand(3, 4, generator=gen(2), dtype=F64)
    gaussian_loss(pred, target, weight=w, reduction="sum").backward()
    torch.testing.assert_close(pred.grad, 2 * w[..., None] * (pred - target).detach(), **EXACT)
    half = gaussian_loss(pred.detach().half(), target.half(), reduction="none")
    assert half.dtype == F32 and half.shape == (3, 4)


# --------------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**16),
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    w=st.floats(-1.0, 10.0),
)
def test_guidance_formula(seed: int, batch: list[int], w: float) -> None:
    """diffusers' convention: ``uncond + s (cond - uncond)`` with ``s = guidance_scale = 1 + w``
    (Ho & Salimans' ``(1 + w) cond - w uncond``)."""
    c, u = randn(*batch, 5, seed=seed), randn(*batch, 5, seed=seed + 1)
    assert torch.equal(classifier_free_guidance(c, u, guidance_scale=1.0), c)  # s = 1: cond
    torch.testing.assert_close(classifier_free_guidance(c, u, guidance_scale=0.0), u, **EXACT)
    s = 1.0 + w
    expected = (1 + w) * c - w * u
    torch.testing.assert_close(classifier_free_guidance(c, u, guidance_scale=s), expected, **EXACT)
    torch.testing.assert_close(
        classifier_free_guidance(c, u, guidance_scale=s), u + s * (c - u), **EXACT
    )
    if batch:  # per-sequence scale
        ss = torch.linspace(1, 4, batch[0], dtype=F64)
        got = classifier_free_guidance(c, u, guidance_scale=ss)
        scol = ss.reshape(-1, *([1] * len(batch)))
        torch.testing.assert_close(got, u + scol * (c - u), **EXACT)


def test_guided_logits_keep_excluded_columns_and_dtype() -> None:
    c, u = randn(2, 6), randn(2, 6, seed=1)
    c[:, 3] = u[:, 3] = -torch.inf  # a mask column excluded in both
    out = classifier_free_guidance(c, u, guidance_scale=2.0)
    assert bool(torch.isneginf(out[:, 3]).all()) and bool(torch.isfinite(out[:, :3]).all())
    half = classifier_free_guidance(c.half(), u.half(), guidance_scale=1.5)
    assert half.dtype == torch.float16


# --------------------------------------------------------------------------------------------
# DDPM
# --------------------------------------------------------------------------------------------


@st.composite
def step_case(draw):
    """Shapes and a (per-position or scalar) pair ``0 < abar <= abar_prev <= 1``."""
    batch = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    h = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    if draw(st.booleans()):
        abar_prev = draw(st.floats(0.02, 1.0))
        abar = abar_prev * draw(st.floats(0.02, 1.0))
        if abar >= 1.0:
            abar = 0.5
    else:
        g = gen(seed + 7)
        abar_prev = 0.02 + 0.98 * torch.rand(batch, generator=g, dtype=F64)
        abar_prev[..., 0] = 1.0  # some positions at their last step
        abar = abar_prev * (0.02 + 0.98 * torch.rand(batch, generator=g, dtype=F64))
        abar = torch.clamp(abar, max=0.999)
    return batch, h, abar, abar_prev, seed


def _posterior(abar, abar_prev, batch):
    a, ap = expand(abar, batch), expand(abar_prev, batch)
    alpha = a / ap
    beta = (ap - a) / ap  # = 1 - alpha without cancellation when abar_prev ~ abar
    return a, ap, alpha, beta


@FAST
@given(case=step_case())
def test_ddpm_true_eps_gives_posterior_mean(case) -> None:
    batch, h, abar, abar_prev, seed = case
    x0, eps = randn(*batch, h, seed=seed), randn(*batch, h, seed=seed + 1)
    x_t = add_noise_gaussian(x0, alpha_bar=abar, noise=eps).x_t
    a, ap, alpha, beta = _posterior(abar, abar_prev, batch)
    mu = ap.sqrt() * beta / (1 - a) * x0 + alpha.sqrt() * (1 - ap) / (1 - a) * x_t
    zeros = torch.zeros_like(x0)
    for variance in ("fixed_small", "fixed_large"):
        out = ddpm_step(
            eps, x_t, alpha_bar=abar, alpha_bar_next=abar_prev, variance_type=variance, noise=zeros
        )
        torch.testing.assert_close(out, mu, **EXACT)
        out0 = ddpm_step(
            x0,
            x_t,
            alpha_bar=abar,
            alpha_bar_next=abar_prev,
            prediction_type="sample",
            variance_type=variance,
            noise=zeros,
        )
        torch.testing.assert_close(out0, mu, **EXACT)


@FAST
@given(case=step_case(), variance=st.sampled_from(["fixed_large", "fixed_small"]))
def test_ddpm_x0_prediction_equals_eps_prediction_and_noise_scale(case, variance: str) -> None:
    batch, h, abar, abar_prev, seed = case
    x_t, eps_hat = randn(*batch, h, seed=seed), randn(*batch, h, seed=seed + 1)
    a, ap, _, beta = _posterior(abar, abar_prev, batch)
    x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    kw = dict(alpha_bar=abar, alpha_bar_next=abar_prev, variance_type=variance, seed=seed, offset=1)
    by_eps = ddpm_step(eps_hat, x_t, **kw)
    by_x0 = ddpm_step(x0_hat, x_t, prediction_type="sample", **kw)
    torch.testing.assert_close(by_x0, by_eps, **EXACT)
    # the noise term is sigma z with z keyed by (seed, offset, flattened position, feature)
    n = math.prod(batch)
    z = frandom.normal(seed, 1, torch.arange(n), h).reshape(*batch, h)
    mean = ddpm_step(eps_hat, x_t, **{**kw, "seed": None}, noise=torch.zeros_like(z))
    var = beta if variance == "fixed_large" else beta * (1 - ap) / (1 - a)
    var = torch.where(ap == 1.0, torch.zeros_like(var), var)
    torch.testing.assert_close(by_eps, mean + var.sqrt() * z, **EXACT)


def test_ddpm_last_step_adds_no_noise() -> None:
    x_t, out = randn(4, 3), randn(4, 3, seed=1)
    for variance in ("fixed_large", "fixed_small"):
        kw = dict(alpha_bar=0.97, alpha_bar_next=1.0, variance_type=variance)
        a = ddpm_step(out, x_t, seed=1, **kw)
        assert torch.equal(a, ddpm_step(out, x_t, seed=2, **kw))
        assert torch.equal(a, ddpm_step(out, x_t, noise=randn(4, 3, seed=9), **kw))
        # x0 prediction at the last step returns x0_hat
        torch.testing.assert_close(
            ddpm_step(out, x_t, prediction_type="sample", seed=1, **kw), out, **EXACT
        )
    # an earlier step does add noise
    assert not torch.equal(
        ddpm_step(out, x_t, alpha_bar=0.5, alpha_bar_next=0.6, seed=1),
        ddpm_step(out, x_t, alpha_bar=0.5, alpha_bar_next=0.6, seed=2),
    )


def test_ddpm_noise_scale_matches_gaussian_schedule() -> None:
    sched = GaussianSchedule.linear(40)
    x_t, eps = randn(40, 2), randn(40, 2, seed=1)
    ones, zeros = torch.ones(40, 2, dtype=F64), torch.zeros(40, 2, dtype=F64)
    kw = dict(alpha_bar=sched.alphas_cumprod, alpha_bar_next=sched.alphas_cumprod_prev)
    for variance, table in (
        ("fixed_large", sched.betas),
        ("fixed_small", sched.posterior_variance),
    ):
        std = (
            ddpm_step(eps, x_t, variance_type=variance, noise=ones, **kw)
            - ddpm_step(eps, x_t, variance_type=variance, noise=zeros, **kw)
        )[:, 0]
        expected = table.sqrt().clone()
        expected[0] = 0.0  # the last reverse step (abar_prev = 1) is noiseless
        torch.testing.assert_close(std, expected, rtol=1e-6, atol=1e-12)


def test_ddpm_fixed_positions_guidance_and_dtype() -> None:
    x_t, c, u = randn(2, 5, 4), randn(2, 5, 4, seed=1), randn(2, 5, 4, seed=2)
    fixed = torch.tensor([[True, True, False, False, False], [True, False, False, False, True]])
    kw = dict(alpha_bar=0.3, alpha_bar_next=0.4, seed=3)
    out = ddpm_step(c, x_t, fixed=fixed, **kw)
    assert torch.equal(out[fixed], x_t[fixed])
    assert torch.equal(out[~fixed], ddpm_step(c, x_t, **kw)[~fixed])
    guided = ddpm_step(c, x_t, model_output_uncond=u, guidance_scale=3.5, **kw)
    torch.testing.assert_close(guided, ddpm_step(3.5 * c - 2.5 * u, x_t, **kw), **EXACT)
    zero = ddpm_step(c, x_t, model_output_uncond=u, guidance_scale=1.0, **kw)
    assert torch.equal(zero, ddpm_step(c, x_t, **kw))
    half = ddpm_step(c.bfloat16(), x_t.half(), **kw)
    assert half.dtype == torch.float16
    torch.testing.assert_close(
        half.double(),
        ddpm_step(c.bfloat16().double(), x_t.half().double(), **kw),
        rtol=2e-3,
        atol=2e-3,
    )


# --------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------


@FAST
@given(case=step_case())
def test_ddim_eta0_with_true_noise_is_exact(case) -> None:
    batch, h, abar, abar_prev, seed = case
    x0, eps = randn(*batch, h, seed=seed), randn(*batch, h, seed=seed + 1)
    x_t = add_noise_gaussian(x0, alpha_bar=abar, noise=eps).x_t
    ap = expand(abar_prev, batch)
    expected = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    kw = dict(alpha_bar=abar, alpha_bar_next=abar_prev, seed=seed)
    torch.testing.assert_close(ddim_step(eps, x_t, **kw), expected, **EXACT)
    torch.testing.assert_close(
        ddim_step(x0, x_t, prediction_type="sample", **kw), expected, **EXACT
    )
    # deterministic: eta = 0 ignores the noise
    assert torch.equal(ddim_step(eps, x_t, **kw), ddim_step(eps, x_t, **{**kw, "seed": seed + 1}))


def test_ddim_to_clean_returns_x0() -> None:
    x0, eps = randn(3, 4, 5), randn(3, 4, 5, seed=1)
    abar = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    x_t = add_noise_gaussian(x0, alpha_bar=abar, noise=eps).x_t
    for eta in (0.0, 1.0):
        got = ddim_step(eps, x_t, alpha_bar=abar, alpha_bar_next=1.0, eta=eta, seed=4)
        torch.testing.assert_close(got, x0, **EXACT)
        got = ddim_step(
            x0, x_t, alpha_bar=abar, alpha_bar_next=1.0, eta=eta, prediction_type="sample", seed=4
        )
        assert torch.equal(got, x0)


@FAST
@given(case=step_case(), prediction=st.sampled_from(["epsilon", "sample"]))
def test_ddim_eta1_is_the_ddpm_posterior_step(case, prediction: str) -> None:
    batch, h, abar, abar_prev, seed = case
    x_t, out = randn(*batch, h, seed=seed), randn(*batch, h, seed=seed + 1)
    kw = dict(
        alpha_bar=abar, alpha_bar_next=abar_prev, prediction_type=prediction, seed=seed, offset=5
    )
    ddim = ddim_step(out, x_t, eta=1.0, **kw)
    ddpm = ddpm_step(out, x_t, variance_type="fixed_small", **kw)
    torch.testing.assert_close(ddim, ddpm, **EXACT)
    # and its noise scale is the posterior standard deviation
    ones, zeros = torch.ones_like(x_t), torch.zeros_like(x_t)
    kw.pop("seed")
    std = ddim_step(out, x_t, eta=1.0, noise=ones, **kw) - ddim_step(
        out, x_t, eta=1.0, noise=zeros, **kw
    )
    a, ap, _, beta = _posterior(abar, abar_prev, batch)
    expected = (beta * (1 - ap) / (1 - a)).sqrt().expand(*batch, h)
    torch.testing.assert_close(std, expected, **EXACT)


def test_ddim_eta_scaling_fixed_and_guidance() -> None:
    x_t, c, u = randn(2, 3, 4), randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2)
    ones, zeros = torch.ones_like(x_t), torch.zeros_like(x_t)
    kw = dict(alpha_bar=0.3, alpha_bar_next=0.6)
    s1 = ddim_step(c, x_t, eta=1.0, noise=ones, **kw) - ddim_step(
        c, x_t, eta=1.0, noise=zeros, **kw
    )
    s05 = ddim_step(c, x_t, eta=0.5, noise=ones, **kw) - ddim_step(
        c, x_t, eta=0.5, noise=zeros, **kw
    )
    torch.testing.assert_close(s05, 0.5 * s1, **EXACT)
    assert bool(torch.isfinite(ddim_step(c, x_t, eta=3.0, seed=1, **kw)).all())  # clamped
    fixed = torch.tensor([[False, True, False], [True, False, False]])
    out = ddim_step(c, x_t, eta=1.0, seed=1, fixed=fixed, **kw)
    assert torch.equal(out[fixed], x_t[fixed])
    g = ddim_step(c, x_t, model_output_uncond=u, guidance_scale=torch.tensor([2.0, 3.0]), **kw)
    w = torch.tensor([1.0, 2.0], dtype=F64)[:, None, None]
    torch.testing.assert_close(g, ddim_step((1 + w) * c - w * u, x_t, **kw), **EXACT)


# --------------------------------------------------------------------------------------------
# rounding to the embedding
# --------------------------------------------------------------------------------------------


def _check_nearest(x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor, tol: float) -> None:
    d = torch.cdist(x.reshape(-1, x.shape[-1]).double(), emb.double()).square()
    best = d.min(-1).values
    chosen = d.gather(-1, tokens.reshape(-1, 1)).squeeze(-1)
    scale = 1.0 + x.double().square().sum(-1).reshape(-1) + emb.double().square().sum(-1).max()
    assert bool((chosen <= best + tol * scale).all())
    # where the best is clear, it is exactly cdist's argmin
    second = d.topk(min(2, d.shape[-1]), largest=False).values[:, -1]
    clear = (second - best) > 4 * tol * scale
    assert torch.equal(tokens.reshape(-1)[clear], d.argmin(-1)[clear])


@FAST
@given(
    seed=st.integers(0, 2**16),
    batch=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    vocab=st.integers(1, 40),
    h=st.integers(1, 8),
    dtype=st.sampled_from([F64, F32]),
)
def test_rounding_matches_brute_force(seed, batch, vocab, h, dtype) -> None:
    emb = randn(vocab, h, seed=seed, dtype=dtype)
    x = randn(*batch, h, seed=seed + 1, dtype=dtype)
    tokens, rounded = round_to_embedding(x, emb)
    assert tokens.shape == tuple(batch) and tokens.dtype == torch.int64
    assert rounded.shape == x.shape and rounded.dtype == dtype
    _check_nearest(x, emb, tokens, 1e-12 if dtype == F64 else 1e-5)
    assert torch.equal(rounded, emb[tokens])


def test_rounding_ties_go_to_the_lowest_index() -> None:
    # integer coordinates: every score is exact in float32, so the ties are exact
    emb = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0], [0.0, -1.0], [-2.0, 0.0]])
    tokens, _ = round_to_embedding(x, emb)
    # duplicates 0/2 and 1/4; (1,1) is equidistant from 0 and 1; the origin from all
    assert tokens.tolist() == [0, 1, 0, 0, 0, 3]


def test_exact_embedding_rows_round_to_themselves() -> None:
    emb = randn(50, 16, seed=3, dtype=F32)
    perm = torch.randperm(50, generator=gen(4))
    tokens, rounded = round_to_embedding(emb[perm].reshape(5, 10, 16), emb)
    assert torch.equal(tokens.reshape(-1), perm)
    assert torch.equal(rounded.reshape(50, 16), emb[perm])
    bf = round_to_embedding(emb[perm].bfloat16(), emb)[1]
    assert bf.dtype == torch.bfloat16


def test_rounding_chunks_bound_memory_and_match(monkeypatch) -> None:
    vocab, h, n = 7, 3, 10
    emb, x = randn(vocab, h, dtype=F32), randn(n, h, seed=1, dtype=F32)
    whole = round_to_embedding(x, emb)
    blocks: list[tuple[int, ...]] = []
    real_addmm = torch.addmm

    def spy(*args, **kwargs):
        out = real_addmm(*args, **kwargs)
        blocks.append(tuple(out.shape))
        return out

    # 3 rows x 7 columns x 4 bytes per block: chunks of 3, 3, 3, 1 rows (10 is not a multiple)
    monkeypatch.setattr(ref, "SCORE_BLOCK_BYTES", 3 * vocab * 4)
    monkeypatch.setattr(torch, "addmm", spy)
    chunked = round_to_embedding(x, emb)
    assert blocks == [(3, vocab), (3, vocab), (3, vocab), (1, vocab)]
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    # ties across a chunk boundary: every row is a duplicate of row 0
    blocks.clear()
    same = torch.zeros(n, h)
    tied = torch.ones(vocab, h)
    assert torch.equal(round_to_embedding(same, tied)[0], torch.zeros(n, dtype=torch.int64))
    # a block smaller than one row still makes progress, one row at a time
    monkeypatch.setattr(ref, "SCORE_BLOCK_BYTES", 1)
    blocks.clear()
    assert torch.equal(round_to_embedding(x, emb)[0], whole[0])
    assert blocks == [(1, vocab)] * n


# --------------------------------------------------------------------------------------------
# dispatch and bad inputs
# --------------------------------------------------------------------------------------------


def test_public_ops_dispatch_through_the_backend(monkeypatch) -> None:
    seen: list[str] = []
    real = backend.resolve

    def spy(op, reference, device):
        seen.append(op)
        impl = real(op, reference, device)

        def flat_only(*args):
            for a in args:
                if isinstance(a, torch.Tensor):
                    assert a.dim() <= 2  # flattened [N] / [N, H] / [V, H]
            return impl(*args)

        return flat_only

    monkeypatch.setattr(backend, "resolve", spy)
    x = randn(2, 3, 4)
    add_noise_gaussian(x, alpha_bar=0.5, seed=0)
    ddpm_step(x, x, alpha_bar=0.5, alpha_bar_next=0.6, seed=0)
    ddim_step(x, x, alpha_bar=0.5, alpha_bar_next=0.6, seed=0)
    round_to_embedding(x, randn(5, 4))
    gaussian_loss(x, x, reduction="none")
    assert seen == ["q_sample", "ddpm_step", "ddim_step", "round_to_embedding", "gaussian_loss"]


X = randn(2, 3, 4)
E = randn(5, 4)
TOK = torch.tensor([[0, 1, 2], [3, 4, 0]])
META = torch.zeros(2, 3, 4, device="meta")
NAN = X.clone()
NAN[0, 0, 0] = torch.nan

BAD_CALLS = {
    # q_sample
    "q int x0 without embedding": (TypeError, lambda: add_noise_gaussian(TOK, alpha_bar=0.5)),
    "q float x0 with embedding": (
        TypeError,
        lambda: add_noise_gaussian(X, alpha_bar=0.5, embedding=E),
    ),
    "q abar > 1": (ValueError, lambda: add_noise_gaussian(X, alpha_bar=1.5)),
    "q abar < 0": (ValueError, lambda: add_noise_gaussian(X, alpha_bar=torch.tensor([-0.1, 0.5]))),
    "q abar NaN": (ValueError, lambda: add_noise_gaussian(X, alpha_bar=math.nan)),
    "q abar tensor NaN": (
        ValueError,
        lambda: add_noise_gaussian(X, alpha_bar=torch.tensor([0.5, math.nan])),
    ),
    "q abar not a prefix": (
        ValueError,
        lambda: add_noise_gaussian(X, alpha_bar=torch.full((3,), 0.5)),
    ),
    "q abar string": (TypeError, lambda: add_noise_gaussian(X, alpha_bar="0.5")),
    "q noise shape": (
        ValueError,
        lambda: add_noise_gaussian(X, alpha_bar=0.5, noise=randn(2, 3, 5)),
    ),
    "q noise int": (TypeError, lambda: add_noise_gaussian(X, alpha_bar=0.5, noise=TOK)),
    "q x0 NaN": (ValueError, lambda: add_noise_gaussian(NAN, alpha_bar=0.5)),
    "q token too large": (
        ValueError,
        lambda: add_noise_gaussian(TOK + 1, alpha_bar=0.5, embedding=E),
    ),
    "q token negative": (
        ValueError,
        lambda: add_noise_gaussian(TOK - 1, alpha_bar=0.5, embedding=E),
    ),
    "q embedding 1-D": (ValueError, lambda: add_noise_gaussian(TOK, alpha_bar=0.5, embedding=E[0])),
    "q embedding int": (TypeError, lambda: add_noise_gaussian(TOK, alpha_bar=0.5, embedding=TOK)),
    "q embedding empty": (
        ValueError,
        lambda: add_noise_gaussian(TOK[:0], alpha_bar=0.5, embedding=E[:0]),
    ),
    "q embedding width vs noise": (
        ValueError,
        lambda: add_noise_gaussian(TOK, alpha_bar=0.5, embedding=E, noise=randn(2, 3, 3)),
    ),
    "q fixed not bool": (TypeError, lambda: add_noise_gaussian(X, alpha_bar=0.5, fixed=TOK)),
    "q fixed shape": (
        ValueError,
        lambda: add_noise_gaussian(X, alpha_bar=0.5, fixed=torch.ones(3, dtype=torch.bool)),
    ),
    "q device mismatch": (ValueError, lambda: add_noise_gaussian(X, alpha_bar=0.5, noise=META)),
    # DDPM / DDIM
    "ddpm abar 0": (ValueError, lambda: ddpm_step(X, X, alpha_bar=0.0, alpha_bar_next=0.5)),
    "ddpm abar 1": (ValueError, lambda: ddpm_step(X, X, alpha_bar=1.0, alpha_bar_next=1.0)),
    "ddpm abar > 1": (ValueError, lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=1.2)),
    "ddpm abar_prev < abar": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.4),
    ),
    "ddpm abar_prev < abar (tensor)": (
        ValueError,
        lambda: ddpm_step(
            X, X, alpha_bar=torch.tensor([0.5, 0.5]), alpha_bar_next=torch.tensor([0.6, 0.4])
        ),
    ),
    "ddpm abar NaN": (ValueError, lambda: ddpm_step(X, X, alpha_bar=math.nan, alpha_bar_next=0.5)),
    "ddpm prediction": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, prediction_type="v"),
    ),
    "ddpm variance": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, variance_type="big"),
    ),
    "ddpm shape": (ValueError, lambda: ddpm_step(X[:1], X, alpha_bar=0.5, alpha_bar_next=0.6)),
    "ddpm dtype": (
        TypeError,
        lambda: ddpm_step(TOK[..., None].expand(2, 3, 4), X, alpha_bar=0.5, alpha_bar_next=0.6),
    ),
    "ddpm x_t NaN": (ValueError, lambda: ddpm_step(X, NAN, alpha_bar=0.5, alpha_bar_next=0.6)),
    "ddpm scale without uncond": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, guidance_scale=2.0),
    ),
    "ddpm uncond shape": (
        ValueError,
        lambda: ddpm_step(
            X, X, alpha_bar=0.5, alpha_bar_next=0.6, model_output_uncond=X[0], guidance_scale=2.0
        ),
    ),
    "ddpm guidance NaN": (
        ValueError,
        lambda: ddpm_step(
            X, X, alpha_bar=0.5, alpha_bar_next=0.6, model_output_uncond=X, guidance_scale=math.nan
        ),
    ),
    "ddpm noise shape": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, noise=X[:, :1]),
    ),
    "ddpm device": (
        ValueError,
        lambda: ddpm_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, noise=META),
    ),
    "ddim eta < 0": (
        ValueError,
        lambda: ddim_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, eta=-0.1),
    ),
    "ddim eta NaN": (
        ValueError,
        lambda: ddim_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, eta=math.nan),
    ),
    "ddim eta inf": (
        ValueError,
        lambda: ddim_step(X, X, alpha_bar=0.5, alpha_bar_next=0.6, eta=math.inf),
    ),
    "ddim abar > abar_prev": (
        ValueError,
        lambda: ddim_step(X, X, alpha_bar=0.7, alpha_bar_next=0.6),
    ),
    # rounding
    "round width": (ValueError, lambda: round_to_embedding(X, randn(5, 3))),
    "round embedding 3-D": (ValueError, lambda: round_to_embedding(X, X)),
    "round x int": (TypeError, lambda: round_to_embedding(TOK, E)),
    "round x NaN": (ValueError, lambda: round_to_embedding(NAN, E)),
    "round device": (ValueError, lambda: round_to_embedding(META, E)),
    # loss and guidance
    "loss shape": (ValueError, lambda: gaussian_loss(X, X[:, :2], reduction="none")),
    "loss reduction": (ValueError, lambda: gaussian_loss(X, X, reduction="avg")),
    "loss weight shape": (
        ValueError,
        lambda: gaussian_loss(X, X, weight=torch.ones(3), reduction="none"),
    ),
    "loss weight NaN": (ValueError, lambda: gaussian_loss(X, X, weight=math.nan, reduction="none")),
    "loss ignore dtype": (TypeError, lambda: gaussian_loss(X, X, ignore=TOK, reduction="none")),
    "loss NaN": (ValueError, lambda: gaussian_loss(NAN, X, reduction="none")),
    "cfg shape": (ValueError, lambda: classifier_free_guidance(X, X[0], guidance_scale=1.0)),
    "cfg scale NaN": (ValueError, lambda: classifier_free_guidance(X, X, guidance_scale=math.nan)),
    "cfg scale inf": (
        ValueError,
        lambda: classifier_free_guidance(X, X, guidance_scale=torch.tensor([math.inf, 1.0])),
    ),
    "cfg int": (TypeError, lambda: classifier_free_guidance(TOK, TOK, guidance_scale=1.0)),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_inputs_raise(name: str, monkeypatch) -> None:
    # no backend may be reached: every check runs before any compute
    def unreachable(*args, **kwargs):
        raise AssertionError("a backend was resolved before the arguments were checked")

    monkeypatch.setattr(backend, "resolve", unreachable)
    error, call = BAD_CALLS[name]
    with pytest.raises(error):
        call()


def test_value_checks_off_skips_only_data_reads() -> None:
    try:
        checks.set_value_checks(False)
        add_noise_gaussian(X, alpha_bar=torch.tensor([1.5, 0.5]), seed=0)  # a tensor is not read
        with pytest.raises(ValueError):
            add_noise_gaussian(X, alpha_bar=1.5)  # a Python number is always checked
    finally:
        checks.set_value_checks(True)
