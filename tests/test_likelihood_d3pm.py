"""The D3PM discrete-time bound (fastdiff.likelihood.d3pm_nelbo / d3pm_perplexity_bound) on a
toy language small enough to enumerate.

The toy: sequences of L = 2 tokens over V = 3 (9 states), T = 4 steps of uniform or absorbing
matrices (mask at id 1, not the last column) whose ``Qbar_T`` has NOT reached the limit, so the
prior term is finite and visible; the denoiser is a fixed random table of ``x0`` logits per
(state ``x_t``, step ``t``). Everything the bound is compared with is computed here by plain
enumeration, independently of fastdiff's D3PM ops:

- the per-step terms (the true and model posteriors from the matrices, their KL; the cross
  entropy at ``t = 1``), reproduced on the ``x_t`` the library drew (recorded by the denoiser);
- their exact expectation over ``q(x_t | x0)`` (all 9 states of every step);
- ``-log p_theta(x0)`` of the model chain ``pi(x_T) prod_t p_theta(x_{t-1} | x_t)`` (products
  of the 9 x 9 reverse matrices) and ``KL(q(x_{1:T} | x0) || p_theta(x_{1:T} | x0))`` by
  enumerating all ``9^4`` paths: the bound must equal their sum (the ELBO gap identity).

Monte Carlo checks state their bound in standard errors estimated from independent replicates
(replicated rows of one batch: every row is randomized independently).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastdiff import likelihood
from fastdiff.transitions import TransitionSchedule

V, L, T, MASK = 3, 2, 4, 1
F64 = torch.float64
STATES = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # [9, L], index s = 3 a + b
SCHEDULES = {
    "uniform": TransitionSchedule.from_betas([0.1, 0.25, 0.4, 0.6], "uniform", V),
    "absorbing": TransitionSchedule.from_betas([0.2, 0.3, 0.4, 0.5], "absorbing", V, mask_id=MASK),
}
# the absorbing chain that masks everything at T: pi is the one-hot mask, the prior term 0
ABSORBED = TransitionSchedule.from_betas([0.2, 0.3, 0.4, 1.0], "absorbing", V, mask_id=MASK)
TABLE = 1.5 * torch.randn(
    T, len(STATES), L, V, generator=torch.Generator().manual_seed(0), dtype=F64
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _index(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0] * V + x[..., 1]


def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fixed model: ``TABLE[t - 1, state(x_t)]``, float64 ``[B, L, V]``."""
    return TABLE[t.long() - 1, _index(x_t)]


def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model, checking how the library calls it: under inference mode, ``t`` the steps
    ``[B]`` as float32 integers in ``[1, T]``."""
    assert torch.is_inference_mode_enabled()
    assert t.dtype == torch.float32 and t.shape == x_t.shape[:1]
    step = t.long()
    assert torch.equal(step.float(), t) and int(step.min()) >= 1 and int(step.max()) <= T
    return model(x_t, t)


class Recorder:
    """The toy denoiser, recording its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t):
        self.calls.append((x_t.clone(), t.long()))
        return denoiser(x_t, t)


def step_terms(tables, x0, x_t, t, logits) -> torch.Tensor:
    """The per-step term per sequence ``[N]`` (plain torch): ``sum_i -log softmax(logits)[x0]``
    at ``t = 1``, else ``sum_i KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` with
    ``q ∝ Q_t[:, x_t] Qbar_{t-1}[x0, :]`` and ``p ∝ Q_t[:, x_t] (softmax(logits) Qbar_{t-1})``;
    ``t`` [N] ints."""
    probs = torch.softmax(logits.double(), -1)
    out = torch.empty(x0.shape[0], dtype=F64)
    for n in range(x0.shape[0]):
        step = int(t[n])
        if step == 1:
            out[n] = -probs[n].gather(-1, x0[n, :, None]).log().sum()
            continue
        q_step, qbar_prev = tables.q_steps[step - 1], tables.q_bar[step - 2]
        column = q_step[:, x_t[n]].T  # [L, V]
        q = column * qbar_prev[x0[n]]
        p = column * (probs[n] @ qbar_prev)
        q, p = q / q.sum(-1, keepdim=True), p / p.sum(-1, keepdim=True)
        out[n] = (torch.special.xlogy(q, q) - torch.special.xlogy(q, p)).sum()
    return out


