"""Gaussian (embedding-space) kernels against the reference: q_sample with the embedding gather,
the regression loss and its gradient, DDPM / DDIM steps, rounding to the nearest embedding.

Every property runs the public op under both backends on the same inputs. The kernels form the
per-row coefficients exactly as the reference (float64, cast once) and draw the same Philox
noise, so they agree to fp32 rounding: a few fp32 ulps (``rtol`` 4e-6 of the output's scale),
and for fp16 / bf16 outputs two ulps of the output dtype (the draw rounded from fp32 instead of
fp64 can land on the other side of a rounding boundary). Rounding must pick the reference's
token except where the two best rows tie within fp32 rounding of their scores. Outputs are
poisoned with NaN / -1 before every launch. The statistical test of the in-kernel noise states
its bounds next to each assertion (seeded, so deterministic).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import random as frandom
from fastdiff.kernels import gaussian, gaussian_steps, launch
from fastdiff.kernels.noising import seed_tensor

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F32, F64 = torch.float32, torch.float64
LOW = (torch.float16, torch.bfloat16)
DTYPES = (F32, *LOW)
# relative tolerance per output dtype: a few fp32 ulps (float64 gradients of fp32 math too), two
# ulps of fp16 / bf16
RTOL = {F64: 4e-6, F32: 4e-6, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7}
PROPERTY = settings(max_examples=25, deadline=None)
WIDTHS = st.sampled_from([1, 2, 3, 16, 33, 300])  # 300: two feature blocks of 256


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, dtype: torch.dtype = F32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen(seed)) * scale).to(dtype).to(DEVICE)


def both(fn, *args, **kwargs):
    """``fn`` under the reference and the Triton backend: ``(reference, triton)``."""
    out = []
    for name in ("reference", "triton"):
        with fastdiff.use_backend(name):
            out.append(fn(*args, **kwargs))
    return out


def assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and shape; values within ``RTOL`` of the dtype, relative to the larger of
    each element and the tensor's scale (cancellation in fp32 leaves an absolute error)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    assert bool(torch.isfinite(g).all()), "an output element was not written"
    rtol = RTOL[want.dtype]
    scale = max(float(w.abs().max()), 1.0) if w.numel() else 1.0
    torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale)


@st.composite
def per_row(draw, batch: tuple[int, ...], lo: float, hi: float, seed: int):
    """A number or a tensor of a prefix shape of ``batch`` with values in ``[lo, hi]``,
    the endpoints included."""
    k = draw(st.integers(-1, len(batch)))
    if k < 0:
        return draw(st.sampled_from([lo, hi, (lo + hi) / 2]))
    t = lo + (hi - lo) * torch.rand(batch[:k], generator=gen(seed), dtype=F64)
    if t.numel() > 1:
        t.view(-1)[0], t.view(-1)[-1] = lo, hi
    return t.to(DEVICE)


BATCH = st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)


# --------------------------------------------------------------------------------------------
# in-kernel noise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "offset"), [(0, 0), (-(2**63), 2**40 + 3), (2**63 - 1, 7), (123456789, 2**32)]
)
def test_kernel_noise_is_the_reference_stream(seed: int, offset: int) -> None:
    """Elementwise, the kernel's normal equals :func:`fastdiff.random.normal` (float64) to
    4e-6 relative: the transform keeps fp32 relative precision everywhere (near U = 1 and
    near the zeros of cos / sin included), on an odd width and two feature blocks."""
    n, h = 24, 301
    with fastdiff.use_backend("triton"):
        z = fastdiff.add_noise_gaussian(
            torch.zeros(n, h, device=DEVICE), alpha_bar=0.0, seed=seed, offset=offset
        )
    want = frandom.normal(seed, offset, torch.arange(n), h)
    got = z.noise.cpu().double()
    assert bool(((got - want).abs() <= 4e-6 * want.abs() + 1e-30).all())
    assert torch.equal(z.x_t, z.noise)  # abar = 0: x_t is the noise


def _ks_statistic(z: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the sample ``z`` and N(0, 1)."""
    z = torch.sort(z.reshape(-1).double()).values
    n = z.numel()
    cdf = torch.special.ndtr(z)
    i = torch.arange(1, n + 1, dtype=F64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def test_kernel_noise_is_standard_normal() -> None:
    """32768 draws of the kernel (128 positions x 256 features): mean within 5 standard errors
    (1/sqrt(n)), variance within 5 standard errors (sqrt(2/n)), Kolmogorov-Smirnov distance
    below 1.95/sqrt(n) (the 0.1% critical value), the Box-Muller pair columns and their squares
    uncorrelated (|r| < 5/sqrt(m)), and the two-sided tail |z| > 3 within a 5-sigma Poisson band
    of its expectation 2 (1 - Phi(3)) n = 88.5."""
    rows, cols = 128, 256
    n = rows * cols
    with fastdiff.use_backend("triton"):
        z = fastdiff.add_noise_gaussian(
            torch.zeros(rows, cols, device=DEVICE), alpha_bar=0.0, seed=77, offset=5
        )
    z = z.noise.cpu().double()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    bound = 1.95 / math.sqrt(n)
    assert _ks_statistic(z) < bound
    assert _ks_statistic(z * 1.05) > bound  # the check has power: a 5% wider law fails it
    even, odd = z[:, 0::2].reshape(-1), z[:, 1::2].reshape(-1)
    m = even.numel()
    assert abs(float(torch.corrcoef(torch.stack([even, odd]))[0, 1])) < 5 / math.sqrt(m)
    sq = torch.corrcoef(torch.stack([even.square(), odd.square()]))[0, 1]
    assert abs(float(sq)) < 5 / math.sqrt(m)
    expected = 2 * (1 - float(torch.special.ndtr(torch.tensor(3.0, dtype=F64)))) * n
    assert abs(int((z.abs() > 3).sum()) - expected) < 5 * math.sqrt(expected)


# --------------------------------------------------------------------------------------------
# q_sample
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(
    data=st.data(),
    batch=BATCH,
    h=WIDTHS,
    dtype=st.sampled_from(DTYPES),
    tokens=st.booleans(),
    given_noise=st.booleans(),
    with_fixed=st.booleans(),
    seed=st.integers(-(2**63), 2**63 - 1),
    offset=st.integers(0, 2**40),
)
def test_q_sample_kernel_matches_reference(
    data, batch, h, dtype, tokens, given_noise, with_fixed, seed, offset
) -> None:
    s = abs(seed) % 2**31
    abar = data.draw(per_row(batch, 0.0, 1.0, s))
    kw = {"seed": seed, "offset": offset}
    if tokens:
        vocab = data.draw(st.integers(1, 40))
        kw["embedding"] = randn(vocab, h, seed=s, dtype=dtype)
        x0 = torch.randint(0, vocab, batch, generator=gen(s)).to(DEVICE)
    else:
        x0 = randn(*batch, h, seed=s, dtype=dtype)
    if given_noise:
        kw["noise"] = randn(*batch, h, seed=s + 1, dtype=data.draw(st.sampled_from(DTYPES)))
    if with_fixed:
        kw["fixed"] = (torch.rand(batch, generator=gen(s + 2)) < 0.4).to(DEVICE)
    want, got = both(fastdiff.add_noise_gaussian, x0, alpha_bar=abar, **kw)
    for g, w in zip(got, want):
        assert_matches(g, w)
    assert torch.equal(got.x0, want.x0)  # the gather is exact
    if given_noise and not with_fixed:
        assert got.noise.data_ptr() == kw["noise"].data_ptr()  # returned, not copied
    if with_fixed:
        fixed = kw["fixed"]
        assert torch.equal(got.x_t[fixed], got.x0[fixed])
        assert bool((got.noise[fixed] == 0).all())


def test_q_sample_is_independent_of_the_block_size() -> None:
    """The same noise and result whatever the feature block (Philox keyed by the column)."""
    ids = torch.randint(0, 50, (37,), generator=gen(1)).to(DEVICE)
    emb = randn(50, 100, seed=2)
    abar = torch.rand(37, generator=gen(3), dtype=F64).to(DEVICE)
    outs = [gaussian.q_sample(ids, abar, None, emb, None, 9, 4, block_h=b) for b in (16, 128)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("tokens", "source_grad"), [(True, True), (False, True), (True, False)])
def test_q_sample_gradients_match_reference(tokens: bool, source_grad: bool) -> None:
    """``d x_t / d x0 = sqrt(abar)`` (1 at fixed rows), scattered into the embedding table for
    token input with the gradient of the returned ``x0``; ``d x_t / d noise = sqrt(1 - abar)``
    (0 at fixed rows, where the returned noise is 0)."""
    abar = torch.rand(3, 4, generator=gen(0), dtype=F64).to(DEVICE)
    fixed = torch.tensor([[True, False, False, True]] * 3, device=DEVICE)
    w_xt, w_eps, w_x0 = (randn(3, 4, 6, seed=s) for s in (1, 2, 3))
    grads = []
    for name in ("reference", "triton"):
        src = randn(10, 6, seed=4) if tokens else randn(3, 4, 6, seed=4)
        src.requires_grad_(source_grad)
        noise = randn(3, 4, 6, seed=5).requires_grad_(True)
        x0 = torch.tensor([[1, 2, 2, 9]] * 3, device=DEVICE) if tokens else src
        emb = src if tokens else None
        with fastdiff.use_backend(name):
            out = fastdiff.add_noise_gaussian(
                x0, alpha_bar=abar, noise=noise, embedding=emb, fixed=fixed
            )
        ((out.x_t * w_xt).sum() + (out.noise * w_eps).sum() + (out.x0 * w_x0).sum()).backward()
        grads.append((src.grad, noise.grad))
    for g, w in zip(grads[1], grads[0]):
        if w is None:
            assert g is None
        else:
            assert_matches(g, w)


# --------------------------------------------------------------------------------------------
# gaussian_loss
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(
    data=st.data(),
    batch=BATCH,
    h=WIDTHS,
    dtypes=st.tuples(st.sampled_from(DTYPES), st.sampled_from(DTYPES)),
    weighted=st.sampled_from(["none", "number", "tensor", "learned"]),
    with_ignore=st.booleans(),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    need_target=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gaussian_loss_kernel_matches_reference(
    data, batch, h, dtypes, weighted, with_ignore, reduction, need_target, seed
) -> None:
    """Loss and gradients (prediction, target, and a weight that needs one) against the
    reference's autograd, every reduction."""
    kw = {"reduction": reduction}
    if weighted == "number":
        kw["weight"] = 0.5
    elif weighted != "none":
        kw["weight"] = torch.as_tensor(data.draw(per_row(batch, 0.0, 3.0, seed)), device=DEVICE)
        kw["weight"] = kw["weight"].float()
    if with_ignore:
        kw["ignore"] = (torch.rand(batch, generator=gen(seed)) < 0.3).to(DEVICE)
    results = []
    for name in ("reference", "triton"):
        pred = randn(*batch, h, seed=seed, dtype=dtypes[0]).requires_grad_(True)
        target = randn(*batch, h, seed=seed + 1, dtype=dtypes[1]).requires_grad_(need_target)
        args = dict(kw)
        if weighted == "learned":
            args["weight"] = kw["weight"].clone().requires_grad_(True)
        with fastdiff.use_backend(name):
            loss = fastdiff.gaussian_loss(pred, target, **{"reduction": "none", **args})
        (loss * randn(*loss.shape, seed=seed + 2)).sum().backward()
        grads = [pred.grad, target.grad] + ([args["weight"].grad] if weighted == "learned" else [])
        results.append((loss, grads))
    (want, want_grads), (got, got_grads) = results
    assert_matches(got, want)
    for g, w in zip(got_grads, want_grads):
        if w is None:
            assert g is None
        else:
            assert_matches(g, w)


def test_gaussian_loss_hand_computed() -> None:
    """``w sum_h (p - t)^2`` on exact values: (1, 2) vs (0, 0) -> 5, weight 2 -> 10;
    gradient ``2 w (p - t)``."""
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=DEVICE, requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]], device=DEVICE)
    with fastdiff.use_backend("triton"):
        loss = fastdiff.gaussian_loss(
            pred, target, weight=torch.tensor([2.0, 1.0], device=DEVICE), reduction="none"
        )
    assert loss.tolist() == [10.0, 13.0]
    loss.sum().backward()
    assert pred.grad.tolist() == [[4.0, 8.0], [4.0, 6.0]]


