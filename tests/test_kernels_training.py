"""Training-path Triton kernels against the float64 reference.

Without a GPU the kernels run through Triton's interpreter on CPU tensors (the root
conftest sets ``TRITON_INTERPRET=1``); with one, on CUDA tensors. Every kernel output is
poisoned with NaN before the launch, so an element a kernel forgets to write fails.

Tolerances: the kernels read the same input values as the reference (which runs in float64 on
the upcast inputs) and compute in fp32, so the loss must agree to fp32 rounding of its terms:
``|loss - ref| <= 2e-5 * scale`` with ``scale`` the sum of the magnitudes of the terms (the
loss is a difference of large terms at small sigma). The gradient is stored in the input dtype:
``|g - ref| <= tol_dtype * |ref| + 2e-5 * row_scale``, tol_dtype two ulps of the stored dtype
(see GRAD_TOL).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
import fastdiff.reference.noising
from fastdiff import backend
from fastdiff.reference import losses as ref

if not backend.triton_available():
    pytest.fail("triton must be importable for the kernel tests (it is a dependency on Linux)")

from fastdiff.kernels import fused_loss, launch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# two units in the last place of the stored gradient: it is rounded once when the kernel stores
# it and once more when backward rescales it by a grad_output that is not 1 (and the
# interpreter's bf16 stores can be 1 ulp off round-to-nearest; see the kernels brief)
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-6, torch.float16: 2.0**-9}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


def _case(draw, vocab, n, dtype, graph):
    """Random log-scores (with some -inf), tokens and sigma for one property example."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask_id = draw(st.sampled_from([0, vocab // 2, vocab - 1, draw(st.integers(0, vocab - 1))]))
    scale = draw(st.sampled_from([0.5, 3.0]))
    scores = (torch.randn(n, vocab, generator=gen) * scale).to(dtype)
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    if graph != "uniform":
        x0 = torch.where(x0 == mask_id, (mask_id + 1) % vocab, x0)
    if graph == "uniform":
        x_t = torch.where(
            torch.rand(n, generator=gen) < 0.5, x0, torch.randint(0, vocab, (n,), generator=gen)
        )
    else:
        x_t = torch.where(torch.rand(n, generator=gen) < 0.6, torch.full_like(x0, mask_id), x0)
    log_sigma = torch.empty(n).uniform_(math.log(1e-6), math.log(20.0), generator=gen)
    sigma = log_sigma.exp()
    weight = torch.rand(n, generator=gen) + 0.5 if draw(st.booleans()) else None
    return scores, x_t, x0, sigma, weight, mask_id


def _check_loss_and_grad(kernel_fn, ref_fn, scores, args, weight, dtype, *, scale_fn):
    s_k = scores.to(DEVICE).requires_grad_(True)
    dev_args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    w = None if weight is None else weight.to(DEVICE)
    loss = kernel_fn(s_k, *dev_args, w, block_v=16)
    upstream = (torch.rand(loss.shape[0], generator=torch.Generator().manual_seed(1)) + 0.5).to(
        DEVICE
    )
    (grad,) = torch.autograd.grad((loss * upstream).sum(), s_k)

    s_r = scores.double().requires_grad_(True)
    ref_args = [
        a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]
    loss_r = ref_fn(s_r, *ref_args, None if weight is None else weight.double())
    (grad_r,) = torch.autograd.grad((loss_r * upstream.cpu().double()).sum(), s_r)

    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert not torch.isnan(loss).any() and not torch.isnan(grad).any(), "unwritten output"
    scale = scale_fn(scores.double(), *ref_args)
    if weight is not None:
        scale = scale * weight.double()
    err = (loss.double().cpu() - loss_r.detach()).abs()
    assert bool((err <= 2e-5 * scale + 1e-30).all()), (err / scale).max()
    row_scale = scale[:, None] * upstream.cpu().double()[:, None]
    grad = grad.double().cpu()
    # The fused gradient w (S - r) is stored in the input dtype before backward rescales it, so
    # entries near or beyond the dtype's range, before or after the rescale (fp16 at
    # sigma < ~1e-5: r > 65504), overflow to inf, as the gradient of the reference run in fp16
    # does; they must not be NaN or of the wrong sign.
    fused_ref = grad_r / upstream.cpu().double()[:, None]
    limit = 0.99 * torch.finfo(dtype).max
    big = (fused_ref.abs() > limit) | (grad_r.abs() > limit)
    assert bool(
        (
            torch.isinf(grad[big]) | ((grad[big] - grad_r[big]).abs() <= 0.01 * grad_r[big].abs())
        ).all()
    )
    assert bool((grad[big].sign() == grad_r[big].sign()).all())
    gerr = torch.where(big, 0.0, (grad - grad_r).abs())
    bound = GRAD_TOL[dtype] * grad_r.abs() + 2e-5 * row_scale + 1e-30
    assert bool((gerr <= bound).all()), (gerr - bound).max()


