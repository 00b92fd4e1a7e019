"""Samplers and ``fastdiff.samplers.sample``: every method end to end with analytic denoisers.

The discrete data distribution is a product over positions: position ``l`` holds token ``j``
with probability ``pi[l, j]`` (the mask token, at index 3 of 8, never). For such data the exact
denoisers are known in closed form (below), and with them SEDD (absorbing: Euler and analytic;
uniform: analytic), MDLM and D3PM sample ``pi`` exactly, whatever the number of steps. The
statistical tests draw ``B`` sequences, sum Pearson's chi-square over positions and compare it
with the ``z = 5`` (one-sided p ~ 3e-7) Wilson-Hilferty quantile: a correct sampler fails with
probability < 1e-6, and a sampler off by a few percent of probability fails for sure. The
Gaussian data are ``N(mu, s^2)`` per feature, with the exact ``E[eps | x_t]``; the sample mean
must lie within 5 standard errors, the standard deviation within 8%.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import samplers
from fastdiff.samplers import (
    ConfidenceScheduler,
    D3PMScheduler,
    DDIMScheduler,
    DDPMScheduler,
    MDLMScheduler,
    SEDDAnalyticScheduler,
    SEDDEulerScheduler,
    infill_mask,
    prefix_mask,
    sample,
)
from fastdiff.schedules import GaussianSchedule
from fastdiff.transitions import TransitionSchedule

V, M, L = 8, 3, 4
NEG = -math.inf


def _pi(with_mask: bool) -> torch.Tensor:
    """``[L, V]`` float64 target probabilities ``∝ exp(a_l z_j)``, sharper at later positions
    (``p`` from 0.002 to 0.56); 0 at the mask token when ``with_mask``."""
    z = torch.linspace(-2.0, 2.0, V, dtype=torch.float64)[torch.tensor([5, 0, 7, 2, 3, 6, 1, 4])]
    a = torch.linspace(0.6, 1.4, L, dtype=torch.float64)[:, None]
    w = torch.exp(a * (z if with_mask else z.flip(0))[None, :])
    if with_mask:
        w[:, M] = 0.0
    return w / w.sum(-1, keepdim=True)


PI_MASK = _pi(True)
PI_UNIFORM = _pi(False)


def logits_denoiser(pi: torch.Tensor = PI_MASK, calls: list | None = None):
    """MDLM / confidence / D3PM: time-independent logits ``log pi`` (exact for product data:
    for D3PM, ``q(x0 | x_t) / Qbar_t[x0, x_t]`` is proportional to the prior ``pi``)."""

    def den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(x.shape[0])
        return torch.log(pi)[: x.shape[1]].expand(*x.shape, V).float()

    return den


def sedd_absorb_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact absorbing log-score of a masked position: ``log pi_j - log expm1(sigma)``."""
    s = torch.log(PI_MASK)[None] - torch.log(torch.expm1(sigma.double()))[:, None, None]
    return s.masked_fill(torch.isinf(s), 0.0).float()


