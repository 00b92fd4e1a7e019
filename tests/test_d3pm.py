"""Tests for D3PM: transition builders (fastdiff.transitions), the posterior, the reverse step,
the hybrid loss (fastdiff.d3pm) and dense-matrix noising (fastdiff.corrupt_dense).

Statistical tests draw with fixed seeds (so they are deterministic) and compare empirical
frequencies with exact probabilities by Pearson's chi-square: the bound is the chi-square
quantile at p = 1e-6 (Wilson-Hilferty approximation), so a correct sampler fails with
probability about 1e-6 per group, while a wrong distribution at these sample sizes (thousands
of draws per group) overshoots it by far. Tokens of probability 0 must never appear.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff import checks, transitions
from fastdiff.d3pm import d3pm_hybrid_loss, d3pm_posterior, d3pm_posterior_logits, d3pm_step
from fastdiff.noising import add_noise_dense
from fastdiff.transitions import (
    TransitionSchedule,
    absorbing_transition,
    banded_transition,
    cumulative_transitions,
    discretized_gaussian_transition,
    transition_matrix,
    uniform_transition,
)

F64 = torch.float64
F32 = torch.float32
FAST = settings(max_examples=20, deadline=None)


@pytest.fixture(autouse=True)
def _value_checks_on():
    before = checks.value_checks_enabled()
    checks.set_value_checks(True)
    yield
    checks.set_value_checks(before)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def chi2_bound(df: int, z: float = 4.753) -> float:
    """Chi-square quantile for ``df`` degrees of freedom at upper tail ``Phi(-z)`` (1e-6)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def assert_frequencies(draws: torch.Tensor, probs: torch.Tensor, what: str = "") -> None:
    """``draws`` (int, n values) follow ``probs [V]``: zero-probability values never appear and
    Pearson's chi-square is below the p = 1e-6 bound; total variation below 4 / sqrt(n)."""
    n = draws.numel()
    v = probs.numel()
    counts = torch.bincount(draws.reshape(-1), minlength=v).to(F64)
    assert counts.numel() == v, f"{what}: drew a token outside [0, {v})"
    zero = probs <= 0
    assert not bool(counts[zero].any()), f"{what}: drew a token of probability 0"
    p = probs[~zero]
    expected = n * p
    stat = float(((counts[~zero] - expected) ** 2 / expected).sum())
    df = max(int((~zero).sum()) - 1, 1)
    assert stat < chi2_bound(df), f"{what}: chi-square {stat:.2f} >= {chi2_bound(df):.2f} ({df=})"
    tv = 0.5 * float((counts / n - probs).abs().sum())
    assert tv < 4.0 / math.sqrt(n), f"{what}: total variation {tv:.4f}"


def one_hot_logits(x0: torch.Tensor, vocab: int, dtype=F64) -> torch.Tensor:
    """``log one_hot(x0)``: 0 at ``x0``, ``-inf`` elsewhere (softmax is exactly the one-hot)."""
    out = torch.full((*x0.shape, vocab), -torch.inf, dtype=dtype)
    return out.scatter(-1, x0[..., None], 0.0)