def _absorb_scale(s, x_t, x0, sigma, mask_id):
    r = 1.0 / torch.expm1(sigma)
    s_x0 = s.gather(-1, x0[:, None]).squeeze(-1).abs()
    pos = s.exp().sum(-1)
    return pos + r * (s_x0 + r.log().abs() + 1.0) + 1.0


def _uniform_scale(s, x_t, x0, sigma):
    vocab = s.shape[-1]
    e = torch.expm1(sigma)
    ratio = e / (e + vocab)
    s_x0 = s.gather(-1, x0[:, None]).squeeze(-1).abs()
    terms = s.exp().sum(-1) / vocab + s.abs().sum(-1) / vocab + s_x0 / e
    return terms + (ratio.log().abs() + 1.0) / ratio + vocab + 1.0


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    vocab=st.sampled_from([2, 3, 17, 64, 127, 129]),
    n=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
)
def test_score_entropy_absorb_kernel_matches_reference(data, vocab, n, dtype):
    scores, x_t, x0, sigma, weight, mask_id = _case(data.draw, vocab, n, dtype, "absorb")
    _check_loss_and_grad(
        fused_loss.score_entropy_absorb,
        lambda s, xt, x0_, sg, m, w: ref.score_entropy_absorb(s, xt, x0_, sg, m, w),
        scores,
        [x_t, x0, sigma, mask_id],
        weight,
        dtype,
        scale_fn=_absorb_scale,
    )


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    vocab=st.sampled_from([2, 3, 17, 64, 127, 129]),
    n=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
)
def test_score_entropy_uniform_kernel_matches_reference(data, vocab, n, dtype):
    scores, x_t, x0, sigma, weight, _ = _case(data.draw, vocab, n, dtype, "uniform")
    _check_loss_and_grad(
        fused_loss.score_entropy_uniform,
        ref.score_entropy_uniform,
        scores,
        [x_t, x0, sigma],
        weight,
        dtype,
        scale_fn=_uniform_scale,
    )