def sedd_uniform_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact uniform-graph log-score ``log p_t(j) - log p_t(x)``,
    ``p_t = e^-sigma pi + (1 - e^-sigma) / V``."""
    a = torch.exp(-sigma.double())[:, None, None]
    log_pt = torch.log(a * PI_UNIFORM[None] + (1.0 - a) / V)  # [B, L, V]
    return (log_pt - log_pt.gather(-1, x[..., None])).float()


def chi2_bound(df: int, z: float = 5.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at the normal quantile ``z``."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def assert_distribution(tokens: torch.Tensor, pi: torch.Tensor) -> None:
    """Pearson chi-square summed over positions, categories with ``pi > 0`` only."""
    n = tokens.shape[0]
    stat, df = 0.0, 0
    for pos in range(tokens.shape[1]):
        support = pi[pos] > 0
        counts = torch.bincount(tokens[:, pos], minlength=V).double()
        assert counts[~support].sum() == 0, "a token with probability 0 was drawn"
        expected = n * pi[pos][support]
        stat += float(((counts[support] - expected) ** 2 / expected).sum())
        df += int(support.sum()) - 1
    assert stat < chi2_bound(df), f"chi-square {stat:.1f} over {df} df"


B_STAT = 3000


@pytest.mark.parametrize(
    ("method", "graph", "den", "pi", "steps"),
    [
        ("sedd_euler", "absorb", sedd_absorb_denoiser, PI_MASK, 8),
        ("sedd_analytic", "absorb", sedd_absorb_denoiser, PI_MASK, 8),
        ("sedd_analytic", "uniform", sedd_uniform_denoiser, PI_UNIFORM, 16),
        ("mdlm", "absorb", logits_denoiser(), PI_MASK, 8),
    ],
)
def test_discrete_methods_sample_the_target(method, graph, den, pi, steps):
    out = sample(
        den,
        (B_STAT, L),
        method=method,
        steps=steps,
        vocab_size=V,
        mask_id=M,
        graph=graph,
        seed=11,
        loop="python",
    )
    assert out.shape == (B_STAT, L) and out.dtype == torch.int64
    assert_distribution(out, pi)


@pytest.mark.parametrize(("kind", "steps"), [("uniform", 12), ("uniform", 5), ("absorbing", 7)])
def test_d3pm_samples_the_target(kind, steps):
    mask = M if kind == "absorbing" else None
    tables = TransitionSchedule.from_betas(torch.linspace(0.05, 0.6, 12), kind, V, mask_id=mask)
    pi = PI_MASK if kind == "absorbing" else PI_UNIFORM
    out = sample(
        logits_denoiser(pi),
        (B_STAT, L),
        method="d3pm",
        steps=steps,
        schedule=tables,
        mask_id=mask,
        seed=5,
        loop="python",
    )
    assert_distribution(out, pi)


@pytest.mark.parametrize(
    ("method", "den"),
    [("sedd_analytic", sedd_absorb_denoiser), ("mdlm", logits_denoiser())],
)
def test_unmasking_follows_the_schedule(method, den):
    """With the exact model both samplers are exact: after step ``i`` a position is still
    masked with probability ``1 - e^-sigma(t_{i+1}) = (1 - 1e-3) t_{i+1}`` (log-linear), with
    ``t`` the sampler's grid (SEDD: ``linspace(1, 1e-5, steps + 1)``; MDLM: to 0). Each
    fraction must lie within 5 binomial standard errors."""
    steps, n = 6, B_STAT * L
    res = sample(
        den,
        (B_STAT, L),
        method=method,
        steps=steps,
        vocab_size=V,
        mask_id=M,
        seed=13,
        loop="python",
        return_trajectory=True,
    )
    end = 1e-5 if method == "sedd_analytic" else 0.0
    t = torch.linspace(1.0, end, steps + 1, dtype=torch.float64)[1:]
    for i, x in enumerate(res.trajectory[:steps]):
        p = float((1 - 1e-3) * t[i])
        frac = float((x == M).double().mean())
        assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (i, frac, p)


def test_timesteps_are_the_documented_grids():
    sched = SEDDEulerScheduler(V, mask_id=M)
    sched.set_timesteps(4)
    t = torch.linspace(1.0, 1e-5, 5, dtype=torch.float64)
    torch.testing.assert_close(sched.timesteps, (-torch.log1p(-(1 - 1e-3) * t)).float())
    mdlm = MDLMScheduler(V, mask_id=M)
    mdlm.set_timesteps(4)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(mdlm.timesteps, (-torch.log1p(-(1 - 1e-3) * t)).float())
    d3pm = D3PMScheduler(TransitionSchedule.from_betas([0.1] * 10, "uniform", V))
    d3pm.set_timesteps(4)
    assert d3pm.timesteps.tolist() == [10.0, 8.0, 5.0, 2.0]  # round(linspace(10, 0, 5))
    tables = d3pm.transitions
    torch.testing.assert_close(
        d3pm._q[1], tables.q_steps[5] @ tables.q_steps[6] @ tables.q_steps[7]
    )
    ddim = DDIMScheduler(schedule=GaussianSchedule.linear(10), convention="fastdiff")
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [9.0, 6.0, 3.0, 0.0]


def test_sedd_euler_uniform_is_close():
    """Euler on the uniform graph is first order: with 48 steps every position's total
    variation from ``pi`` stays below 0.1 (sampling noise alone: ~0.03)."""
    out = sample(
        sedd_uniform_denoiser,
        (1000, L),
        method="sedd_euler",
        steps=48,
        vocab_size=V,
        graph="uniform",
        seed=2,
        loop="python",
    )
    freq = torch.stack([torch.bincount(out[:, p], minlength=V) for p in range(L)]).double()
    tv = 0.5 * (freq / 1000 - PI_UNIFORM).abs().sum(-1)
    assert float(tv.max()) < 0.1, tv


def test_confidence_argmax_commits_the_mode():
    """Temperature 0: every position ends at ``argmax pi`` whatever the rule."""
    mode = PI_MASK.argmax(-1)
    for opts in ({}, {"threshold": 0.9}, {"factor": 1.0}, {"block_length": 2}):
        out = sample(
            logits_denoiser(),
            (3, L),
            method="confidence",
            steps=4,
            vocab_size=V,
            mask_id=M,
            seed=0,
            loop="python",
            **opts,
        )
        assert torch.equal(out, mode.expand(3, L)), opts


def test_confidence_quota_and_blocks_commit_in_order():
    """Quota k = ceil(R / steps left) (LLaDA: 5 masked over 2 steps -> 3 then 2); with blocks
    of 2 the left block fills first. Checked through the trajectory."""
    logits = torch.zeros(L + 1, V)
    logits[:, 0] = torch.arange(L + 1, dtype=torch.float32)  # later positions more confident

    def den(x, sigma):
        return logits.expand(x.shape[0], L + 1, V)

    res = sample(
        den,
        (1, L + 1),
        method="confidence",
        steps=2,
        vocab_size=V,
        mask_id=M,
        seed=0,
        loop="python",
        return_trajectory=True,
    )
    masked = [int((t == M).sum()) for t in res.trajectory]
    assert masked == [2, 0]
    assert torch.equal(res.trajectory[0][0] == M, torch.tensor([True, True, False, False, False]))
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        sample(
            den,
            (1, L + 1),
            method="confidence",
            steps=4,
            vocab_size=V,
            mask_id=M,
            block_length=2,
            seed=0,
            loop="python",
        )
    res = sample(
        den,
        (1, L + 1),
        method="confidence",
        steps=6,
        vocab_size=V,
        mask_id=M,
        block_length=2,
        seed=0,
        loop="python",
        return_trajectory=True,
    )
    first_unmasked = [int((t[0] != M).nonzero().min()) for t in res.trajectory]
    assert first_unmasked[0] == 1 and first_unmasked[1] == 0  # block 0: confident pos 1 first
    assert [int((t != M).sum()) for t in res.trajectory] == [1, 2, 3, 4, 5]  # then exits


def test_confidence_threshold_finishes_within_steps():
    den = logits_denoiser(torch.full((L, V), 1.0 / (V - 1)).index_fill(1, torch.tensor([M]), 0))
    res = sample(
        den,
        (2, L),
        method="confidence",
        steps=2,
        vocab_size=V,
        mask_id=M,
        threshold=0.99,
        temperature=1.0,
        seed=3,
        loop="python",
        return_trajectory=True,
    )
    assert not bool((res.tokens == M).any())  # the last step commits every position left
    assert res.steps_run == 2


def _gauss_denoiser(schedule: GaussianSchedule, mu: torch.Tensor, s: float):
    abar_table = schedule.alphas_cumprod

    def den(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar_table[t.long()].to(x.dtype)[:, None, None]
        v = a * s * s + 1.0 - a
        x0 = mu + a.sqrt() * s * s / v * (x - a.sqrt() * mu)
        return (x - a.sqrt() * x0) / (1.0 - a).sqrt()

    return den


@pytest.mark.parametrize(
    ("method", "steps", "opts"),
    [
        ("ddpm", 100, {"variance_type": "fixed_small"}),
        ("ddpm", 40, {}),
        ("ddim", 40, {}),
        ("ddim", 100, {"eta": 1.0}),
    ],
)
def test_gaussian_methods_sample_the_target(method, steps, opts):
    sched = GaussianSchedule.linear(100, 1e-4, 0.2)
    mu = torch.tensor([1.5, -2.0], dtype=torch.float64)
    s = 0.5
    b = 1000
    out = sample(
        _gauss_denoiser(sched, mu, s),
        (b, 2, 2),
        method=method,
        steps=steps,
        schedule=sched,
        seed=4,
        loop="python",
        **opts,
    ).double()
    assert out.dtype == torch.float64 and out.shape == (b, 2, 2)
    flat = out.reshape(-1, 2)
    se = s / math.sqrt(flat.shape[0])
    assert ((flat.mean(0) - mu).abs() < 5 * se).all(), flat.mean(0)
    assert ((flat.std(0) / s - 1.0).abs() < 0.08).all(), flat.std(0)


@pytest.fixture(autouse=True)
def _float64_default():
    """Gaussian states in float64 (the default dtype is the start state's dtype)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


DISCRETE = {
    "sedd_euler": dict(den=sedd_absorb_denoiser),
    "sedd_analytic": dict(den=sedd_absorb_denoiser),
    "mdlm": dict(den=logits_denoiser()),
    "confidence": dict(den=logits_denoiser(), temperature=1.0),
    "d3pm": dict(
        den=logits_denoiser(),
        schedule=TransitionSchedule.from_betas([0.3] * 6, "absorbing", V, mask_id=M),
    ),
}


def _run(method, shape, **kw):
    opts = dict(DISCRETE[method])
    den = opts.pop("den")
    if method != "d3pm":
        opts["vocab_size"] = V
    return sample(den, shape, method=method, steps=6, mask_id=M, loop="python", **opts, **kw)


@settings(max_examples=15)
@given(
    method=st.sampled_from(sorted(DISCRETE)),
    data=st.data(),
)
def test_infilling_never_changes_fixed_tokens(method, data):
    b, length = 3, L
    n = b * length
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    keep = keep.reshape(b, length)
    init = torch.tensor(data.draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n))).reshape(
        b, length
    )
    seed = data.draw(st.integers(0, 2**40))
    out = _run(method, (b, length), init=init, fixed=keep, seed=seed)
    assert torch.equal(out[keep], init[keep])
    assert not bool((out[~keep] == M).any())  # every generated position is unmasked