def build(kind: str, vocab: int, beta: float, mask_pos: float = 0.5) -> torch.Tensor:
    mask_id = min(int(mask_pos * vocab), vocab - 1)
    return transition_matrix(kind, vocab, beta, mask_id=mask_id, bandwidth=max(1, vocab // 3))


def schedule(kind: str, vocab: int = 5, steps: int = 8, mask_id: int = 2) -> TransitionSchedule:
    betas = torch.linspace(0.05, 0.6, steps, dtype=F64)
    return TransitionSchedule.from_betas(betas, kind, vocab, mask_id=mask_id, bandwidth=1)


def possible_pair(sched: TransitionSchedule, t: int, gen: torch.Generator, n: int):
    """``n`` pairs ``(x0, x_t)`` with ``x_t ~ q(x_t | x0)``, so every pair is possible."""
    v = sched.vocab_size
    x0 = torch.randint(0, v, (n,), generator=gen)
    x_t = torch.multinomial(sched.cumulative(t)[x0], 1, generator=gen).squeeze(1)
    return x0, x_t


KINDS = ["uniform", "absorbing", "banded", "gaussian"]
MASK_POSITIONS = {"first": 0, "middle": 3, "last": 6}  # for V = 7


# --------------------------------------------------------------------------------------------
# transition builders
# --------------------------------------------------------------------------------------------


@FAST
@given(
    kind=st.sampled_from(KINDS),
    vocab=st.integers(2, 17),
    beta=st.floats(0.0, 1.0),
    mask_pos=st.floats(0.0, 1.0),
)
def test_builders_are_row_stochastic_float64(kind, vocab, beta, mask_pos) -> None:
    q = build(kind, vocab, beta, mask_pos)
    assert q.dtype == F64 and q.shape == (vocab, vocab)
    assert bool((q >= 0).all()), f"negative entry in {kind}"
    torch.testing.assert_close(q.sum(-1), torch.ones(vocab, dtype=F64), rtol=0, atol=1e-13)
    if kind in ("uniform", "banded", "gaussian"):
        torch.testing.assert_close(q, q.t(), rtol=0, atol=1e-15)  # symmetric
        torch.testing.assert_close(q.sum(0), torch.ones(vocab, dtype=F64), rtol=0, atol=1e-13)


def test_uniform_entries_and_stationary() -> None:
    v, beta = 6, 0.3
    q = uniform_transition(v, beta)
    expected = (1 - beta) * torch.eye(v, dtype=F64) + beta / v
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-15)
    # (1 - beta)^T -> 0: every row of Qbar_T tends to 1/V
    qbar = cumulative_transitions(torch.stack([uniform_transition(v, 0.1)] * 300))
    torch.testing.assert_close(qbar[-1], torch.full((v, v), 1 / v, dtype=F64), rtol=0, atol=1e-10)
    assert float((qbar[0] - qbar[0][:1]).abs().max()) > 0.5  # far from stationary at t = 1


@pytest.mark.parametrize("where", list(MASK_POSITIONS))
def test_absorbing_entries_and_stationary(where: str) -> None:
    v, m, beta = 7, MASK_POSITIONS[where], 0.25
    q = absorbing_transition(v, beta, m)
    for i in range(v):
        for j in range(v):
            stay = float(i == j) if i == m else (1 - beta) * (i == j)
            want = stay + (beta if (j == m and i != m) else 0.0)
            assert float(q[i, j]) == pytest.approx(want, abs=1e-15), (i, j)
    qbar = TransitionSchedule.from_betas([0.2] * 150, "absorbing", v, mask_id=m).q_bar
    target = torch.zeros(v, v, dtype=F64)
    target[:, m] = 1.0
    torch.testing.assert_close(qbar[-1], target, rtol=0, atol=1e-10)
    # beta = 1 moves everything to the mask in one step
    torch.testing.assert_close(absorbing_transition(v, 1.0, m), target, rtol=0, atol=0)


def test_banded_structure() -> None:
    v, beta, bw = 8, 0.6, 2
    q = banded_transition(v, beta, bw)
    dist = (torch.arange(v)[:, None] - torch.arange(v)[None, :]).abs()
    off = (dist > 0) & (dist <= bw)
    torch.testing.assert_close(q[off], torch.full_like(q[off], beta / v), rtol=0, atol=1e-15)
    assert bool((q[dist > bw] == 0).all()), "mass outside the band"
    # diagonal = the rest of the row: edge rows have fewer neighbours and keep more mass
    neighbours = off.sum(-1).to(F64)
    torch.testing.assert_close(q.diagonal(), 1 - beta / v * neighbours, rtol=0, atol=1e-15)
    assert float(q[0, 0]) > float(q[v // 2, v // 2])
    torch.testing.assert_close(q, q.t(), rtol=0, atol=0)
    # the full band is the uniform matrix
    torch.testing.assert_close(banded_transition(v, beta, v - 1), uniform_transition(v, beta))
    torch.testing.assert_close(banded_transition(v, beta, 50), uniform_transition(v, beta))


@pytest.mark.parametrize("vocab", [2, 5, 12])
@pytest.mark.parametrize("beta", [1e-3, 0.1, 0.7, 1.0])
def test_gaussian_matches_paper_formula(vocab: int, beta: float) -> None:
    q = discretized_gaussian_transition(vocab, beta)

    def g(n: int) -> float:
        return math.exp(-4.0 * n * n / ((vocab - 1) ** 2 * beta))

    z = sum(g(n) for n in range(-(vocab - 1), vocab))
    for i in range(vocab):
        for j in range(vocab):
            if i != j:
                assert float(q[i, j]) == pytest.approx(g(i - j) / z, rel=1e-12, abs=1e-300)
        off = sum(g(i - j) / z for j in range(vocab) if j != i)
        assert float(q[i, i]) == pytest.approx(1.0 - off, rel=1e-12)
    torch.testing.assert_close(q, q.t(), rtol=0, atol=0)
    # entries decay with the distance from the diagonal
    row = q[0]
    assert bool((row[1:] <= row[:-1]).all())


def test_gaussian_limits_and_stationary() -> None:
    torch.testing.assert_close(discretized_gaussian_transition(6, 0.0), torch.eye(6, dtype=F64))
    tiny = discretized_gaussian_transition(6, 1e-6)  # off-diagonals underflow, no NaN
    assert bool(torch.isfinite(tiny).all())
    torch.testing.assert_close(tiny, torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
    qbar = TransitionSchedule.from_betas([0.5] * 200, "gaussian", 6).q_bar[-1]
    torch.testing.assert_close(qbar, torch.full((6, 6), 1 / 6, dtype=F64), rtol=0, atol=1e-8)


@FAST
@given(steps=st.integers(1, 7), vocab=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_cumulative_equals_manual_loop(steps: int, vocab: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mats = torch.softmax(torch.randn(steps, vocab, vocab, generator=gen, dtype=F64) * 2, -1)
    qbar = cumulative_transitions(mats)
    assert qbar.dtype == F64 and qbar.shape == (steps, vocab, vocab)
    acc = torch.eye(vocab, dtype=F64)
    for t in range(steps):
        acc = acc @ mats[t]
        torch.testing.assert_close(qbar[t], acc, rtol=1e-13, atol=1e-15)
    # a list of matrices, and float32 input, give float64 products
    torch.testing.assert_close(cumulative_transitions(list(mats)), qbar, rtol=0, atol=0)
    low = cumulative_transitions(mats.float())
    assert low.dtype == F64
    torch.testing.assert_close(low, qbar, rtol=0, atol=1e-6)


def test_cumulative_is_ordered_product() -> None:
    # Qbar_2 = Q_1 Q_2, not Q_2 Q_1 (the two differ for these matrices)
    q1 = absorbing_transition(4, 0.5, 0)
    q2 = banded_transition(4, 0.9, 1)
    qbar = cumulative_transitions([q1, q2])
    torch.testing.assert_close(qbar[1], q1 @ q2)
    assert not torch.allclose(q1 @ q2, q2 @ q1)


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_tables(kind: str) -> None:
    betas = [0.1, 0.2, 0.3, 0.5]
    s = TransitionSchedule.from_betas(betas, kind, 5, mask_id=4, bandwidth=1)
    assert s.num_steps == 4 and s.vocab_size == 5
    assert s.q_steps.dtype == F64 and s.q_bar.dtype == F64
    for t in range(1, 5):
        want = transition_matrix(kind, 5, betas[t - 1], mask_id=4, bandwidth=1)
        torch.testing.assert_close(s.step(t), want, rtol=0, atol=0)
        torch.testing.assert_close(s.qbar_prev(t) @ s.step(t), s.cumulative(t))
    torch.testing.assert_close(s.qbar_prev(1), torch.eye(5, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(s.qbar_prev(3), s.q_bar[1], rtol=0, atol=0)
    ts = torch.tensor([1, 3, 4, 1])
    assert s.qbar_prev(ts).shape == (4, 5, 5)
    for i, t in enumerate(ts.tolist()):
        torch.testing.assert_close(s.qbar_prev(ts)[i], s.qbar_prev(t), rtol=0, atol=0)
        torch.testing.assert_close(s.step(ts)[i], s.step(t), rtol=0, atol=0)
        torch.testing.assert_close(s.cumulative(ts)[i], s.cumulative(t), rtol=0, atol=0)
    for bad in (0, 5, torch.tensor([0, 1]), torch.tensor([5])):
        with pytest.raises(ValueError, match="t must lie"):
            s.qbar_prev(bad)
    with pytest.raises(TypeError):
        s.step(1.0)
    s2 = TransitionSchedule.from_matrices(s.q_steps)
    torch.testing.assert_close(s2.q_bar, s.q_bar, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: uniform_transition(5, -0.1), ValueError, "beta"),
        (lambda: uniform_transition(5, 1.5), ValueError, "beta"),
        (lambda: uniform_transition(5, float("nan")), ValueError, "beta"),
        (lambda: uniform_transition(5, True), TypeError, "beta"),
        (lambda: uniform_transition(1, 0.1), ValueError, "vocab_size"),
        (lambda: uniform_transition(5.0, 0.1), TypeError, "vocab_size"),
        (lambda: absorbing_transition(5, 0.1, 5), ValueError, "mask_id"),
        (lambda: absorbing_transition(5, 0.1, -1), ValueError, "mask_id"),
        (lambda: banded_transition(5, 0.1, 0), ValueError, "bandwidth"),
        (lambda: discretized_gaussian_transition(5, 2.0), ValueError, "beta"),
        (lambda: transition_matrix("cosine", 5, 0.1), ValueError, "kind"),
        (lambda: transition_matrix("absorbing", 5, 0.1), ValueError, "mask_id"),
        (lambda: transition_matrix("banded", 5, 0.1), ValueError, "bandwidth"),
        (lambda: TransitionSchedule.from_betas([0.1, 1.2], "uniform", 5), ValueError, "beta"),
        (lambda: TransitionSchedule.from_betas([], "uniform", 5), ValueError, "betas"),
        (lambda: TransitionSchedule.from_betas([[0.1]], "uniform", 5), ValueError, "betas"),
        (lambda: TransitionSchedule.from_betas([0.1], "nope", 5), ValueError, "kind"),
        (lambda: cumulative_transitions(torch.ones(2, 3, 3)), ValueError, "sum to 1"),
        (lambda: cumulative_transitions(torch.eye(3)), ValueError, "shape"),
        (lambda: cumulative_transitions([]), ValueError, "at least one"),
        (
            lambda: cumulative_transitions(torch.tensor([[[1.5, -0.5], [0.0, 1.0]]])),
            ValueError,
            "negative",
        ),
        (
            lambda: TransitionSchedule(torch.eye(3)[None].double(), torch.eye(4)[None].double()),
            ValueError,
            "same shape",
        ),
    ],
)
def test_transition_validation(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------------------------
# posterior
# --------------------------------------------------------------------------------------------


@FAST
@given(
    kind=st.sampled_from(KINDS),
    vocab=st.integers(2, 7),
    t=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_posterior_matches_brute_force_bayes(kind, vocab, t, seed) -> None:
    s = schedule(kind, vocab, steps=6, mask_id=vocab - 1)
    x0, x_t = possible_pair(s, t, torch.Generator().manual_seed(seed), 6)
    post = d3pm_posterior(x0, x_t, q_step=s.step(t), qbar_next=s.qbar_prev(t))
    assert post.dtype == F64 and post.shape == (6, vocab)
    qbar_prev, q_t, qbar_t = s.qbar_prev(t), s.step(t), s.cumulative(t)
    for n in range(6):
        a, b = int(x0[n]), int(x_t[n])
        for j in range(vocab):
            # q(x_{t-1} = j | x0) q(x_t | x_{t-1} = j) / q(x_t | x0)
            bayes = float(qbar_prev[a, j]) * float(q_t[j, b]) / float(qbar_t[a, b])
            assert float(post[n, j]) == pytest.approx(bayes, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [1, 2, 7])
def test_posterior_logits_at_exact_x0_equal_true_posterior(kind: str, t: int) -> None:
    s = schedule(kind, vocab=5, mask_id=2)
    x0, x_t = possible_pair(s, t, torch.Generator().manual_seed(t), 40)
    logits = d3pm_posterior_logits(
        one_hot_logits(x0, 5), x_t, q_step=s.step(t), qbar_next=s.qbar_prev(t)
    )
    truth = d3pm_posterior(x0, x_t, q_step=s.step(t), qbar_next=s.qbar_prev(t))
    torch.testing.assert_close(torch.softmax(logits, -1), truth, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_logits_brute_force(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    s, t, v = schedule(kind, vocab=4, mask_id=0), 3, 4
    x0_logits = torch.randn(2, 3, v, generator=gen, dtype=F64) * 2
    x_t = torch.randint(0, v, (2, 3), generator=gen)
    out = d3pm_posterior_logits(x0_logits, x_t, q_step=s.step(t), qbar_next=s.qbar_prev(t))
    assert out.shape == (2, 3, v) and out.dtype == F64
    q_t, qbar = s.step(t), s.qbar_prev(t)
    for b in range(2):
        for i in range(3):
            p = [math.exp(float(z)) for z in x0_logits[b, i]]
            p = [z / sum(p) for z in p]
            for j in range(v):
                mix = sum(p[k] * float(qbar[k, j]) for k in range(v))
                col = float(q_t[j, x_t[b, i]])
                want = math.log(col) + math.log(mix) if col > 0 else -math.inf
                got = float(out[b, i, j])
                if want == -math.inf:
                    assert got == -math.inf
                else:
                    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mask_id", [0, 3, 6])
def test_posterior_logits_neg_inf_where_factor_is_zero(mask_id: int) -> None:
    v = 7
    s = schedule("absorbing", vocab=v, mask_id=mask_id)
    x0_logits = torch.randn(v, v, dtype=F64)
    x_t = torch.arange(v)
    out = d3pm_posterior_logits(x0_logits, x_t, q_step=s.step(4), qbar_next=s.qbar_prev(4))
    for i in range(v):
        if i == mask_id:
            # every x_{t-1} can lead to the mask: all finite
            assert bool(torch.isfinite(out[i]).all())
        else:
            # an unmasked x_t came from itself only (column x_t of Q_t is (1 - beta) e_{x_t})
            assert bool(torch.isfinite(out[i, i]))
            others = torch.cat([out[i, :i], out[i, i + 1 :]])
            assert bool(torch.isneginf(others).all())
    # Qbar_{t-1} = I at t = 1 with a one-hot x0: the mixture vanishes off x0
    x0 = torch.tensor([1 if mask_id != 1 else 2])
    lg = d3pm_posterior_logits(
        one_hot_logits(x0, v), torch.tensor([mask_id]), q_step=s.step(1), qbar_next=s.qbar_prev(1)
    )
    assert int(torch.isfinite(lg).sum()) == 1 and bool(torch.isfinite(lg[0, x0[0]]))


@pytest.mark.parametrize("dtype", [F32, torch.float16, torch.bfloat16])
def test_posterior_logits_low_precision_inputs(dtype: torch.dtype) -> None:
    s = schedule("gaussian", vocab=6)
    gen = torch.Generator().manual_seed(1)
    x0_logits = torch.randn(10, 6, generator=gen).to(dtype)
    x_t = torch.randint(0, 6, (10,), generator=gen)
    low = d3pm_posterior_logits(
        x0_logits, x_t, q_step=s.step(5).float(), qbar_next=s.qbar_prev(5).float()
    )
    ref = d3pm_posterior_logits(x0_logits.double(), x_t, q_step=s.step(5), qbar_next=s.qbar_prev(5))
    assert low.dtype == F32
    torch.testing.assert_close(low.double(), ref, rtol=1e-5, atol=1e-5)


def test_per_sequence_matrices() -> None:
    s = schedule("absorbing", vocab=5, mask_id=1)
    ts = torch.tensor([1, 4, 8])
    gen = torch.Generator().manual_seed(3)
    x0_logits = torch.randn(3, 4, 5, generator=gen, dtype=F64)
    x0 = torch.randint(0, 5, (3, 4), generator=gen)
    x0 = torch.where(x0 == 1, 0, x0)
    x_t = x0.clone()
    x_t[:, ::2] = 1  # half masked: x_t is x0 or the mask, both possible at every t
    q, qb = s.step(ts), s.qbar_prev(ts)
    batched = d3pm_posterior_logits(x0_logits, x_t, q_step=q, qbar_next=qb)
    batched_post = d3pm_posterior(x0, x_t, q_step=q, qbar_next=qb)
    mixed = d3pm_posterior_logits(
        x0_logits, x_t, q_step=q, qbar_next=s.qbar_prev(4)
    )  # one 3-D, one 2-D
    # batched and single matrix products may take different BLAS kernels (summation order):
    # a few float64 ulps, nothing a wrong matrix could give
    ulps = {"rtol": 8 * torch.finfo(F64).eps, "atol": 0.0}
    for i, t in enumerate(ts.tolist()):
        one = d3pm_posterior_logits(
            x0_logits[i], x_t[i], q_step=s.step(t), qbar_next=s.qbar_prev(t)
        )
        torch.testing.assert_close(batched[i], one, **ulps)
        post = d3pm_posterior(x0[i], x_t[i], q_step=s.step(t), qbar_next=s.qbar_prev(t))
        torch.testing.assert_close(batched_post[i], post, rtol=0, atol=0)
        half = d3pm_posterior_logits(
            x0_logits[i], x_t[i], q_step=s.step(t), qbar_next=s.qbar_prev(4)
        )
        torch.testing.assert_close(mixed[i], half, **ulps)


def test_posterior_of_impossible_pair_raises() -> None:
    s = schedule("absorbing", vocab=5, mask_id=2)
    # an unmasked x_t different from x0 cannot happen
    with pytest.raises(ValueError, match="impossible"):
        d3pm_posterior(
            torch.tensor([0]), torch.tensor([3]), q_step=s.step(3), qbar_next=s.qbar_prev(3)
        )


# --------------------------------------------------------------------------------------------
# hybrid loss
# --------------------------------------------------------------------------------------------


def explicit_hybrid(x0_logits, x_t, x0, q_t, qbar_prev, first, lam):
    """The hybrid loss written independently (per row, float64, from the definitions)."""
    out = []
    for i in range(x_t.numel()):
        logp0 = torch.log_softmax(x0_logits[i], -1)
        ce = -logp0[x0[i]]
        if first[i]:
            vb = ce
        else:
            q = q_t[:, x_t[i]] * qbar_prev[x0[i]]
            q = q / q.sum()
            p = q_t[:, x_t[i]] * (logp0.exp() @ qbar_prev)
            p = p / p.sum()
            nz = q > 0
            vb = (q[nz] * (q[nz].log() - p[nz].log())).sum()
        out.append(vb + lam * ce)
    return torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
def test_kl_is_zero_at_exact_x0(kind: str) -> None:
    s = schedule(kind, vocab=6, mask_id=5)
    for t in (2, 5, 8):
        x0, x_t = possible_pair(s, t, torch.Generator().manual_seed(t), 50)
        loss = d3pm_hybrid_loss(
            one_hot_logits(x0, 6),
            x_t,
            x0,
            q_step=s.step(t),
            qbar_next=s.qbar_prev(t),
            t_is_one=False,
            hybrid_lambda=0.0,
            reduction="none",
        )
        assert loss.dtype == F64 and loss.shape == (50,)
        assert float(loss.abs().max()) < 1e-10


@FAST
@given(
    kind=st.sampled_from(KINDS),
    t=st.integers(2, 8),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**31),
)
def test_kl_is_nonnegative_and_matches_explicit(kind, t, scale, seed) -> None:
    s = schedule(kind, vocab=5, mask_id=0)
    gen = torch.Generator().manual_seed(seed)
    x0, x_t = possible_pair(s, t, gen, 12)
    x0_logits = torch.randn(12, 5, generator=gen, dtype=F64) * scale
    kl = d3pm_hybrid_loss(
        x0_logits,
        x_t,
        x0,
        q_step=s.step(t),
        qbar_next=s.qbar_prev(t),
        t_is_one=False,
        hybrid_lambda=0.0,
        reduction="none",
    )
    assert float(kl.min()) >= -1e-12
    want = explicit_hybrid(x0_logits, x_t, x0, s.step(t), s.qbar_prev(t), [False] * 12, 0.0)
    torch.testing.assert_close(kl, want, rtol=1e-9, atol=1e-12)


def test_t_is_one_branch_is_cross_entropy() -> None:
    s = schedule("uniform", vocab=5)
    gen = torch.Generator().manual_seed(5)
    x0_logits = torch.randn(3, 4, 5, generator=gen, dtype=F64)
    x0 = torch.randint(0, 5, (3, 4), generator=gen)
    x_t = torch.randint(0, 5, (3, 4), generator=gen)
    ce = torch.nn.functional.cross_entropy(
        x0_logits.reshape(-1, 5), x0.reshape(-1), reduction="none"
    )
    kw = {"q_step": s.step(1), "qbar_next": s.qbar_prev(1)}
    only_vb = d3pm_hybrid_loss(
        x0_logits, x_t, x0, t_is_one=True, hybrid_lambda=0.0, **kw, reduction="none"
    )
    torch.testing.assert_close(only_vb.reshape(-1), ce, rtol=1e-14, atol=0)
    hybrid = d3pm_hybrid_loss(
        x0_logits, x_t, x0, t_is_one=True, hybrid_lambda=0.25, **kw, reduction="none"
    )
    torch.testing.assert_close(hybrid.reshape(-1), 1.25 * ce, rtol=1e-14, atol=0)
    # per-sequence t_is_one with per-sequence matrices (t = 1, 3, 1)
    ts = torch.tensor([1, 3, 1])
    first = ts == 1
    mixed = d3pm_hybrid_loss(  # uniform: every (x0, x_t) pair is possible
        x0_logits,
        x_t,
        x0,
        q_step=s.step(ts),
        qbar_next=s.qbar_prev(ts),
        t_is_one=first,
        hybrid_lambda=0.01,
        reduction="none",
    )
    for i, t in enumerate(ts.tolist()):
        want = explicit_hybrid(
            x0_logits[i], x_t[i], x0[i], s.step(t), s.qbar_prev(t), [t == 1] * 4, 0.01
        )
        torch.testing.assert_close(mixed[i], want, rtol=1e-10, atol=1e-13)


def test_hybrid_gradcheck() -> None:
    s = schedule("absorbing", vocab=4, mask_id=1)
    gen = torch.Generator().manual_seed(7)
    ts = torch.tensor([1, 3, 6])
    x0 = torch.tensor([[0, 2], [3, 0], [2, 3]])
    x_t = torch.tensor([[1, 2], [1, 0], [2, 1]])  # absorbing (mask 1): x_t is x0 or the mask
    x0_logits = torch.randn(3, 2, 4, generator=gen, dtype=F64, requires_grad=True)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=F64)

    def f(z):
        return d3pm_hybrid_loss(
            z,
            x_t,
            x0,
            q_step=s.step(ts),
            qbar_next=s.qbar_prev(ts),
            t_is_one=ts == 1,
            hybrid_lambda=0.1,
            weight=weight,
            reduction="none",
        )

    assert torch.autograd.gradcheck(f, (x0_logits,), eps=1e-6, atol=1e-8)
    # shared matrices, t > 1, uniform
    u = schedule("uniform", vocab=4)
    xt2 = torch.randint(0, 4, (3, 2), generator=gen)

    def g(z):
        return d3pm_hybrid_loss(
            z, xt2, x0, q_step=u.step(4), qbar_next=u.qbar_prev(4), t_is_one=False, reduction="none"
        )

    assert torch.autograd.gradcheck(g, (x0_logits,), eps=1e-6, atol=1e-8, fast_mode=True)


def test_hybrid_gradient_finite_at_peaked_logits() -> None:
    s = schedule("absorbing", vocab=5, mask_id=4)
    x0, x_t = possible_pair(s, 6, torch.Generator().manual_seed(2), 30)
    z = one_hot_logits(x0, 5).requires_grad_()
    loss = d3pm_hybrid_loss(
        z, x_t, x0, q_step=s.step(6), qbar_next=s.qbar_prev(6), t_is_one=False, reduction="none"
    )
    loss.sum().backward()
    assert bool(torch.isfinite(z.grad).all())
    # very confident finite logits (gaps of a few hundred): finite, and the KL stays >= 0.
    # (Gaps beyond ~745 underflow softmax(x0_logits) to exact zeros in float64; the KL is then
    # +inf wherever the true posterior needs a vanished x0.)
    gen = torch.Generator().manual_seed(12)
    z2 = (torch.randn(30, 5, generator=gen, dtype=F64) * 40).requires_grad_()
    loss2 = d3pm_hybrid_loss(
        z2, x_t, x0, q_step=s.step(6), qbar_next=s.qbar_prev(6), t_is_one=False, reduction="none"
    )
    loss2.sum().backward()
    assert bool(torch.isfinite(loss2).all()) and float(loss2.detach().min()) >= -1e-9
    assert bool(torch.isfinite(z2.grad).all())


def test_hybrid_reductions_weight_ignore() -> None:
    s = schedule("banded", vocab=5)
    gen = torch.Generator().manual_seed(9)
    x0, x_t = possible_pair(s, 4, gen, 8)
    x0, x_t = x0.reshape(2, 4), x_t.reshape(2, 4)
    z = torch.randn(2, 4, 5, generator=gen, dtype=F64)
    kw = {"q_step": s.step(4), "qbar_next": s.qbar_prev(4), "t_is_one": False}
    base = d3pm_hybrid_loss(z, x_t, x0, **kw, reduction="none")
    assert base.shape == (2, 4)
    torch.testing.assert_close(d3pm_hybrid_loss(z, x_t, x0, reduction="sum", **kw), base.sum())
    torch.testing.assert_close(d3pm_hybrid_loss(z, x_t, x0, reduction="mean", **kw), base.mean())
    w = torch.tensor([2.0, 0.5], dtype=F64)
    weighted = d3pm_hybrid_loss(z, x_t, x0, weight=w, **kw, reduction="none")
    torch.testing.assert_close(weighted, base * w[:, None])
    ignore = torch.tensor([[False, True, False, False], [True, True, False, False]])
    kept = d3pm_hybrid_loss(z, x_t, x0, ignore=ignore, reduction="none", **kw)
    assert bool((kept[ignore] == 0).all())
    torch.testing.assert_close(kept[~ignore], base[~ignore])
    mean = d3pm_hybrid_loss(z, x_t, x0, ignore=ignore, weight=w, reduction="mean", **kw)
    torch.testing.assert_close(mean, (base * w[:, None])[~ignore].sum() / 5)


def test_hybrid_float32() -> None:
    s = schedule("gaussian", vocab=6)
    gen = torch.Generator().manual_seed(4)
    x0, x_t = possible_pair(s, 5, gen, 20)
    z = torch.randn(20, 6, generator=gen)
    kw = {"q_step": s.step(5), "qbar_next": s.qbar_prev(5), "t_is_one": False}
    low = d3pm_hybrid_loss(z, x_t, x0, **kw, reduction="none")
    assert low.dtype == F32
    torch.testing.assert_close(
        low.double(), d3pm_hybrid_loss(z.double(), x_t, x0, **kw, reduction="none")
    )


def test_hybrid_impossible_pair_raises_unless_t_is_one() -> None:
    s = schedule("absorbing", vocab=5, mask_id=2)
    z = torch.randn(1, 5, dtype=F64)
    x0, x_t = torch.tensor([0]), torch.tensor([3])
    kw = {"q_step": s.step(3), "qbar_next": s.qbar_prev(3)}
    with pytest.raises(ValueError, match="impossible"):
        d3pm_hybrid_loss(z, x_t, x0, t_is_one=False, **kw, reduction="none")
    out = d3pm_hybrid_loss(
        z, x_t, x0, t_is_one=True, **kw, reduction="none"
    )  # t = 1: only the CE is needed
    assert bool(torch.isfinite(out).all())
    ignored = d3pm_hybrid_loss(
        z, x_t, x0, t_is_one=False, ignore=torch.tensor([True]), **kw, reduction="none"
    )
    assert float(ignored) == 0.0  # an ignored (padding) position is not checked


# --------------------------------------------------------------------------------------------
# reverse step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absorbing", "gaussian"])
def test_step_frequencies_match_posterior(kind: str) -> None:
    # 4 distinct (x0_logits, x_t) rows, each repeated 5000 times: 20000 rows, V = 5
    v, reps, t = 5, 5000, 5
    s = schedule(kind, vocab=v, mask_id=3)
    gen = torch.Generator().manual_seed(11)
    base_logits = torch.randn(4, v, generator=gen, dtype=F64) * 1.5
    base_xt = torch.tensor([3, 0, 3, 4])
    x0_logits = base_logits.repeat_interleave(reps, 0)
    x_t = base_xt.repeat_interleave(reps)
    draws = d3pm_step(x0_logits, x_t, q_step=s.step(t), qbar_next=s.qbar_prev(t), seed=1234)
    assert draws.dtype == torch.int64 and draws.shape == (4 * reps,)
    probs = torch.softmax(
        d3pm_posterior_logits(base_logits, base_xt, q_step=s.step(t), qbar_next=s.qbar_prev(t)), -1
    )
    for g in range(4):
        assert_frequencies(draws[g * reps : (g + 1) * reps], probs[g], f"{kind} group {g}")


def test_step_seed_generator_and_fixed() -> None:
    s = schedule("uniform", vocab=6)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 50, 6, generator=gen)
    x_t = torch.randint(0, 6, (4, 50), generator=gen)
    kw = {"q_step": s.step(6), "qbar_next": s.qbar_prev(6)}
    a = d3pm_step(z, x_t, seed=7, **kw)
    assert a.shape == (4, 50)
    assert torch.equal(a, d3pm_step(z, x_t, seed=7, **kw))
    assert not torch.equal(a, d3pm_step(z, x_t, seed=8, **kw))
    assert not torch.equal(a, d3pm_step(z, x_t, seed=7, offset=1, **kw))
    assert torch.equal(a, d3pm_step(z, x_t, seed=torch.tensor(7), **kw))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = d3pm_step(z, x_t, generator=g1, **kw)
    assert torch.equal(first, d3pm_step(z, x_t, generator=g2, **kw))
    assert not torch.equal(first, d3pm_step(z, x_t, generator=g1, **kw))  # generator advanced
    # fixed positions keep x_t; the others draw exactly what they draw without `fixed`
    fixed = torch.rand(4, 50, generator=gen) < 0.4
    b = d3pm_step(z, x_t, fixed=fixed, seed=7, **kw)
    assert torch.equal(b[fixed], x_t[fixed])
    assert torch.equal(b[~fixed], a[~fixed])
    assert bool((a != x_t)[fixed].any()), "test needs fixed rows that would otherwise move"
    # a per-sequence fixed prefix of B
    c = d3pm_step(z, x_t, fixed=torch.tensor([True, False, True, False]), seed=7, **kw)
    assert torch.equal(c[0], x_t[0]) and torch.equal(c[1], a[1])


def test_step_batched_matrices_match_shared() -> None:
    s = schedule("banded", vocab=5)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(3, 40, 5, generator=gen)
    x_t = torch.randint(0, 5, (3, 40), generator=gen)
    shared = d3pm_step(z, x_t, q_step=s.step(4), qbar_next=s.qbar_prev(4), seed=5)
    ts = torch.tensor([4, 4, 4])
    batched = d3pm_step(z, x_t, q_step=s.step(ts), qbar_next=s.qbar_prev(ts), seed=5)
    assert torch.equal(shared, batched)
    # different matrices per sequence: sequence 1 at t = 1 with an exact x0 returns x0 there
    x0 = torch.randint(0, 5, (3, 40), generator=gen)
    ts = torch.tensor([4, 1, 4])
    out = d3pm_step(
        one_hot_logits(x0, 5, F32), x_t, q_step=s.step(ts), qbar_next=s.qbar_prev(ts), seed=5
    )
    possible = s.step(1)[x0[1], x_t[1]] > 0
    assert torch.equal(out[1][possible], x0[1][possible])


# --------------------------------------------------------------------------------------------
# dense noising (fastdiff.corrupt_dense)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absorbing", "gaussian"])
def test_corrupt_dense_frequencies(kind: str) -> None:
    v, reps = 5, 4000
    s = schedule(kind, vocab=v, mask_id=2)
    qbar = s.cumulative(4)
    x0 = torch.arange(v).repeat_interleave(reps)  # 20000 rows
    x_t = add_noise_dense(x0, qbar, seed=99)
    assert x_t.dtype == torch.int64 and x_t.shape == x0.shape
    for a in range(v):
        assert_frequencies(x_t[a * reps : (a + 1) * reps], qbar[a], f"{kind} x0={a}")
    assert torch.equal(x_t, add_noise_dense(x0, qbar, seed=99))
    assert add_noise_dense(x0, qbar.float(), seed=99).shape == x0.shape  # float32 accepted


def test_corrupt_dense_per_sequence_and_fixed() -> None:
    v, length = 5, 4000
    s = schedule("absorbing", vocab=v, mask_id=4)
    mats = torch.stack([torch.eye(v, dtype=F64), uniform_transition(v, 1.0), s.cumulative(6)])
    x0 = torch.full((3, length), 1)
    x_t = add_noise_dense(x0, mats, seed=3)
    assert x_t.shape == (3, length)
    assert torch.equal(x_t[0], x0[0])  # identity: nothing moves
    assert_frequencies(x_t[1], torch.full((v,), 1 / v, dtype=F64), "uniform")
    assert_frequencies(x_t[2], s.cumulative(6)[1], "absorbing")
    fixed = torch.zeros(3, length, dtype=torch.bool)
    fixed[:, :100] = True
    y = add_noise_dense(x0, mats, fixed=fixed, seed=3)
    assert torch.equal(y[fixed], x0[fixed])
    assert torch.equal(y[~fixed], x_t[~fixed])
    assert bool((x_t[fixed] != x0[fixed]).any()), "test needs fixed rows that would move"


@pytest.mark.parametrize(
    ("matrix", "x0", "match"),
    [
        (torch.full((4, 4), 0.3, dtype=F64), torch.zeros(3, dtype=torch.long), "sum to 1"),
        (
            torch.tensor([[1.2, -0.2], [0.0, 1.0]], dtype=F64),
            torch.zeros(3, dtype=torch.long),
            "negative",
        ),
        (torch.ones(3, 4, dtype=F64) / 4, torch.zeros(3, dtype=torch.long), "shape"),
        (torch.eye(3, dtype=F64)[None, None], torch.zeros(3, dtype=torch.long), "shape"),
        (torch.eye(3, dtype=F64).expand(2, 3, 3), torch.zeros(3, 5, dtype=torch.long), "batch"),
        (torch.eye(3, dtype=F64), torch.full((3,), 3), "outside"),
        (torch.eye(3, dtype=F64) * float("nan"), torch.zeros(3, dtype=torch.long), "NaN"),
    ],
)
def test_corrupt_dense_rejects_bad_inputs(matrix, x0, match) -> None:
    with pytest.raises(ValueError, match=match):
        add_noise_dense(x0, matrix, seed=0)


# --------------------------------------------------------------------------------------------
# validation of the D3PM ops
# --------------------------------------------------------------------------------------------

_S = schedule("uniform", vocab=4)
_Q, _QB = _S.step(3), _S.qbar_prev(3)
_Z = torch.zeros(2, 3, 4)
_X = torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: d3pm_posterior_logits(_Z, _X.float(), q_step=_Q, qbar_next=_QB),
            TypeError,
            "integer",
        ),
        (
            lambda: d3pm_posterior_logits(_Z.long(), _X, q_step=_Q, qbar_next=_QB),
            TypeError,
            "float",
        ),
        (
            lambda: d3pm_posterior_logits(_Z[:, :2], _X, q_step=_Q, qbar_next=_QB),
            ValueError,
            "shape",
        ),
        (
            lambda: d3pm_posterior_logits(_Z, _X + 4, q_step=_Q, qbar_next=_QB),
            ValueError,
            "outside",
        ),
        (
            lambda: d3pm_posterior_logits(
                _Z, _X, q_step=_Q[:3, :3] / _Q[:3, :3].sum(-1, keepdim=True), qbar_next=_QB
            ),
            ValueError,
            "vocabulary",
        ),
        (
            lambda: d3pm_posterior_logits(_Z, _X, q_step=_Q, qbar_next=uniform_transition(5, 0.1)),
            ValueError,
            "vocabulary",
        ),
        (
            lambda: d3pm_posterior_logits(_Z, _X, q_step=_Q * 2, qbar_next=_QB),
            ValueError,
            "sum to 1",
        ),
        (lambda: d3pm_posterior_logits(_Z, _X, q_step=_Q[:2], qbar_next=_QB), ValueError, "shape"),
        (
            lambda: d3pm_posterior_logits(_Z, _X, q_step=_Q.expand(3, 4, 4), qbar_next=_QB),
            ValueError,
            "matrices",
        ),
        (
            lambda: d3pm_posterior_logits(_Z[..., :1], _X, q_step=_Q, qbar_next=_QB),
            ValueError,
            "vocab_size",
        ),
        (
            lambda: d3pm_posterior_logits(_Z * float("nan"), _X, q_step=_Q, qbar_next=_QB),
            ValueError,
            "NaN",
        ),
        (
            lambda: d3pm_posterior_logits(_Z - torch.inf, _X, q_step=_Q, qbar_next=_QB),
            ValueError,
            "all -inf",
        ),
        (lambda: d3pm_posterior(_X, _X[0], q_step=_Q, qbar_next=_QB), ValueError, "shape"),
        (lambda: d3pm_posterior(_X - 1, _X, q_step=_Q, qbar_next=_QB), ValueError, "outside"),
        (lambda: d3pm_step(_Z, _X, q_step=_Q, qbar_next=_QB, fixed=_X, seed=0), TypeError, "bool"),
        (lambda: d3pm_step(_Z, _X, q_step=_Q, qbar_next=_QB, seed=1.5), TypeError, "seed"),
        (
            lambda: d3pm_hybrid_loss(
                _Z, _X, _X[:1], q_step=_Q, qbar_next=_QB, t_is_one=False, reduction="none"
            ),
            ValueError,
            "shape",
        ),
        (
            lambda: d3pm_hybrid_loss(
                _Z, _X, _X + 9, q_step=_Q, qbar_next=_QB, t_is_one=False, reduction="none"
            ),
            ValueError,
            "outside",
        ),
        (
            lambda: d3pm_hybrid_loss(
                _Z, _X, _X, q_step=_Q, qbar_next=_QB, t_is_one=1, reduction="none"
            ),
            TypeError,
            "t_is_one",
        ),
        (
            lambda: d3pm_hybrid_loss(
                _Z,
                _X,
                _X,
                q_step=_Q,
                qbar_next=_QB,
                t_is_one=torch.ones(3, dtype=torch.bool),
                reduction="none",
            ),
            ValueError,
            "shape",
        ),
        (
            lambda: d3pm_hybrid_loss(
                _Z,
                _X,
                _X,
                q_step=_Q,
                qbar_next=_QB,
                t_is_one=False,
                hybrid_lambda=-1.0,
                reduction="none",
            ),
            ValueError,
            "hybrid_lambda",
        ),
        (
            lambda: d3pm_hybrid_loss(
                _Z, _X, _X, q_step=_Q, qbar_next=_QB, t_is_one=False, reduction="avg"
            ),
            ValueError,
            "reduction",
        ),
    ],
)
def test_d3pm_validation(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_public_names_importable() -> None:
    assert set(transitions.__all__) >= {
        "TransitionSchedule",
        "absorbing_transition",
        "banded_transition",
        "cumulative_transitions",
        "discretized_gaussian_transition",
        "uniform_transition",
    }
