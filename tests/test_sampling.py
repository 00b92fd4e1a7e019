"""Tests for fastdiff.sample_categorical (docs/ops.md#categorical-sampling).

Frequency checks use fixed seeds and bounds that a correct sampler passes with probability at
least 1 - 1e-6 for a random seed: Pearson chi-square rejected only at p < 1e-6, Poisson and
binomial counts within 5 standard deviations (two-sided p = 5.7e-7).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import random as fr
from fastdiff import sample_categorical
from fastdiff.reference.sampling import filter_logits

F64 = torch.float64
F32 = torch.float32
FAST = settings(max_examples=25, deadline=None)


def chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value (dof = categories - 1) over the categories with p > 0."""
    keep = probs > 0
    obs = observed[keep].double()
    exp = probs[keep].double() / probs[keep].double().sum() * obs.sum()
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = int(keep.sum()) - 1
    return float(mpmath.gammainc(dof / 2, stat / 2, mpmath.inf, regularized=True))


def counts_of(index: torch.Tensor, v: int) -> torch.Tensor:
    return torch.bincount(index.reshape(-1), minlength=v)


def t64(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# frequencies
# --------------------------------------------------------------------------------------------

ROWS = 100_000


@pytest.mark.parametrize("dtype", [F64, F32, torch.bfloat16, torch.float16])
def test_frequencies_match_weights(dtype) -> None:
    w = torch.tensor([0.3, 0.0, 1.7, 0.05, 2.0, 0.45, 0.0, 0.5]).to(dtype)
    idx = sample_categorical(w.expand(ROWS, -1), seed=17)
    assert idx.dtype == torch.int64 and idx.shape == (ROWS,)
    c = counts_of(idx, 8)
    assert c[1] == 0 and c[6] == 0  # zero weights never drawn
    p = w.double()  # unnormalized; the sampler normalizes the weights it was given
    assert chi2_pvalue(c, p) > 1e-6


@pytest.mark.parametrize("dtype", [F64, F32, torch.bfloat16])
def test_frequencies_match_softmax_of_logits(dtype) -> None:
    logits = torch.tensor([0.5, -1.0, -math.inf, 2.0, 0.0, -3.0, 1.0, -math.inf, 1.5, -0.5])
    logits = logits.to(dtype)
    idx = sample_categorical(logits=logits.expand(ROWS, -1), seed=3, offset=2)
    c = counts_of(idx, 10)
    assert c[2] == 0 and c[7] == 0
    assert chi2_pvalue(c, torch.softmax(logits.double(), 0)) > 1e-6


def test_rows_have_their_own_distributions() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    b = w[None].expand(ROWS // 3, 3, 4)  # batch [R, 3]
    idx = sample_categorical(b, seed=5)
    assert idx.shape == (ROWS // 3, 3)
    for r in range(3):
        c = counts_of(idx[:, r], 4)
        assert bool((c[w[r] == 0] == 0).all())
        if int((w[r] > 0).sum()) > 1:
            assert chi2_pvalue(c, w[r]) > 1e-6
        else:
            assert int(c[3]) == ROWS // 3


def test_zero_weights_never_drawn_next_to_tiny_weights() -> None:
    # tiny but positive weights compete; exact zeros never win, in every dtype
    for dtype, tiny in (
        (F64, 1e-300),
        (F32, 1e-38),
        (torch.float16, 6e-8),
        (torch.bfloat16, 1e-38),
    ):
        w = torch.tensor([0.0, tiny, 0.0, tiny, 0.0], dtype=dtype)
        assert bool((w[[1, 3]] > 0).all())
        idx = sample_categorical(w.expand(20_000, -1), seed=1)
        assert set(idx.unique().tolist()) == {1, 3}, dtype
        lg = torch.tensor([-math.inf, -1e4, -math.inf, -1e4, -math.inf], dtype=dtype)
        idx = sample_categorical(logits=lg.expand(20_000, -1), seed=2)
        assert set(idx.unique().tolist()) == {1, 3}, dtype


@pytest.mark.parametrize(
    "logits,temperature",
    [
        # logits far below zero overflow to -inf when divided by a small temperature unless the
        # row maximum is taken out first; then every entry ties at -inf and index 0 (weight 0)
        # would win the argmax
        ([-math.inf, -1e306, -1e306], 1e-3),
        ([-math.inf, 0.0, -1e-300], 1e-310),
        # huge logits overflow to +inf: the draw is fine but the reported prob must be finite
        ([-math.inf, 1e300, 1e300], 1e-10),
    ],
    ids=["neg-1e306-T1e-3", "T1e-310", "pos-1e300-T1e-10"],
)
def test_zero_weight_never_drawn_at_extreme_temperatures(logits, temperature) -> None:
    lg = torch.tensor(logits, dtype=F64).expand(200, -1)
    idx, prob = sample_categorical(logits=lg, temperature=temperature, seed=4, return_prob=True)
    assert bool((idx != 0).all()), idx.unique()
    assert bool(torch.isfinite(prob).all()) and bool(((prob > 0) & (prob <= 1)).all()), prob[:3]


def test_infinite_temperature_rejected_or_respects_zero_weights() -> None:
    # temperature = inf passes the `temperature >= 0` check; dividing a -inf log-weight by inf
    # gives NaN, which torch.argmax treats as the maximum: a zero-weight token would be drawn.
    w = torch.tensor([0.0, 1.0, 3.0]).expand(500, -1)
    try:
        idx = sample_categorical(w, temperature=math.inf, seed=0)
    except ValueError as err:
        assert "temperature" in str(err)
    else:
        assert bool((idx != 0).all()), "temperature=inf drew a zero-weight token"
        # T -> inf flattens the distribution over the support: {1, 2} each 1/2
        c = counts_of(idx, 3)
        assert abs(int(c[1]) - 250) <= 5 * math.sqrt(125) + 1


# --------------------------------------------------------------------------------------------
# the low-probability tail
# --------------------------------------------------------------------------------------------


def test_token_of_probability_1e6_is_sampled_at_its_rate() -> None:
    # V = 1 + K: one dominant token, K = 1000 rare tokens of probability exactly 1e-6 each.
    # 30 000 rows: expected rare draws 30 000 * 1000 * 1e-6 = 30. Poisson 5-sigma band:
    # 30 +- 5 sqrt(30) = [2.6, 57.4]; a sampler whose noise cannot reach the tail finds 0.
    k, p_rare = 1000, 1e-6
    w = torch.full((1 + k,), p_rare, dtype=F64)
    w[0] = 1.0 - k * p_rare
    rare = 0
    for chunk in range(10):  # 10 x 3000 rows keeps memory small; offsets give fresh streams
        idx = sample_categorical(w.expand(3000, -1), seed=2024, offset=chunk)
        rare += int((idx != 0).sum())
    lam = 30000 * k * p_rare
    assert abs(rare - lam) <= 5 * math.sqrt(lam), rare


def _sedd_float32_exponential(u: torch.Tensor) -> torch.Tensor:
    # SEDD's gumbel-max noise: 1e-10 - (rand + 1e-10).log(), in float32
    return 1e-10 - (u + 1e-10).log()


def test_float32_gumbel_cannot_reach_1e8_tokens_while_fastdiff_can() -> None:
    """A token with weight 1e-8 next to a token of weight 1 wins the race iff E_1 < 1e-8 E_0.

    float32 uniforms (torch.rand: multiples of 2^-24 in [0, 1)) cap the noise: E >= 6e-8 and
    Gumbel <= 16.6, so E_1 < 1e-8 E_0 needs E_0 > 6 AND u_1 within a few grid points of 1.
    Summing over those grid points gives the float32 win probability (an upper bound): about
    65 times below 1e-8. fastdiff's exponential has the exact CDF down to 2^-64, so its win
    probability is 1e-8 (to ~1e-10 relative).
    """
    grid = 2.0**-24
    u_top = torch.tensor(1.0 - grid, dtype=F32)
    assert float(torch.nextafter(u_top, torch.tensor(1.0))) == 1.0  # largest float32 below 1
    e_min32 = float(_sedd_float32_exponential(u_top))
    g_max32 = float(-torch.log(-torch.log(u_top)))
    e_max32 = float(_sedd_float32_exponential(torch.tensor(0.0, dtype=F32)))
    assert 5e-8 < e_min32 < 7e-8 and 16.5 < g_max32 < 16.7 and 23 < e_max32 < 23.1

    # fastdiff: from the 64-bit words 0:0 (lower half) and 0x80000000:0 (upper half)
    e_min = fr._exponential_from_words(t64(0), t64(0)).item()
    e_max = fr._exponential_from_words(t64(0x80000000), t64(0)).item()
    assert e_min == pytest.approx(2.0**-65, rel=1e-15) and e_max > 45.0  # Gumbel up to 45

    # exact float32 win probability: u_1 = 1 - j 2^-24 (j >= 1), each with probability 2^-24;
    # given u_1 the dominant token must have E_0 > E_1 / 1e-8, i.e. u_0 < exp(1e-10 - y) - 1e-10
    ratio = 1e-8
    p32 = 0.0
    for j in range(1, 64):
        e1 = float(_sedd_float32_exponential(torch.tensor(1.0 - j * grid, dtype=F32)))
        y = e1 / ratio
        if y >= e_max32:
            continue
        bound = math.exp(1e-10 - y) - 1e-10  # u_0 must lie below this (float32 grid points)
        p32 += grid * (math.floor(bound / grid) + 1) * grid
    # ~1.5e-10: float32 noise under-samples the token ~65x (needs E_0 > 6, prob e^-6)
    assert p32 < ratio / 30, p32

    # fastdiff: P(E_1 <= x) counted over the 2^64 words is 1 - e^-x at x = 1e-8 E_0 for every
    # E_0 that matters, so P(win) = E[1 - exp(-1e-8 E_0)] = 1e-8 / (1 + 1e-8)
    for e0 in (0.01, 0.5, 1.0, 3.0, 10.0, 30.0):
        x = ratio * e0
        lo, hi = 0, 1 << 53  # bisection for the number of lower-half words with E <= x
        while lo < hi:
            mid = (lo + hi) // 2
            if fr._exponential_from_words(t64(mid >> 32), t64(mid & 0xFFFFFFFF)).item() <= x:
                lo = mid + 1
            else:
                hi = mid
        cdf = lo / 2.0**64
        assert abs(cdf / -math.expm1(-x) - 1) < 1e-9, (e0, cdf)


# --------------------------------------------------------------------------------------------
# temperature and filters
# --------------------------------------------------------------------------------------------

W5 = torch.tensor([0.4, 0.2, 0.2, 0.15, 0.05], dtype=F64)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 0.25])
@pytest.mark.parametrize("as_logits", [False, True])
def test_temperature_frequencies(temperature: float, as_logits: bool) -> None:
    if as_logits:
        kw = dict(logits=(W5.log() + 3.0).expand(ROWS, -1))  # a shift changes nothing
    else:
        kw = dict(probs=(W5 * 7.0).expand(ROWS, -1))  # nor does a scale
    idx, prob = sample_categorical(**kw, temperature=temperature, seed=6, return_prob=True)
    target = W5 ** (1.0 / temperature)
    target = target / target.sum()
    assert chi2_pvalue(counts_of(idx, 5), target) > 1e-6
    torch.testing.assert_close(prob, target[idx].float(), rtol=1e-6, atol=0)


def _check_filtered(expected: set[int], renorm: torch.Tensor, **kw) -> None:
    idx, prob = sample_categorical(W5.expand(20_000, -1), seed=12, return_prob=True, **kw)
    got = set(idx.unique().tolist())
    assert got == expected, (kw, got)
    # the reported probability is the renormalized one over the kept set
    torch.testing.assert_close(prob, renorm[idx].float(), rtol=1e-6, atol=0)
    if len(expected) > 1:
        assert chi2_pvalue(counts_of(idx, 5), renorm) > 1e-6


FILTER_CASES = [
    # (kwargs, kept set): W5 = [0.4, 0.2, 0.2, 0.15, 0.05]
    (dict(top_k=1), {0}),
    (dict(top_k=2), {0, 1, 2}),  # tie at the k-th value: both 0.2 kept
    (dict(top_k=3), {0, 1, 2}),
    (dict(top_k=4), {0, 1, 2, 3}),
    (dict(top_k=5), {0, 1, 2, 3, 4}),
    (dict(top_k=50), {0, 1, 2, 3, 4}),
    (dict(top_p=0.3), {0}),  # 0.4 >= 0.3 alone
    (dict(top_p=0.5), {0, 1, 2}),  # 0.4 + 0.2 reaches 0.5; the tied 0.2 is kept too
    (dict(top_p=0.9), {0, 1, 2, 3}),  # 0.95 needed 4 tokens: 0.4+0.2+0.2+0.15 = 0.95 >= 0.9
    (dict(top_p=1.0), {0, 1, 2, 3, 4}),
    (dict(min_p=0.6), {0}),  # keep p >= 0.24
    (dict(min_p=0.45), {0, 1, 2}),  # keep p >= 0.18
    (dict(min_p=0.3), {0, 1, 2, 3}),  # keep p >= 0.12
    (dict(min_p=0.0), {0, 1, 2, 3, 4}),
    # in order: top_k, then top_p / min_p on the renormalized survivors
    (dict(top_k=4, top_p=0.6), {0, 1, 2}),  # [.42, .21, .21, .16]: .42 + .21 >= .6
    (dict(top_k=2, min_p=0.45), {0, 1, 2}),  # [.5, .25, .25]: keep >= .225
    (dict(top_p=0.9, min_p=0.45), {0, 1, 2}),  # [.42, .21, .21, .16]: keep >= .19
    # temperature comes first: T = 0.5 gives [.60, .15, .15, .085, .0094]
    (dict(temperature=0.5, min_p=0.3), {0}),
    (dict(temperature=0.5, top_p=0.7), {0, 1, 2}),
    (dict(temperature=2.0, min_p=0.3), {0, 1, 2, 3, 4}),  # [.30, .21, .21, .18, .10]
]


@pytest.mark.parametrize("kw,expected", FILTER_CASES, ids=[str(c[0]) for c in FILTER_CASES])
def test_filters_keep_exactly_the_documented_set(kw: dict, expected: set[int]) -> None:
    t = kw.get("temperature", 1.0)
    base = W5 ** (1.0 / t)
    keep = torch.tensor([j in expected for j in range(5)])
    renorm = torch.where(keep, base, torch.zeros_like(base))
    renorm = renorm / renorm.sum()
    _check_filtered(expected, renorm, **kw)
    # the reference filter itself
    lw = (W5.log() / t)[None]
    flt = filter_logits(lw, kw.get("top_k"), kw.get("top_p"), kw.get("min_p"))
    assert set(torch.nonzero(torch.isfinite(flt[0])).flatten().tolist()) == expected
    assert torch.equal(flt[0][keep], lw[0][keep])  # kept logits are unchanged


def test_filter_exact_ties() -> None:
    lg = torch.tensor([[1.0, 1.0, 0.0, 1.0, -2.0]], dtype=F64)
    # min_p = 1 keeps every token tied with the maximum
    f = filter_logits(lg, min_p=1.0)
    assert torch.isfinite(f[0]).tolist() == [True, True, False, True, False]
    # top_k = 1 with a three-way tie at the top keeps all three
    f = filter_logits(lg, top_k=1)
    assert torch.isfinite(f[0]).tolist() == [True, True, False, True, False]
    idx = sample_categorical(logits=lg.expand(30_000, -1), top_k=1, seed=1)
    c = counts_of(idx, 5)
    assert c[2] == 0 and c[4] == 0
    assert chi2_pvalue(c, torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])) > 1e-6
    # top_p smaller than one tied block keeps the whole block
    f = filter_logits(lg, top_p=0.1)
    assert torch.isfinite(f[0]).tolist() == [True, True, False, True, False]