def test_init_without_fixed_keeps_non_mask_tokens_and_helpers():
    init = torch.full((2, 6), M)
    keep = infill_mask((2, 6), prefix=2, suffix=1, spans=[(3, 4)])
    assert keep[0].tolist() == [True, True, False, True, False, True]
    assert torch.equal(prefix_mask((2, 6), 2)[1], torch.tensor([True, True] + [False] * 4))
    init[keep] = 0  # token 0 has probability > 0 but is never the sampled filler here
    out = sample(
        logits_denoiser(_pi(True).repeat(2, 1)),
        (2, 6),
        method="mdlm",
        steps=5,
        vocab_size=V,
        mask_id=M,
        init=init,
        seed=1,
        loop="python",
    )
    assert torch.equal(out[keep], init[keep]) and not bool((out == M).any())


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_gaussian_infilling_keeps_fixed_state(method):
    sched = GaussianSchedule.linear(20, 1e-3, 0.3)
    init = torch.randn(2, 5, 3)
    keep = prefix_mask((2, 5), 2)
    out = sample(
        _gauss_denoiser(sched, torch.zeros(3), 1.0),
        (2, 5, 3),
        method=method,
        steps=10,
        schedule=sched,
        init=init,
        fixed=keep,
        seed=9,
        loop="python",
    )
    assert torch.equal(out[keep], init[keep])
    assert not torch.equal(out[~keep], init[~keep])


