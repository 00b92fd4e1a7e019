"""Native Gaussian noise paths (``fastdiff_native::q_sample``, ``ddpm_step``, ``ddim_step``)
against the reference, through the public :func:`fastdiff.add_noise_gaussian`,
:func:`fastdiff.ddpm_step` and :func:`fastdiff.ddim_step`.

Tolerances. The native kernels round the same operations as the reference in the same order,
so with the noise passed in (or none drawn: DDIM with eta = 0) the results must be identical.
A drawn noise value agrees with the reference's to 4 ulp of float64 (``test_native_random``);
rounded to float32 / fp16 / bf16 it is the same number unless it sits within those ulps of a
rounding boundary (probability about 2^-27 per value): then it moves by 1 ulp of ``|z| <= 8.6``
(the largest Box-Muller radius) times its coefficient (<= 1.5), and the result by that plus
2 ulp of its own rounding; at least 99% of such outputs must be equal (in practice all are).
Float64 outputs take the float64 noise difference (4 ulp of ``|z|``) times the coefficient plus
2 ulp of the result.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend

if not backend.native_available():
    pytest.skip("fastdiff._C (native kernels) is not built", allow_module_level=True)

FAST = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
seeds = st.integers(-(2**63), 2**63 - 1)
MAX_RADIUS = 8.6
MAX_NOISE_COEFFICIENT = 1.5


def both(fn, *args, **kwargs):
    """``fn`` under the native and the reference backend."""
    with fastdiff.use_backend("native"):
        native = fn(*args, **kwargs)
    with fastdiff.use_backend("reference"):
        reference = fn(*args, **kwargs)
    return native, reference


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, exact: bool) -> None:
    """Equal when ``exact``; otherwise within the module docstring's tolerance."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if exact:
        assert torch.equal(actual, expected)
        return
    eps = torch.finfo(expected.dtype).eps
    a, e = actual.double(), expected.double()
    ulps_of_z = 4 if expected.dtype == torch.float64 else 1
    bound = eps * (ulps_of_z * MAX_RADIUS * MAX_NOISE_COEFFICIENT + 2 * e.abs())
    bad = (a - e).abs() > bound
    assert not bool(bad.any()), (actual[bad][:5], expected[bad][:5])
    if expected.dtype != torch.float64:
        assert float((actual == expected).double().mean()) >= 0.99