def prior_table(tables, pi=None) -> torch.Tensor:
    """``KL(Qbar_T[v, :] || pi)`` per clean token ``[V]``, ``pi`` default the row mean."""
    q = tables.q_bar[-1]
    pi = q.mean(0) if pi is None else pi
    return (torch.special.xlogy(q, q) - torch.special.xlogy(q, pi)).sum(-1)


def exact_nelbo(tables) -> torch.Tensor:
    """The bound of every ``x0`` of STATES with exact expectations over every ``x_t``: ``[9]``."""
    n = len(STATES)
    x0 = STATES[:, None, :].expand(n, n, L).reshape(-1, L)
    x_t = STATES[None, :, :].expand(n, n, L).reshape(-1, L)
    total = prior_table(tables)[STATES].sum(-1)
    for step in range(1, T + 1):
        qbar = tables.q_bar[step - 1]
        weight = qbar[x0, x_t].prod(-1)  # q(x_t | x0)
        keep = weight > 0  # the posterior is undefined (and unweighted) elsewhere
        terms = torch.zeros(n * n, dtype=F64)
        t = torch.full((int(keep.sum()),), step)
        logits = TABLE[step - 1, _index(x_t[keep])]
        terms[keep] = step_terms(tables, x0[keep], x_t[keep], t, logits)
        total += (weight * terms).reshape(n, n).sum(1)
    return total