@pytest.mark.parametrize("method", ["mdlm", "confidence", "d3pm"])
def test_cache_same_tokens_fewer_calls(method):
    """Sequence ``k`` starts with ``k`` fixed tokens, so sequences finish at different steps;
    afterwards their cached outputs are reused."""
    plain, cached = [], []
    init = torch.full((4, L), M)
    keep = torch.arange(L)[None, :] < torch.arange(4)[:, None]
    init[keep] = 0
    opts = dict(DISCRETE[method])
    opts.pop("den")
    if method != "d3pm":
        opts["vocab_size"] = V
    kw = dict(
        method=method,
        steps=6 if method == "d3pm" else 24,
        mask_id=M,
        seed=7,
        loop="python",
        return_trajectory=True,
        init=init,
        fixed=keep,
        **opts,
    )
    a = sample(logits_denoiser(calls=plain), (4, L), cache=False, **kw)
    b = sample(logits_denoiser(calls=cached), (4, L), cache=True, **kw)
    assert torch.equal(a.tokens, b.tokens)
    assert a.denoiser_calls == len(plain) and b.denoiser_calls == len(cached)
    assert sum(cached) < sum(plain)  # fewer sequences went through the model


@pytest.mark.parametrize("method", ["sedd_analytic", "ddim"])
def test_cache_rejected_for_time_dependent_outputs(method):
    with pytest.raises(ValueError, match="cache=True"):
        sample(
            sedd_absorb_denoiser,
            (2, L),
            method=method,
            steps=2,
            vocab_size=V,
            mask_id=M,
            cache=True,
        )


def test_guidance():
    cond = logits_denoiser(PI_MASK)
    other = torch.roll(PI_MASK, 1, dims=1)
    other[:, M], other[:, (M + 1) % V] = 0.0, PI_MASK[:, M - 1]
    uncond_calls: list = []
    uncond = logits_denoiser(other / other.sum(-1, keepdim=True), calls=uncond_calls)
    kw = dict(method="mdlm", steps=6, vocab_size=V, mask_id=M, seed=21, loop="python")
    base = sample(cond, (64, L), **kw)
    # s = 1: no guidance, the unconditional model is never called
    assert torch.equal(sample(cond, (64, L), guidance_scale=1.0, uncond=uncond, **kw), base)
    assert uncond_calls == []
    # identical conditional and unconditional models: no change, for any s
    same = sample(cond, (64, L), guidance_scale=2.5, uncond=logits_denoiser(PI_MASK), **kw)
    assert torch.equal(same, base)
    # two calls == the logit combination u + s (c - u) done by hand
    w = 2.5
    guided = sample(cond, (64, L), guidance_scale=w, uncond=uncond, **kw)
    assert not torch.equal(guided, base)

    def by_hand(x, sigma):
        c, u = cond(x, sigma), uncond(x, sigma)
        return fastdiff.classifier_free_guidance(c, u, guidance_scale=w)

    assert torch.equal(sample(by_hand, (64, L), **kw), guided)

    # doubled batch with a condition flag == two calls
    def flagged(x, sigma, cond):
        return torch.where(
            cond[:, None, None],
            logits_denoiser(PI_MASK)(x, sigma),
            logits_denoiser(other / other.sum(-1, keepdim=True))(x, sigma),
        )

    assert torch.equal(sample(flagged, (64, L), guidance_scale=w, uncond="batch", **kw), guided)