@FAST
@given(
    w=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=1, max_size=12).filter(
        lambda xs: any(x > 0 for x in xs)
    ),
    top_k=st.one_of(st.none(), st.integers(1, 13)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    min_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    seed=st.integers(0, 2**62),
)
def test_sampling_invariants(w, top_k, top_p, min_p, temperature, seed) -> None:
    weights = torch.tensor(w, dtype=F64)
    idx, prob = sample_categorical(
        weights.expand(64, -1),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
        return_prob=True,
    )
    assert bool((weights[idx] > 0).all())  # zero weights never win, whatever the filters
    assert bool(((prob > 0) & (prob <= 1)).all())
    # the chosen tokens survive the filters, applied to the tempered distribution
    lw = weights.log()
    if temperature > 0:
        lw = lw / temperature
    kept = torch.isfinite(filter_logits(lw[None], top_k, top_p, min_p)[0])
    assert bool(kept[idx].all())
    # the kept set is never empty and always holds the most probable token
    assert bool(kept[int(weights.argmax())])
    if temperature == 0.0:
        assert bool((idx == int(weights.argmax())).all())  # argmax, lowest index on ties
    # reproducible
    again = sample_categorical(
        weights.expand(64, -1),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
    )
    assert torch.equal(again, idx)


def test_temperature_zero_is_argmax_with_lowest_index_ties() -> None:
    w = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 5.0, 5.0], [7.0, 7.0, 7.0, 7.0]])
    for seed in (0, 1, 2):
        assert sample_categorical(w, temperature=0.0, seed=seed).tolist() == [1, 2, 0]
    lg = torch.tensor([[-math.inf, 2.0, 5.0, 5.0], [0.0, -math.inf, 0.0, -1.0]])
    assert sample_categorical(logits=lg, temperature=0.0, seed=0).tolist() == [2, 0]
    assert sample_categorical(logits=lg.half(), temperature=0.0, seed=0).tolist() == [2, 0]
    assert sample_categorical(logits=lg, temperature=0.0, top_k=1, seed=0).tolist() == [2, 0]
    # the filters do not change the argmax
    assert sample_categorical(w, temperature=0.0, top_p=0.2, min_p=0.9, seed=0).tolist() == [
        1,
        2,
        0,
    ]