def path_identity(tables) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-log p_theta(x0), KL(q(x_{1:T} | x0) || p_theta(x_{1:T} | x0)))`` for every ``x0``
    of STATES, ``[9]`` each, from the sequence-level chains (9 x 9 matrices)."""
    n = len(STATES)
    a, b = STATES[:, 0], STATES[:, 1]
    pi = tables.q_bar[-1].mean(0)
    pi_seq = pi[a] * pi[b]
    forward, reverse = [], []  # forward[t-1][s, s'] = q(x_t = s' | x_{t-1} = s)
    for step in range(1, T + 1):
        q = tables.q_steps[step - 1]
        forward.append(q[a][:, a] * q[b][:, b])
        probs = torch.softmax(TABLE[step - 1], -1)  # [9 (x_t), L, V]
        if step == 1:
            rev = probs[:, 0, a] * probs[:, 1, b]  # p(x0 = s | x_1 = s')
        else:
            pred = probs @ tables.q_bar[step - 2]  # [9, L, V]
            column = q[:, STATES].permute(1, 2, 0)  # Q_t[:, x_t,i] -> [9, L, V]
            post = pred * column
            post = post / post.sum(-1, keepdim=True)
            rev = post[:, 0, a] * post[:, 1, b]  # p(x_{t-1} = s | x_t = s')
        reverse.append(rev)
    marginal = pi_seq
    for rev in reversed(reverse):
        marginal = marginal @ rev
    nll = -marginal.log()
    kl = torch.zeros(n, dtype=F64)
    for path in itertools.product(range(n), repeat=T):  # (x_1, ..., x_T)
        log_p = pi_seq[path[-1]].log() + reverse[0][path[0]].log()  # + log p(x0 | x_1) [9]
        log_q = forward[0][:, path[0]].log()  # log q(x_1 | x0) [9]
        for step in range(2, T + 1):
            prev, cur = path[step - 2], path[step - 1]
            log_p = log_p + reverse[step - 1][cur, prev].log()
            log_q = log_q + forward[step - 1][prev, cur].log()
        q_path = log_q.exp()
        kl += torch.where(q_path > 0, q_path * (log_q - log_p - nll), 0.0)
    return nll, kl


EXACT = {name: exact_nelbo(tables) for name, tables in SCHEDULES.items()}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_exact_bound_is_minus_log_likelihood_plus_path_kl(name):
    """No Monte Carlo: the per-step terms with exact expectations over ``x_t`` plus the prior
    term equal ``-log p_theta(x0) + KL(q(x_{1:T}|x0) || p_theta(x_{1:T}|x0))`` to 1e-10 for
    all 9 sequences, the KL is visibly positive (the bound is not tight for this model) and
    the prior term is positive (``Qbar_T`` has not reached ``pi``)."""
    tables = SCHEDULES[name]
    nll, kl = path_identity(tables)
    assert float((EXACT[name] - (nll + kl)).abs().max()) < 1e-10
    assert float(kl.min()) > 0.05
    assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-12)  # p_theta sums to 1
    assert float(prior_table(tables)[STATES].sum(-1).min()) > 1e-3


@pytest.mark.parametrize("num_t", [None, 2, 3])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_estimate_is_the_sum_of_its_step_terms(name, num_t):
    """The estimate equals, to 1e-10, the per-step terms of the ``x_t`` the denoiser saw
    (recomputed here) times ``T / num_t`` plus the exact prior term; ``num_t=None`` calls the
    denoiser at every step 1..T once (the whole batch at one step), ``num_t=K`` K times with
    steps stratified per sequence (``t_k`` in the k-th of K equal parts of ``[0, T)``); ``x_t``
    is always possible given ``x0``."""
    tables = SCHEDULES[name]
    x0 = STATES.repeat(4, 1)
    rec = Recorder()
    est = likelihood.d3pm_nelbo(rec, x0, transitions=tables, num_t=num_t, seed=3)
    assert est.dtype == F64 and est.shape == (len(x0),)
    k = T if num_t is None else num_t
    assert len(rec.calls) == k
    want = prior_table(tables)[x0].sum(-1)
    for j, (x_t, t) in enumerate(rec.calls):
        if num_t is None:
            assert bool((t == j + 1).all())
        else:
            lo, hi = j * T / k, (j + 1) * T / k
            assert bool(((t - 1 >= math.floor(lo)) & (t - 1 < hi)).all())
        assert bool((tables.q_bar[t[:, None] - 1, x0, x_t].prod(-1) > 0).all())
        want += step_terms(tables, x0, x_t, t, model(x_t, t)) * (T / k)
    assert float((est - want).abs().max()) < 1e-10


@pytest.mark.parametrize("num_t", [None, 2, 3])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_monte_carlo_is_unbiased(name, num_t):
    """300 independent estimates of each of the 9 sequences: every mean lies within 4.5
    standard errors of the exact bound, and their sum within 4 (all steps; stratified steps
    with K = 2 dividing T = 4 and K = 3 not dividing it)."""
    reps = 300
    est = likelihood.d3pm_nelbo(
        denoiser, STATES.repeat(reps, 1), transitions=SCHEDULES[name], num_t=num_t, seed=5
    ).reshape(reps, len(STATES))
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    exact = EXACT[name]
    assert bool(((mean - exact).abs() <= 4.5 * se).all()), ((mean - exact) / se).tolist()
    total = est.sum(1)
    total_se = float(total.std()) / math.sqrt(reps)
    assert abs(float(total.mean()) - float(exact.sum())) <= 4 * total_se


def test_all_steps_is_num_t_equal_to_t():
    """``num_t=T`` is ``num_t=None``: the same steps and draws for the same seed."""
    x0 = STATES.repeat(2, 1)
    tables = SCHEDULES["uniform"]
    a = likelihood.d3pm_nelbo(denoiser, x0, transitions=tables, seed=9)
    b = likelihood.d3pm_nelbo(denoiser, x0, transitions=tables, num_t=T, seed=9)
    assert torch.equal(a, b)


@pytest.mark.parametrize("num_t", [None, 2])
@pytest.mark.parametrize("tables", [SCHEDULES["uniform"], SCHEDULES["absorbing"], ABSORBED])
def test_perfect_denoiser_leaves_only_the_prior(tables, num_t):
    """A denoiser that knows ``x0`` (logits 0 at ``x0``, ``-inf`` elsewhere) makes the model's
    reverse step the true posterior: every KL term and the ``t = 1`` cross entropy vanish and
    the bound is the prior term, exactly (1e-12). The chain that masks everything at ``T``
    has ``pi`` the one-hot mask and no prior term at all."""
    x0 = STATES.repeat(3, 1)
    oracle = torch.full((*x0.shape, V), -math.inf, dtype=F64)
    oracle.scatter_(-1, x0[..., None], 0.0)
    est = likelihood.d3pm_nelbo(lambda x_t, t: oracle, x0, transitions=tables, num_t=num_t, seed=1)
    want = prior_table(tables)[x0].sum(-1)
    assert float((est - want).abs().max()) < 1e-12
    if tables is ABSORBED:
        assert torch.equal(tables.q_bar[-1].mean(0), torch.tensor([0.0, 1.0, 0.0], dtype=F64))
        assert float(est.abs().max()) < 1e-12


def test_prior_term():
    """``d3pm_prior_nats``: ``KL(Qbar_T[v, :] || pi)`` per clean token against the plain sum
    (1e-14), for the default ``pi`` (the row mean of ``Qbar_T``: uniform for the uniform chain)
    and a given one; a prior without mass where ``Qbar_T[x0_i]`` has some is an error for the
    tokens of x0 that reach it (the bound would be infinite), not for the others."""
    uniform = SCHEDULES["uniform"]
    assert torch.allclose(uniform.q_bar[-1].mean(0), torch.full((V,), 1.0 / V, dtype=F64))
    for tables in (*SCHEDULES.values(), ABSORBED):
        got = likelihood.d3pm_prior_nats(transitions=tables)
        assert got.dtype == F64 and got.shape == (V,)
        assert float((got - prior_table(tables)).abs().max()) < 1e-14
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    got = likelihood.d3pm_prior_nats(transitions=uniform, prior=pi)
    assert float((got - prior_table(uniform, pi)).abs().max()) < 1e-14
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    absorbing = SCHEDULES["absorbing"]
    kl = likelihood.d3pm_prior_nats(transitions=absorbing, prior=one_hot)
    assert math.isinf(kl[0]) and math.isinf(kl[2]) and float(kl[MASK]) == 0.0
    x0 = torch.tensor([[1, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"token\(s\) \[0\]"):
        likelihood.d3pm_nelbo(denoiser, x0, transitions=absorbing, prior=one_hot, seed=0)
    est = likelihood.d3pm_nelbo(denoiser, x0[:1], transitions=absorbing, prior=one_hot, seed=0)
    assert bool(torch.isfinite(est).all())
    a = likelihood.d3pm_nelbo(denoiser, x0, transitions=ABSORBED, prior=one_hot, seed=0)
    b = likelihood.d3pm_nelbo(denoiser, x0, transitions=ABSORBED, seed=0)
    assert torch.equal(a, b)


def test_perplexity_bound_streams_and_reports():
    """Two batches of different lengths (the 9 toy sequences 40 times, then 1-token
    sequences): the counts, the exact prior share, ``nats_per_token`` within 4.5 reported
    standard errors of the exact value, bits and perplexity, reproducible per seed and per
    generator state."""
    tables = SCHEDULES["absorbing"]
    long = STATES.repeat(40, 1)
    short = torch.tensor([[0], [2], [1]])
    bound = likelihood.d3pm_perplexity_bound(
        denoiser_any_length, [long, short], transitions=tables, num_t=2, repeats=3, seed=4
    )
    assert bound.num_sequences == len(long) + 3 and bound.num_tokens == long.numel() + 3
    prior = prior_table(tables)
    want_prior = float(prior[long].sum() + prior[short].sum()) / bound.num_tokens
    assert bound.prior_nats_per_token == pytest.approx(want_prior, rel=1e-12)
    exact_short = _exact_single_token(tables)[short[:, 0]].sum()
    exact = float(40 * EXACT["absorbing"].sum() + exact_short) / bound.num_tokens
    assert abs(bound.nats_per_token - exact) <= 4.5 * bound.stderr_nats_per_token
    assert 0.0 < bound.stderr_nats_per_token < 0.1
    assert bound.bits_per_token == pytest.approx(bound.nats_per_token / math.log(2))
    assert bound.perplexity == pytest.approx(math.exp(bound.nats_per_token))
    again = likelihood.d3pm_perplexity_bound(
        denoiser_any_length, [long, short], transitions=tables, num_t=2, repeats=3, seed=4
    )
    assert again == bound
    kw = dict(transitions=tables, generator=torch.Generator().manual_seed(8))
    g1 = likelihood.d3pm_perplexity_bound(denoiser_any_length, [short], **kw)
    kw = dict(transitions=tables, generator=torch.Generator().manual_seed(8))
    g2 = likelihood.d3pm_perplexity_bound(denoiser_any_length, [short], **kw)
    assert g1 == g2


SHORT_TABLE = torch.randn(T, V, 1, V, generator=torch.Generator().manual_seed(1), dtype=F64)


def denoiser_any_length(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The toy model for L = 2; for L = 1 a second fixed table."""
    if x_t.shape[1] == L:
        return denoiser(x_t, t)
    return SHORT_TABLE[t.long() - 1, x_t[:, 0]]