def test_gaussian_guidance_identical_models_change_nothing():
    sched = GaussianSchedule.linear(20, 1e-3, 0.3)
    den = _gauss_denoiser(sched, torch.ones(2), 0.7)
    kw = dict(method="ddpm", steps=10, schedule=sched, seed=2, loop="python")
    base = sample(den, (3, 2, 2), **kw)
    assert torch.equal(sample(den, (3, 2, 2), guidance_scale=3.0, uncond=den, **kw), base)


def _manual(sched, den, x, seed, steps, fixed=None):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = den(x, t.expand(x.shape[0]))
        x = sched.step(out, t, x, seed=seed, fixed=fixed).prev_sample
    return x


SCHEDULERS = [
    ("sedd_euler", lambda: SEDDEulerScheduler(V, mask_id=M), sedd_absorb_denoiser, {}),
    (
        "sedd_analytic",
        lambda: SEDDAnalyticScheduler(V, graph="uniform"),
        sedd_uniform_denoiser,
        {"graph": "uniform"},
    ),
    ("mdlm", lambda: MDLMScheduler(V, mask_id=M), logits_denoiser(), {}),
    (
        "confidence",
        lambda: ConfidenceScheduler(V, mask_id=M, temperature=1.0, block_length=2),
        logits_denoiser(),
        {"temperature": 1.0, "block_length": 2},
    ),
    (
        "confidence",
        lambda: ConfidenceScheduler(
            V, mask_id=M, block_length=2, remasking="random", logits_eos_inf=True, eos_id=0
        ),
        logits_denoiser(),
        {"block_length": 2, "remasking": "random", "logits_eos_inf": True, "eos_id": 0},
    ),
    (
        "d3pm",
        lambda: D3PMScheduler(TransitionSchedule.from_betas([0.2] * 9, "uniform", V)),
        logits_denoiser(PI_UNIFORM),
        {},
    ),
    (
        "ddpm",
        lambda: DDPMScheduler(
            schedule=GaussianSchedule.linear(30, 1e-3, 0.3), convention="fastdiff"
        ),
        None,
        {},
    ),
    (
        "ddim",
        lambda: DDIMScheduler(
            schedule=GaussianSchedule.linear(30, 1e-3, 0.3), convention="fastdiff", eta=0.5
        ),
        None,
        {},
    ),
]


@pytest.mark.parametrize(
    ("method", "make", "den", "opts"), SCHEDULERS, ids=[s[0] for s in SCHEDULERS]
)
def test_scheduler_step_agrees_with_sample(method, make, den, opts):
    """A hand-written loop over ``timesteps`` with ``step`` (the checked public ops) gives the
    tokens of ``sample`` (the resolved implementations in the step loop) for one seed."""
    sched = make()
    gaussian = method in ("ddpm", "ddim")
    shape = (3, L, 2) if gaussian else (3, L)
    if gaussian:
        den = _gauss_denoiser(sched.schedule, torch.zeros(2), 1.0)
        kw = dict(schedule=sched.schedule)
        kw.update({"eta": 0.5} if method == "ddim" else {})
    elif method == "d3pm":
        kw = dict(schedule=sched.transitions)
    else:
        kw = dict(vocab_size=V, mask_id=sched.mask_id, **opts)
    steps = 6
    got = sample(den, shape, method=method, steps=steps, seed=1234, loop="python", **kw)
    x = sched.init_sample(shape, seed=1234)
    assert torch.equal(_manual(sched, den, x, 1234, steps), got)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ddpm", dict(num_train_timesteps=40)),
        (
            "ddpm",
            dict(num_train_timesteps=40, timestep_spacing="trailing", variance_type="fixed_large"),
        ),
        ("ddim", dict(num_train_timesteps=40, eta=0.7, prediction_type="v_prediction")),
    ],
)
def test_diffusers_convention_step_agrees_with_sample(method, options):
    """diffusers' convention (float32 tables: the update in torch, clipping on) through
    ``sample(..., convention="diffusers")``: a ``step(seed=, fixed=)`` loop gives the same
    state, and the fixed positions keep ``init``."""
    sched = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[method](**options)

    def den(x, t):
        return 0.3 * x + 0.01 * t.to(x.dtype)[:, None, None] * x.roll(1, 1)

    init, keep = torch.randn(3, L, 2), prefix_mask((3, L), 1)
    got = sample(
        den,
        (3, L, 2),
        method=method,
        steps=6,
        seed=5,
        init=init,
        fixed=keep,
        loop="python",
        convention="diffusers",
        **options,
    )
    x, kept = sched.start((3, L, 2), init=init, fixed=keep, seed=5)
    assert torch.equal(_manual(sched, den, x, 5, 6, fixed=kept), got)
    assert torch.equal(got[keep], init[keep]) and not torch.equal(got, init)