def _mdlm_scale(s, x_t, x0, mask_id):
    return s.abs().amax(-1) * 2.0 + math.log(s.shape[-1]) + 1.0


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    vocab=st.sampled_from([2, 3, 17, 64, 127, 129]),
    n=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
)
def test_masked_diffusion_kernel_matches_reference(data, vocab, n, dtype):
    scores, x_t, x0, _, weight, mask_id = _case(data.draw, vocab, n, dtype, "absorb")
    _check_loss_and_grad(
        fused_loss.masked_diffusion_loss,
        ref.masked_diffusion_loss,
        scores,
        [x_t, x0, mask_id],
        weight,
        dtype,
        scale_fn=_mdlm_scale,
    )


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_public_score_entropy_on_triton_backend(graph, reduction):
    """The public function (weights, ignore mask, reductions) gives the reference's values and
    gradients when it runs the kernels."""
    gen = torch.Generator().manual_seed(3)
    batch, length, vocab, mask_id = 2, 5, 40, 7
    scores = torch.randn(batch, length, vocab, generator=gen)
    x0 = torch.randint(0, vocab, (batch, length), generator=gen)
    x0[x0 == mask_id] = 0
    x_t = fastdiff.add_noise(x0, sigma=1.0, graph=graph, vocab_size=vocab, mask_id=mask_id, seed=4)
    ignore = torch.zeros(batch, length, dtype=torch.bool)
    ignore[1, 3:] = True
    kw = dict(
        graph=graph,
        mask_id=mask_id,
        weight=torch.tensor([0.5, 2.0]),
        ignore=ignore,
        reduction=reduction,
    )
    outs = {}
    for name in ("reference", "triton"):
        s = scores.clone().to(DEVICE).requires_grad_(True)
        with fastdiff.use_backend(name):
            loss = fastdiff.score_entropy(
                s,
                x_t.to(DEVICE),
                x0.to(DEVICE),
                sigma=torch.tensor([0.3, 2.0], device=DEVICE),
                **kw,
            )
        loss.sum().backward()
        outs[name] = (loss.detach().cpu(), s.grad.cpu())
    torch.testing.assert_close(outs["triton"][0], outs["reference"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["triton"][1], outs["reference"][1], rtol=1e-5, atol=1e-6)
    assert bool((outs["triton"][1][1, 3:] == 0).all()), "ignored positions must get no gradient"


def test_masked_diffusion_fp16_large_logits_stay_finite():
    """fp16 logits near the fp16 maximum: no -1e6 constant, no overflow, correct loss."""
    logits = torch.tensor([[60000.0, 1.0, 59000.0, -60000.0]], dtype=torch.float16)
    x_t, x0 = torch.tensor([2]), torch.tensor([0])
    with fastdiff.use_backend("triton"):
        loss = fastdiff.masked_diffusion_loss(
            logits.to(DEVICE), x_t.to(DEVICE), x0.to(DEVICE), mask_id=2, reduction="none"
        )
    assert torch.isfinite(loss).all() and abs(float(loss)) < 1e-6


def test_backward_skips_rescale_when_grad_output_is_one():
    """With grad_output all ones the saved gradient is returned as is (no extra pass)."""
    scores = torch.randn(4, 33, device=DEVICE, requires_grad=True)
    x_t = torch.tensor([5, 5, 1, 5], device=DEVICE)
    x0 = torch.tensor([1, 2, 1, 3], device=DEVICE)
    loss = fused_loss.score_entropy_absorb(scores, x_t, x0, torch.full((4,), 0.7, device=DEVICE), 5)
    loss.sum().backward()
    expected = torch.where(torch.arange(33, device=DEVICE) == 5, 0.0, scores.detach().exp())
    r = 1.0 / math.expm1(0.7)
    expected = expected - r * torch.nn.functional.one_hot(x0, 33)
    expected[2] = 0.0
    torch.testing.assert_close(scores.grad, expected.float(), rtol=1e-5, atol=1e-6)


def test_no_gradient_buffer_without_requires_grad():
    scores = torch.randn(3, 20, device=DEVICE)
    x_t = torch.tensor([1, 1, 2], device=DEVICE)
    out, grad = torch.ops.fastdiff.fused_loss(
        scores,
        x_t,
        torch.tensor([0, 3, 2], device=DEVICE),
        fused_loss.absorb_coef(torch.ones(3)),
        None,
        "absorb",
        1,
        False,
        0,
    )
    assert grad.shape == (0, 20) and out.shape == (3,)


def test_fused_loss_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch."""
    scores = torch.randn(5, 24, device=DEVICE, requires_grad=True)
    x_t = torch.tensor([3, 3, 0, 3, 1], device=DEVICE)
    x0 = torch.tensor([0, 1, 0, 2, 1], device=DEVICE)
    for kind, coef in (
        ("absorb", fused_loss.absorb_coef(torch.rand(5) + 0.1)),
        ("uniform", fused_loss.uniform_coef(torch.rand(5) + 0.1, (x_t == x0).cpu(), 24)),
        ("mdlm", torch.empty(0, 5)),
    ):
        args = (scores, x_t, x0, coef.to(DEVICE), torch.rand(5, device=DEVICE), kind, 3, True, 16)
        torch.library.opcheck(torch.ops.fastdiff.fused_loss.default, args)


def test_public_loss_traces_under_torch_compile_fullgraph():
    """``torch.compile(fullgraph=True)`` of a function calling the public loss: no graph break,
    same values and gradients as eager."""
    scores = torch.randn(2, 6, 30, device=DEVICE)
    x0 = torch.randint(0, 29, (2, 6), device=DEVICE)
    x_t = torch.where(torch.rand(2, 6, device=DEVICE) < 0.5, 29, x0)
    sigma = torch.tensor([0.5, 1.5], device=DEVICE)

    def step(s):
        return fastdiff.score_entropy(
            s, x_t, x0, sigma=sigma, graph="absorb", mask_id=29, reduction="sum"
        )

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with fastdiff.use_backend("triton"):
        s1 = scores.clone().requires_grad_(True)
        eager = step(s1)
        eager.backward()
        s2 = scores.clone().requires_grad_(True)
        out = compiled(s2)
        out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(s2.grad, s1.grad)


# ---------------------------------------------------------------------------------------------
# fused projection + loss
# ---------------------------------------------------------------------------------------------


def _linear_case(seed, n, hidden_size, vocab, dtype, graph):
    gen = torch.Generator().manual_seed(seed)
    mask_id = int(torch.randint(0, vocab, (), generator=gen))
    hidden = (torch.randn(n, hidden_size, generator=gen)).to(dtype)
    proj = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(dtype)
    bias = (torch.randn(vocab, generator=gen) * 0.1).to(dtype)
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    x0 = torch.where(x0 == mask_id, (mask_id + 1) % vocab, x0)
    if graph == "uniform":
        x_t = fastdiff.add_noise(x0, sigma=1.0, graph="uniform", vocab_size=vocab, seed=seed)
    else:
        x_t = fastdiff.add_noise(
            x0, sigma=1.0, graph="absorb", vocab_size=vocab, mask_id=mask_id, seed=seed
        )
    sigma = torch.rand(n, generator=gen) * 3 + 0.05
    weight = torch.rand(n, generator=gen) + 0.5
    return hidden, proj, bias, x_t, x0, sigma, weight, mask_id


def _linear_loss(graph, hidden, proj, bias, x_t, x0, sigma, weight, mask_id, **kw):
    if graph == "mdlm":
        return fastdiff.linear_masked_diffusion_loss(
            hidden, proj, x_t, x0, mask_id=mask_id, bias=bias, weight=weight, **kw
        )
    return fastdiff.linear_score_entropy(
        hidden,
        proj,
        x_t,
        x0,
        sigma=sigma,
        bias=bias,
        graph=graph,
        mask_id=mask_id,
        weight=weight,
        **kw,
    )


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 12),
    hidden_size=st.sampled_from([1, 4, 16]),
    vocab=st.sampled_from([2, 17, 40]),
    graph=st.sampled_from(["absorb", "uniform", "mdlm"]),
    chunk_rows=st.sampled_from([1, 2, 5, 64]),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_fused_linear_loss_matches_unfused_reference(
    seed, n, hidden_size, vocab, graph, chunk_rows, reduction
):
    """Loss and gradients of hidden states, projection and bias equal the float64 unfused path,
    at every chunk boundary (chunks of 1, 2, 5 rows and one chunk for all)."""
    case = _linear_case(seed, n, hidden_size, vocab, torch.float32, graph)
    outs = {}
    for name, dtype in (("reference", torch.float64), ("triton", torch.float32)):
        leaves = [t.to(DEVICE, dtype).requires_grad_(True) for t in case[:3]]
        rest = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in case[3:]]
        with fastdiff.use_backend(name):
            loss = _linear_loss(graph, *leaves, *rest, reduction=reduction, chunk_rows=chunk_rows)
        (loss * 1.5).backward()
        outs[name] = [loss.detach()] + [leaf.grad for leaf in leaves]
    for got, want in zip(outs["triton"], outs["reference"]):
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=2e-5, atol=2e-5)


def test_fused_linear_never_builds_more_than_one_chunk_of_logits(monkeypatch):
    """The logits are formed chunk by chunk (at most chunk_rows rows at once), and only for
    masked rows: an unmasked row is never projected."""
    from fastdiff.kernels import fused_linear

    shapes = []
    real_linear = torch.nn.functional.linear

    def spy(h, w, b=None):
        shapes.append(tuple(h.shape))
        return real_linear(h, w, b)

    monkeypatch.setattr(fused_linear.torch.nn.functional, "linear", spy)
    hidden, proj, bias, _, x0, sigma, weight, mask_id = _linear_case(
        1, 50, 8, 30, torch.float32, "absorb"
    )
    x_t = x0.clone()
    x_t[::3] = mask_id  # 17 masked rows
    with fastdiff.use_backend("triton"):
        _linear_loss(
            "absorb",
            hidden.requires_grad_(True),
            proj,
            bias,
            x_t,
            x0,
            sigma,
            weight,
            mask_id,
            chunk_rows=4,
        )
    assert sum(s[0] for s in shapes) == 17
    assert max(s[0] for s in shapes) == 4


def test_fused_linear_rejects_per_row_reduction_and_mixed_dtypes():
    hidden, proj, bias, x_t, x0, sigma, weight, mask_id = _linear_case(
        2, 4, 8, 10, torch.float32, "absorb"
    )
    with pytest.raises(ValueError, match="scalar"):
        _linear_loss(
            "absorb", hidden, proj, bias, x_t, x0, sigma, weight, mask_id, reduction="none"
        )
    with pytest.raises(TypeError, match="one dtype"):
        _linear_loss("mdlm", hidden, proj.double(), bias, x_t, x0, sigma, weight, mask_id)
    with pytest.raises(ValueError, match=r"\[V, H\]"):
        _linear_loss("uniform", hidden, proj[:, :3], bias, x_t, x0, sigma, weight, mask_id)
    with pytest.raises(ValueError, match="chunk_rows"):
        _linear_loss("absorb", hidden, proj, bias, x_t, x0, sigma, weight, mask_id, chunk_rows=0)


def test_fused_linear_opcheck():
    hidden, proj, bias, x_t, x0, sigma, weight, mask_id = _linear_case(
        3, 6, 8, 12, torch.float32, "absorb"
    )
    x_t[:3] = mask_id
    args = (
        hidden.to(DEVICE).requires_grad_(True),
        proj.to(DEVICE).requires_grad_(True),
        bias.to(DEVICE).requires_grad_(True),
        x_t.to(DEVICE),
        x0.to(DEVICE),
        fused_loss.absorb_coef(sigma).to(DEVICE),
        weight.to(DEVICE),
        "absorb",
        mask_id,
        True,
        True,
        True,
        4,
    )
    torch.library.opcheck(torch.ops.fastdiff.fused_linear_loss.default, args)


# ---------------------------------------------------------------------------------------------
# noising kernels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("block_rows", [16, 128, 1024])
def test_corrupt_kernel_is_bit_exact_with_reference_for_any_block_size(graph, block_rows):
    """Same seed and offset: the kernel and the reference produce the same tokens (the move
    decision is made in fp64 on the same 52-bit uniform), whatever the rows per program."""
    from fastdiff.kernels import noising

    gen = torch.Generator().manual_seed(11)
    n, vocab, mask_id = 3000, 51, 17
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    sigma = torch.rand(n, generator=gen, dtype=torch.float64) * 3
    fixed = torch.rand(n, generator=gen) < 0.1
    for seed, offset in ((5, 0), (-3, 1), (2**40 + 7, 2**33 + 2)):
        want = fastdiff.reference.noising.corrupt(
            x0, sigma, fixed, seed, offset, graph, vocab, mask_id
        )
        got = noising.corrupt(
            x0.to(DEVICE),
            sigma.to(DEVICE),
            fixed.to(DEVICE),
            seed,
            offset,
            graph,
            vocab,
            mask_id,
            block_rows=block_rows,
        )
        assert torch.equal(got.cpu(), want)
        assert torch.equal(got.cpu()[fixed], x0[fixed])


def test_corrupt_kernel_frequencies():
    """P(x_t = m) = 1 - e^-sigma for the absorbing kernel (5-sigma binomial bound)."""
    n, sigma = 20000, 0.7
    x0 = torch.zeros(n, dtype=torch.int64, device=DEVICE)
    with fastdiff.use_backend("triton"):
        x_t = fastdiff.add_noise(x0, sigma=sigma, graph="absorb", vocab_size=4, mask_id=3, seed=9)
    p = -math.expm1(-sigma)
    assert abs(float((x_t == 3).float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("batched", [False, True])
def test_corrupt_dense_kernel_matches_reference_and_block_size(batched):
    """Dense-matrix noising: the exponential race with the reference's Philox stream picks the
    same token on >= 99.9% of rows (differences only at keys tied within fp32 rounding), and the
    result does not depend on the columns per block."""
    from fastdiff.kernels import noising

    gen = torch.Generator().manual_seed(12)
    vocab, n = 37, 96
    mats = torch.softmax(torch.randn(4 if batched else 1, vocab, vocab, generator=gen) * 3, -1)
    q = mats if batched else mats[0]
    x0 = torch.randint(0, vocab, (n,), generator=gen)
    matrix_index = torch.arange(n) % 4 if batched else None
    fixed = torch.rand(n, generator=gen) < 0.2
    want = fastdiff.reference.noising.corrupt_dense(x0, q, matrix_index, fixed, 21, 3)
    outs = [
        noising.corrupt_dense(
            x0.to(DEVICE),
            q.to(DEVICE),
            None if matrix_index is None else matrix_index.to(DEVICE),
            fixed.to(DEVICE),
            21,
            3,
            block_v=block,
        ).cpu()
        for block in (16, 64)
    ]
    assert torch.equal(outs[0], outs[1])
    assert float((outs[0] == want).float().mean()) >= 0.999
    assert torch.equal(outs[0][fixed], x0[fixed])


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs 4.4 GB of GPU memory: N x V > 2^31")
def test_score_entropy_kernel_int64_offsets_on_gpu():
    """Rows past element 2^31 are addressed correctly (int64 row offsets)."""
    vocab, n = 50258, 43000  # n * vocab = 2.16e9 > 2^31
    scores = torch.randn(n, vocab, device=DEVICE, dtype=torch.bfloat16)
    x0 = torch.randint(0, vocab - 1, (n,), device=DEVICE)
    x_t = torch.full_like(x0, vocab - 1)
    sigma = torch.ones(n, device=DEVICE)
    loss = fused_loss.score_entropy_absorb(scores, x_t, x0, sigma, vocab - 1)
    tail = slice(n - 4, n)
    want = ref.score_entropy_absorb(
        scores[tail].double(), x_t[tail], x0[tail], sigma[tail].double(), vocab - 1
    )
    torch.testing.assert_close(loss[tail].double(), want, rtol=1e-4, atol=1e-3)


def test_noising_ops_opcheck_and_torch_compile_fullgraph():
    from fastdiff.kernels import noising

    x0 = torch.randint(0, 9, (2, 5), device=DEVICE)
    q = torch.softmax(torch.randn(10, 10), -1).to(DEVICE)
    seed = noising.seed_tensor(3, DEVICE)
    move = torch.full((10,), 0.5, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(
        torch.ops.fastdiff.corrupt.default, (x0.flatten(), move, None, seed, 1, True, 10, 9, 16)
    )
    torch.library.opcheck(
        torch.ops.fastdiff.corrupt_dense.default, (x0.flatten(), q, None, None, seed, 0, 16)
    )

    def noise(x0, sigma, q):
        a = fastdiff.add_noise(x0, sigma=sigma, graph="absorb", vocab_size=10, mask_id=9, seed=3)
        return a, fastdiff.add_noise_dense(x0, q, seed=4)

    compiled = torch.compile(noise, fullgraph=True, backend="aot_eager")
    sigma = torch.tensor([0.5, 1.0], device=DEVICE)
    with fastdiff.use_backend("triton"):
        for got, want in zip(compiled(x0, sigma, q), noise(x0, sigma, q)):
            assert torch.equal(got, want)


@pytest.mark.parametrize("graph", ["absorb", "uniform", "mdlm"])
@pytest.mark.parametrize("score_grad", [True, False])
def test_weight_and_sigma_gradients_match_reference(graph, score_grad):
    """A per-position weight (or a sigma) that needs a gradient gets the reference's gradient on
    the Triton backend, with or without a gradient for the scores."""
    gen = torch.Generator().manual_seed(5)
    vocab, mask_id = 20, 4
    scores = torch.randn(2, 3, vocab, generator=gen, device="cpu")
    x0 = torch.randint(0, vocab, (2, 3), generator=gen)
    x0[x0 == mask_id] = 0
    x_t = torch.where(torch.rand(2, 3, generator=gen) < 0.5, mask_id, x0)
    if graph == "uniform":
        x_t = torch.where(x_t == mask_id, 7, x_t)
    outs = {}
    for name in ("reference", "triton"):
        s = scores.clone().to(DEVICE).requires_grad_(score_grad)
        w = torch.tensor([0.5, 2.0], device=DEVICE, requires_grad=True)
        sig = torch.tensor([0.3, 1.7], device=DEVICE, requires_grad=True)
        with fastdiff.use_backend(name):
            if graph == "mdlm":
                loss = fastdiff.masked_diffusion_loss(
                    s, x_t.to(DEVICE), x0.to(DEVICE), mask_id=mask_id, weight=w, reduction="none"
                )
            else:
                loss = fastdiff.score_entropy(
                    s,
                    x_t.to(DEVICE),
                    x0.to(DEVICE),
                    sigma=sig,
                    graph=graph,
                    mask_id=mask_id,
                    weight=w,
                    reduction="none",
                )
        (loss * torch.arange(1.0, 7.0, device=DEVICE).reshape(2, 3)).sum().backward()
        outs[name] = [t.grad for t in (w, sig) + ((s,) if score_grad else ())]
    for got, want in zip(outs["triton"], outs["reference"]):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("graph", ["absorb", "uniform", "mdlm"])
def test_fused_linear_half_precision_over_several_blocks(monkeypatch, dtype, graph):
    """bf16 / fp16 projection + loss with rows longer than one block (block of 16 columns,
    V = 40): the in-place streaming gradient matches the float64 unfused path within the
    tolerance of one bf16/fp16 rounding of the logits and of the gradient."""
    from fastdiff.kernels import fused_linear

    monkeypatch.setattr(fused_linear, "block_size", lambda vocab: 16)
    case = _linear_case(8, 10, 16, 40, dtype, graph)
    outs = {}
    for name, cast in (("reference", torch.float64), ("triton", dtype)):
        leaves = [t.to(DEVICE, cast).requires_grad_(True) for t in case[:3]]
        rest = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in case[3:]]
        with fastdiff.use_backend(name):
            loss = _linear_loss(graph, *leaves, *rest, reduction="sum", chunk_rows=3)
        loss.backward()
        outs[name] = [loss.detach()] + [leaf.grad for leaf in leaves]
    tol = 2.0**-6 if dtype == torch.bfloat16 else 2.0**-9
    for got, want in zip(outs["triton"], outs["reference"]):
        got, want = got.double().cpu(), want.cpu()
        scale = want.abs().max() + 1.0
        assert float((got - want).abs().max()) <= 4 * tol * scale
