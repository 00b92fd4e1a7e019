"""Tests for fastdiff.losses: score entropy (SEDD) and masked-diffusion cross entropy (MDLM).

The oracle for score entropy is its definition, evaluated with mpmath at 50 digits:
``loss = sum_{y != x} w_y (S_y - r_y s_y + r_y (log r_y - 1))`` with the true ratios
``r_y = p_t(y | x0) / p_t(x | x0)`` of the forward process (``w_y = 1`` on the absorbing graph,
``1/V`` on the uniform graph; ``r_y = 0`` terms are ``S_y``).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import schedules
from fastdiff.losses import masked_diffusion_loss, score_entropy

F64 = torch.float64
F32 = torch.float32
FAST = settings(max_examples=40, deadline=None)
SIGMAS = [1e-6, 1e-3, 0.5, 5.0, 20.0]


# --------------------------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------------------------


def dse_definition(
    s: list[float], x: int, x0: int, sigma: float, graph: str, m: int | None
) -> tuple[float, float]:
    """(loss, magnitude) of one row from the definition; magnitude = sum of |terms|."""
    with mpmath.workdps(50):
        v = len(s)
        sig = mpmath.mpf(sigma)
        a = mpmath.exp(-sig)  # probability the token is still clean
        if graph == "absorb":
            if x != m:
                return 0.0, 0.0
            ratios = {y: (a / (1 - a) if y == x0 else mpmath.mpf(0)) for y in range(v) if y != m}
            wgt = mpmath.mpf(1)
        else:

            def p(y: int) -> mpmath.mpf:
                return (a if y == x0 else 0) + (1 - a) / v

            ratios = {y: p(y) / p(x) for y in range(v) if y != x}
            wgt = mpmath.mpf(1) / v
        total = mpmath.mpf(0)
        mag = mpmath.mpf(0)
        for y, r in ratios.items():
            sy = mpmath.mpf(s[y])
            terms = [mpmath.exp(sy)]
            if r != 0:
                terms += [-r * sy, r * (mpmath.log(r) - 1)]
            total += wgt * sum(terms)
            mag += wgt * sum(abs(t) for t in terms)
        return float(total), float(mag)


def se(log_score, x_t, x0, sigma, graph, m=None, **kw):
    return score_entropy(
        log_score, x_t, x0, sigma=sigma, graph=graph, mask_id=m, **{"reduction": "none", **kw}
    )


@st.composite
def se_case(draw, max_v: int = 10, max_n: int = 5):
    graph = draw(st.sampled_from(["absorb", "uniform"]))
    v = draw(st.integers(2, max_v))
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(0, v - 1)) if graph == "absorb" else None
    x0, xt, sig, rows = [], [], [], []
    for _ in range(n):
        if graph == "absorb":
            a = draw(st.integers(0, v - 1).filter(lambda t: t != m))
            b = m if draw(st.booleans()) else a
        else:
            a = draw(st.integers(0, v - 1))
            b = a if draw(st.booleans()) else draw(st.integers(0, v - 1))
        x0.append(a)
        xt.append(b)
        sig.append(10.0 ** draw(st.floats(-6.0, math.log10(20.0))))
        rows.append(draw(st.lists(st.floats(-15.0, 5.0), min_size=v, max_size=v)))
    s = torch.tensor(rows, dtype=F64)
    return graph, m, s, torch.tensor(xt), torch.tensor(x0), torch.tensor(sig, dtype=F64)


# --------------------------------------------------------------------------------------------
# score entropy: value, sign, zero at the truth
# --------------------------------------------------------------------------------------------


@FAST
@given(case=se_case())
def test_score_entropy_matches_definition_and_is_nonnegative(case) -> None:
    graph, m, s, xt, x0, sig = case
    loss = se(s, xt, x0, sig, graph, m)
    assert loss.dtype == F64 and loss.shape == xt.shape
    for i in range(len(xt)):
        want, mag = dse_definition(s[i].tolist(), int(xt[i]), int(x0[i]), float(sig[i]), graph, m)
        got = loss[i].item()
        assert abs(got - want) <= 1e-12 * mag + 1e-300, (i, got, want, mag)
        assert got >= -1e-13 * mag  # Bregman divergence: never negative
    # float32 inputs: computed in float32, compared with the definition at the rounded inputs
    s32, sig32 = s.float(), sig.float()
    loss32 = se(s32, xt, x0, sig32, graph, m)
    assert loss32.dtype == F32
    for i in range(len(xt)):
        want, mag = dse_definition(
            s32[i].double().tolist(), int(xt[i]), int(x0[i]), float(sig32[i]), graph, m
        )
        assert abs(loss32[i].item() - want) <= 2e-6 * mag + 1e-30


def _true_absorb_rows(v: int, m: int, sigma: float, dtype=F64):
    """Two masked rows at the true score, then two unmasked rows (arbitrary scores)."""
    log_r = -math.log(math.expm1(sigma))  # log(1 / expm1(sigma))
    x0 = [y for y in (1, v - 2, 0, v - 1) if y != m][:2]
    s = torch.full((4, v), -math.inf, dtype=F64)
    for i, y in enumerate(x0):
        s[i, y] = log_r
        s[i, m] = 2.5 if i == 0 else -7.0  # the ignored mask entry: anything
    s[2:] = torch.linspace(-3, 3, 2 * v, dtype=F64).reshape(2, v)
    unmasked = [y for y in range(v) if y != m][:2]
    xt = torch.tensor([m, m, *unmasked])
    x0t = torch.tensor([*x0, *unmasked])
    r = math.exp(log_r)
    mag = r * (abs(log_r) + 1) + r * abs(log_r) + r
    return s.to(dtype), xt, x0t, mag


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_absorb_zero_at_true_ratios(sigma: float, where: str) -> None:
    v = 7
    m = {"first": 0, "middle": 3, "last": v - 1}[where]
    s, xt, x0, mag = _true_absorb_rows(v, m, sigma)
    loss = se(s, xt, x0, sigma, "absorb", m)
    assert abs(loss[0].item()) <= 1e-14 * mag and abs(loss[1].item()) <= 1e-14 * mag
    assert loss[2].item() == 0.0 and loss[3].item() == 0.0
    loss32 = se(s.float(), xt, x0, sigma, "absorb", m)
    assert bool(torch.isfinite(loss32).all())
    assert float(loss32.abs().max()) <= 1e-6 * mag
    # any perturbation of the true score raises the loss
    for delta in (-1e-2, 1e-2):
        bumped = s.clone()
        bumped[0, int(x0[0])] += delta
        assert se(bumped, xt, x0, sigma, "absorb", m)[0].item() > 1e-14 * mag


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_uniform_zero_at_true_ratios(sigma: float, where: str) -> None:
    v = 7
    x = {"first": 0, "middle": 3, "last": v - 1}[where]
    e = math.expm1(sigma)
    log_ratio = math.log(e) - math.log(e + v)  # ratio = e / (e + V)
    other = (x + 2) % v
    s = torch.zeros(2, v, dtype=F64)
    s[0] = log_ratio  # x = x0: S_j = e / (e + V) for j != x
    s[0, x] = 1.7  # ignored
    s[1, other] = -log_ratio  # x != x0: S_{x0} = (e + V) / e, others 1
    s[1, x] = -4.0  # ignored
    xt = torch.tensor([x, x])
    x0 = torch.tensor([x, other])
    loss = se(s, xt, x0, sigma, "uniform")
    ratio = e / (e + v)
    mags = [
        3 * ratio * (abs(log_ratio) + 1),
        (v + abs(log_ratio) / ratio + (abs(log_ratio) + 1) / ratio + v) / v + abs(log_ratio) / e,
    ]
    for i in range(2):
        assert abs(loss[i].item()) <= 1e-13 * mags[i], (i, loss[i].item(), mags[i])
    loss32 = se(s.float(), xt, x0, sigma, "uniform")
    assert bool(torch.isfinite(loss32).all())
    for i in range(2):
        assert abs(loss32[i].item()) <= 2e-6 * mags[i]
    # any perturbation of a true ratio raises the loss
    bumped = s.clone()
    bumped[1, other] += 1e-2
    assert se(bumped, xt, x0, sigma, "uniform")[1].item() > 1e-13 * mags[1]


# --------------------------------------------------------------------------------------------
# score entropy: gradient
# --------------------------------------------------------------------------------------------


def _closed_form_grad(s, xt, x0, sigma, graph, m):
    v = s.shape[-1]
    g = torch.zeros_like(s)
    S = s.exp()
    for i in range(s.shape[0]):
        x, y0, sg = int(xt[i]), int(x0[i]), float(sigma[i])
        e = math.expm1(sg)
        if graph == "absorb":
            if x != m:
                continue
            g[i] = S[i]
            g[i, y0] -= 1.0 / e
            g[i, m] = 0.0
        else:
            ratio = e / (e + v)
            if x == y0:
                g[i] = (S[i] - ratio) / v
            else:
                g[i] = S[i] / v - 1.0 / v
                g[i, y0] -= 1.0 / e
            g[i, x] = 0.0
    return g


@FAST
@given(case=se_case())
def test_score_entropy_gradient_closed_form(case) -> None:
    graph, m, s, xt, x0, sig = case
    s = s.clone().requires_grad_(True)
    se(s, xt, x0, sig, graph, m).sum().backward()
    want = _closed_form_grad(s.detach(), xt, x0, sig, graph, m)
    torch.testing.assert_close(s.grad, want, rtol=1e-12, atol=1e-12 * (1 + float(want.abs().max())))


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_score_entropy_gradcheck(graph: str) -> None:
    g = torch.Generator().manual_seed(0)
    v, m = 5, 2
    s = torch.randn(2, 3, v, generator=g, dtype=F64, requires_grad=True)
    if graph == "absorb":
        xt = torch.tensor([[m, 0, m], [m, m, 4]])
        x0 = torch.tensor([[1, 0, 4], [0, 3, 4]])
    else:
        xt = torch.tensor([[0, 2, 4], [1, 1, 3]])
        x0 = torch.tensor([[0, 1, 4], [3, 1, 0]])
    sigma = torch.tensor([0.3, 2.0], dtype=F64)
    weight = torch.tensor([[1.0, 0.5, 2.0], [3.0, 1.0, 0.25]], dtype=F64)
    ignore = torch.tensor([[False, False, True], [False, False, False]])
    for red in ("none", "sum", "mean"):

        def fn(t, red=red):
            return se(
                t,
                xt,
                x0,
                sigma,
                graph,
                m if graph == "absorb" else None,
                weight=weight,
                ignore=ignore,
                reduction=red,
            )

        assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_entry_at_x_t_is_ignored(graph: str) -> None:
    gen = torch.Generator().manual_seed(1)
    v, n = 9, 6
    m = 4
    s = torch.randn(n, v, generator=gen, dtype=F64)
    if graph == "absorb":
        xt = torch.tensor([m, m, m, 0, 8, m])
        x0 = torch.tensor([0, 8, 3, 0, 8, 5])
    else:
        xt = torch.tensor([0, 8, 3, 3, 5, 1])
        x0 = torch.tensor([0, 8, 2, 3, 1, 7])
    mid = m if graph == "absorb" else None
    base_s = s.clone().requires_grad_(True)
    base = se(base_s, xt, x0, 0.7, graph, mid)
    base.sum().backward()
    rows = torch.arange(n)
    for value in (-math.inf, -1e30, 1e30, 123.0, 0.0):
        t = s.clone()
        t[rows, xt] = value
        t.requires_grad_(True)
        loss = se(t, xt, x0, 0.7, graph, mid)
        assert torch.equal(loss, base), value
        loss.sum().backward()
        assert bool(torch.isfinite(t.grad).all()), value
        assert bool((t.grad[rows, xt] == 0).all())
        torch.testing.assert_close(t.grad, base_s.grad, rtol=0, atol=0)
    if graph == "absorb":  # unmasked rows are not read at all
        t = s.clone()
        t[3] = -math.inf
        t[4] = 1e30
        assert torch.equal(se(t, xt, x0, 0.7, graph, mid), base.detach())


# --------------------------------------------------------------------------------------------
# score entropy: float32 stability of the uniform graph (the published ratio cancels)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1e-6, 1e-4, 1e-2])
def test_uniform_float32_stable_at_small_sigma_large_vocab(sigma: float) -> None:
    v = 50257
    gen = torch.Generator().manual_seed(7)
    s32 = torch.randn(4, v, generator=gen, dtype=F32)
    xt = torch.tensor([5, 7, v - 1, 0])
    x0 = torch.tensor([5, v - 1, v - 1, 3])  # rows 0, 2: x = x0; rows 1, 3: x != x0
    s32.requires_grad_(True)
    loss32 = se(s32, xt, x0, torch.tensor(sigma, dtype=F32), "uniform")
    loss32.sum().backward()
    loss32 = loss32.detach()
    s64 = s32.detach().double().requires_grad_(True)
    loss64 = se(s64, xt, x0, torch.tensor(sigma, dtype=F32).double(), "uniform")
    loss64.sum().backward()
    loss64 = loss64.detach()
    assert loss32.dtype == F32 and bool(torch.isfinite(loss32).all())
    rel = ((loss32.double() - loss64) / loss64).abs()
    assert float(rel.max()) < 1e-4, rel
    grad_rel = (s32.grad.double() - s64.grad).norm(dim=-1) / s64.grad.norm(dim=-1)
    assert bool(torch.isfinite(s32.grad).all()) and float(grad_rel.max()) < 1e-4

    # The published ratio 1 - V/(e + V), evaluated in float32, is far off (this is what the
    # test guards against): e + V rounds to a float32 near 50257, and the difference cancels.
    sig32 = torch.tensor(sigma, dtype=F32)
    e32 = torch.expm1(sig32)
    published = 1 - v / (e32 + v)
    e64 = math.expm1(float(sig32))
    stable64 = e64 / (e64 + v)
    pub_err = abs(float(published) - stable64) / stable64
    assert pub_err > 0.1, pub_err  # >= 10% off (exactly 0, i.e. 100% off, at 1e-4 and 1e-6)
    # with it the x != x0 constant ((-log ratio - 1)/ratio - (V - 2))/V is inf, NaN or far off
    lr = torch.log(published)
    k_pub = ((-lr - 1) / published - (v - 2)) / v
    k64 = ((-math.log(stable64) - 1) / stable64 - (v - 2)) / v
    assert not math.isfinite(float(k_pub)) or abs(float(k_pub) - k64) > 0.1 * abs(k64)


# --------------------------------------------------------------------------------------------
# score entropy: weights, ignore, reductions, dtypes
# --------------------------------------------------------------------------------------------


def _hand_absorb_batch():
    """V = 3, m = 2; batch [2, 2] whose per-position losses are known in closed form."""
    ln2, ln3 = math.log(2.0), math.log(3.0)
    s = torch.tensor(
        [[[0.0, 0.0, 5.0], [ln2, 0.0, -1.0]], [[1.0, 2.0, 3.0], [1.0, -1.0, 0.0]]], dtype=F64
    )
    xt = torch.tensor([[2, 2], [0, 2]])
    x0 = torch.tensor([[0, 1], [0, 0]])
    sigma = torch.tensor([[ln2, ln2], [1.0, ln3]], dtype=F64)
    # expm1(ln 2) = 1 -> r = 1: row A = 1 + 1 - 0 + (0 - 1) = 1; row B = 2 + 1 - 0 - 1 = 2
    # row C unmasked: 0; expm1(ln 3) = 2 -> r = 1/2: row D = e + 1/e - 1/2 + (1/2)(-ln 2 - 1)
    d = math.e + 1 / math.e - 1.0 - 0.5 * ln2
    expected = torch.tensor([[1.0, 2.0], [0.0, d]], dtype=F64)
    return s, xt, x0, sigma, expected


def test_absorb_hand_values_weights_ignore_reductions() -> None:
    s, xt, x0, sigma, expected = _hand_absorb_batch()
    m = 2

    def run(**kw):
        return se(s, xt, x0, sigma, "absorb", m, **kw)

    close = dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(run(), expected, **close)
    d = expected[1, 1].item()
    w = torch.tensor([3.0, 0.5], dtype=F64)  # per sequence
    torch.testing.assert_close(
        run(weight=w), torch.tensor([[3.0, 6.0], [0.0, 0.5 * d]], dtype=F64), **close
    )
    torch.testing.assert_close(run(weight=2.0), 2 * expected, **close)
    ign = torch.tensor([[False, True], [False, False]])
    torch.testing.assert_close(
        run(weight=w, ignore=ign), torch.tensor([[3.0, 0.0], [0.0, 0.5 * d]], dtype=F64), **close
    )
    assert run(weight=w, ignore=ign, reduction="sum").item() == pytest.approx(3 + 0.5 * d, 1e-13)
    # mean over the non-ignored positions (3 of them), masked or not
    assert run(weight=w, ignore=ign, reduction="mean").item() == pytest.approx((3 + 0.5 * d) / 3)
    assert run(reduction="mean").item() == pytest.approx((3 + d) / 4, rel=1e-13)
    assert run(reduction="sum").item() == pytest.approx(3 + d, rel=1e-13)
    # per-sequence ignore (a prefix of the batch shape)
    assert run(ignore=torch.tensor([True, False]), reduction="mean").item() == pytest.approx(d / 2)
    # everything ignored: mean is 0, not NaN
    all_ign = torch.ones(2, 2, dtype=torch.bool)
    assert run(ignore=all_ign, reduction="mean").item() == 0.0
    assert run(reduction="sum").shape == ()


def test_uniform_hand_values() -> None:
    # V = 3, sigma = ln 4 -> e = 3, ratio = e / (e + V) = 1/2
    s = torch.tensor([[5.0, 0.0, 0.0], [9.0, 0.0, 0.0]], dtype=F64)
    xt = torch.tensor([0, 0])
    x0 = torch.tensor([0, 1])
    loss = se(s, xt, x0, math.log(4.0), "uniform")
    ln2 = math.log(2.0)
    # x = x0: 2/3 - (1/2)(0) + (2/3)(1/2)(-ln 2 - 1) = (1 - ln 2)/3
    # x != x0: pos = 2/3, neg = 0, K = ((ln 2 - 1)/(1/2) - 1)/3  -> (2 ln 2 - 1)/3
    torch.testing.assert_close(
        loss, torch.tensor([(1 - ln2) / 3, (2 * ln2 - 1) / 3], dtype=F64), rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_half_precision_inputs_give_float32_close_to_float64(dtype, graph) -> None:
    gen = torch.Generator().manual_seed(3)
    v, n = 33, 16
    m = 11
    s = (torch.randn(n, v, generator=gen) * 2).to(dtype)
    x0 = torch.randint(0, v, (n,), generator=gen)
    x0[x0 == m] = 0
    if graph == "absorb":
        xt = torch.where(torch.arange(n) % 3 == 0, x0, torch.full_like(x0, m))
    else:
        xt = torch.where(torch.arange(n) % 2 == 0, x0, torch.randint(0, v, (n,), generator=gen))
    sigma = torch.logspace(-4, 1, n, dtype=F64).to(dtype)  # the sigma rounding is shared
    mid = m if graph == "absorb" else None
    sh = s.clone().requires_grad_(True)
    loss = se(sh, xt, x0, sigma, graph, mid)
    assert loss.dtype == F32
    loss.sum().backward()
    loss = loss.detach()
    assert sh.grad.dtype == dtype and bool(torch.isfinite(sh.grad.float()).all())
    s64 = s.double().requires_grad_(True)
    ref = se(s64, xt, x0, sigma.double(), graph, mid)
    ref.sum().backward()
    ref = ref.detach()
    mags = s64.detach().exp().sum(-1) + ref.detach().abs() + 1
    assert float(((loss.double() - ref).abs() / mags).max()) < 1e-5
    # the gradient is rounded once to the input dtype
    tol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    err = (sh.grad.double() - s64.grad).abs()
    assert bool((err <= tol * s64.grad.abs() + 1e-6).all())


def test_score_entropy_batch_shapes_and_sigma_forms() -> None:
    gen = torch.Generator().manual_seed(5)
    v = 6
    s = torch.randn(2, 3, v, generator=gen, dtype=F64)
    xt = torch.tensor([[0, 1, 2], [3, 4, 5]])
    x0 = torch.tensor([[0, 2, 2], [1, 4, 0]])
    per_seq = torch.tensor([0.5, 2.0], dtype=F64)
    per_tok = per_seq[:, None].expand(2, 3).contiguous()
    a = se(s, xt, x0, per_seq, "uniform")
    b = se(s, xt, x0, per_tok, "uniform")
    c = se(s.reshape(6, v), xt.reshape(6), x0.reshape(6), per_tok.reshape(6), "uniform")
    assert a.shape == (2, 3)
    assert torch.equal(a, b) and torch.equal(a.reshape(6), c)
    d = se(s, xt, x0, 0.5, "uniform")
    assert torch.equal(d[0], a[0])
    # int32 tokens are accepted
    assert torch.equal(se(s, xt.int(), x0.int(), per_seq, "uniform"), a)


def test_score_entropy_validation() -> None:
    s = torch.zeros(2, 4)
    xt = torch.tensor([3, 0])
    x0 = torch.tensor([1, 0])
    with pytest.raises(ValueError, match="sigma"):
        se(s, xt, x0, 0.0, "absorb", 3)
    with pytest.raises(ValueError, match="sigma"):
        se(s, xt, x0, -1.0, "uniform")
    with pytest.raises(ValueError, match="sigma"):
        se(s, xt, x0, torch.tensor([0.5, math.nan]), "uniform")
    with pytest.raises(ValueError, match="graph"):
        se(s, xt, x0, 1.0, "absorbing", 3)
    with pytest.raises(ValueError, match="mask_id"):
        se(s, xt, x0, 1.0, "absorb")
    with pytest.raises(ValueError, match="mask"):
        se(s, xt, x0, 1.0, "absorb", 4)
    with pytest.raises(ValueError, match="x0"):
        se(s, xt, torch.tensor([3, 0]), 1.0, "absorb", 3)
    with pytest.raises(ValueError, match="x_t"):
        se(s, torch.tensor([4, 0]), x0, 1.0, "uniform")
    with pytest.raises(ValueError, match="model_output"):
        se(torch.zeros(3, 4), xt, x0, 1.0, "uniform")
    with pytest.raises(ValueError, match="model_output"):
        se(torch.tensor([[0.0, math.nan, 0, 0], [0.0] * 4]), xt, x0, 1.0, "uniform")
    with pytest.raises(ValueError, match="model_output"):
        se(torch.tensor([[0.0, math.inf, 0, 0], [0.0] * 4]), xt, x0, 1.0, "uniform")
    with pytest.raises(TypeError, match="model_output"):
        se(torch.zeros(2, 4, dtype=torch.int64), xt, x0, 1.0, "uniform")
    with pytest.raises(TypeError, match="x_t"):
        se(s, xt.float(), x0, 1.0, "uniform")
    with pytest.raises(ValueError, match="reduction"):
        se(s, xt, x0, 1.0, "uniform", reduction="avg")
    with pytest.raises(ValueError, match="sigma"):
        se(s, xt, x0, torch.ones(3), "uniform")
    with pytest.raises(ValueError, match="vocab"):
        se(torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0, 0]), 1.0, "uniform")


# --------------------------------------------------------------------------------------------
# masked-diffusion cross entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [0, 2, 3])
def test_masked_loss_hand_values(m: int) -> None:
    others = [1.0, 2.0, 3.0]
    logits = torch.tensor([[*others[:m], 10.0, *others[m:]]] * 2, dtype=F64)
    cols = [j for j in range(4) if j != m]  # columns of logits 1, 2, 3
    xt = torch.tensor([m, cols[0]])
    x0 = torch.tensor([cols[1], cols[0]])
    loss = masked_diffusion_loss(logits, xt, x0, mask_id=m, reduction="none")
    lse = math.log(math.e + math.e**2 + math.e**3)  # the mask column is removed
    torch.testing.assert_close(loss, torch.tensor([lse - 2.0, 0.0], dtype=F64), rtol=1e-14, atol=0)
    assert loss[1].item() == 0.0


def test_masked_loss_gradient_and_unread_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    v, m = 7, 3
    logits = torch.randn(5, v, generator=gen, dtype=F64)
    xt = torch.tensor([m, 0, m, 6, m])
    x0 = torch.tensor([1, 0, 6, 6, 0])
    logits[1] = -math.inf  # unmasked rows are never read: even an all -inf row is fine
    logits[3, 2] = 1e300
    w = torch.tensor([2.0, 5.0, 0.5, 1.0, 3.0], dtype=F64)
    t = logits.clone().requires_grad_(True)
    loss = masked_diffusion_loss(t, xt, x0, mask_id=m, weight=w, reduction="none")
    assert loss[1].item() == 0.0 and loss[3].item() == 0.0
    loss.sum().backward()
    want = torch.zeros(5, v, dtype=F64)
    for i in (0, 2, 4):
        keep = [j for j in range(v) if j != m]
        p = torch.softmax(logits[i, keep], 0)
        want[i, keep] = w[i] * p
        want[i, int(x0[i])] -= w[i]
        nll = -torch.log_softmax(logits[i, keep], 0)[keep.index(int(x0[i]))]
        assert loss[i].item() == pytest.approx(w[i].item() * nll.item(), rel=1e-13)
    torch.testing.assert_close(t.grad, want, rtol=1e-12, atol=1e-14)
    assert bool((t.grad[:, m] == 0).all())


def test_masked_loss_gradcheck() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=F64, requires_grad=True)
    xt = torch.tensor([[4, 1, 4], [4, 4, 0]])
    x0 = torch.tensor([[0, 1, 3], [2, 1, 0]])
    w = torch.tensor([1.5, 0.25], dtype=F64)
    ign = torch.tensor([[False, False, False], [True, False, False]])
    for red in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(
            lambda t, red=red: masked_diffusion_loss(
                t, xt, x0, mask_id=4, weight=w, ignore=ign, reduction=red
            ),
            (logits,),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_loss_half_precision_large_logits_stay_finite(dtype) -> None:
    big = 65504.0 if dtype == torch.float16 else 1e38
    m = 2
    logits = torch.tensor(
        [
            [0.0, -big, big, 1.0, -big, 0.5],  # the huge logit sits in the mask column
            [big, -big, big, big / 2, -big, 0.0],
            [-big, -big, 0.0, -big, -big, -big],  # only the mask column is finite... and x0
        ],
        dtype=dtype,
    )
    logits[2, 4] = 3.0
    xt = torch.tensor([m, m, m])
    x0 = torch.tensor([3, 1, 4])
    t = logits.clone().requires_grad_(True)
    loss = masked_diffusion_loss(t, xt, x0, mask_id=m, reduction="none")
    assert loss.dtype == F32 and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert bool(torch.isfinite(t.grad.float()).all())
    ref = masked_diffusion_loss(logits.double(), xt, x0, mask_id=m, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    assert loss[2].item() == pytest.approx(0.0, abs=1e-6)  # x0 is the only finite non-mask
    assert loss[0].item() == pytest.approx(
        -torch.log_softmax(torch.tensor([0.0, -big, 1.0, -big, 0.5], dtype=F64), 0)[2].item(),
        rel=1e-6,
    )


def test_masked_loss_weight_from_schedules_is_one_over_t() -> None:
    t = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.9, 1.0], dtype=F64)
    for sched in (schedules.LogLinear(eps=0.0), schedules.LogLinear(), schedules.LinearAlpha()):
        w = sched.loss_weight(t)
        torch.testing.assert_close(w, 1.0 / t, rtol=1e-15, atol=0)
        tt = t[:-1]  # dsigma / expm1(sigma) from the schedule's own sigma, dsigma
        sig, dsig = sched(tt)
        torch.testing.assert_close(
            sched.loss_weight(tt), dsig / torch.expm1(sig), rtol=1e-12, atol=0
        )
    # used as the per-sequence weight of the masked loss
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 4, 5, generator=gen, dtype=F64)
    xt = torch.tensor([[4, 0, 4, 4], [4, 4, 1, 4], [2, 4, 4, 0]])
    x0 = torch.tensor([[1, 0, 3, 2], [0, 3, 1, 1], [2, 0, 1, 0]])
    times = torch.tensor([0.1, 0.5, 0.8], dtype=F64)
    w = schedules.LogLinear(eps=0.0).loss_weight(times)
    loss = masked_diffusion_loss(logits, xt, x0, mask_id=4, weight=w, reduction="none")
    plain = masked_diffusion_loss(logits, xt, x0, mask_id=4, reduction="none")
    torch.testing.assert_close(loss, plain / times[:, None], rtol=1e-14, atol=0)


def test_masked_loss_reductions_and_validation() -> None:
    logits = torch.zeros(2, 2, 3, dtype=F64)  # uniform over the 2 non-mask columns: nll = ln 2
    xt = torch.tensor([[2, 2], [0, 2]])
    x0 = torch.tensor([[0, 1], [0, 1]])
    ln2 = math.log(2.0)
    kw = dict(mask_id=2)
    torch.testing.assert_close(
        masked_diffusion_loss(logits, xt, x0, **{"reduction": "none", **kw}),
        torch.tensor([[ln2, ln2], [0.0, ln2]], dtype=F64),
    )
    assert masked_diffusion_loss(logits, xt, x0, reduction="sum", **kw).item() == pytest.approx(
        3 * ln2
    )
    ign = torch.tensor([[True, False], [False, False]])
    assert masked_diffusion_loss(
        logits, xt, x0, reduction="mean", ignore=ign, weight=2.0, **kw
    ).item() == pytest.approx(2 * 2 * ln2 / 3)
    with pytest.raises(ValueError, match="mask"):
        masked_diffusion_loss(
            logits, xt, torch.tensor([[2, 1], [0, 1]]), **{"reduction": "none", **kw}
        )
    with pytest.raises(ValueError, match="mask_id"):
        masked_diffusion_loss(logits, xt, x0, mask_id=3, reduction="none")
    with pytest.raises(ValueError, match="model_output"):
        masked_diffusion_loss(logits.fill_(math.nan), xt, x0, **{"reduction": "none", **kw})
    with pytest.raises(ValueError, match="model_output"):
        masked_diffusion_loss(torch.zeros(2, 3), xt, x0, **{"reduction": "none", **kw})
    with pytest.raises(ValueError, match="reduction"):
        masked_diffusion_loss(torch.zeros(2, 2, 3), xt, x0, reduction="max", **kw)


def test_public_exports() -> None:
    assert fastdiff.score_entropy is score_entropy
    assert fastdiff.masked_diffusion_loss is masked_diffusion_loss


def test_scale_by_sigma_matches_formula_and_gives_uniform_guess_ratio() -> None:
    logits = torch.randn(2, 3, 11, dtype=F64)
    sigma = torch.tensor([1e-4, 3.0], dtype=F64)
    s = fastdiff.scale_by_sigma(logits, sigma=sigma)
    want = logits - torch.log(torch.expm1(sigma))[:, None, None] - math.log(10)
    torch.testing.assert_close(s, want, rtol=0, atol=1e-12)
    zero = fastdiff.scale_by_sigma(torch.zeros(1, 5), sigma=0.5)
    torch.testing.assert_close(zero.exp(), torch.full((1, 5), 1 / (4 * math.expm1(0.5))))
    with pytest.raises(ValueError, match="sigma"):
        fastdiff.scale_by_sigma(logits, sigma=-1.0)