@pytest.mark.parametrize(
    ("method", "make", "den", "opts"), SCHEDULERS, ids=[s[0] for s in SCHEDULERS]
)
def test_graphed_update_equals_update(method, make, den, opts):
    """``update_graphed`` (step index as a device tensor, values read from device tables, for
    CUDA-graph replay) computes exactly ``update`` at every step."""
    gaussian = method in ("ddpm", "ddim")
    shape = (3, L, 2) if gaussian else (3, L)
    kw = dict(schedule=make().schedule) if gaussian else {}
    if method == "d3pm":
        kw = dict(schedule=make().transitions)
    elif not gaussian:
        kw = dict(vocab_size=V, mask_id=make().mask_id, **opts)
    if gaussian:
        den = _gauss_denoiser(kw["schedule"], torch.zeros(2), 1.0)
        kw.update({"eta": 0.5} if method == "ddim" else {})
    x, loop = samplers.build_loop(method, shape, steps=6, seed=8, **kw)
    for i in range(loop.inputs.shape[0]):
        out = den(x, loop.inputs[i].expand(shape[0]))
        a = loop.update(out, x, i)
        b = loop.update_graphed(out, x, torch.tensor(i))
        assert torch.equal(a, b), i
        x = a


def test_add_noise():
    x0 = torch.randint(0, V, (64, L)).masked_fill_(torch.zeros(64, L, dtype=torch.bool), 0)
    x0[x0 == M] = 0
    sched = MDLMScheduler(V, mask_id=M)
    sched.set_timesteps(4)
    xt = sched.add_noise(x0, None, sched.timesteps[0], seed=1)
    frac = float((xt == M).double().mean())  # 1 - e^-sigma(1) = 1 - 1e-3
    assert frac > 0.99 and torch.equal(xt[xt != M], x0[xt != M])
    g = DDPMScheduler(schedule=GaussianSchedule.linear(10))
    z = torch.randn(4, 3, 2)
    t = torch.tensor([0, 3, 5, 9])
    a = g.schedule.alphas_cumprod[t][:, None, None]
    got = g.add_noise(torch.ones(4, 3, 2), z, t)
    torch.testing.assert_close(got, a.sqrt() + (1 - a).sqrt() * z)


def test_seed_and_generator_reproducible():
    kw = dict(method="mdlm", steps=4, vocab_size=V, mask_id=M, loop="python")
    a = sample(logits_denoiser(), (16, L), seed=3, **kw)
    assert torch.equal(sample(logits_denoiser(), (16, L), seed=3, **kw), a)
    assert not torch.equal(sample(logits_denoiser(), (16, L), seed=4, **kw), a)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(
        sample(logits_denoiser(), (16, L), generator=g1, **kw),
        sample(logits_denoiser(), (16, L), generator=g2, **kw),
    )


def test_progress_callback_and_trajectory(capsys):
    seen = []
    res = sample(
        logits_denoiser(),
        (2, L),
        method="mdlm",
        steps=5,
        vocab_size=V,
        mask_id=M,
        seed=0,
        loop="python",
        callback=lambda i, x: seen.append(i),
        return_trajectory=True,
    )
    assert isinstance(res, samplers.SampleOutput)
    assert seen == list(range(res.steps_run)) and len(res.trajectory) == res.steps_run
    assert torch.equal(res.trajectory[-1], res.tokens)
    assert res.denoiser_calls == res.steps_run


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(method="nope"), ValueError, "unknown method"),
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(steps=2.5), TypeError, "steps must be an int"),
        (dict(mask_id=V), ValueError, "outside the vocabulary"),
        (dict(mask_id=None), ValueError, "mask_id is required"),
        (dict(vocab_size=None), ValueError, "needs vocab_size"),
        (dict(fixed=torch.ones(2, L, dtype=torch.bool)), ValueError, "fixed needs init"),
        (dict(init=torch.zeros(3, L, dtype=torch.long)), ValueError, "init has shape"),
        (dict(init=torch.full((2, L), V)), ValueError, "outside"),
        (dict(shape=(2, L, 3)), ValueError, r"shape must be \(batch, length\)"),
        (dict(loop="fast"), ValueError, "loop must be one of"),
        (dict(temperature=1.0), TypeError, "unknown option"),
        (dict(guidance_scale=2.0), ValueError, "needs uncond"),
        (dict(guidance_scale=1.0, uncond="twice"), ValueError, "uncond must be"),
        (dict(graph="dense"), ValueError, "graph must be"),
    ],
)
def test_bad_input(kwargs, err, match):
    args = dict(method="mdlm", steps=3, vocab_size=V, mask_id=M, shape=(2, L))
    args.update(kwargs)
    shape = args.pop("shape")
    if args["method"] == "mdlm" and "graph" in args:
        args["method"] = "sedd_euler"
    with pytest.raises(err, match=match):
        sample(logits_denoiser(), shape, **args)


