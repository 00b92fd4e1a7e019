"""Tests for the reverse (sampling) updates of fastdiff.updates (docs/ops.md#sedd-sampling,
docs/ops.md#mdlm-ancestral-step, docs/ops.md#unmask-candidates).

Expected transition probabilities are written here directly from the formulas of docs/ops.md
in float64 (never by calling library code) and compared with empirical frequencies of many
identical rows. Every statistical comparison uses fixed seeds (so the tests are deterministic)
and bounds that a correct sampler passes with overwhelming probability:

- per category: |count - n p| <= 5 sqrt(n p (1 - p)) + 1 (5-sigma binomial; two-sided false
  alarm rate 5.7e-7 per category), and categories with p = 0 never occur;
- the whole row: Pearson chi-square <= its upper 1e-6 quantile (Wilson-Hilferty approximation).

With n = 20000 draws a probability error of about 1.5% absolute (p ~ 0.2) is detected.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend
from fastdiff.updates import (
    mdlm_step,
    sedd_analytic_step,
    sedd_denoise_step,
    sedd_euler_step,
    unmask_candidates,
)

F64 = torch.float64
INF = math.inf
N_DRAWS = 20_000
FAST = settings(max_examples=25, deadline=None)

# Hand-picked log-scores for V = 5 (distinct values, no symmetry that would hide a column mixup).
BASE_S = [0.4, -0.3, 1.1, -1.2, 0.2]


# --------------------------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------------------------


def chi2_upper_quantile(df: int, z: float = 4.7534) -> float:
    """Upper quantile of chi-square(df) at the normal quantile z (z = 4.7534: tail 1e-6),
    by the Wilson-Hilferty cube approximation (accurate to a few % for df >= 1)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def assert_frequencies(out: torch.Tensor, probs: torch.Tensor) -> None:
    """Empirical frequencies of ``out`` (any shape) match ``probs [V]`` (bounds: module doc)."""
    probs = torch.as_tensor(probs, dtype=F64)
    probs = probs / probs.sum()
    vocab = probs.numel()
    flat = out.reshape(-1)
    assert flat.dtype == torch.int64
    assert int(flat.min()) >= 0 and int(flat.max()) < vocab
    n = flat.numel()
    counts = torch.bincount(flat, minlength=vocab).to(F64)
    zero = probs == 0
    assert torch.all(counts[zero] == 0), f"zero-probability tokens drawn: {counts} vs {probs}"
    expected = n * probs
    sd = torch.sqrt(n * probs * (1 - probs))
    dev = (counts - expected).abs()
    assert torch.all(dev <= 5 * sd + 1), (
        f"5-sigma binomial bound failed: counts {counts.tolist()} expected {expected.tolist()}"
    )
    pos = ~zero
    k = int(pos.sum())
    if k > 1:
        chi2 = float(((counts[pos] - expected[pos]) ** 2 / expected[pos]).sum())
        assert chi2 <= chi2_upper_quantile(k - 1), f"chi-square {chi2} (df {k - 1})"


