"""Concrete score matching (the L_CSM of SEDD): the reference against hand-derived values, its
minimizer, gradcheck, and the Triton kernel against the float64 reference under the
interpreter (outputs poisoned with NaN before each launch).

Kernel tolerances: the kernel reads the same (upcast) input values as the reference and
computes in fp32, so the loss agrees to fp32 rounding of its terms,
``|loss - ref| <= 2e-5 * w * sum_j (S_j + a_j)^2 / c`` (``c = 2``, or ``2V`` on the uniform
graph), and the gradient, stored in the input dtype,
``|g - ref| <= GRAD_TOL[dtype] |ref| + 2e-5 * w * S_j (S_j + a_j) / c'`` elementwise (times
grad_output), plus two steps of the dtype's subnormal grid (the gradient ``(S - a) S`` gets
tiny where ``S`` is). Entries beyond the dtype's range (fp16 at small sigma, where the target ratio
``1/expm1(sigma)`` passes 65504) must be inf of the right sign, as the fp16 reference's are.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend
from fastdiff.losses import concrete_score_matching
from fastdiff.reference import losses as ref

if not backend.triton_available():
    pytest.fail("triton must be importable for the kernel tests (it is a dependency on Linux)")

from fastdiff.kernels import concrete_score, fused_loss, launch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-6, torch.float16: 2.0**-9}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


def _csm(s, x_t, x0, sigma, graph, mask_id=None, **kw):
    with fastdiff.use_backend("reference"):
        kw.setdefault("reduction", "none")
        return concrete_score_matching(
            s, x_t, x0, sigma=sigma, graph=graph, mask_id=mask_id, **{"reduction": "none", **kw}
        )


def test_reference_matches_hand_derived_values():
    """sigma = log 2, so ``expm1(sigma) = 1``: absorbing ``r = 1``; uniform with V = 3:
    ``ratio = 1/(1 + 3) = 1/4`` and ``1/ratio = 4``. The entry at x_t (the mask) is ignored."""
    d = torch.float64
    log = math.log
    s = torch.tensor([[0.0, log(3.0), 5.0, log(0.5)], [7.0, 7.0, 7.0, 7.0]], dtype=d)
    loss = _csm(s, torch.tensor([2, 0]), torch.tensor([1, 0]), log(2.0), "absorb", mask_id=2)
    # row 0: 1/2 [(1 - 0)^2 + (3 - 1)^2 + (0.5 - 0)^2]; row 1 is not masked
    torch.testing.assert_close(loss, torch.tensor([2.625, 0.0], dtype=d))

    s = torch.tensor([[9.0, log(0.25), 0.0], [log(2.0), 7.0, log(4.0)]], dtype=d)
    loss = _csm(s, torch.tensor([0, 1]), torch.tensor([0, 2]), log(2.0), "uniform")
    # row 0 (x = x0 = 0): every target 1/4: 1/6 [(1/4 - 1/4)^2 + (1 - 1/4)^2]
    # row 1 (x = 1, x0 = 2): target 1 at j = 0, 4 at j = x0: 1/6 [(2 - 1)^2 + (4 - 4)^2]
    torch.testing.assert_close(loss, torch.tensor([0.5625 / 6, 1.0 / 6], dtype=d))


def test_weight_ignore_and_reductions():
    s = torch.randn(2, 3, 6, dtype=torch.float64)
    x0 = torch.randint(0, 5, (2, 3))
    x_t = torch.full_like(x0, 5)
    per = _csm(s, x_t, x0, 0.7, "absorb", mask_id=5)
    ignore = torch.tensor([[False, True, False], [False, False, False]])
    weight = torch.tensor([2.0, 0.5], dtype=torch.float64)
    got = _csm(s, x_t, x0, 0.7, "absorb", 5, weight=weight, ignore=ignore, reduction="none")
    want = torch.where(ignore, 0.0, per * weight[:, None])
    torch.testing.assert_close(got, want)
    got = _csm(s, x_t, x0, 0.7, "absorb", 5, weight=weight, ignore=ignore, reduction="mean")
    torch.testing.assert_close(got, want.sum() / 5)


def _kernel_targets(graph, x_t, x0, sigma, vocab, mask_id):
    """``a [N, V]``: the ratios ``q(j | x0) / q(x_t | x0)`` of the noising kernel (0 where j
    does not move into x_t), computed from the transition probabilities themselves."""
    n = x_t.shape[0]
    stay = torch.exp(-sigma)
    if graph == "absorb":
        q = torch.zeros(n, vocab, dtype=torch.float64)
        q[torch.arange(n), x0] = stay
        q[:, mask_id] = 1 - stay
        a = q / q[torch.arange(n), x_t][:, None]
        a[x_t != mask_id] = 0.0
        a[:, mask_id] = 0.0
        return a
    q = ((1 - stay) / vocab)[:, None].expand(n, vocab).clone()
    q[torch.arange(n), x0] += stay
    a = q / q[torch.arange(n), x_t][:, None]
    return a.scatter(1, x_t[:, None], 0.0)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_zero_with_zero_gradient_at_the_kernel_ratios(graph):
    """At ``S = a`` (the conditional ratios, computed here from the transition probabilities)
    the loss and its gradient vanish; away from them the loss is positive."""
    gen = torch.Generator().manual_seed(0)
    n, vocab, mask_id = 40, 7, 3
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    x0[x0 == mask_id] = 0
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-5, 2, generator=gen))
    if graph == "absorb":
        x_t = torch.where(torch.rand(n, generator=gen) < 0.7, mask_id, x0)
    else:
        noise = torch.randint(0, vocab, (n,), generator=gen)
        x_t = torch.where(torch.rand(n, generator=gen) < 0.5, x0, noise)
    a = _kernel_targets(graph, x_t, x0, sigma, vocab, mask_id)
    s = a.log().requires_grad_(True)  # -inf where the target is 0: S = 0 there
    loss = _csm(s, x_t, x0, sigma, graph, mask_id)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert float(loss.detach().abs().max()) < 1e-9 and float(grad.abs().max()) < 1e-9
    moved = _csm(s.detach() + 0.1, x_t, x0, sigma, graph, mask_id)
    rows = (x_t == mask_id) if graph == "absorb" else torch.ones(n, dtype=torch.bool)
    assert bool((moved[rows] > 0).all())


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_expected_loss_is_minimized_at_the_true_ratios(graph):
    """One token with data distribution ``p``: averaged over ``x0 ~ p(x0 | x_t)``, the
    denoising loss is minimal (zero gradient, larger under perturbation) at the TRUE ratios
    ``p_t(j) / p_t(x_t)`` of the noised marginal: denoising and plain concrete score matching
    differ by a constant."""
    vocab, mask_id, sigma = 5, 1, 0.6
    gen = torch.Generator().manual_seed(1)
    data = [0, 2, 3, 4] if graph == "absorb" else list(range(vocab))
    p = torch.zeros(vocab, dtype=torch.float64)
    p[data] = torch.softmax(torch.randn(len(data), generator=gen, dtype=torch.float64), 0)
    stay = math.exp(-sigma)
    if graph == "absorb":
        kernel = stay * torch.eye(vocab, dtype=torch.float64)
        kernel[:, mask_id] += 1 - stay
        states = [mask_id]
    else:
        kernel = stay * torch.eye(vocab, dtype=torch.float64) + (1 - stay) / vocab
        states = list(range(vocab))
    p_t = p @ kernel
    for x in states:
        post = p * kernel[:, x] / p_t[x]  # p(x0 | x_t = x)
        x0 = torch.tensor(data)
        true = (p_t / p_t[x]).log()

        def expected(log_score, x=x, x0=x0, post=post):
            rows = log_score.expand(len(x0), vocab)
            x_t = torch.full_like(x0, x)
            return _csm(rows, x_t, x0, sigma, graph, mask_id) @ post[x0]

        s = true.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(expected(s), s)
        assert float(grad.abs().max()) < 1e-12
        bump = torch.randn(vocab, generator=gen, dtype=torch.float64) * 0.05
        assert float(expected(true + bump)) > float(expected(true))


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_reference_gradcheck_float64(graph):
    gen = torch.Generator().manual_seed(2)
    n, vocab, mask_id = 6, 5, 0
    s = torch.randn(n, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    x0 = torch.randint(1, vocab, (n,), generator=gen)
    x_t = torch.where(torch.arange(n) % 2 == 0, mask_id, x0)
    if graph == "uniform":
        x_t[1] = 3
    sigma = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    weight = torch.rand(n, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s_, w_: _csm(s_, x_t, x0, sigma, graph, mask_id, weight=w_), (s, weight)
    )


def _case(draw, vocab, n, dtype, graph):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask_id = draw(st.sampled_from([0, vocab // 2, vocab - 1, draw(st.integers(0, vocab - 1))]))
    scale = draw(st.sampled_from([0.5, 2.0]))
    scores = (torch.randn(n, vocab, generator=gen) * scale).to(dtype)
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    if graph == "absorb":
        x0 = torch.where(x0 == mask_id, (mask_id + 1) % vocab, x0)
        x_t = torch.where(torch.rand(n, generator=gen) < 0.6, torch.full_like(x0, mask_id), x0)
    else:
        noise = torch.randint(0, vocab, (n,), generator=gen)
        x_t = torch.where(torch.rand(n, generator=gen) < 0.5, x0, noise)
    sigma = torch.empty(n).uniform_(math.log(1e-6), math.log(20.0), generator=gen).exp()
    weight = torch.rand(n, generator=gen) + 0.5 if draw(st.booleans()) else None
    return scores, x_t, x0, sigma, weight, mask_id


def _check_kernel(graph, scores, x_t, x0, sigma, weight, mask_id, dtype):
    vocab = scores.shape[1]
    kernel = fused_loss.concrete_score_matching_absorb
    reference = ref.concrete_score_matching_absorb
    extra = (mask_id,)
    if graph == "uniform":
        kernel = fused_loss.concrete_score_matching_uniform
        reference = ref.concrete_score_matching_uniform
        extra = ()
    s_k = scores.to(DEVICE).requires_grad_(True)
    w = None if weight is None else weight.to(DEVICE)
    dev = (x_t.to(DEVICE), x0.to(DEVICE), sigma.to(DEVICE))
    loss = kernel(s_k, *dev, *extra, w, block_v=16)
    upstream = torch.rand(len(x_t), generator=torch.Generator().manual_seed(1)) + 0.5
    (grad,) = torch.autograd.grad((loss * upstream.to(DEVICE)).sum(), s_k)

    s_r = scores.double().requires_grad_(True)
    w_r = None if weight is None else weight.double()
    loss_r = reference(s_r, x_t, x0, sigma.double(), *extra, w_r)
    (grad_r,) = torch.autograd.grad((loss_r * upstream.double()).sum(), s_r)

    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert not torch.isnan(loss).any() and not torch.isnan(grad).any(), "unwritten output"
    a = _kernel_targets(graph, x_t, x0, sigma.double(), vocab, mask_id)
    ratio = scores.double().exp()
    if graph == "absorb":  # every j != m is a neighbour of a masked row, none of the others
        ratio = ratio.index_fill(1, torch.tensor([mask_id]), 0.0)
        ratio = torch.where((x_t == mask_id)[:, None], ratio, 0.0)
    else:
        ratio = ratio.scatter(1, x_t[:, None], 0.0)
    c = 2.0 if graph == "absorb" else 2.0 * vocab
    w_row = torch.ones(len(x_t), dtype=torch.float64) if weight is None else weight.double()
    scale = w_row * (ratio + a).square().sum(1) / c
    err = (loss.double().cpu() - loss_r.detach()).abs()
    assert bool((err <= 2e-5 * scale + 1e-30).all()), (err / scale).max()

    grad = grad.double().cpu()
    limit = 0.99 * torch.finfo(dtype).max
    fused_ref = grad_r / upstream.double()[:, None]
    big = (fused_ref.abs() > limit) | (grad_r.abs() > limit)
    ok_big = torch.isinf(grad[big]) | ((grad[big] - grad_r[big]).abs() <= 0.01 * grad_r[big].abs())
    assert bool(ok_big.all()) and bool((grad[big].sign() == grad_r[big].sign()).all())
    elem = (w_row * upstream.double())[:, None] * ratio * (ratio + a) * 2.0 / c
    info = torch.finfo(dtype)
    tiny = 2 * info.smallest_normal * info.eps  # two steps of the subnormal grid (fp16: 6e-8)
    bound = GRAD_TOL[dtype] * grad_r.abs() + 2e-5 * elem + tiny
    gerr = torch.where(big, 0.0, (grad - grad_r).abs())
    assert bool((gerr <= bound).all()), (gerr - bound).max()


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    graph=st.sampled_from(["absorb", "uniform"]),
    vocab=st.sampled_from([2, 3, 17, 64, 127, 129]),
    n=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
)
def test_kernel_matches_reference(data, graph, vocab, n, dtype):
    """Loss and fused gradient of the kernel against the float64 reference, sigma from 1e-6
    to 20, any mask column, rows longer than one block (V = 127, 129 with blocks of 16)."""
    _check_kernel(graph, *_case(data.draw, vocab, n, dtype, graph), dtype)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_public_function_on_triton_backend(graph, reduction):
    """Weights, ignore mask and reductions give the reference's values and gradients when the
    public function runs the kernel; ignored positions get no gradient."""
    gen = torch.Generator().manual_seed(3)
    batch, length, vocab, mask_id = 2, 5, 40, 7
    scores = torch.randn(batch, length, vocab, generator=gen) - 2.0
    x0 = torch.randint(0, vocab, (batch, length), generator=gen)
    x0[x0 == mask_id] = 0
    x_t = fastdiff.add_noise(x0, sigma=1.0, graph=graph, vocab_size=vocab, mask_id=mask_id, seed=4)
    ignore = torch.zeros(batch, length, dtype=torch.bool)
    ignore[1, 3:] = True
    kw = dict(
        graph=graph, mask_id=mask_id, weight=torch.tensor([0.5, 2.0]), ignore=ignore,
        reduction=reduction,
    )  # fmt: skip
    outs = {}
    for name in ("reference", "triton"):
        s = scores.clone().to(DEVICE).requires_grad_(True)
        with fastdiff.use_backend(name):
            sigma = torch.tensor([0.3, 2.0], device=DEVICE)
            loss = concrete_score_matching(
                s, x_t.to(DEVICE), x0.to(DEVICE), sigma=sigma, **{"reduction": "none", **kw}
            )
        loss.sum().backward()
        outs[name] = (loss.detach().cpu(), s.grad.cpu())
    torch.testing.assert_close(outs["triton"][0], outs["reference"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["triton"][1], outs["reference"][1], rtol=1e-5, atol=1e-6)
    assert bool((outs["triton"][1][1, 3:] == 0).all())


def test_opcheck_and_no_gradient_buffer_without_requires_grad():
    """Schema, fake implementation, autograd registration (``torch.library.opcheck``); without
    a gradient the op returns an empty ``[0, V]`` buffer."""
    scores = torch.randn(5, 24, device=DEVICE, requires_grad=True)
    x_t = torch.tensor([3, 3, 0, 3, 1], device=DEVICE)
    x0 = torch.tensor([0, 1, 0, 2, 1], device=DEVICE)
    sigma = torch.rand(5) + 0.1
    for kind, coef in (
        ("csm_absorb", concrete_score.absorb_targets(sigma)),
        ("csm_uniform", concrete_score.uniform_targets(sigma, 24)),
    ):
        args = (scores, x_t, x0, coef.to(DEVICE), torch.rand(5, device=DEVICE), kind, 3, True, 16)
        torch.library.opcheck(torch.ops.fastdiff.fused_loss.default, args)
    loss, grad = torch.ops.fastdiff.fused_loss(
        scores.detach(), x_t, x0, coef.to(DEVICE), None, "csm_uniform", -1, False, 0
    )
    assert loss.shape == (5,) and grad.shape == (0, 24)


def test_bad_input_raises_before_the_kernel():
    s = torch.randn(2, 3, 5)
    x0 = torch.zeros(2, 3, dtype=torch.long)
    x_t = torch.full((2, 3), 4)
    with fastdiff.use_backend("triton"):
        with pytest.raises(ValueError, match="mask token"):
            concrete_score_matching(
                s, x_t, x0 + 4, sigma=1.0, graph="absorb", mask_id=4, reduction="none"
            )
        with pytest.raises(ValueError, match="NaN"):
            concrete_score_matching(
                s.clone().fill_(math.nan), x_t, x0, sigma=1.0, graph="uniform", reduction="none"
            )
        with pytest.raises(ValueError, match="sigma must be > 0"):
            concrete_score_matching(
                s, x_t, x0, sigma=0.0, graph="absorb", mask_id=4, reduction="none"
            )
        with pytest.raises(ValueError, match="outside"):
            concrete_score_matching(s, x_t + 1, x0, sigma=1.0, graph="uniform", reduction="none")
        with pytest.raises(ValueError, match="shape"):
            concrete_score_matching(s[:, :2], x_t, x0, sigma=1.0, graph="uniform", reduction="none")
        with pytest.raises(ValueError, match="mask_id is required"):
            concrete_score_matching(s, x_t, x0, sigma=1.0, graph="absorb", reduction="none")


@pytest.mark.parametrize(
    "name", ["concrete_score_matching_absorb", "concrete_score_matching_uniform"]
)
def test_bench_case_and_its_eager_baseline_agree_with_the_reference(name):
    """The benchmark case's public call and its SEDD-style eager baseline compute the loss of
    the reference (float64 inputs; sigma is float32 in the case's inputs)."""
    from fastdiff.bench import cases

    (case,) = cases.select([name])
    d = case.make_inputs(case.shapes.quick[0], torch.float64, torch.device("cpu"), 0)
    want = case.reference(*case.reference_args(d)).detach()
    with fastdiff.use_backend("reference"):
        got = case.public(d).detach()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(case.baseline.fn(d).detach(), want, rtol=1e-5, atol=0.0)