def test_bad_denoiser_output_and_schedules():
    with pytest.raises(ValueError, match="the denoiser returned"):
        sample(
            lambda x, s: torch.zeros(*x.shape, V + 1),
            (2, L),
            method="mdlm",
            steps=2,
            vocab_size=V,
            mask_id=M,
            loop="python",
        )
    with pytest.raises(ValueError, match="d3pm needs schedule"):
        sample(logits_denoiser(), (2, L), method="d3pm", steps=2)
    tables = TransitionSchedule.from_betas([0.3] * 3, "uniform", V)
    with pytest.raises(ValueError, match="must be <="):
        sample(logits_denoiser(), (2, L), method="d3pm", steps=4, schedule=tables)
    with pytest.raises(TypeError, match="GaussianSchedule"):
        sample(logits_denoiser(), (2, L, 2), method="ddpm", steps=4, schedule=tables)
    with pytest.raises(ValueError, match="needs fixed"):
        sample(logits_denoiser(), (2, L, 2), method="ddim", steps=4, init=torch.zeros(2, L, 2))
    with pytest.raises(ValueError, match="finite maximum noise"):
        sample(
            logits_denoiser(),
            (2, L),
            method="mdlm",
            steps=4,
            vocab_size=V,
            mask_id=M,
            schedule=fastdiff.schedules.LinearAlpha(),
        )
    sched = MDLMScheduler(V, mask_id=M)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(torch.zeros(1, L, V), 1.0, torch.full((1, L), M))
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="not one of this scheduler's timesteps"):
        sched.step(torch.zeros(1, L, V), 0.123, torch.full((1, L), M))


def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        sample(
            logits_denoiser(),
            (2, L),
            method="mdlm",
            steps=2,
            vocab_size=V,
            mask_id=M,
            loop="cuda_graph",
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["mdlm", "sedd_euler", "confidence"])
def test_cuda_graph_replay_gives_the_eager_tokens(method):
    pi = PI_MASK.cuda()
    if method == "sedd_euler":

        def den(x, sigma):
            s = torch.log(pi)[None] - torch.log(torch.expm1(sigma.double()))[:, None, None]
            return s.masked_fill(torch.isinf(s), 0.0).float()
    else:

        def den(x, sigma):
            return torch.log(pi)[: x.shape[1]].expand(*x.shape, V).float()

    kw = dict(method=method, steps=8, vocab_size=V, mask_id=M, seed=5, device="cuda")
    eager = sample(den, (64, L), loop="python", **kw)
    graphed = sample(den, (64, L), loop="cuda_graph", **kw)
    assert torch.equal(eager, graphed)


def _zero_logits(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*x.shape, V)


@pytest.mark.parametrize("engine", ["python", "cpp"])
def test_mdlm_last_step_unmasks_all_when_sigma0_is_positive(engine):
    """Geometric has sigma(0) = 0.1 > 0: the last step must still end at sigma = 0 (before the
    fix ~9.5% of the positions stayed masked)."""
    schedule = fastdiff.schedules.Geometric(0.1, 20)
    kw = dict(method="mdlm", steps=16, vocab_size=V, mask_id=M, schedule=schedule, seed=0)
    out = sample(_zero_logits, (16, 512), loop=engine, **kw)
    assert not bool((out == M).any())
    sched = MDLMScheduler(V, mask_id=M, schedule=schedule)
    sched.set_timesteps(4)
    assert float(sched._sigma[-1]) == 0.0
    x = sched.init_sample((4, 64), seed=1)
    for t in sched.timesteps:
        x = sched.step(_zero_logits(x, t.expand(4)), t, x, seed=1).prev_sample
    assert not bool((x == M).any())


@pytest.mark.parametrize("method", ["sedd_euler", "sedd_analytic"])
def test_sedd_rejects_an_infinite_maximum_noise(method):
    with pytest.raises(ValueError, match="finite maximum noise"):
        sample(
            sedd_absorb_denoiser,
            (2, L),
            method=method,
            steps=4,
            vocab_size=V,
            mask_id=M,
            schedule=fastdiff.schedules.LinearAlpha(),
        )


def _nan_method_kwargs(method):
    if method == "d3pm":
        tables = TransitionSchedule.from_betas([0.3] * 4, "absorbing", V, mask_id=M)
        return (2, L), dict(schedule=tables, mask_id=M), V
    if method == "ddim":
        return (2, L, 3), dict(schedule=GaussianSchedule.linear(10)), 3
    return (2, L), dict(vocab_size=V, mask_id=M), V