def _exact_single_token(tables) -> torch.Tensor:
    """The exact bound of the 1-token sequences under SHORT_TABLE: ``[V]``."""
    x0 = torch.arange(V).repeat_interleave(V)[:, None]
    x_t = torch.arange(V).repeat(V)[:, None]
    total = prior_table(tables).clone()
    for step in range(1, T + 1):
        weight = tables.q_bar[step - 1][x0[:, 0], x_t[:, 0]]
        keep = weight > 0
        terms = torch.zeros(V * V, dtype=F64)
        t = torch.full((int(keep.sum()),), step)
        logits = SHORT_TABLE[step - 1, x_t[keep][:, 0]]
        terms[keep] = step_terms(tables, x0[keep], x_t[keep], t, logits)
        total += (weight * terms).reshape(V, V).sum(1)
    return total


def test_bad_arguments_raise_before_the_denoiser_runs():
    def never(x_t, t):
        raise AssertionError("the denoiser must not run")

    x0 = torch.zeros(2, 3, dtype=torch.long)
    tables = SCHEDULES["uniform"]
    bad = [
        (dict(num_t=0), ValueError, "num_t"),
        (dict(num_t=T + 1), ValueError, "num_t"),
        (dict(num_t=1.5), ValueError, "num_t"),
        (dict(num_t=True), ValueError, "num_t"),
        (dict(transitions=tables.q_bar), TypeError, "TransitionSchedule"),
        (dict(prior=torch.ones(V)), ValueError, "sum to 1"),
        (dict(prior=torch.ones(V + 1) / (V + 1)), ValueError, "shape"),
        (dict(prior=torch.tensor([1.5, -0.5, 0.0])), ValueError, ">= 0"),
        (dict(prior=torch.tensor([0, 1, 0])), TypeError, "prior"),
        (dict(seed=1.0), TypeError, "seed"),
    ]
    for change, error, match in bad:
        with pytest.raises(error, match=match):
            likelihood.d3pm_nelbo(never, x0, **{"transitions": tables, **change})
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        likelihood.d3pm_nelbo(never, x0 + 3, transitions=tables)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        likelihood.d3pm_nelbo(never, x0[0], transitions=tables)
    with pytest.raises(TypeError, match="int64"):
        likelihood.d3pm_nelbo(never, x0.float(), transitions=tables)
    with pytest.raises(ValueError, match="repeats"):
        likelihood.d3pm_perplexity_bound(never, [x0], transitions=tables, repeats=1)
    with pytest.raises(ValueError, match="num_t"):
        likelihood.d3pm_perplexity_bound(never, [x0], transitions=tables, num_t=0)
    with pytest.raises(ValueError, match="no tokens"):
        likelihood.d3pm_perplexity_bound(never, [], transitions=tables)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\)"):
        likelihood.d3pm_nelbo(lambda x_t, t: torch.zeros(2, 3, 4), x0, transitions=tables)
    with pytest.raises(ValueError, match="shape"):
        likelihood.d3pm_nelbo(lambda x_t, t: torch.zeros(2, 3), x0, transitions=tables)