def test_return_prob_is_the_normalized_weight_of_the_chosen_token() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(500, 9, generator=gen, dtype=F64) * (torch.rand(500, 9, generator=gen) > 0.3)
    w[:, 4] += 0.1  # no all-zero rows
    idx, prob = sample_categorical(w, seed=1, return_prob=True)
    assert prob.dtype == F32 and prob.shape == idx.shape
    want = (w / w.sum(-1, keepdim=True)).gather(-1, idx[:, None]).squeeze(-1)
    torch.testing.assert_close(prob, want.float(), rtol=1e-6, atol=0)
    idx2, prob2 = sample_categorical(logits=w.log(), seed=1, return_prob=True)
    assert torch.equal(idx2, idx)
    torch.testing.assert_close(prob2, prob, rtol=1e-6, atol=0)
    # batch shapes are kept for both outputs
    i3, p3 = sample_categorical(w.reshape(5, 100, 9), seed=1, return_prob=True)
    assert i3.shape == p3.shape == (5, 100)
    assert torch.equal(i3.reshape(-1), idx)


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------


def test_seed_offset_generator() -> None:
    w = torch.ones(4096, 16)
    a = sample_categorical(w, seed=1)
    assert torch.equal(a, sample_categorical(w, seed=1))
    assert torch.equal(a, sample_categorical(w, seed=torch.tensor(1)))
    assert torch.equal(a, sample_categorical(logits=torch.zeros(4096, 16), seed=1))
    for other in (sample_categorical(w, seed=2), sample_categorical(w, seed=1, offset=1)):
        # two independent uniform draws over 16 tokens agree at a row with probability 1/16
        assert (other == a).double().mean().item() < 0.2
    g = torch.Generator().manual_seed(5)
    g1 = sample_categorical(w, generator=g)
    g2 = sample_categorical(w, generator=g)
    assert not torch.equal(g1, g2)  # the generator advances
    g.manual_seed(5)
    assert torch.equal(sample_categorical(w, generator=g), g1)
    key = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(sample_categorical(w, seed=key), g1)
    # the noise of row r, column j is fastdiff.random.exponential(seed, offset, r, j)
    e = fr.exponential(9, 3, torch.arange(4096), 16)
    wr = torch.rand(4096, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(sample_categorical(wr, seed=9, offset=3), (wr / e).argmax(-1))


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

GOOD = torch.tensor([[0.2, 0.8], [0.5, 0.5]])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(probs=torch.tensor([[0.5, math.nan]])), ValueError, "NaN"),
        (dict(probs=torch.tensor([[0.5, math.inf]])), ValueError, "inf"),
        (dict(probs=torch.tensor([[0.5, -0.1]])), ValueError, "negative"),
        (dict(probs=torch.tensor([[0.5, 0.5], [0.0, 0.0]])), ValueError, "zero"),
        (dict(logits=torch.tensor([[0.0, -math.inf], [-math.inf, -math.inf]])), ValueError, "-inf"),
        (dict(logits=torch.tensor([[0.0, math.inf]])), ValueError, r"\+inf"),
        (dict(logits=torch.tensor([[0.0, math.nan]])), ValueError, "NaN"),
        (dict(probs=GOOD, logits=GOOD.log()), ValueError, "exactly one"),
        (dict(), ValueError, "exactly one"),
        (dict(probs=torch.ones(2, 3, dtype=torch.int64)), TypeError, "probs"),
        (dict(probs=torch.tensor(1.0)), ValueError, "probs"),
        (dict(probs=torch.ones(2, 0)), ValueError, "vocab"),
        (dict(probs=GOOD.tolist()), TypeError, "probs"),
        (dict(probs=GOOD, top_k=0), ValueError, "top_k"),
        (dict(probs=GOOD, top_k=-1), ValueError, "top_k"),
        (dict(probs=GOOD, top_k=2.5), ValueError, "top_k"),
        (dict(probs=GOOD, top_k=True), ValueError, "top_k"),
        (dict(probs=GOOD, top_p=0.0), ValueError, "top_p"),
        (dict(probs=GOOD, top_p=1.5), ValueError, "top_p"),
        (dict(probs=GOOD, top_p=math.nan), ValueError, "top_p"),
        (dict(probs=GOOD, min_p=-0.1), ValueError, "min_p"),
        (dict(probs=GOOD, min_p=1.5), ValueError, "min_p"),
        (dict(probs=GOOD, min_p=math.nan), ValueError, "min_p"),
        (dict(probs=GOOD, temperature=-1.0), ValueError, "temperature"),
        (dict(probs=GOOD, temperature=math.nan), ValueError, "temperature"),
        (dict(probs=GOOD, temperature="1"), TypeError, "temperature"),
        (dict(probs=GOOD, seed=1.5), TypeError, "seed"),
        (dict(probs=GOOD, seed=torch.tensor([1, 2])), ValueError, "seed"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, error: type, match: str) -> None:
    kw = dict(kwargs)
    seed = kw.pop("seed", 0)
    with pytest.raises(error, match=match):
        sample_categorical(**kw, seed=seed)


def test_public_export() -> None:
    assert fastdiff.sample_categorical is sample_categorical
