"""Tests for fastdiff.schedules: continuous-time noise schedules, Gaussian tables, time draws."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff import checks, schedules
from fastdiff.schedules import (
    CosineAlpha,
    GaussianSchedule,
    Geometric,
    LinearAlpha,
    LogLinear,
    NoiseSchedule,
    gaussian_schedule,
    get_noise_schedule,
    sample_times,
)

F64 = torch.float64
F32 = torch.float32
FAST = settings(max_examples=40, deadline=None)

ALL_SCHEDULES = [
    LogLinear(),
    LogLinear(eps=0.0),
    LogLinear(eps=0.25),
    Geometric(),
    Geometric(sigma_min=0.5, sigma_max=3.0),
    LinearAlpha(),
    CosineAlpha(),
]
IDS = [repr(s) for s in ALL_SCHEDULES]

schedule_strategy = st.one_of(
    st.builds(LogLinear, eps=st.floats(0.0, 0.5)),
    st.builds(
        lambda lo, ratio: Geometric(sigma_min=lo, sigma_max=lo * ratio),
        st.floats(1e-5, 1.0),
        st.floats(1.5, 1e5),
    ),
    st.just(LinearAlpha()),
    st.just(CosineAlpha()),
)


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=0.0)


# --------------------------------------------------------------------------------------------
# continuous-time schedules
# --------------------------------------------------------------------------------------------


@FAST
@given(sched=schedule_strategy, t=st.floats(0.01, 0.99))
def test_dsigma_matches_central_difference(sched: NoiseSchedule, t: float) -> None:
    h = 1e-6
    fd = (sched.sigma(t64(t + h)) - sched.sigma(t64(t - h))) / (2 * h)
    rel_close(sched.dsigma(t64(t)), fd, rtol=1e-6)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=IDS)
def test_call_returns_sigma_and_dsigma(sched: NoiseSchedule) -> None:
    t = torch.linspace(0.0, 0.9, 7, dtype=F64).reshape(7, 1).expand(7, 3)
    sigma, dsigma = sched(t)
    assert sigma.shape == dsigma.shape == (7, 3)
    assert torch.equal(sigma, sched.sigma(t))
    assert torch.equal(dsigma, sched.dsigma(t))
    assert bool((sigma >= 0).all()) and bool((dsigma >= 0).all())
    assert bool((sigma[1:, 0] > sigma[:-1, 0]).all()), "sigma must increase with t"


@FAST
@given(eps=st.floats(0.0, 0.9), t=st.floats(0.0, 1.0, allow_subnormal=False))
def test_loglinear_move_chance_is_linear_in_t(eps: float, t: float) -> None:
    sched = LogLinear(eps=eps)
    sigma = sched.sigma(t64(t))
    expected = (1.0 - eps) * t64(t)
    rel_close(-torch.expm1(-sigma), expected, rtol=1e-12)
    rel_close(sched.move_chance(t64(t)), expected, rtol=1e-12)
    rel_close(sched.alpha(t64(t)), 1.0 - expected, rtol=1e-12)


def test_loglinear_values() -> None:
    for eps in (0.0, 1e-3, 0.5):
        sched = LogLinear(eps=eps)
        assert float(sched.sigma(0.0)) == 0.0
        assert float(sched.dsigma(t64(0.0))) == pytest.approx(1.0 - eps, rel=1e-15)
        if eps > 0:
            assert float(sched.sigma(t64(1.0))) == pytest.approx(-math.log(eps), rel=1e-12)
    # LogLinear(0) and LinearAlpha are one schedule.
    t = torch.rand(50, dtype=F64) * 0.999
    for name in ("sigma", "dsigma", "alpha", "move_chance", "loss_weight"):
        a = getattr(LogLinear(eps=0.0), name)(t)
        b = getattr(LinearAlpha(), name)(t)
        rel_close(a, b, rtol=1e-15)


@pytest.mark.parametrize("sched", [LogLinear(eps=0.0), LinearAlpha(), LogLinear()], ids=repr)
@pytest.mark.parametrize(("dtype", "rtol"), [(F32, 1e-6), (F64, 1e-12)])
def test_masked_weight_is_one_over_t(sched: NoiseSchedule, dtype: torch.dtype, rtol: float):
    t = torch.tensor([1e-8, 3e-7, 1e-5, 1e-3, 0.1, 0.5, 0.9, 0.999], dtype=dtype)
    w = sched.loss_weight(t)
    assert w.dtype == dtype
    rel_close(w.double(), 1.0 / t.double(), rtol=rtol)
    if dtype == F64:
        # ... and it is dsigma / expm1(sigma), the general definition.
        rel_close(w, sched.dsigma(t) / torch.expm1(sched.sigma(t)), rtol=1e-12)


@FAST
@given(sched=schedule_strategy, t=st.floats(1e-3, 0.999))
def test_loss_weight_is_dsigma_over_expm1_sigma(sched: NoiseSchedule, t: float) -> None:
    x = t64(t)
    expected = sched.dsigma(x) / torch.expm1(sched.sigma(x))
    rel_close(sched.loss_weight(x), expected, rtol=1e-10)


@FAST
@given(t=st.floats(0.01, 0.99))
def test_cosine_weight_matches_finite_difference(t: float) -> None:
    sched = CosineAlpha()
    h = 1e-6
    dalpha = (sched.alpha(t64(t + h)) - sched.alpha(t64(t - h))) / (2 * h)
    expected = -dalpha / (1.0 - sched.alpha(t64(t)))
    rel_close(sched.loss_weight(t64(t)), expected, rtol=1e-6)
    # closed forms of the cosine schedule
    rel_close(sched.alpha(t64(t)), t64(math.cos(math.pi * t / 2)), rtol=1e-12)
    rel_close(sched.dsigma(t64(t)), t64(math.pi / 2 * math.tan(math.pi * t / 2)), rtol=1e-12)


@FAST
@given(sched=schedule_strategy, t=st.floats(0.0, 1.0, allow_subnormal=False))
def test_alpha_is_exp_minus_sigma(sched: NoiseSchedule, t: float) -> None:
    x = t64(t)
    sigma = sched.sigma(x)
    alpha, mc = sched.alpha(x), sched.move_chance(x)
    rel_close(alpha, torch.exp(-sigma), rtol=1e-12)
    rel_close(mc, -torch.expm1(-sigma), rtol=1e-12)
    assert float(alpha + mc) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=IDS)
def test_float32_accurate_at_tiny_t(sched: NoiseSchedule) -> None:
    """float32 keeps full relative accuracy near t = 0 (no 1 - cos, log(1 - x) cancellation)."""
    t32 = torch.tensor([1e-8, 1e-6, 1e-4, 1e-2], dtype=F32)
    for name in ("sigma", "dsigma", "alpha", "move_chance", "loss_weight"):
        got = getattr(sched, name)(t32)
        ref = getattr(sched, name)(t32.double())
        assert got.dtype == F32
        assert bool((ref > 0).all()), name
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0.0, msg=name)


def test_move_chance_tiny_t_float32_is_not_zero() -> None:
    # The naive 1 - cos(pi t / 2) and 1 - exp(-sigma) round to 0 in float32 here.
    for sched in (CosineAlpha(), LinearAlpha(), LogLinear(), Geometric()):
        mc = sched.move_chance(torch.tensor(1e-8))
        ref = sched.move_chance(torch.tensor(1e-8, dtype=F64).float().double())
        rel_close(mc.double(), ref, rtol=1e-6)


def test_geometric_endpoints() -> None:
    for lo, hi in ((1e-4, 20.0), (1e-3, 1.0), (0.3, 50.0)):
        sched = Geometric(sigma_min=lo, sigma_max=hi)
        assert float(sched.sigma(t64(0.0))) == pytest.approx(lo, rel=1e-15)
        assert float(sched.sigma(t64(1.0))) == pytest.approx(hi, rel=1e-15)
        assert float(sched.sigma(torch.tensor(0.0))) == pytest.approx(lo, rel=1e-6)
        assert float(sched.sigma(torch.tensor(1.0))) == pytest.approx(hi, rel=1e-6)
        mid = sched.sigma(t64(0.5))
        assert float(mid) == pytest.approx(math.sqrt(lo * hi), rel=1e-14)
        assert float(sched.dsigma(t64(0.5))) == pytest.approx(
            math.sqrt(lo * hi) * math.log(hi / lo), rel=1e-13
        )


def test_cosine_endpoints() -> None:
    sched = CosineAlpha()
    assert float(sched.sigma(t64(0.0))) == 0.0
    assert float(sched.alpha(t64(1.0))) == 0.0
    assert math.isinf(float(sched.sigma(t64(1.0))))
    assert math.isinf(float(sched.loss_weight(t64(0.0))))
    assert float(sched.loss_weight(t64(1.0))) == pytest.approx(math.pi / 2, rel=1e-15)
    # accurate alpha close to t = 1 (cos(pi t / 2) there suffers from rounding of pi t / 2)
    t = 1.0 - 2.0**-40
    assert float(sched.alpha(t64(t))) == pytest.approx(math.sin(math.pi / 2 * 2.0**-40), rel=1e-14)


def test_dtype_and_shape_handling() -> None:
    sched = LogLinear()
    assert sched.sigma(0.5).dtype == torch.get_default_dtype()
    assert sched.sigma(0.5).shape == ()
    assert sched.sigma(torch.tensor([0, 1])).dtype == torch.get_default_dtype()
    for dtype in (torch.float16, torch.bfloat16, F32, F64):
        t = torch.full((2, 3, 4), 0.25, dtype=dtype)
        for name in ("sigma", "dsigma", "alpha", "move_chance", "loss_weight"):
            out = getattr(sched, name)(t)
            assert out.dtype == dtype and out.shape == (2, 3, 4)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        assert CosineAlpha().alpha(0.5).dtype == F64
    finally:
        torch.set_default_dtype(old)
    assert Geometric().sigma(torch.empty(0, 5)).shape == (0, 5)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=IDS)
@pytest.mark.parametrize("bad", [-1e-9, 1.0 + 1e-9, -0.5, 2.0, float("inf"), float("-inf")])
def test_time_outside_unit_interval_raises(sched: NoiseSchedule, bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sched.sigma(bad)
    t = torch.tensor([[0.1, 0.2], [bad, 0.5]], dtype=F64)
    for fn in (sched.sigma, sched.dsigma, sched, sched.alpha, sched.move_chance):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            fn(t)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=IDS)
def test_nan_time_raises(sched: NoiseSchedule) -> None:
    with pytest.raises(ValueError, match="NaN"):
        sched.loss_weight(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="NaN"):
        sched.sigma(float("nan"))


def test_value_checks_switch_skips_tensor_checks() -> None:
    checks.set_value_checks(False)
    try:
        LogLinear().sigma(torch.tensor([1.5]))  # not validated: no host sync
        with pytest.raises(ValueError):
            LogLinear().sigma(1.5)  # python numbers are always checked
    finally:
        checks.set_value_checks(True)
    with pytest.raises(ValueError):
        LogLinear().sigma(torch.tensor([1.5]))


def test_bad_time_type_raises() -> None:
    with pytest.raises(TypeError):
        LogLinear().sigma(torch.tensor([0.5j]))
    with pytest.raises(TypeError):
        LogLinear().sigma("0.5")


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: LogLinear(eps=1.0), "eps"),
        (lambda: LogLinear(eps=-0.1), "eps"),
        (lambda: LogLinear(eps=float("nan")), "eps"),
        (lambda: Geometric(sigma_min=0.0), "sigma_min"),
        (lambda: Geometric(sigma_min=-1.0, sigma_max=1.0), "sigma_min"),
        (lambda: Geometric(sigma_min=2.0, sigma_max=2.0), "sigma_max"),
        (lambda: Geometric(sigma_min=2.0, sigma_max=1.0), "sigma_max"),
        (lambda: Geometric(sigma_max=float("inf")), "sigma_max"),
        (lambda: get_noise_schedule("quadratic"), "unknown noise schedule"),
        (lambda: GaussianSchedule.linear(0), "num_steps"),
        (lambda: GaussianSchedule.cosine(-3), "num_steps"),
        (lambda: GaussianSchedule.sqrt(10, max_beta=0.0), "max_beta"),
        (lambda: GaussianSchedule.linear(10, beta_start=0.0), "beta_start"),
        (lambda: GaussianSchedule.from_betas([0.1, 0.0]), "betas"),
        (lambda: GaussianSchedule.from_betas([0.1, 1.5]), "betas"),
        (lambda: GaussianSchedule.from_betas([[0.1]]), "1-D"),
        (lambda: gaussian_schedule("exp", 10), "unknown Gaussian schedule"),
        (lambda: sample_times(4, eps=1.0), "eps"),
        (lambda: sample_times(-1), "n must be"),
        (lambda: sample_times(3, dtype=torch.int64), "floating"),
    ],
)
def test_bad_parameters_raise(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_get_noise_schedule() -> None:
    assert get_noise_schedule("loglinear") == LogLinear()
    assert get_noise_schedule("log-linear", eps=0.01) == LogLinear(eps=0.01)
    assert get_noise_schedule("Geometric", sigma_min=1e-3, sigma_max=5.0) == Geometric(1e-3, 5.0)
    assert get_noise_schedule("linear") == LinearAlpha()
    assert get_noise_schedule("cosine") == CosineAlpha()
    with pytest.raises(TypeError):
        get_noise_schedule("cosine", eps=0.1)
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        LogLinear().eps = 0.5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Gaussian schedules
# --------------------------------------------------------------------------------------------


def _improved_ddpm_betas(num_steps: int, alpha_bar, max_beta: float = 0.999) -> list[float]:
    """Direct transcription of improved-DDPM / Diffusion-LM ``betas_for_alpha_bar``."""
    betas = []
    for i in range(num_steps):
        t1 = i / num_steps
        t2 = (i + 1) / num_steps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return betas


@pytest.mark.parametrize("name", ["linear", "cosine", "sqrt"])
@pytest.mark.parametrize("num_steps", [1, 2, 50, 1000])
def test_gaussian_tables_consistent(name: str, num_steps: int) -> None:
    sched = gaussian_schedule(name, num_steps)
    assert sched.num_steps == num_steps
    for tab in (
        sched.betas,
        sched.alphas,
        sched.alphas_cumprod,
        sched.alphas_cumprod_prev,
        sched.posterior_variance,
    ):
        assert tab.shape == (num_steps,) and tab.dtype == F64
    b, a, abar, prev = sched.betas, sched.alphas, sched.alphas_cumprod, sched.alphas_cumprod_prev
    assert bool((b > 0).all()) and bool((b <= 0.999).all())
    assert torch.equal(a, 1.0 - b)
    assert bool((abar > 0).all()) and bool((abar <= 1).all())
    assert bool((abar[1:] < abar[:-1]).all()), "abar must decrease strictly"
    assert float(prev[0]) == 1.0 and torch.equal(prev[1:], abar[:-1])
    prod = 1.0
    for i in range(num_steps):
        prod *= float(a[i])
        assert float(abar[i]) == pytest.approx(prod, rel=1e-12)
        var = float(b[i]) * (1 - float(prev[i])) / (1 - float(abar[i]))
        assert float(sched.posterior_variance[i]) == pytest.approx(var, rel=1e-12, abs=0)
    assert float(sched.posterior_variance[0]) == 0.0


def test_gaussian_linear() -> None:
    sched = GaussianSchedule.linear(1000)
    assert float(sched.betas[0]) == 1e-4 and float(sched.betas[-1]) == pytest.approx(0.02, 1e-15)
    diffs = sched.betas.diff()
    rel_close(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 999), rtol=1e-9)
    assert float(sched.alphas_cumprod[-1]) == pytest.approx(4.0358e-5, rel=1e-3)  # DDPM's abar_T
    custom = GaussianSchedule.linear(3, beta_start=0.1, beta_end=0.3)
    rel_close(custom.betas, t64(0.1, 0.2, 0.3), rtol=1e-15)
    assert GaussianSchedule.linear(1).betas.tolist() == [1e-4]


@pytest.mark.parametrize("num_steps", [10, 100, 1000, 4000])
def test_gaussian_cosine(num_steps: int) -> None:
    s = 0.008
    sched = GaussianSchedule.cosine(num_steps)

    def closed_form(t: float) -> float:
        f = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return f / math.cos(s / (1 + s) * math.pi / 2) ** 2

    ref = _improved_ddpm_betas(num_steps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2)
    rel_close(sched.betas, torch.tensor(ref, dtype=F64), rtol=1e-9)
    clipped = (sched.betas >= 0.999).nonzero()
    first_clip = int(clipped[0]) if clipped.numel() else num_steps
    assert first_clip >= num_steps - 2  # only the very last steps hit the clip
    assert float(sched.betas[-1]) == 0.999
    for i in range(1, first_clip + 1):
        assert float(sched.alphas_cumprod[i - 1]) == pytest.approx(closed_form(i / num_steps), 1e-9)


@pytest.mark.parametrize("num_steps", [1, 10, 2000])
def test_gaussian_sqrt_matches_diffusion_lm(num_steps: int) -> None:
    sched = GaussianSchedule.sqrt(num_steps)
    ref = _improved_ddpm_betas(num_steps, lambda t: 1 - math.sqrt(t + 0.0001))
    rel_close(sched.betas, torch.tensor(ref, dtype=F64), rtol=1e-12)
    assert float(sched.betas[-1]) == 0.999  # abar(1) < 0: always clipped
    # abar_i = abar((i+1)/T) / abar(0) until the clip.
    for i in range(num_steps - 1):
        expected = (1 - math.sqrt((i + 1) / num_steps + 1e-4)) / (1 - math.sqrt(1e-4))
        assert float(sched.alphas_cumprod[i]) == pytest.approx(expected, rel=1e-10)
    lower = GaussianSchedule.sqrt(num_steps, max_beta=0.5)
    assert float(lower.betas.max()) <= 0.5


def test_gaussian_factory_and_to() -> None:
    for name, ctor in (("linear", GaussianSchedule.linear), ("Cosine", GaussianSchedule.cosine)):
        assert torch.equal(gaussian_schedule(name, 20).betas, ctor(20).betas)
    kw = gaussian_schedule("sqrt", 20, max_beta=0.3)
    assert torch.equal(kw.betas, GaussianSchedule.sqrt(20, max_beta=0.3).betas)
    half = GaussianSchedule.cosine(8).to(dtype=F32)
    assert half.alphas_cumprod.dtype == F32 and half.num_steps == 8
    assert "num_steps=8" in repr(half)
    with pytest.raises(TypeError):
        GaussianSchedule.linear(2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# training-time draw
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64, torch.bfloat16])
def test_sample_times_range(antithetic: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(123)
    for eps in (1e-3, 0.0, 0.5):
        t = sample_times(4096, eps=eps, antithetic=antithetic, generator=g, dtype=dtype)
        assert t.shape == (4096,) and t.dtype == dtype
        assert bool((t >= torch.tensor(eps, dtype=dtype)).all()) and bool((t <= 1).all())
        assert float(t.double().mean()) == pytest.approx((1 + eps) / 2, abs=0.03)
    assert sample_times(0, antithetic=antithetic).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31), eps=st.sampled_from([0.0, 1e-3, 0.2]))
def test_sample_times_antithetic_spacing(n: int, seed: int, eps: float) -> None:
    g = torch.Generator().manual_seed(seed)
    t = sample_times(n, eps=eps, antithetic=True, generator=g, dtype=F64)
    u = (t - eps) / (1 - eps)
    offsets = torch.remainder(u - u[0] + 1e-12, 1.0) - 1e-12
    expected = torch.arange(n, dtype=F64) / n
    torch.testing.assert_close(offsets, expected, rtol=0.0, atol=1e-12)
    # stratified: exactly one draw in each [k/n, (k+1)/n)
    bins = torch.floor(u * n).long().clamp(max=n - 1)
    assert torch.equal(torch.bincount(bins, minlength=n), torch.ones(n, dtype=torch.long))


def test_sample_times_reproducible() -> None:
    for antithetic in (False, True):
        a = sample_times(64, antithetic=antithetic, generator=torch.Generator().manual_seed(7))
        b = sample_times(64, antithetic=antithetic, generator=torch.Generator().manual_seed(7))
        c = sample_times(64, antithetic=antithetic, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    iid = sample_times(64, generator=torch.Generator().manual_seed(7))
    assert len(set(iid.tolist())) == 64


def test_public_names() -> None:
    for name in schedules.__all__:
        assert hasattr(schedules, name)