def tensor(shape, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def per_position(draw, batch, low, high):
    """A number, or a float64 tensor per sequence or per position, in [low, high]."""
    values = st.floats(low, high)
    per = draw(st.sampled_from(["number", "sequence", "position"]))
    if per == "number":
        return draw(values)
    shape = batch[:1] if per == "sequence" else batch
    n = torch.Size(shape).numel()
    return torch.tensor(
        draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float64
    ).reshape(shape)


@st.composite
def q_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    batch = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
    h = draw(st.sampled_from([1, 2, 3, 31, 32, 33, 64]) | st.integers(1, 80))
    gather = draw(st.booleans())
    if gather:
        vocab = draw(st.integers(1, 40))
        embedding = tensor((vocab, h), dtype, 1)
        x0 = torch.randint(0, vocab, batch, generator=torch.Generator().manual_seed(2))
    else:
        embedding, x0 = None, tensor((*batch, h), dtype, 1)
    noise = None
    if draw(st.booleans()):
        noise = tensor((*batch, h), draw(st.sampled_from(DTYPES)), 5)
    fixed = (torch.rand(batch) < 0.3) if draw(st.booleans()) else None
    alpha_bar = per_position(draw, batch, 0.0, 1.0)
    return dict(x0=x0, alpha_bar=alpha_bar, embedding=embedding, noise=noise, fixed=fixed)


@FAST
@given(case=q_case(), seed=seeds, offset=st.integers(0, 2**40), tensor_seed=st.booleans())
def test_add_noise_gaussian_matches_reference(case, seed, offset, tensor_seed):
    key = torch.tensor(seed) if tensor_seed else seed
    native, reference = both(fastdiff.add_noise_gaussian, **case, seed=key, offset=offset)
    exact = case["noise"] is not None
    for a, e in zip(native, reference, strict=True):
        assert_matches(a, e, exact)
    assert torch.equal(native.x0, reference.x0)


@st.composite
def step_case(draw, ddim: bool):
    dtype = draw(st.sampled_from(DTYPES))
    batch = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
    h = draw(st.sampled_from([1, 2, 3, 32, 33]) | st.integers(1, 80))
    shape = (*batch, h)
    alpha_bar = per_position(draw, batch, 0.01, 0.99)
    a_max = alpha_bar if isinstance(alpha_bar, float) else float(alpha_bar.max())
    last_step = draw(st.booleans())  # alpha_bar_next = 1: no noise
    alpha_bar_next = 1.0 if last_step else draw(st.floats(a_max, 1.0))
    case = dict(
        model_output=tensor(shape, dtype, 1),
        x_t=tensor(shape, draw(st.sampled_from(DTYPES)) if draw(st.booleans()) else dtype, 2),
        alpha_bar=alpha_bar,
        alpha_bar_next=alpha_bar_next,
        prediction_type=draw(st.sampled_from(["epsilon", "sample"])),
        noise=tensor(shape, dtype, 3) if draw(st.booleans()) else None,
        fixed=(torch.rand(batch) < 0.3) if draw(st.booleans()) else None,
    )
    if draw(st.booleans()):
        case["model_output_uncond"] = tensor(shape, dtype, 4)
        case["guidance_scale"] = draw(st.floats(0.0, 4.0))
    if ddim:
        case["eta"] = draw(st.sampled_from([0.0, 0.5, 1.0, 1.5]))
    else:
        case["variance_type"] = draw(st.sampled_from(["fixed_small", "fixed_large"]))
    return case


@FAST
@given(case=step_case(ddim=False), seed=seeds, offset=st.integers(0, 2**40))
def test_ddpm_step_matches_reference(case, seed, offset):
    native, reference = both(fastdiff.ddpm_step, **case, seed=seed, offset=offset)
    assert_matches(native, reference, exact=case["noise"] is not None)


@FAST
@given(case=step_case(ddim=True), seed=seeds, offset=st.integers(0, 2**40))
def test_ddim_step_matches_reference(case, seed, offset):
    native, reference = both(fastdiff.ddim_step, **case, seed=seed, offset=offset)
    assert_matches(native, reference, exact=case["noise"] is not None or case["eta"] == 0.0)


def test_ddim_per_row_eta_adds_noise_to_every_row_as_the_reference():
    """eta = 0 on some rows and > 0 on others: the reference adds sig z to all rows."""
    x_t, eps = tensor((4, 3, 16), torch.float64, 1), tensor((4, 3, 16), torch.float64, 2)
    eta = torch.tensor([0.0, 0.7, 0.0, 1.0], dtype=torch.float64)
    native, reference = both(
        fastdiff.ddim_step, eps, x_t, alpha_bar=0.3, alpha_bar_next=0.6, eta=eta, seed=9
    )
    assert_matches(native, reference, exact=False)
    assert torch.equal(native[0], reference[0]) and torch.equal(native[2], reference[2])


def test_hand_checkable_cases():
    x0 = tensor((5, 7, 33), torch.float32, 1)
    with fastdiff.use_backend("native"):
        clean = fastdiff.add_noise_gaussian(x0, alpha_bar=1.0, seed=3)
        assert torch.equal(clean.x_t, x0)  # alpha_bar = 1: no noise in x_t
        pure = fastdiff.add_noise_gaussian(x0, alpha_bar=0.0, seed=3)
        assert torch.equal(pure.x_t, pure.noise)  # alpha_bar = 0: x_t is the noise
        z = fastdiff.random.normal(3, 0, torch.arange(35), 33).reshape(5, 7, 33)
        assert_matches(pure.noise, z.float(), exact=False)
        last = fastdiff.ddpm_step(x0, x0, alpha_bar=0.5, alpha_bar_next=1.0, seed=3)
        with fastdiff.use_backend("reference"):
            expected = fastdiff.ddpm_step(x0, x0, alpha_bar=0.5, alpha_bar_next=1.0, seed=3)
        assert torch.equal(last, expected)  # last step: deterministic


def test_bad_inputs_raise_the_public_errors():
    x = torch.zeros(2, 3, 4)
    with fastdiff.use_backend("native"):
        with pytest.raises(ValueError):
            fastdiff.add_noise_gaussian(x, alpha_bar=1.5, seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise_gaussian(x, alpha_bar=0.5, noise=torch.zeros(2, 3), seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise_gaussian(
                torch.tensor([[0, 9]]), alpha_bar=0.5, embedding=torch.zeros(5, 4), seed=0
            )
        with pytest.raises(ValueError):
            fastdiff.ddpm_step(x, x, alpha_bar=0.5, alpha_bar_next=0.4, seed=0)
        with pytest.raises(ValueError):
            fastdiff.ddim_step(x, x[:1], alpha_bar=0.5, alpha_bar_next=0.6, seed=0)
        with pytest.raises(ValueError):
            fastdiff.ddim_step(x, x, alpha_bar=0.5, alpha_bar_next=0.6, eta=-1.0, seed=0)


def test_non_contiguous_inputs():
    base = tensor((33, 4, 5), torch.float32, 1)
    x0 = base.transpose(0, 1)  # [4, 33, 5] with strides of [33, 4, 5]
    table = tensor((6, 40), torch.float32, 2)[:, ::2]  # [6, 20], row stride 40
    ids = torch.randint(0, 6, (9, 4), generator=torch.Generator().manual_seed(0)).t()
    for args, kwargs in (
        ((x0,), dict(alpha_bar=0.3, seed=1)),
        ((ids,), dict(alpha_bar=0.6, embedding=table, seed=2)),
    ):
        native, reference = both(fastdiff.add_noise_gaussian, *args, **kwargs)
        for a, e in zip(native, reference, strict=True):
            assert_matches(a, e, exact=False)
    out = tensor((33, 4, 5), torch.float32, 3).transpose(0, 1)
    for fn, kw in ((fastdiff.ddpm_step, {}), (fastdiff.ddim_step, dict(eta=0.5))):
        native, reference = both(fn, out, x0, alpha_bar=0.3, alpha_bar_next=0.5, seed=4, **kw)
        assert_matches(native, reference, exact=False)