@pytest.mark.parametrize("engine", ["python", "cpp"])
@pytest.mark.parametrize("method", ["mdlm", "sedd_euler", "d3pm", "ddim"])
def test_nan_model_output_is_an_error(method, engine):
    shape, kw, width = _nan_method_kwargs(method)

    def den(x, t):
        out = torch.zeros(*x.shape[:2], width)
        out[1, 2] = math.nan
        return out

    with pytest.raises(ValueError, match="denoiser output contains NaN"):
        sample(den, shape, method=method, steps=4, seed=0, loop=engine, **kw)
    with fastdiff.value_checks(False):  # the checks are off: no error (garbage out)
        sample(den, shape, method=method, steps=4, seed=0, loop=engine, **kw)


@pytest.mark.parametrize("engine", ["python", "cpp"])
def test_check_every_same_tokens_steps_rounded_up(engine):
    steps = 12
    kw = dict(method="confidence", steps=steps, vocab_size=V, mask_id=M, threshold=0.99, seed=2)
    base = sample(logits_denoiser(), (8, L), loop=engine, return_trajectory=True, **kw)
    assert base.steps_run == L  # no confidence >= 0.99: one commit (the best) per step
    for k in (2, 3, 5, 20):
        got = sample(
            logits_denoiser(), (8, L), loop=engine, return_trajectory=True, check_every=k, **kw
        )
        assert torch.equal(got.tokens, base.tokens), k
        assert got.steps_run == min(steps, -(-base.steps_run // k) * k), k
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        sample(logits_denoiser(), (8, L), check_every=0, **kw)
    with pytest.raises(TypeError, match="check_every must be an int"):
        sample(logits_denoiser(), (8, L), check_every=2.0, **kw)


@pytest.mark.parametrize(
    "schedule", [fastdiff.schedules.LinearAlpha(), fastdiff.schedules.CosineAlpha()]
)
def test_confidence_accepts_schedules_with_infinite_sigma1(schedule):
    sched = ConfidenceScheduler(V, mask_id=M, schedule=schedule)
    sched.set_timesteps(4)
    assert bool(torch.isfinite(sched.timesteps).all())
    assert float(sched.timesteps[0]) > float(sched.timesteps[1]) > 0
    kw = dict(method="confidence", steps=4, vocab_size=V, mask_id=M, seed=3, loop="python")
    got = sample(logits_denoiser(), (16, L), schedule=schedule, **kw)
    assert not bool((got == M).any())
    # the update ignores sigma: a time-independent model gives the default schedule's tokens
    assert torch.equal(got, sample(logits_denoiser(), (16, L), **kw))


@pytest.mark.parametrize("engine", ["python", "cpp"])
def test_d3pm_absorbing_chain_exits_early(engine):
    """No noise in steps 1..6: every position is unmasked on reaching t = 6, so the last 6
    steps are no-ops, skipped by the early exit with the same tokens."""
    tables = TransitionSchedule.from_betas([0.0] * 6 + [0.5] * 6, "absorbing", V, mask_id=M)
    assert D3PMScheduler(tables, mask_id=M).absorbing
    uniform = TransitionSchedule.from_betas([0.3] * 4, "uniform", V)
    assert not D3PMScheduler(uniform, mask_id=M).absorbing
    assert not D3PMScheduler(tables).absorbing
    kw = dict(method="d3pm", steps=12, schedule=tables, mask_id=M, seed=4)
    res = sample(logits_denoiser(), (32, L), loop=engine, return_trajectory=True, **kw)
    assert res.steps_run == 6 and res.denoiser_calls == 6
    x, loop = samplers.build_loop(kw.pop("method"), (32, L), **kw)
    loop.mask_id = None
    full = samplers.loop.run_loop(logits_denoiser(), x, loop, engine=engine)
    assert full.steps_run == 12 and torch.equal(full.x_t, res.tokens)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_gaussian_add_noise_rounds_and_checks_timesteps(cls):
    g = cls(schedule=GaussianSchedule.linear(10))
    x0, z = torch.ones(2, 3, 2), torch.randn(2, 3, 2)
    for scalar, index in ((2.6, 3), (2.5, 2), (3.5, 4), (9.4, 9), (-0.4, 0)):
        want = g.add_noise(x0, z, torch.tensor([index, index]))
        torch.testing.assert_close(g.add_noise(x0, z, scalar), want)
        torch.testing.assert_close(g.add_noise(x0, z, torch.tensor([scalar, scalar])), want)
    for bad in (-1, 10, 9.6, -0.6, math.nan):
        with pytest.raises(ValueError, match="timesteps must lie in"):
            g.add_noise(x0, z, bad)
    for bad in ([0, -1], [10, 0], [9.7, 1.0]):
        with pytest.raises(ValueError, match="timesteps must lie in"):
            g.add_noise(x0, z, torch.tensor(bad))
