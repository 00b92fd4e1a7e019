"""The native C++ reverse updates (csrc/native/updates.cpp) against the PyTorch reference.

Every property calls the PUBLIC function twice, under ``use_backend("reference")`` and
``use_backend("native")``, on the same inputs: tiny shapes (V from 2 to 600, the race's group
boundaries 255 / 256 / 257 / 513 included, the mask id first / middle / last), seeds over the
whole int64 range (ints and 0-d tensors), large offsets, tiny and huge noise levels
(``D = 800`` and ``inf`` where the op allows them), fixed rows, four model-output dtypes and
non-contiguous inputs. Both backends compute the same float64 log-weights and race them with
the same Philox noise, so the tokens must be equal (a difference needs two race keys within a
few ulps: probability ~1e-13 per row, never seen); confidences are float32 roundings of float64
values that differ only by the order of one softmax sum, compared to 2 float32 ulps plus
``2 V eps64`` (the tiny negative entropy of a near one-hot row is ill-conditioned).
Hand-derived cases pin the formulas themselves, and bad input still raises the public errors
under the native backend.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend

pytestmark = pytest.mark.skipif(
    not backend.native_available(), reason="fastdiff._C (native kernels) is not built"
)

INF = math.inf
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
VOCABS = st.one_of(st.sampled_from([2, 3, 255, 256, 257, 513]), st.integers(2, 600))
PROPS = settings(max_examples=150, deadline=None)
# noise levels of the steps: 0, tiny, moderate, huge (exp(-800) underflows), inf
LEVELS = [0.0, 1e-300, 1e-9, 0.05, 0.7, 3.0, 40.0, 800.0, INF]


@st.composite
def steps(draw, allow_neg_inf: bool = True) -> dict:
    """An input set: scores ``[N, V]`` (maybe non-contiguous, some ``-inf``), tokens with about
    half the rows masked, ``fixed``, seed and offset."""
    n = draw(st.integers(1, 48))
    vocab = draw(VOCABS)
    mask_id = draw(st.sampled_from([0, vocab // 2, vocab - 1]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([0.1, 2.0, 30.0]))
    scores = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * scale - math.log(vocab)
    if allow_neg_inf and draw(st.booleans()):
        scores[torch.rand(n, vocab, generator=gen) < 0.2] = -INF
    # one finite non-mask entry per row: a masked row always has a token to move to
    scores[:, (mask_id + 1) % vocab] = scores[:, (mask_id + 1) % vocab].clamp(-50, 50).nan_to_num()
    x = torch.randint(0, vocab, (n,), generator=gen)
    x[torch.rand(n, generator=gen) < 0.5] = mask_id
    dtype = draw(st.sampled_from(DTYPES))
    scores = scores.to(dtype)
    if draw(st.booleans()):  # non-contiguous scores and tokens
        scores = scores.t().contiguous().t()
        x = torch.stack([x, x], 1)[:, 1]
    fixed = torch.rand(n, generator=gen) < 0.25 if draw(st.booleans()) else None
    seed = draw(st.integers(-(2**63), 2**63 - 1))
    if draw(st.booleans()):
        seed = torch.tensor(seed)
    offset = draw(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63 - 1]))
    return {
        "scores": scores,
        "x": x,
        "mask_id": mask_id,
        "fixed": fixed,
        "seed": seed,
        "offset": offset,
        "gen": gen,
    }


def _both(fn, *args, **kwargs) -> list:
    out = []
    for name in ("reference", "native"):
        with fastdiff.use_backend(name):
            out.append(fn(*args, **kwargs))
    return out


def _per_row(d: dict, values: list[float]) -> torch.Tensor:
    """A float64 ``[N]`` tensor of values drawn from ``values``."""
    index = torch.randint(0, len(values), d["x"].shape, generator=d["gen"])
    return torch.tensor(values, dtype=torch.float64)[index]


def _common(d: dict) -> dict:
    return {"fixed": d["fixed"], "seed": d["seed"], "offset": d["offset"]}


def _assert_tokens_equal(want: torch.Tensor, got: torch.Tensor) -> None:
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(want, got), f"{int((want != got).sum())} rows differ"


@PROPS
@given(
    d=steps(), graph=st.sampled_from(["absorb", "uniform"]), dt=st.sampled_from([0.0, 0.01, 1.0])
)
def test_sedd_euler_equals_reference(d, graph, dt):
    dsigma = _per_row(d, [0.0, 1e-9, 0.5, 2.0, 40.0])
    want, got = _both(
        fastdiff.sedd_euler_step,
        d["scores"],
        d["x"],
        dsigma=dsigma,
        dt=dt,
        graph=graph,
        mask_id=d["mask_id"],
        **_common(d),
    )
    _assert_tokens_equal(want, got)


@PROPS
@given(d=steps(), graph=st.sampled_from(["absorb", "uniform"]))
def test_sedd_analytic_equals_reference(d, graph):
    sigma_next = _per_row(d, [0.0, 1e-9, 0.5, 3.0])
    sigma = sigma_next + _per_row(d, LEVELS)
    want, got = _both(
        fastdiff.sedd_analytic_step,
        d["scores"],
        d["x"],
        sigma=sigma,
        sigma_next=sigma_next,
        graph=graph,
        mask_id=d["mask_id"],
        **_common(d),
    )
    _assert_tokens_equal(want, got)


@PROPS
@given(d=steps(), graph=st.sampled_from(["absorb", "uniform"]))
def test_sedd_denoise_equals_reference(d, graph):
    want, got = _both(
        fastdiff.sedd_denoise_step,
        d["scores"],
        d["x"],
        sigma=_per_row(d, LEVELS),
        graph=graph,
        mask_id=d["mask_id"],
        **_common(d),
    )
    _assert_tokens_equal(want, got)


@PROPS
@given(d=steps())
def test_mdlm_equals_reference(d):
    sigma_next = _per_row(d, [0.0, 1e-300, 1e-9, 0.5, 3.0])
    sigma = sigma_next + _per_row(d, [1e-300, 1e-9, 0.05, 2.0, 800.0, INF])
    sigma = torch.where(sigma > sigma_next, sigma, INF)  # 1e-300 vanishes next to 0.5
    want, got = _both(
        fastdiff.mdlm_step,
        d["scores"],
        d["x"],
        sigma=sigma,
        sigma_next=sigma_next,
        mask_id=d["mask_id"],
        **_common(d),
    )
    _assert_tokens_equal(want, got)


@PROPS
@given(
    d=steps(),
    temperature=st.sampled_from([0.0, 0.0, 1e-3, 0.7, 1.0, 3.0]),
    confidence=st.sampled_from(["prob", "margin", "entropy"]),
)
def test_unmask_candidates_equal_reference(d, temperature, confidence):
    (want, want_conf), (got, got_conf) = _both(
        fastdiff.unmask_candidates,
        d["scores"],
        d["x"],
        mask_id=d["mask_id"],
        temperature=temperature,
        confidence=confidence,
        **_common(d),
    )
    _assert_tokens_equal(want, got)
    assert got_conf.dtype == torch.float32
    inactive = torch.isneginf(want_conf)
    assert torch.equal(inactive, torch.isneginf(got_conf))
    # float32 rounding of the value, plus the float64 error of log sum_j exp(l_j - max) summed
    # in another order (<= V eps64 absolute in every log p_j, so in each confidence kind)
    vocab = d["scores"].shape[-1]
    tol = 2 * torch.finfo(torch.float32).eps * want_conf.abs() + 2 * vocab * 2.0**-52
    assert bool(((want_conf - got_conf).abs() <= tol)[~inactive].all())


def test_confidence_unmask_step_equals_reference():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 40, 300, generator=gen) * 3
    x = torch.randint(0, 299, (3, 40), generator=gen)
    x[:, ::3] = 299
    want, got = _both(fastdiff.confidence_unmask_step, logits, x, mask_id=299, k=5, seed=7)
    assert torch.equal(want, got) and bool((want != x).any())


# ------------------------------------------------------------------------- hand-derived cases


def test_absorbing_steps_by_hand():
    """V = 3, mask 2: rate 0 keeps the mask, D = inf and the denoiser always unmask, and a
    column of -inf score is never drawn."""
    s = torch.tensor([[0.0, -INF, 0.0]] * 64)
    x = torch.full((64,), 2)
    with fastdiff.use_backend("native"):
        kept = fastdiff.sedd_euler_step(s, x, dsigma=0.0, dt=0.1, graph="absorb", mask_id=2, seed=1)
        moved = fastdiff.sedd_analytic_step(
            s, x, sigma=INF, sigma_next=1.0, graph="absorb", mask_id=2, seed=1
        )
        denoised = fastdiff.sedd_denoise_step(s, x, sigma=0.1, graph="absorb", mask_id=2, seed=1)
        last = fastdiff.mdlm_step(s, x, sigma=1.0, sigma_next=0.0, mask_id=2, seed=1)
    assert torch.equal(kept, x)
    for out in (moved, denoised, last):
        assert torch.equal(out, torch.zeros_like(x))


def test_euler_stay_weight_by_hand():
    """rate sum S >= 1 leaves no stay weight: every masked row moves, unmasked rows stay."""
    s = torch.log(torch.tensor([[0.5, 0.25, 0.25, 7.0]] * 50))
    x = torch.tensor([3, 1] * 25)
    with fastdiff.use_backend("native"):
        out = fastdiff.sedd_euler_step(s, x, dsigma=1.0, dt=1.0, graph="absorb", mask_id=3, seed=4)
    assert bool((out[::2] != 3).all()) and torch.equal(out[1::2], x[1::2])


def test_uniform_analytic_zero_step_keeps_tokens():
    """D = 0 on the uniform graph: T(x, 0) is the identity, so every token stays."""
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(30, 300, generator=gen)
    x = torch.randint(0, 300, (30,), generator=gen)
    with fastdiff.use_backend("native"):
        out = fastdiff.sedd_analytic_step(s, x, sigma=0.5, sigma_next=0.5, graph="uniform", seed=2)
    assert torch.equal(out, x)


def test_unmask_confidences_by_hand():
    """p = softmax([0, log 3], mask excluded) = (1/4, 3/4): argmax 1, p(xhat) = 3/4, margin
    1/2, negative entropy 1/4 log 1/4 + 3/4 log 3/4; unmasked rows get x and -inf."""
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([2, 0])
    expected = {
        "prob": 0.75,
        "margin": 0.5,
        "entropy": 0.25 * math.log(0.25) + 0.75 * math.log(0.75),
    }
    for confidence, value in expected.items():
        with fastdiff.use_backend("native"):
            xhat, conf = fastdiff.unmask_candidates(logits, x, mask_id=2, confidence=confidence)
        assert xhat.tolist() == [1, 0]
        assert conf[0].item() == pytest.approx(value, rel=1e-6)
        assert conf[1].item() == -INF


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda s, x: fastdiff.sedd_euler_step(
                s, x, dsigma=-1.0, dt=0.1, graph="absorb", mask_id=3
            ),
            ValueError,
        ),
        (
            lambda s, x: fastdiff.sedd_analytic_step(
                s, x, sigma=0.1, sigma_next=0.5, graph="absorb", mask_id=3
            ),
            ValueError,
        ),
        (
            lambda s, x: fastdiff.sedd_denoise_step(s, x, sigma=0.1, graph="absorb", mask_id=4),
            ValueError,
        ),
        (lambda s, x: fastdiff.mdlm_step(s, x, sigma=0.5, sigma_next=0.5, mask_id=3), ValueError),
        (
            lambda s, x: fastdiff.mdlm_step(s * torch.nan, x, sigma=1.0, sigma_next=0.5, mask_id=3),
            ValueError,
        ),
        (lambda s, x: fastdiff.unmask_candidates(s, x, mask_id=3, confidence="max"), ValueError),
        (lambda s, x: fastdiff.unmask_candidates(s, x[:2], mask_id=3), ValueError),
        (
            lambda s, x: fastdiff.sedd_euler_step(
                s, x, dsigma=1.0, dt=0.1, graph="absorb", mask_id=3, offset=-1
            ),
            ValueError,
        ),
    ],
)
def test_bad_input_raises_under_native(call, error):
    s = torch.zeros(5, 4)
    x = torch.tensor([3, 0, 1, 3, 2])
    with fastdiff.use_backend("native"), pytest.raises(error):
        call(s, x)


def test_masked_row_without_token_raises_under_native():
    s = torch.tensor([[-INF, -INF, 0.0]])
    with fastdiff.use_backend("native"), pytest.raises(ValueError, match="all -inf"):
        fastdiff.mdlm_step(s, torch.tensor([2]), sigma=1.0, sigma_next=0.5, mask_id=2)


def test_ops_reject_out_of_range_indices():
    """The C++ ops check what they index with (the public functions check earlier)."""
    ops = torch.ops.fastdiff_native
    s, rate = torch.zeros(2, 4), torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="mask_id"):
        ops.sedd_euler(s, torch.tensor([0, 1]), rate, None, 0, 0, False, 4)
    with pytest.raises(RuntimeError, match="outside"):
        ops.sedd_analytic(s, torch.tensor([0, 4]), rate, None, 0, 0, True, -1)
    with pytest.raises(RuntimeError, match="mask_id"):
        ops.unmask_candidates(s, torch.tensor([0, 1]), None, 0, 0, -1, 0.0, 0)


def test_tokens_do_not_depend_on_the_thread_count():
    """Rows are keyed by their global index: any split of the rows over threads draws alike."""
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(3000, 300, generator=gen)
    x = torch.randint(0, 300, (3000,), generator=gen)
    x[::2] = 299
    threads = torch.get_num_threads()
    out = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with fastdiff.use_backend("native"):
                out.append(fastdiff.mdlm_step(s, x, sigma=2.0, sigma_next=1.0, mask_id=299, seed=3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1])


def test_argmax_proposal_takes_the_first_maximum():
    """Temperature 0 with tied logits: the lowest column, as torch.argmax; the mask column never
    proposes even when its logit is the largest."""
    logits = torch.zeros(3, 40)
    logits[:, 3] = 9.0  # the mask
    logits[0, [1, 2, 30]] = 2.0
    logits[1, [0, 1, 39]] = 3.0
    logits[2, [13, 14, 15, 22]] = 1.0
    x = torch.tensor([3, 3, 3])
    with fastdiff.use_backend("native"):
        xhat, _ = fastdiff.unmask_candidates(logits, x, mask_id=3)
    assert xhat.tolist() == [1, 0, 13]