# --------------------------------------------------------------------------------------------
# DDPM / DDIM
# --------------------------------------------------------------------------------------------


@st.composite
def step_case(draw, ddim: bool):
    batch = draw(BATCH)
    h = draw(WIDTHS)
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from(DTYPES))
    abar = 0.02 + 0.96 * torch.rand(batch, generator=gen(seed), dtype=F64)
    frac = torch.rand(batch, generator=gen(seed + 1), dtype=F64)
    abar_prev = abar + (1 - abar) * frac
    if draw(st.booleans()):
        abar_prev.view(-1)[0] = 1.0  # the last step: no noise
    if draw(st.booleans()):
        abar_prev.view(-1)[-1] = abar.view(-1)[-1]  # beta = 0
    kw = {
        "alpha_bar": abar.to(DEVICE),
        "alpha_bar_next": abar_prev.to(DEVICE),
        "prediction_type": draw(st.sampled_from(["epsilon", "sample"])),
        "seed": draw(st.integers(-(2**63), 2**63 - 1)),
        "offset": draw(st.integers(0, 2**40)),
    }
    if ddim:
        kw["eta"] = draw(st.sampled_from([0.0, 0.5, 1.0, 1.7]))
    else:
        kw["variance_type"] = draw(st.sampled_from(["fixed_large", "fixed_small"]))
    if draw(st.booleans()):
        uncond = randn(*batch, h, seed=seed + 2, dtype=dtype)
        cond = randn(*batch, h, seed=seed + 3, dtype=dtype)
        cond.view(-1)[::3] = uncond.view(-1)[::3]  # equal entries stay unchanged
        kw["model_output_uncond"] = uncond
        kw["guidance_scale"] = draw(per_row(batch, 0.0, 5.0, seed))
    else:
        cond = randn(*batch, h, seed=seed + 3, dtype=dtype)
    if draw(st.booleans()):
        kw["noise"] = randn(*batch, h, seed=seed + 4, dtype=draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        kw["fixed"] = (torch.rand(batch, generator=gen(seed + 5)) < 0.4).to(DEVICE)
    return cond, randn(*batch, h, seed=seed + 6, dtype=dtype), kw


@PROPERTY
@given(case=step_case(ddim=False))
def test_ddpm_step_kernel_matches_reference(case) -> None:
    model_output, x_t, kw = case
    want, got = both(fastdiff.ddpm_step, model_output, x_t, **kw)
    assert_matches(got, want)
    if "fixed" in kw:
        assert torch.equal(got[kw["fixed"]], x_t[kw["fixed"]])


@PROPERTY
@given(case=step_case(ddim=True))
def test_ddim_step_kernel_matches_reference(case) -> None:
    model_output, x_t, kw = case
    want, got = both(fastdiff.ddim_step, model_output, x_t, **kw)
    assert_matches(got, want)
    if "fixed" in kw:
        assert torch.equal(got[kw["fixed"]], x_t[kw["fixed"]])


def test_steps_hand_derived_and_last_step() -> None:
    """DDPM with eps = 0 at abar = 0.5, abar_prev = 1 (alpha = 0.5, the last step): x / sqrt(0.5)
    exactly, no noise; DDIM eta = 0 with x0 prediction at abar_prev = 1 returns x0_hat."""
    x = torch.tensor([[1.0, -2.0, 0.5]], device=DEVICE)
    with fastdiff.use_backend("triton"):
        out = fastdiff.ddpm_step(torch.zeros_like(x), x, alpha_bar=0.5, alpha_bar_next=1.0, seed=1)
        x0 = torch.tensor([[3.0, 0.25, -1.0]], device=DEVICE)
        clean = fastdiff.ddim_step(
            x0, x, alpha_bar=0.3, alpha_bar_next=1.0, prediction_type="sample", seed=1
        )
    want = (x.double() * (1 / math.sqrt(0.5))).float()
    torch.testing.assert_close(out, want, rtol=2**-23, atol=0)
    assert torch.equal(clean, x0)


def test_steps_are_independent_of_the_block_size() -> None:
    eps, x = randn(9, 70, seed=1), randn(9, 70, seed=2)
    abar = torch.full((9,), 0.4, dtype=F64, device=DEVICE)
    prev = torch.full((9,), 0.6, dtype=F64, device=DEVICE)
    eta = torch.full((9,), 0.8, dtype=F64, device=DEVICE)
    ddpm = [
        gaussian_steps.ddpm_step(
            eps, x, abar, prev, "eps", "beta", None, None, None, None, 3, 1, block_h=b
        )
        for b in (16, 64)
    ]
    ddim = [
        gaussian_steps.ddim_step(
            eps, x, abar, prev, eta, "eps", None, None, None, None, 3, 1, block_h=b
        )
        for b in (16, 64)
    ]
    assert torch.equal(*ddpm) and torch.equal(*ddim)


# --------------------------------------------------------------------------------------------
# rounding
# --------------------------------------------------------------------------------------------


def _scores(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """float64 ``2 E_v . x - ||E_v||^2`` ``[N, V]``."""
    e, xx = emb.cpu().double(), x.cpu().double().reshape(-1, emb.shape[1])
    return 2 * xx @ e.T - (e * e).sum(-1)


@PROPERTY
@given(
    batch=BATCH,
    vocab=st.sampled_from([1, 2, 17, 33, 100, 129]),
    h=st.sampled_from([1, 3, 16, 40, 70]),
    dtypes=st.tuples(st.sampled_from(DTYPES), st.sampled_from(DTYPES)),
    seed=st.integers(0, 2**16),
)
def test_round_to_embedding_kernel_matches_reference(batch, vocab, h, dtypes, seed) -> None:
    """Same token as the reference unless the two rows' exact scores are within fp32 rounding
    (1e-5 of the score scale); the rows are ``E[token]`` in the dtype of ``x``."""
    x = randn(*batch, h, seed=seed, dtype=dtypes[0])
    emb = randn(vocab, h, seed=seed + 1, dtype=dtypes[1])
    (t_ref, _), (t_k, rows) = both(fastdiff.round_to_embedding, x, emb)
    assert t_k.dtype == torch.int64 and t_k.shape == x.shape[:-1]
    if x.dtype == emb.dtype:
        assert torch.equal(rows, emb[t_k])
    else:  # a converted row: the interpreter's bf16 store may be 1 ulp off torch's rounding
        assert_matches(rows, emb[t_k].to(x.dtype))
    scores = _scores(x, emb)
    a, b = t_k.cpu().reshape(-1, 1), t_ref.cpu().reshape(-1, 1)
    gap = (scores.gather(1, b) - scores.gather(1, a)).abs()
    scale = 1 + scores.abs().max()
    assert bool(((a == b) | (gap <= 1e-5 * scale)).all())


def test_round_to_embedding_ties_go_to_the_lowest_index() -> None:
    """Integer-valued rows (exact fp32 sums): duplicates of the nearest row in different
    vocabulary tiles (17 and 90, tiles of 32) and a point equidistant from rows 0 and 1 both
    pick the lowest index; a table of one row always gives token 0."""
    emb = torch.full((100, 4), 9.0)
    emb[0] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    emb[1] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    emb[17] = emb[90] = torch.tensor([0.0, 5.0, 5.0, 0.0])
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 4.0, 5.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    with fastdiff.use_backend("triton"):
        tokens, rows = fastdiff.round_to_embedding(x.to(DEVICE), emb.to(DEVICE))
        single, _ = fastdiff.round_to_embedding(x.to(DEVICE), emb[:1].to(DEVICE))
    assert tokens.tolist() == [0, 17, 2]
    assert torch.equal(rows.cpu(), emb[[0, 17, 2]])
    assert single.tolist() == [0, 0, 0]


def test_round_to_embedding_gradient_flows_to_the_table() -> None:
    x = randn(5, 8, seed=1)
    grads = []
    for name in ("reference", "triton"):
        emb = randn(20, 8, seed=2).requires_grad_(True)
        with fastdiff.use_backend(name):
            _, rows = fastdiff.round_to_embedding(x, emb)
        (rows * randn(5, 8, seed=3)).sum().backward()
        grads.append(emb.grad)
    assert torch.equal(grads[0], grads[1])


def test_float64_inputs_take_the_reference() -> None:
    x, emb = randn(4, 6, seed=1, dtype=F64), randn(9, 6, seed=2, dtype=F64)
    abar = torch.full((4,), 0.3, dtype=F64, device=DEVICE)
    want, got = both(fastdiff.add_noise_gaussian, x, alpha_bar=abar, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    want, got = both(fastdiff.round_to_embedding, x, emb)
    assert torch.equal(got[0], want[0])
    want, got = both(fastdiff.ddim_step, x, x, alpha_bar=0.3, alpha_bar_next=0.5, eta=1.0, seed=3)
    assert torch.equal(got, want)


def test_bad_token_ids_are_rejected_before_the_kernel() -> None:
    emb = randn(5, 4, seed=1)
    with fastdiff.use_backend("triton"), pytest.raises(ValueError):
        fastdiff.add_noise_gaussian(
            torch.tensor([0, 5], device=DEVICE), alpha_bar=0.5, embedding=emb, seed=0
        )


def test_bad_token_ids_never_read_outside_the_table_without_value_checks() -> None:
    """With value checks off (compile, CUDA-graph capture) nothing rejects a bad id: the kernel
    must not read outside the table; such rows come out NaN, the others as with checks on."""
    emb = randn(5, 16, seed=1)
    ids = torch.tensor([0, 4, 7, 5, -1, 1_000_000, 2], device=DEVICE)
    good = torch.tensor([True, True, False, False, False, False, True], device=DEVICE)
    with fastdiff.use_backend("triton"), fastdiff.value_checks(False):
        out = fastdiff.add_noise_gaussian(ids, alpha_bar=0.5, embedding=emb, seed=0)
    with fastdiff.use_backend("triton"):
        want = fastdiff.add_noise_gaussian(ids[good], alpha_bar=0.5, embedding=emb, seed=0)
    assert out.x_t[~good].isnan().all() and not out.x_t[good].isnan().any()
    assert torch.equal(out.x0[good], want.x0) and torch.equal(out.x0[good], emb[ids[good]])


# --------------------------------------------------------------------------------------------
# custom ops: schema, fake tensors, autograd, torch.compile
# --------------------------------------------------------------------------------------------


def test_gaussian_ops_opcheck() -> None:
    n, h = 6, 20
    seed = seed_tensor(5, DEVICE)
    abar = torch.rand(n, dtype=F64, device=DEVICE) * 0.9 + 0.05
    prev = abar + (1 - abar) * 0.5
    x = randn(n, h, seed=1)
    emb = randn(9, h, seed=2, dtype=torch.bfloat16)
    ids = torch.tensor([0, 3, 8, 3, 1, 2], device=DEVICE)
    fixed = torch.tensor([True, False] * 3, device=DEVICE)
    q = torch.ops.fastdiff.q_sample.default
    torch.library.opcheck(q, (x.requires_grad_(True), None, abar, None, fixed, seed, 1, 16))
    noise = randn(n, h, seed=3).requires_grad_(True)
    torch.library.opcheck(q, (emb.requires_grad_(True), ids, abar, noise, None, seed, 0, 0))
    pred, target = randn(n, h, seed=4).requires_grad_(True), randn(n, h, seed=5)
    torch.library.opcheck(
        torch.ops.fastdiff.gaussian_loss.default, (pred, target, torch.rand(n, device=DEVICE), 16)
    )
    torch.library.opcheck(
        torch.ops.fastdiff.gaussian_loss_backward.default,
        (torch.rand(n, device=DEVICE), pred.detach(), target, None, True, True, 0),
    )
    eta = torch.full((n,), 0.5, dtype=F64, device=DEVICE)
    scale = torch.full((n,), 2.0, dtype=F64, device=DEVICE)
    step = torch.ops.fastdiff.gaussian_step.default
    torch.library.opcheck(
        step, (pred.detach(), x.detach(), abar, prev, None, target, scale, None, fixed, seed, 0,
               False, True, 16),
    )  # fmt: skip
    torch.library.opcheck(
        step, (pred.detach(), x.detach(), abar, prev, eta, None, None, None, None, seed, 3, True,
               False, 0),
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.fastdiff.round_to_embedding.default, (x.detach(), emb.detach().float(), True)
    )


def test_public_ops_trace_under_torch_compile_fullgraph() -> None:
    """A Diffusion-LM training step (gather + noising + loss + backward into the table) and a
    sampling step (guided DDPM + rounding) under ``torch.compile(fullgraph=True)``: no graph
    break, the same values and gradients as eager."""
    ids = torch.randint(0, 30, (2, 7), generator=gen(0)).to(DEVICE)
    abar = torch.tensor([0.3, 0.8], dtype=F64, device=DEVICE)

    def train(emb, model):
        q = fastdiff.add_noise_gaussian(ids, alpha_bar=abar, embedding=emb, seed=4)
        pred = q.x_t * model
        return fastdiff.gaussian_loss(pred, q.noise, reduction="mean")

    def sample(cond, uncond, x, emb):
        y = fastdiff.ddpm_step(
            cond,
            x,
            alpha_bar=0.4,
            alpha_bar_next=0.6,
            model_output_uncond=uncond,
            guidance_scale=2.0,
            seed=9,
        )
        return fastdiff.round_to_embedding(y, emb)

    emb0, model0 = randn(30, 16, seed=1), randn(16, seed=2)
    c, u, x = randn(2, 7, 16, seed=3), randn(2, 7, 16, seed=4), randn(2, 7, 16, seed=5)
    with fastdiff.use_backend("triton"), fastdiff.value_checks(False):
        results = []
        for fn in (train, torch.compile(train, fullgraph=True, backend="aot_eager")):
            emb, model = emb0.clone().requires_grad_(True), model0.clone().requires_grad_(True)
            loss = fn(emb, model)
            loss.backward()
            results.append((loss, emb.grad, model.grad))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)
        compiled = torch.compile(sample, fullgraph=True, backend="aot_eager")
        for a, b in zip(compiled(c, u, x, emb0), sample(c, u, x, emb0)):
            assert torch.equal(a, b)