def rows(s: list[float], n: int = N_DRAWS, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(s, dtype=dtype).expand(n, len(s)).contiguous()


# --------------------------------------------------------------------------------------------
# expected probabilities, straight from docs/ops.md (float64)
# --------------------------------------------------------------------------------------------


def normalize(w: list[float]) -> torch.Tensor:
    t = torch.tensor(w, dtype=F64)
    return t / t.sum()


def euler_absorb_probs(s: list[float], m: int, rate: float) -> torch.Tensor:
    # 4a absorbing: w_j = dt dsigma S_j (j != m), w_m = max(0, 1 - dt dsigma sum_{j != m} S_j)
    w = [rate * math.exp(v) if j != m else 0.0 for j, v in enumerate(s)]
    w[m] = max(0.0, 1.0 - sum(w))
    return normalize(w)


def euler_uniform_probs(s: list[float], x: int, rate: float) -> torch.Tensor:
    # 4a uniform: w_j = dt dsigma S_j / V (j != x), w_x = max(0, 1 - dt dsigma sum_{j!=x} S_j / V)
    vocab = len(s)
    w = [rate * math.exp(v) / vocab if j != x else 0.0 for j, v in enumerate(s)]
    w[x] = max(0.0, 1.0 - sum(w))
    return normalize(w)


def analytic_absorb_probs(s: list[float], m: int, delta: float) -> torch.Tensor:
    # 4b absorbing: p_j = expm1(D) S_j (j != m), p_m = max(0, 1 - expm1(D) sum_{j != m} S_j)
    e = math.expm1(delta)
    w = [e * math.exp(v) if j != m else 0.0 for j, v in enumerate(s)]
    w[m] = max(0.0, 1.0 - sum(w))
    return normalize(w)


def analytic_uniform_probs(s: list[float], x: int, delta: float) -> torch.Tensor:
    # 4b uniform: p = stag(S, D) * T(x, D), S_x = 1,
    # stag_j = e^D S_j + ((1 - e^D)/V) sum_k S_k,
    # T_j = (1 - e^-D)/V (j != x), e^-D + (1 - e^-D)/V at x; negative entries clamped at 0.
    vocab = len(s)
    S = [1.0 if j == x else math.exp(v) for j, v in enumerate(s)]
    total = sum(S)
    stag = [math.exp(delta) * S[j] + (1.0 - math.exp(delta)) / vocab * total for j in range(vocab)]
    leave = (1.0 - math.exp(-delta)) / vocab
    T = [math.exp(-delta) + leave if j == x else leave for j in range(vocab)]
    return normalize([max(0.0, a * b) for a, b in zip(stag, T)])


def denoise_absorb_probs(s: list[float], m: int) -> torch.Tensor:
    # 4b final denoise, absorbing: p_j = expm1(sigma) S_j over j != m (mask dropped) ∝ S_j
    return normalize([0.0 if j == m else math.exp(v) for j, v in enumerate(s)])


def mdlm_probs(logits: list[float], m: int, sigma_t: float, sigma_s: float) -> torch.Tensor:
    # 4c: p = softmax(logits, m excluded), mc = 1 - e^-sigma,
    # q_j = p_j (mc_t - mc_s) / mc_t, q_m = mc_s / mc_t
    e = [0.0 if j == m else math.exp(v) for j, v in enumerate(logits)]
    p = [v / sum(e) for v in e]
    mc_t, mc_s = 1.0 - math.exp(-sigma_t), 1.0 - math.exp(-sigma_s)
    q = [pj * (mc_t - mc_s) / mc_t for pj in p]
    q[m] = mc_s / mc_t
    return torch.tensor(q, dtype=F64)


# --------------------------------------------------------------------------------------------
# the frequency check itself has power
# --------------------------------------------------------------------------------------------


def test_frequency_check_rejects_a_slightly_wrong_distribution():
    s = BASE_S
    probs = euler_absorb_probs(s, 2, 0.25)
    out = sedd_euler_step(
        rows(s), torch.full((N_DRAWS,), 2), dsigma=0.5, dt=0.5, graph="absorb", mask_id=2, seed=1
    )
    assert_frequencies(out, probs)
    wrong = probs.clone()
    wrong[0] += 0.02
    wrong[1] -= 0.02
    with pytest.raises(AssertionError):
        assert_frequencies(out, wrong)
    with pytest.raises(AssertionError):  # a uniform draw is clearly detected
        assert_frequencies(out, torch.full((5,), 0.2, dtype=F64))


# --------------------------------------------------------------------------------------------
# SEDD Euler (docs/ops.md#sedd-euler-step)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,dsigma,dt", [(0, 0.8, 0.12), (2, 2.0, 0.04), (4, 0.8, 0.12)])
def test_euler_absorb_frequencies(m, dsigma, dt):
    x = torch.full((N_DRAWS,), m)
    out = sedd_euler_step(
        rows(BASE_S), x, dsigma=dsigma, dt=dt, graph="absorb", mask_id=m, seed=11 + m
    )
    probs = euler_absorb_probs(BASE_S, m, dsigma * dt)
    assert 0.2 < probs[m] < 0.95  # the stay weight is not clamped here
    assert_frequencies(out, probs)


@pytest.mark.parametrize("m", [0, 4])
def test_euler_absorb_stay_weight_clamped_at_zero(m):
    # rate * sum S >> 1: the stay weight 1 - rate sum S is negative and clamped at 0, so a
    # masked row always moves, with probabilities ∝ S_j over j != m.
    x = torch.full((N_DRAWS,), m)
    out = sedd_euler_step(rows(BASE_S), x, dsigma=3.0, dt=2.0, graph="absorb", mask_id=m, seed=5)
    probs = euler_absorb_probs(BASE_S, m, 6.0)
    assert probs[m] == 0
    assert not bool((out == m).any())
    assert_frequencies(out, probs)


@pytest.mark.parametrize("x0,dsigma,dt", [(0, 1.5, 0.3), (2, 0.3, 0.2), (4, 1.5, 0.3)])
def test_euler_uniform_frequencies(x0, dsigma, dt):
    x = torch.full((N_DRAWS,), x0)
    out = sedd_euler_step(rows(BASE_S), x, dsigma=dsigma, dt=dt, graph="uniform", seed=21 + x0)
    probs = euler_uniform_probs(BASE_S, x0, dsigma * dt)
    assert 0.2 < probs[x0] < 0.99
    assert_frequencies(out, probs)


@pytest.mark.parametrize("x0", [0, 3])
def test_euler_uniform_stay_weight_clamped_at_zero(x0):
    x = torch.full((N_DRAWS,), x0)
    out = sedd_euler_step(rows(BASE_S), x, dsigma=10.0, dt=1.0, graph="uniform", seed=3)
    probs = euler_uniform_probs(BASE_S, x0, 10.0)
    assert probs[x0] == 0
    assert not bool((out == x0).any())
    assert_frequencies(out, probs)


def test_euler_uniform_mixed_tokens_per_row():
    # rows with different current tokens in one call: each group matches its own formula
    n = 8_000
    x = torch.tensor([0, 2, 4]).repeat_interleave(n)
    out = sedd_euler_step(rows(BASE_S, 3 * n), x, dsigma=1.0, dt=1.2, graph="uniform", seed=8)
    for i, x0 in enumerate([0, 2, 4]):
        assert_frequencies(out[i * n : (i + 1) * n], euler_uniform_probs(BASE_S, x0, 1.2))


def test_euler_zero_rate_keeps_every_token():
    x = torch.tensor([2, 2, 0, 3])
    s = torch.randn(4, 5)
    for graph in ("absorb", "uniform"):
        out = sedd_euler_step(s, x, dsigma=1.0, dt=0.0, graph=graph, mask_id=2, seed=0)
        assert torch.equal(out, x)


# --------------------------------------------------------------------------------------------
# SEDD analytic (docs/ops.md#sedd-analytic-step)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,sigma,sigma_next", [(0, 1.0, 0.92), (2, 0.3, 0.25), (4, 1.0, 0.92)])
def test_analytic_absorb_frequencies(m, sigma, sigma_next):
    x = torch.full((N_DRAWS,), m)
    out = sedd_analytic_step(
        rows(BASE_S), x, sigma=sigma, sigma_next=sigma_next, graph="absorb", mask_id=m, seed=31 + m
    )
    probs = analytic_absorb_probs(BASE_S, m, sigma - sigma_next)
    assert 0.2 < probs[m] < 0.99
    assert_frequencies(out, probs)


@pytest.mark.parametrize("m", [0, 4])
def test_analytic_absorb_stay_clamped_at_zero(m):
    x = torch.full((N_DRAWS,), m)
    out = sedd_analytic_step(
        rows(BASE_S), x, sigma=3.0, sigma_next=0.5, graph="absorb", mask_id=m, seed=2
    )
    probs = analytic_absorb_probs(BASE_S, m, 2.5)
    assert probs[m] == 0
    assert not bool((out == m).any())
    assert_frequencies(out, probs)


@pytest.mark.parametrize("x0,sigma,sigma_next", [(0, 1.0, 0.6), (2, 0.5, 0.45), (4, 1.0, 0.6)])
def test_analytic_uniform_frequencies(x0, sigma, sigma_next):
    x = torch.full((N_DRAWS,), x0)
    out = sedd_analytic_step(
        rows(BASE_S), x, sigma=sigma, sigma_next=sigma_next, graph="uniform", seed=41 + x0
    )
    probs = analytic_uniform_probs(BASE_S, x0, sigma - sigma_next)
    assert_frequencies(out, probs)


def test_analytic_uniform_negative_products_clamped():
    # a very small score next to large ones with a large D makes stag_j negative: p_j = 0
    s = [3.0, -6.0, 2.5, 0.0, 1.0]
    x0 = 3
    probs = analytic_uniform_probs(s, x0, 2.0)
    assert probs[1] == 0 and probs[x0] == 0  # stag < 0 at the small score and at x (S_x = 1)
    out = sedd_analytic_step(
        rows(s), torch.full((N_DRAWS,), x0), sigma=2.5, sigma_next=0.5, graph="uniform", seed=4
    )
    assert_frequencies(out, probs)


def test_analytic_uniform_large_finite_log_score_does_not_overflow():
    # A log-score of 750 is finite in float32 but e^750 overflows float64. The update is
    # homogeneous in S (S_x = 1 included), so the exact distribution puts all its mass on the
    # dominant token (every other stag_j is hugely negative and clamps to 0). The row must move
    # there, not keep its token because of an inf - inf = NaN.
    # (The Euler step and the absorbing graph work in log space and get this right.)
    s = torch.tensor([[750.0, 0.0, 0.0, 0.0, 0.0]] * 8)
    x = torch.ones(8, dtype=torch.int64)
    zeros = torch.zeros(8, dtype=torch.int64)
    out = sedd_euler_step(s, x, dsigma=1.0, dt=0.5, graph="uniform", seed=0)
    assert torch.equal(out, zeros)
    masked = torch.full((8,), 4)
    kw = {"graph": "absorb", "mask_id": 4, "seed": 0}
    assert torch.equal(sedd_analytic_step(s, masked, sigma=1.0, sigma_next=0.5, **kw), zeros)
    assert torch.equal(sedd_denoise_step(s, masked, sigma=0.5, **kw), zeros)
    # the uniform analytic product: e^750 = inf in float64, inf - inf = NaN, row left unchanged
    out = sedd_analytic_step(s, x, sigma=1.0, sigma_next=0.5, graph="uniform", seed=0)
    assert torch.equal(out, zeros)
    out = sedd_denoise_step(s, x, sigma=0.5, graph="uniform", seed=0)
    assert torch.equal(out, zeros)


# --------------------------------------------------------------------------------------------
# absorbing analytic step with the TRUE score is the exact posterior
# --------------------------------------------------------------------------------------------
# Absorbing noising of data x0 ~ p0 (over non-mask tokens): p_sigma(j) = e^-sigma p0(j),
# p_sigma(m) = 1 - e^-sigma, so the true score of a masked position is
# S_j = p_sigma(j) / p_sigma(m) = p0(j) / expm1(sigma). The exact reverse from sigma to
# sigma' < sigma: P(unmasked at sigma' | masked at sigma) = (e^-sigma' - e^-sigma)/(1 - e^-sigma),
# and given unmasked the token is ~ p0.

P0 = [0.1, 0.2, 0.3, 0.4]


def true_log_score(p0: list[float], m: int, sigma: float) -> list[float]:
    vals = [math.log(p) - math.log(math.expm1(sigma)) for p in p0]
    return [*vals[:m], 123.0, *vals[m:]]  # the entry at x = m is ignored: put junk there


def posterior(p0: list[float], m: int, sigma: float, sigma_next: float) -> torch.Tensor:
    unmask = (math.exp(-sigma_next) - math.exp(-sigma)) / (1.0 - math.exp(-sigma))
    q = [p * unmask for p in p0]
    return torch.tensor([*q[:m], 1.0 - unmask, *q[m:]], dtype=F64)


@pytest.mark.parametrize(
    "sigma,sigma_next",
    [(1e-6, 5e-7), (0.01, 0.002), (0.5, 0.1), (2.0, 1.0), (20.0, 19.9), (3.0, 0.0)],
)
def test_analytic_true_score_algebra(sigma, sigma_next):
    # p_j = expm1(D) S_j with S_j = p0(j)/expm1(sigma) equals p0(j) (e^-s' - e^-s)/(1 - e^-s)
    p0 = torch.tensor(P0, dtype=F64)
    d = torch.tensor(sigma - sigma_next, dtype=F64)
    sig = torch.tensor(sigma, dtype=F64)
    analytic = torch.expm1(d) * p0 / torch.expm1(sig)
    # the posterior in a cancellation-free form: e^-s' (1 - e^-(s - s')) / (1 - e^-s)
    exact = (
        p0 * torch.exp(-torch.tensor(sigma_next, dtype=F64)) * -torch.expm1(-d) / -torch.expm1(-sig)
    )
    torch.testing.assert_close(analytic, exact, rtol=1e-12, atol=0.0)
    # and the stay probability 1 - sum p_j equals (1 - e^-s') / (1 - e^-s)
    stay = 1.0 - analytic.sum()
    exact_stay = -torch.expm1(-torch.tensor(sigma_next, dtype=F64)) / -torch.expm1(-sig)
    torch.testing.assert_close(stay, exact_stay, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("m,sigma,sigma_next", [(0, 0.5, 0.1), (2, 2.0, 1.2), (4, 0.5, 0.1)])
def test_analytic_true_score_frequencies_are_the_posterior(m, sigma, sigma_next):
    s = true_log_score(P0, m, sigma)
    out = sedd_analytic_step(
        rows(s, dtype=F64),
        torch.full((N_DRAWS,), m),
        sigma=sigma,
        sigma_next=sigma_next,
        graph="absorb",
        mask_id=m,
        seed=100 + m,
    )
    assert_frequencies(out, posterior(P0, m, sigma, sigma_next))


def test_analytic_true_score_chain_reaches_the_data_distribution():
    # Several exact posterior steps (fresh offset each step) from sigma_0 down to 0: at every
    # sigma_k the masked fraction is (1 - e^-sigma_k)/(1 - e^-sigma_0), and at the end every row
    # is unmasked and distributed as p0.
    m = 1
    sigmas = [4.0, 2.0, 0.8, 0.2, 0.0]
    x = torch.full((N_DRAWS,), m)
    for k in range(len(sigmas) - 1):
        hi, lo = sigmas[k], sigmas[k + 1]
        s = rows(true_log_score(P0, m, hi), dtype=F64)
        x = sedd_analytic_step(
            s, x, sigma=hi, sigma_next=lo, graph="absorb", mask_id=m, seed=77, offset=k
        )
        stay = (1.0 - math.exp(-lo)) / (1.0 - math.exp(-sigmas[0]))
        masked = int((x == m).sum())
        assert abs(masked - N_DRAWS * stay) <= 5 * math.sqrt(N_DRAWS * stay * (1 - stay)) + 1
    assert not bool((x == m).any())
    assert_frequencies(x, [P0[0], 0.0, *P0[1:]])


# --------------------------------------------------------------------------------------------
# final denoise (docs/ops.md#sedd-denoise-step)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [0, 2, 4])
def test_denoise_absorb_never_outputs_mask(m):
    x = torch.full((N_DRAWS,), m)
    # a huge score at the mask column must not matter (it is dropped)
    s = [*BASE_S[:m], 40.0, *BASE_S[m + 1 :]]
    out = sedd_denoise_step(rows(s), x, sigma=1e-3, graph="absorb", mask_id=m, seed=51)
    assert not bool((out == m).any())
    assert_frequencies(out, denoise_absorb_probs(s, m))


@pytest.mark.parametrize("x0,sigma", [(0, 0.4), (2, 1e-3), (4, 0.4)])
def test_denoise_uniform_is_the_analytic_product(x0, sigma):
    x = torch.full((N_DRAWS,), x0)
    out = sedd_denoise_step(rows(BASE_S), x, sigma=sigma, graph="uniform", seed=61 + x0)
    assert_frequencies(out, analytic_uniform_probs(BASE_S, x0, sigma))
    # same weights as an analytic step all the way down to sigma = 0, hence the same draws
    same = sedd_analytic_step(
        rows(BASE_S), x, sigma=sigma, sigma_next=0.0, graph="uniform", seed=61 + x0
    )
    assert torch.equal(out, same)


# --------------------------------------------------------------------------------------------
# MDLM ancestral (docs/ops.md#mdlm-ancestral-step)
# --------------------------------------------------------------------------------------------

MDLM_LOGITS = [0.5, 2.0, -1.0, 0.0, 1.0]


@pytest.mark.parametrize("m,sigma_t,sigma_s", [(0, 1.5, 0.7), (2, 0.2, 0.15), (4, 6.0, 0.05)])
def test_mdlm_frequencies(m, sigma_t, sigma_s):
    # the logit at the mask column is large: it must be excluded from the softmax
    logits = [*MDLM_LOGITS[:m], 9.0, *MDLM_LOGITS[m + 1 :]]
    x = torch.full((N_DRAWS,), m)
    out = mdlm_step(rows(logits), x, sigma=sigma_t, sigma_next=sigma_s, mask_id=m, seed=71 + m)
    assert_frequencies(out, mdlm_probs(logits, m, sigma_t, sigma_s))


@pytest.mark.parametrize("m", [0, 2, 4])
def test_mdlm_last_step_unmasks_every_row(m):
    logits = torch.randn(N_DRAWS // 4, 5, generator=torch.Generator().manual_seed(m))
    x = torch.full((N_DRAWS // 4,), m)
    out = mdlm_step(logits, x, sigma=0.3, sigma_next=0.0, mask_id=m, seed=3)
    assert not bool((out == m).any())
    # sigma_s = 0: the row is a draw from p = softmax(logits, m excluded)
    same = [*MDLM_LOGITS[:m], 9.0, *MDLM_LOGITS[m + 1 :]]
    out = mdlm_step(
        rows(same), torch.full((N_DRAWS,), m), sigma=0.3, sigma_next=0.0, mask_id=m, seed=4
    )
    assert_frequencies(out, mdlm_probs(same, m, 0.3, 0.0))


def test_mdlm_unmasked_rows_carried_over():
    g = torch.Generator().manual_seed(0)
    m = 2
    x = torch.randint(0, 5, (500,), generator=g)
    logits = torch.randn(500, 5, generator=g) * 5
    out = mdlm_step(logits, x, sigma=1.0, sigma_next=0.0, mask_id=m, seed=9)
    keep = x != m
    assert torch.equal(out[keep], x[keep])
    assert not bool((out == m).any())


def test_mdlm_per_position_sigma():
    # sigma_t per sequence, sigma_s per position: equals separate scalar calls (row-keyed noise)
    g = torch.Generator().manual_seed(1)
    b, length, m = 3, 40, 4
    logits = torch.randn(b, length, 5, generator=g)
    x = torch.full((b, length), m)
    sig_t = torch.tensor([1.0, 2.0, 0.5])
    sig_s = torch.rand(b, length, generator=g) * 0.4
    out = mdlm_step(logits, x, sigma=sig_t, sigma_next=sig_s, mask_id=m, seed=5)
    for i in range(b):
        for j in (0, 17, length - 1):
            ref = mdlm_step(
                logits, x, sigma=float(sig_t[i]), sigma_next=float(sig_s[i, j]), mask_id=m, seed=5
            )
            assert out[i, j] == ref[i, j]


# --------------------------------------------------------------------------------------------
# invariants shared by every update
# --------------------------------------------------------------------------------------------

OPS = {
    "euler_absorb": lambda s, x, **kw: sedd_euler_step(
        s, x, dsigma=2.0, dt=0.3, graph="absorb", **kw
    ),
    "euler_uniform": lambda s, x, **kw: sedd_euler_step(
        s, x, dsigma=2.0, dt=0.3, graph="uniform", **kw
    ),
    "analytic_absorb": lambda s, x, **kw: sedd_analytic_step(
        s, x, sigma=1.0, sigma_next=0.6, graph="absorb", **kw
    ),
    "analytic_uniform": lambda s, x, **kw: sedd_analytic_step(
        s, x, sigma=1.0, sigma_next=0.6, graph="uniform", **kw
    ),
    "denoise_absorb": lambda s, x, **kw: sedd_denoise_step(s, x, sigma=1e-3, graph="absorb", **kw),
    "denoise_uniform": lambda s, x, **kw: sedd_denoise_step(s, x, sigma=0.5, graph="uniform", **kw),
    "mdlm": lambda s, x, **kw: mdlm_step(s, x, sigma=1.0, sigma_next=0.4, **kw),
    "candidates_t1": lambda s, x, **kw: unmask_candidates(s, x, temperature=1.0, **kw)[0],
}
ABSORBING = {"euler_absorb", "analytic_absorb", "denoise_absorb", "mdlm", "candidates_t1"}


def batch(n=400, vocab=6, m=3, seed=0, masked_frac=0.7):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, vocab, generator=g)
    x = torch.randint(0, vocab, (n,), generator=g)
    x = torch.where(torch.rand(n, generator=g) < masked_frac, torch.full_like(x, m), x)
    return s, x


@pytest.mark.parametrize("op", sorted(OPS))
def test_same_seed_same_tokens_different_seed_or_offset_differs(op):
    s, x = batch()
    f = OPS[op]
    a = f(s, x, mask_id=3, seed=1234)
    assert torch.equal(a, f(s, x, mask_id=3, seed=1234))
    assert torch.equal(a, f(s, x, mask_id=3, seed=torch.tensor(1234)))
    assert not torch.equal(a, f(s, x, mask_id=3, seed=1235))
    assert not torch.equal(a, f(s, x, mask_id=3, seed=1234, offset=1))
    # a torch.Generator: same state gives the same tokens, and it advances between calls
    g = torch.Generator().manual_seed(7)
    b1 = f(s, x, mask_id=3, generator=g)
    b2 = f(s, x, mask_id=3, generator=g)
    assert torch.equal(b1, f(s, x, mask_id=3, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(b1, b2)


@pytest.mark.parametrize("op", sorted(OPS))
def test_draws_are_row_keyed(op):
    # change OTHER rows (their token: masked or not, their scores, whether they are fixed):
    # the draws of the untouched rows stay bit-identical
    s, x = batch(seed=3, masked_frac=1.0)
    f = OPS[op]
    out = f(s, x, mask_id=3, seed=99)
    g = torch.Generator().manual_seed(4)
    other = torch.arange(x.numel()) % 3 != 0
    s2 = torch.where(other[:, None], torch.randn(s.shape, generator=g) * 3, s)
    x2 = torch.where(other, torch.randint(0, 6, x.shape, generator=g), x)
    fixed2 = other & (torch.rand(x.shape, generator=g) < 0.3)
    out2 = f(s2, x2, mask_id=3, seed=99, fixed=fixed2)
    assert torch.equal(out[~other], out2[~other])


@pytest.mark.parametrize("op", sorted(OPS))
def test_batch_shape_is_flattened_row_major(op):
    s, x = batch(n=60, seed=5)
    f = OPS[op]
    flat = f(s, x, mask_id=3, seed=8)
    shaped = f(s.reshape(3, 20, 6), x.reshape(3, 20).int(), mask_id=3, seed=8)
    assert shaped.shape == (3, 20) and shaped.dtype == torch.int64
    assert torch.equal(shaped.reshape(-1), flat)


@pytest.mark.parametrize("op", sorted(OPS))
def test_fixed_positions_never_change(op):
    s, x = batch(seed=6)
    fixed = torch.arange(x.numel()) % 2 == 0
    f = OPS[op]
    for seed in range(3):
        out = f(s * 4, x, mask_id=3, seed=seed, fixed=fixed)
        assert torch.equal(out[fixed], x[fixed])
    # a per-sequence (prefix-shaped) fixed mask
    fixed_seq = torch.tensor([True, False, True, False])
    out = f(s.reshape(4, 100, 6), x.reshape(4, 100), mask_id=3, seed=0, fixed=fixed_seq)
    assert torch.equal(out[fixed_seq], x.reshape(4, 100)[fixed_seq])


@pytest.mark.parametrize("op", sorted(ABSORBING))
def test_unmasked_rows_never_change_and_their_scores_are_ignored(op):
    s, x = batch(seed=7, masked_frac=0.5)
    f = OPS[op]
    masked = x == 3
    out = f(s, x, mask_id=3, seed=10)
    assert torch.equal(out[~masked], x[~masked])
    # arbitrary (finite or -inf) scores in the unmasked rows change nothing anywhere
    junk = torch.where(masked[:, None], s, torch.full_like(s, -INF))
    assert torch.equal(f(junk, x, mask_id=3, seed=10), out)
    junk = torch.where(masked[:, None], s, torch.full_like(s, 1e4))
    assert torch.equal(f(junk, x, mask_id=3, seed=10), out)


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("value", [-INF, -30.0, 0.0, 30.0])
def test_entry_at_x_is_ignored(op, value):
    # absorbing ops read masked rows only, where x = m; uniform rows ignore s[x] (S_x = 1)
    s, x = batch(seed=8, masked_frac=0.6)
    f = OPS[op]
    ref = f(s, x, mask_id=3, seed=12)
    s2 = s.scatter(1, x[:, None], value)
    assert torch.equal(f(s2, x, mask_id=3, seed=12), ref)


@FAST
@given(
    vocab=st.integers(2, 9),
    data=st.data(),
    op=st.sampled_from(sorted(OPS)),
    seed=st.integers(0, 2**62),
)
def test_update_invariants_property(vocab, data, op, seed):
    m = data.draw(st.integers(0, vocab - 1))
    n = data.draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(seed % 2**31)
    s = torch.randn(n, vocab, generator=g, dtype=F64) * data.draw(st.sampled_from([0.1, 1.0, 8.0]))
    x = torch.randint(0, vocab, (n,), generator=g)
    x = torch.where(torch.rand(n, generator=g) < 0.6, torch.full_like(x, m), x)
    fixed = torch.rand(n, generator=g) < 0.2
    out = OPS[op](s, x, mask_id=m, seed=seed, fixed=fixed)
    assert out.shape == x.shape and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < vocab
    assert torch.equal(out[fixed], x[fixed])
    if op in ABSORBING:
        assert torch.equal(out[x != m], x[x != m])
    if op in ("denoise_absorb", "candidates_t1"):
        assert not bool((out[~fixed] == m).any())
    # the draw of the first row alone equals its draw inside the batch (row-keyed noise)
    if n > 1:
        alone = OPS[op](s, x, mask_id=m, seed=seed, fixed=fixed | (torch.arange(n) > 0))
        assert alone[0] == out[0]


# --------------------------------------------------------------------------------------------
# unmask_candidates (docs/ops.md#unmask-candidates, the proposal half)
# --------------------------------------------------------------------------------------------


def hand_softmax(logits: list[float], m: int) -> list[float]:
    e = [0.0 if j == m else math.exp(v) for j, v in enumerate(logits)]
    return [v / sum(e) for v in e]


def test_candidates_argmax_ties_and_mask_column():
    m = 1
    logits = torch.tensor(
        [
            [1.0, 5.0, 2.0, 2.0, 0.0],  # mask column largest (never proposed); tie 2/3 -> 2
            [0.0, 9.0, 0.0, 0.0, 0.0],  # all non-mask tied -> lowest index 0
            [-1.0, 0.0, 0.5, 3.0, 2.0],  # plain argmax 3
            [4.0, 4.0, 4.0, 4.0, 4.5],  # argmax 4
        ],
        dtype=torch.float32,
    )
    x = torch.full((4,), m)
    xhat, conf = unmask_candidates(logits, x, mask_id=m, temperature=0.0)
    assert xhat.tolist() == [2, 0, 3, 4]
    assert conf.dtype == torch.float32


@pytest.mark.parametrize("m", [0, 2, 4])
def test_candidates_confidences_by_hand(m):
    base = [[0.3, 1.7, -0.4, 0.9], [2.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]
    full = [[*r[:m], 50.0, *r[m:]] for r in base]  # the mask column's logit is huge: excluded
    logits = torch.tensor(full, dtype=torch.float32)
    x = torch.full((3,), m)
    for name in ("prob", "margin", "entropy"):
        xhat, conf = unmask_candidates(logits, x, mask_id=m, confidence=name)
        expected = []
        for i, row in enumerate(full):
            p = hand_softmax(row, m)
            top = sorted(p, reverse=True)
            assert p[int(xhat[i])] == max(p) and xhat[i] != m
            if name == "prob":
                expected.append(top[0])
            elif name == "margin":
                expected.append(top[0] - top[1])
            else:
                expected.append(sum(v * math.log(v) for v in p if v > 0))
        torch.testing.assert_close(
            conf, torch.tensor(expected, dtype=torch.float32), rtol=2e-6, atol=1e-7
        )
    # hand values for row 1 (ties): p = (e^2, e^2, 1, e^-1)/Z, margin exactly 0
    _, margin = unmask_candidates(logits, x, mask_id=m, confidence="margin")
    assert margin[1] == 0.0
    # row 2: uniform over the 4 non-mask tokens: prob 1/4, entropy -log 4
    _, ent = unmask_candidates(logits, x, mask_id=m, confidence="entropy")
    assert abs(float(ent[2]) + math.log(4)) < 1e-6


def test_candidates_two_token_vocabulary():
    # V = 2 with the mask: one real token, proposed with confidence 1, margin 1, entropy 0
    logits = torch.tensor([[0.3, 7.0]])
    x = torch.tensor([1])
    for name, val in (("prob", 1.0), ("margin", 1.0), ("entropy", 0.0)):
        xhat, conf = unmask_candidates(
            logits, x, mask_id=1, confidence=name, temperature=0.7, seed=1
        )
        assert xhat.tolist() == [0] and float(conf) == val


def test_candidates_non_masked_and_fixed_positions():
    m = 2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g)
    x = torch.tensor([[2, 0, 2, 4, 2, 1], [1, 2, 2, 3, 2, 2]])
    fixed = torch.zeros(2, 6, dtype=torch.bool)
    fixed[0, 0] = fixed[1, 5] = True  # masked but fixed: not a candidate
    for temp in (0.0, 1.3):
        xhat, conf = unmask_candidates(logits, x, mask_id=m, fixed=fixed, temperature=temp, seed=3)
        active = (x == m) & ~fixed
        assert torch.equal(xhat[~active], x[~active])
        assert bool(torch.all(conf[~active] == -INF))
        assert bool(torch.all(conf[active] > 0)) and not bool((xhat[active] == m).any())
        assert xhat.shape == x.shape and conf.shape == x.shape


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_candidates_temperature_sampling_frequencies(temperature):
    # xhat ~ p^(1/T) over the non-mask tokens; confidence "prob" = p(xhat) (untempered)
    m = 3
    logits = [0.2, 1.0, -0.5, 4.0, 0.6]
    p = hand_softmax(logits, m)
    tempered = [v ** (1.0 / temperature) for v in p]
    x = torch.full((N_DRAWS,), m)
    xhat, conf = unmask_candidates(rows(logits), x, mask_id=m, temperature=temperature, seed=17)
    assert_frequencies(xhat, tempered)
    expected_conf = torch.tensor(p, dtype=F64)[xhat].float()
    torch.testing.assert_close(conf, expected_conf, rtol=1e-6, atol=0.0)


def test_candidates_masked_row_with_no_possible_token_rejected():
    # Every non-mask logit is -inf: no token can be proposed. The op must refuse (as
    # sample_categorical does for an all -inf row) instead of returning a NaN confidence (which
    # then silently disables select_commits for the whole sequence).
    logits = torch.tensor([[-INF, -INF, 0.0, -INF], [0.0, 1.0, 2.0, 3.0]])
    x = torch.tensor([2, 2])
    with pytest.raises(ValueError):
        unmask_candidates(logits, x, mask_id=2)


# --------------------------------------------------------------------------------------------
# bad inputs raise ValueError / TypeError before any compute
# --------------------------------------------------------------------------------------------


class ComputeReached(Exception):
    pass


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise ComputeReached("backend.resolve was called: validation happened too late")

    monkeypatch.setattr(backend, "resolve", refuse)


V5 = 5


def good_inputs():
    s = torch.randn(2, 3, V5)
    x = torch.tensor([[2, 0, 2], [2, 2, 4]])
    return s, x


def call(op: str, **override):
    s, x = good_inputs()
    kw = {"model_output": s, "x_t": x, "mask_id": 2, "seed": 0}
    if op == "euler":
        kw.update(dsigma=1.0, dt=0.1, graph="absorb")
        fn = sedd_euler_step
    elif op == "analytic":
        kw.update(sigma=1.0, sigma_next=0.5, graph="absorb")
        fn = sedd_analytic_step
    elif op == "denoise":
        kw.update(sigma=1e-3, graph="absorb")
        fn = sedd_denoise_step
    elif op == "mdlm":
        kw.update(sigma=1.0, sigma_next=0.5)
        fn = mdlm_step
    else:
        kw.update(temperature=0.0, confidence="prob")
        fn = unmask_candidates
    for key, val in override.items():
        if key == "scores":
            key = "model_output"
        if key == "x":
            key = "x_t"
        if val is DROP:
            kw.pop(key, None)
        else:
            kw[key] = val
    return fn(**kw)


DROP = object()
ALL = ["euler", "analytic", "denoise", "mdlm", "candidates"]
SEDD = ["euler", "analytic", "denoise"]
META = torch.device("meta")


def _nan_scores():
    s, _ = good_inputs()
    s[0, 1, 0] = math.nan  # in an UNMASKED row: still rejected
    return s


def _inf_scores():
    s, _ = good_inputs()
    s[1, 0, 3] = INF
    return s


BAD_COMMON = [
    ("scores int dtype", {"scores": torch.zeros(2, 3, V5, dtype=torch.int64)}, TypeError),
    ("scores not a tensor", {"scores": [[0.0] * V5] * 6}, TypeError),
    ("x float", {"x": torch.full((2, 3), 2.0)}, TypeError),
    ("x list", {"x": [[2, 2, 2], [2, 2, 2]]}, TypeError),
    ("x int16", {"x": torch.full((2, 3), 2, dtype=torch.int16)}, TypeError),
    ("shape mismatch", {"scores": torch.randn(2, 4, V5)}, ValueError),
    ("missing vocab dim", {"scores": torch.randn(2, 3)}, ValueError),
    (
        "vocab of one",
        {"scores": torch.randn(2, 3, 1), "mask_id": 0, "x": torch.zeros(2, 3, dtype=torch.int64)},
        ValueError,
    ),
    ("token id = V", {"x": torch.tensor([[2, 0, 5], [2, 2, 4]])}, ValueError),
    ("token id < 0", {"x": torch.tensor([[2, -1, 2], [2, 2, 4]])}, ValueError),
    ("mask id = V", {"mask_id": V5}, ValueError),
    ("mask id < 0", {"mask_id": -1}, ValueError),
    ("mask id float", {"mask_id": 2.0}, TypeError),
    ("mask id bool", {"mask_id": True}, TypeError),
    ("mask id missing", {"mask_id": None}, ValueError),
    ("NaN scores", {"scores": _nan_scores()}, ValueError),
    ("+inf scores", {"scores": _inf_scores()}, ValueError),
    ("fixed not bool", {"fixed": torch.zeros(2, 3, dtype=torch.int64)}, TypeError),
    ("fixed wrong shape", {"fixed": torch.zeros(3, 2, dtype=torch.bool)}, ValueError),
    ("scores on another device", {"scores": torch.empty(2, 3, V5, device=META)}, ValueError),
    (
        "fixed on another device",
        {"fixed": torch.zeros(2, 3, dtype=torch.bool, device=META)},
        ValueError,
    ),
    ("seed float", {"seed": 1.5}, TypeError),
    ("seed tensor of two", {"seed": torch.tensor([1, 2])}, ValueError),
]


@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("case", BAD_COMMON, ids=[c[0] for c in BAD_COMMON])
def test_bad_common_inputs(no_compute, op, case):
    _, override, exc = case
    with pytest.raises(exc):
        call(op, **override)


def test_good_inputs_reach_compute(no_compute):
    # sanity of the fixture: valid inputs get past validation to the backend
    for op in ALL:
        with pytest.raises(ComputeReached):
            call(op)


BAD_SCALARS = [
    ("euler", {"dt": -0.1}, ValueError),
    ("euler", {"dsigma": -1.0}, ValueError),
    ("euler", {"dt": math.nan}, ValueError),
    ("euler", {"dsigma": torch.tensor([1.0, -1.0])}, ValueError),
    ("euler", {"dt": torch.tensor([0.1, 0.1, 0.1])}, ValueError),  # not a prefix of [2, 3]
    ("euler", {"dt": "0.1"}, TypeError),
    ("euler", {"dsigma": torch.ones(2, device=META)}, ValueError),
    ("euler", {"graph": "absorbing"}, ValueError),
    ("analytic", {"sigma": -1.0, "sigma_next": -2.0}, ValueError),
    ("analytic", {"sigma_next": -0.1}, ValueError),
    ("analytic", {"sigma": 1.0, "sigma_next": 1.5}, ValueError),
    (
        "analytic",
        {
            "sigma": torch.tensor([1.0, 1.0]),
            "sigma_next": torch.tensor([[0.5, 0.5, 0.5], [0.5, 1.5, 0.5]]),
        },
        ValueError,
    ),
    ("analytic", {"sigma": math.nan}, ValueError),
    ("analytic", {"graph": "mask"}, ValueError),
    ("denoise", {"sigma": -1e-3}, ValueError),
    ("denoise", {"sigma": torch.tensor([1e-3, math.nan])}, ValueError),
    ("denoise", {"graph": None}, ValueError),
    ("mdlm", {"sigma_next": 1.0}, ValueError),  # sigma_s == sigma_t
    ("mdlm", {"sigma_next": 2.0}, ValueError),  # sigma_s > sigma_t
    ("mdlm", {"sigma_next": torch.tensor([0.5, 1.2])}, ValueError),  # one sequence violates
    ("mdlm", {"sigma": -1.0, "sigma_next": -2.0}, ValueError),
    ("mdlm", {"sigma_next": math.nan}, ValueError),
    ("candidates", {"confidence": "logprob"}, ValueError),
    ("candidates", {"confidence": None}, ValueError),
    ("candidates", {"temperature": -0.5}, ValueError),
    ("candidates", {"temperature": math.nan}, ValueError),
    ("candidates", {"temperature": "1"}, TypeError),
    ("candidates", {"temperature": None}, TypeError),
]


BAD_SCALAR_IDS = [f"{c[0]}-{'-'.join(c[1])}-{i}" for i, c in enumerate(BAD_SCALARS)]


@pytest.mark.parametrize("case", BAD_SCALARS, ids=BAD_SCALAR_IDS)
def test_bad_scalar_inputs(no_compute, case):
    op, override, exc = case
    with pytest.raises(exc):
        call(op, **override)


def test_infinite_temperature_rejected(no_compute):
    # temperature = inf passes the `temperature >= 0` check; the reference then divides the
    # log-probabilities by inf, the mask column's -inf / inf is NaN, and the race proposes the
    # MASK token with confidence 0. It must be refused like other bad temperatures.
    with pytest.raises(ValueError):
        call("candidates", temperature=math.inf)


def test_uniform_graph_needs_no_mask_id():
    s, x = good_inputs()
    for fn, kw in (
        (sedd_euler_step, {"dsigma": 1.0, "dt": 0.1}),
        (sedd_analytic_step, {"sigma": 1.0, "sigma_next": 0.5}),
        (sedd_denoise_step, {"sigma": 0.1}),
    ):
        out = fn(s, x, graph="uniform", seed=0, **kw)
        assert out.shape == x.shape
        with pytest.raises(ValueError):  # but a given one is still range-checked
            fn(s, x, graph="uniform", seed=0, mask_id=V5, **kw)


def test_public_names_are_exported():
    for name in (
        "sedd_euler_step",
        "sedd_analytic_step",
        "sedd_denoise_step",
        "mdlm_step",
        "unmask_candidates",
    ):
        assert getattr(fastdiff, name) is globals()[name]
