"""Reliability battery of the ops (issue 18): no silent wrong result, one clear error per bad
input, and the same answer on every backend.

Each case runs on the reference and on the Triton backend (through the interpreter without a
GPU) and must give the same exception type and message on both, or the same corrected value.
The CLI's faults are tested in ``tests/test_cli_faults.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiff
from fastdiff.schedules import Geometric

BACKENDS = ("reference", "triton")
G = torch.Generator().manual_seed(18)
V, M = 6, 5  # vocabulary with the mask token last
F32 = torch.float32


def _randn(*shape, dtype=F32):
    return torch.randn(*shape, generator=G, dtype=dtype)


def _masked(batch=2, length=3):
    return torch.full((batch, length), M)


def _error_on_each_backend(fn) -> dict[str, tuple[type, str]]:
    out = {}
    for name in BACKENDS:
        with fastdiff.use_backend(name), pytest.raises((ValueError, TypeError)) as err:
            fn()
        out[name] = (err.type, str(err.value))
    return out


def _assert_same_error(fn, error: type, match: str) -> None:
    """``fn`` raises ``error`` matching ``match`` on both backends, with the same message."""
    got = _error_on_each_backend(fn)
    assert got["reference"] == got["triton"], got
    kind, message = got["reference"]
    assert issubclass(kind, error), got
    assert match in message, message


# --------------------------------------------------------------------------------------------
# silent wrong results that are now errors
# --------------------------------------------------------------------------------------------

_H, _P = _randn(2, 3, 4), _randn(V, 4)
_X0 = torch.randint(0, M, (2, 3), generator=G)


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = math.nan
    return t


LINEAR = {
    "linear_score_entropy NaN hidden": (
        lambda: fastdiff.linear_score_entropy(
            _nan(_H), _P, _masked(), _X0, sigma=1.0, graph="absorb", mask_id=M
        ),
        "hidden contains NaN",
    ),
    "linear_score_entropy NaN projection": (
        lambda: fastdiff.linear_score_entropy(
            _H, _nan(_P), _masked(), _X0, sigma=1.0, graph="absorb", mask_id=M
        ),
        "projection contains NaN",
    ),
    "linear_masked_diffusion_loss NaN hidden": (
        lambda: fastdiff.linear_masked_diffusion_loss(_nan(_H), _P, _masked(), _X0, mask_id=M),
        "hidden contains NaN",
    ),
    "linear_masked_diffusion_loss NaN bias": (
        lambda: fastdiff.linear_masked_diffusion_loss(
            _H, _P, _masked(), _X0, mask_id=M, bias=_nan(torch.zeros(V))
        ),
        "bias contains NaN",
    ),
}


@pytest.mark.parametrize("case", sorted(LINEAR))
def test_fused_linear_losses_reject_nan_inputs(case):
    fn, match = LINEAR[case]
    _assert_same_error(fn, ValueError, match)


def _all_neg_inf_row() -> torch.Tensor:
    logits = _randn(2, 3, V)
    logits[1, 2, :M] = -math.inf  # a masked row with no possible token
    return logits


def test_masked_diffusion_loss_rejects_a_masked_row_without_a_token():
    """It returned NaN where mdlm_step raises; an ignored row is not scored and passes."""
    logits = _all_neg_inf_row()
    _assert_same_error(
        lambda: fastdiff.masked_diffusion_loss(logits, _masked(), _X0, mask_id=M),
        ValueError,
        "all -inf",
    )
    ignore = torch.zeros(2, 3, dtype=torch.bool)
    ignore[1, 2] = True
    for name in BACKENDS:
        with fastdiff.use_backend(name):
            loss = fastdiff.masked_diffusion_loss(logits, _masked(), _X0, mask_id=M, ignore=ignore)
        assert torch.isfinite(loss)


def test_sedd_denoise_step_rejects_a_masked_row_without_a_token():
    """Its docstring promises no masked position is left; such a row stayed masked."""
    _assert_same_error(
        lambda: fastdiff.sedd_denoise_step(
            _all_neg_inf_row(), _masked(), sigma=1e-3, graph="absorb", mask_id=M, seed=0
        ),
        ValueError,
        "all -inf",
    )


@pytest.mark.parametrize("name", ["dsigma", "dt"])
def test_sedd_euler_step_rejects_infinite_rates(name):
    kw = {"dsigma": 1.0, "dt": 0.1, name: math.inf}
    _assert_same_error(
        lambda: fastdiff.sedd_euler_step(
            _randn(2, 3, V), _masked(), graph="absorb", mask_id=M, seed=0, **kw
        ),
        ValueError,
        f"{name} must be finite",
    )


def test_sedd_analytic_step_rejects_an_infinite_target():
    _assert_same_error(
        lambda: fastdiff.sedd_analytic_step(
            _randn(2, 3, V),
            _masked(),
            sigma=math.inf,
            sigma_next=math.inf,
            graph="absorb",
            mask_id=M,
            seed=0,
        ),
        ValueError,
        "sigma_next must be finite",
    )


@pytest.mark.parametrize(
    "temperature,logit,match",
    [(1e-300, 1.0, "temperature must be 0"), (1e-37, 1e3, "too small")],
    ids=["below-1/FLT_MAX", "overflows-for-these-logits"],
)
def test_sample_categorical_rejects_temperatures_that_overflow_float32(temperature, logit, match):
    """fp32 logits / temperature overflowed in the kernel (different tokens than the
    reference); float64 logits run the float64 reference on every backend and still work."""
    logits = torch.tensor([[0.0, logit, -logit]]).expand(4, -1)
    _assert_same_error(
        lambda: fastdiff.sample_categorical(logits=logits, temperature=temperature, seed=0),
        ValueError,
        match,
    )
    draws = {}
    for name in BACKENDS:
        with fastdiff.use_backend(name):
            draws[name] = fastdiff.sample_categorical(
                logits=logits.double(), temperature=temperature, seed=0
            )
    assert torch.equal(draws["reference"], draws["triton"])
    assert bool((draws["reference"] == 1).all())  # the argmax, as temperature -> 0


_W_CASES = {
    "score_entropy": lambda w: fastdiff.score_entropy(
        _randn(2, 3, V), _masked(), _X0, sigma=1.0, graph="absorb", mask_id=M, weight=w
    ),
    "masked_diffusion_loss": lambda w: fastdiff.masked_diffusion_loss(
        _randn(2, 3, V), _masked(), _X0, mask_id=M, weight=w
    ),
    "gaussian_loss": lambda w: fastdiff.gaussian_loss(_randn(2, 3, 4), _randn(2, 3, 4), weight=w),
    "linear_score_entropy": lambda w: fastdiff.linear_score_entropy(
        _H, _P, _masked(), _X0, sigma=1.0, graph="absorb", mask_id=M, weight=w
    ),
}


@pytest.mark.parametrize("op", sorted(_W_CASES))
@pytest.mark.parametrize(
    "weight,match",
    [
        (math.inf, "weight must be finite"),
        (-1.0, "weight must be >= 0"),
        (torch.tensor([1.0, -0.5]), "weight must be >= 0"),
    ],
    ids=["inf", "negative", "negative-entry"],
)
def test_loss_weights_must_be_finite_and_nonnegative(op, weight, match):
    """``weight=inf`` gave inf / NaN losses and ``weight=-1`` a negative loss, silently."""
    _assert_same_error(lambda: _W_CASES[op](weight), ValueError, match)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"threshold": math.nan}, ValueError, "threshold must be a number, got NaN"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a number, got str"),
        ({"factor": math.nan}, ValueError, "factor must be a number, got NaN"),
        ({"factor": "1"}, TypeError, "factor must be a number, got str"),
    ],
)
def test_select_commits_rejects_bad_rules(kwargs, error, match):
    conf = torch.rand(2, 4, generator=G)
    with pytest.raises(error, match=match):
        fastdiff.select_commits(conf, **kwargs)


# --------------------------------------------------------------------------------------------
# offsets, meta tensors, denoiser outputs
# --------------------------------------------------------------------------------------------


def _random_ops():
    logits, x = _randn(2, 3, V), _masked()
    state = _randn(2, 3, 4)
    q = torch.full((V, V), 1.0 / V, dtype=torch.float64)
    return {
        "add_noise": lambda o: fastdiff.add_noise(
            _X0, sigma=1.0, graph="absorb", vocab_size=V, mask_id=M, seed=0, offset=o
        ),
        "add_noise_dense": lambda o: fastdiff.add_noise_dense(_X0, q, seed=0, offset=o),
        "add_noise_gaussian": lambda o: fastdiff.add_noise_gaussian(
            state, alpha_bar=0.5, seed=0, offset=o
        ),
        "sample_categorical": lambda o: fastdiff.sample_categorical(
            logits=logits, seed=0, offset=o
        ),
        "sedd_euler_step": lambda o: fastdiff.sedd_euler_step(
            logits, x, dsigma=1.0, dt=0.1, graph="absorb", mask_id=M, seed=0, offset=o
        ),
        "sedd_analytic_step": lambda o: fastdiff.sedd_analytic_step(
            logits, x, sigma=1.0, sigma_next=0.5, graph="absorb", mask_id=M, seed=0, offset=o
        ),
        "sedd_denoise_step": lambda o: fastdiff.sedd_denoise_step(
            logits, x, sigma=1e-3, graph="absorb", mask_id=M, seed=0, offset=o
        ),
        "mdlm_step": lambda o: fastdiff.mdlm_step(
            logits, x, sigma=1.0, sigma_next=0.5, mask_id=M, seed=0, offset=o
        ),
        "unmask_candidates": lambda o: fastdiff.unmask_candidates(
            logits, x, mask_id=M, seed=0, offset=o
        ),
        "confidence_unmask_step": lambda o: fastdiff.confidence_unmask_step(
            logits, x, mask_id=M, k=1, seed=0, offset=o
        ),
        "d3pm_step": lambda o: fastdiff.d3pm_step(
            logits, _X0, q_step=q, qbar_next=q, seed=0, offset=o
        ),
        "ddpm_step": lambda o: fastdiff.ddpm_step(
            state, state, alpha_bar=0.5, alpha_bar_next=0.6, seed=0, offset=o
        ),
        "ddim_step": lambda o: fastdiff.ddim_step(
            state, state, alpha_bar=0.5, alpha_bar_next=0.6, eta=1.0, seed=0, offset=o
        ),
    }


RANDOM_OPS = _random_ops()


@pytest.mark.parametrize("op", sorted(RANDOM_OPS))
@pytest.mark.parametrize(
    "offset,error,match",
    [
        (-1, ValueError, "offset must lie in [0, 2^63), got -1"),
        (2**63, ValueError, "offset must lie in [0, 2^63)"),
        (2**64, ValueError, "offset must lie in [0, 2^63)"),
        (2**70, ValueError, "offset must lie in [0, 2^63)"),
        (1.5, TypeError, "offset must be an int, got float"),
        (True, TypeError, "offset must be an int, got bool"),
    ],
    ids=["negative", "2^63", "2^64", "2^70", "float", "bool"],
)
def test_offsets_outside_the_counter_are_rejected(op, offset, error, match):
    """The reference wrapped them silently; the kernels' custom ops take an int64 (2^64 was a
    raw RuntimeError on the Triton backend)."""
    _assert_same_error(lambda: RANDOM_OPS[op](offset), error, match)


@pytest.mark.parametrize("op", sorted(RANDOM_OPS))
def test_the_largest_offset_works_and_backends_agree(op):
    """The largest valid offset (both 32-bit words in use) draws the same on both backends."""
    out = {}
    for name in BACKENDS:
        with fastdiff.use_backend(name):
            result = RANDOM_OPS[op](2**63 - 1)
        out[name] = result.x_t if hasattr(result, "x_t") else result
    torch.testing.assert_close(out["triton"], out["reference"], rtol=1e-5, atol=1e-5)


def _meta_ops():
    meta = torch.device("meta")
    logits = torch.empty(2, 3, V, device=meta)
    x = torch.full((2, 3), M, device=meta)
    return {
        "add_noise": lambda: fastdiff.add_noise(
            x, sigma=1.0, graph="absorb", vocab_size=V, mask_id=M, seed=0
        ),
        "score_entropy": lambda: fastdiff.score_entropy(logits, x, x, sigma=1.0, graph="uniform"),
        "masked_diffusion_loss": lambda: fastdiff.masked_diffusion_loss(logits, x, x, mask_id=M),
        "sample_categorical": lambda: fastdiff.sample_categorical(logits=logits, seed=0),
        "mdlm_step": lambda: fastdiff.mdlm_step(
            logits, x, sigma=1.0, sigma_next=0.5, mask_id=M, seed=0
        ),
        "select_commits": lambda: fastdiff.select_commits(torch.empty(2, 3, device=meta), k=1),
        "unmask_quota": lambda: fastdiff.unmask_quota(x, mask_id=M, steps=2),
        "ddpm_step": lambda: fastdiff.ddpm_step(
            torch.empty(2, 4, device=meta),
            torch.empty(2, 4, device=meta),
            alpha_bar=0.5,
            alpha_bar_next=0.6,
            seed=0,
        ),
        "round_to_embedding": lambda: fastdiff.round_to_embedding(
            torch.empty(2, 4, device=meta), torch.empty(V, 4, device=meta)
        ),
    }


@pytest.mark.parametrize("op", sorted(_meta_ops()))
def test_meta_tensors_get_a_clear_error(op):
    """All-meta inputs crashed inside the value checks ("Tensor.item() cannot be called on
    meta tensors") or wherever a value was first read."""
    _assert_same_error(_meta_ops()[op], ValueError, "meta device")


def test_a_denoiser_returning_integers_is_rejected():
    def int_denoiser(x_t, sigma):
        return torch.zeros(*x_t.shape, V, dtype=torch.int64)

    for loop in ("python", "cpp"):
        if loop == "cpp" and fastdiff.samplers.loop._extension.load() is None:
            continue
        with pytest.raises(TypeError, match="denoiser must return a floating tensor"):
            fastdiff.sample(
                int_denoiser,
                (2, 4),
                method="mdlm",
                steps=2,
                vocab_size=V,
                mask_id=M,
                seed=0,
                loop=loop,
            )


# --------------------------------------------------------------------------------------------
# corrected values: the analytic steps in a form that cannot overflow
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("vocab", [V, 300])
def test_analytic_step_beyond_exp_overflow_is_the_limit(graph, vocab):
    """sigma - sigma_next above 709.8 overflowed expm1: the reference set every masked position
    to token 0 and the kernel drew others. In log space the draw does not depend on D once
    the stay weight is 0 (the race ignores a per-row factor): sigma = 800 and sigma = inf give
    the draws of sigma = 60 exactly, on both backends, and no masked row stays masked."""
    mask = vocab - 1 if graph == "absorb" else None
    scores = _randn(16, vocab)
    x = (
        torch.full((16,), vocab - 1)
        if graph == "absorb"
        else torch.randint(0, vocab, (16,), generator=G)
    )
    draws = {}
    for sigma in (60.0, 800.0, math.inf):
        for name in BACKENDS:
            with fastdiff.use_backend(name):
                draws[sigma, name] = fastdiff.sedd_analytic_step(
                    scores, x, sigma=sigma, sigma_next=0.5, graph=graph, mask_id=mask, seed=7
                )
    want = draws[60.0, "reference"]
    for key, got in draws.items():
        assert torch.equal(got, want), key
    if graph == "absorb":
        assert not bool((want == mask).any())
        assert len(want.unique()) > 3  # not every position set to one token


def test_sample_sedd_analytic_with_a_huge_geometric_schedule():
    """The issue's case: ``Geometric(1e-4, 800)`` makes the first step's D about 800."""
    scores = _randn(1, 1, V)

    def denoiser(x_t, sigma):
        return scores.expand(*x_t.shape, V)

    out = {}
    for name in BACKENDS:
        with fastdiff.use_backend(name):
            out[name] = fastdiff.sample(
                denoiser,
                (3, 8),
                method="sedd_analytic",
                steps=4,
                vocab_size=V,
                mask_id=M,
                schedule=Geometric(1e-4, 800.0),
                seed=5,
                loop="python",
            )
    assert torch.equal(out["reference"], out["triton"])
    assert not bool((out["reference"] == M).any())
    assert len(out["reference"].unique()) > 1
