"""The likelihood bound (fastdiff.likelihood) on a toy language small enough to enumerate.

The toy: sequences of L = 3 tokens over 3 data tokens, with a fixed random distribution
``p(x0)`` over the 27 sequences; the absorbing / masked toy has a 4-token vocabulary with the
mask at id 1 (not the last column). Its EXACT denoisers are computed by enumeration: the
concrete score ``p_t(x_t with x_i = j) / p_t(x_t)`` of the noised marginal ``p_t`` (absorbing
and uniform graphs) and the posterior ``p(x0_i = j | x_t)`` (masked diffusion, SUBS).

What must hold (derived in the module docstring of fastdiff.likelihood): for the exact
denoiser and a schedule with ``sigma(0) = 0``, the path-measure bound is tight up to the base
distribution ``pi`` at ``t = 1``, per sequence::

    NELBO(x0) = -log p(x0) - KL(q_1(.|x0) || p_1) + KL(q_1(.|x0) || pi)

(-> ``-log p(x0)`` as ``sigma(1)`` grows), so ``E_p[NELBO] = H(p) + KL(p_1 || pi) >= H(p)``.
The same identity holds for masked diffusion with the exact posterior (its reverse rates
``dsigma/expm1(sigma) p(x0_i | x_t)`` are the exact time reversal). ``LogLinear(eps=0.3)``
(``sigma(1) = log(1/0.3)``) keeps the two KL corrections large enough for the tests to see
them (0.13 nats in the expected bound of the absorbing toy). Monte Carlo checks state their
bound in standard errors estimated from independent replicates (replicated rows of one batch:
every row is randomized independently).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import fastdiff
from fastdiff import likelihood
from fastdiff.schedules import LinearAlpha, LogLinear

L = 3
MASK = 1
SCHEDULE = LogLinear(eps=0.3)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Toy:
    """The enumerable language and its exact denoisers (float64)."""

    def __init__(self, graph: str, seed: int = 0):
        self.graph = graph
        self.vocab = 3 if graph == "uniform" else 4
        self.mask = None if graph == "uniform" else MASK
        data = torch.tensor([0, 1, 2] if graph == "uniform" else [0, 2, 3])
        gen = torch.Generator().manual_seed(seed)
        p = torch.softmax(1.5 * torch.randn(27, generator=gen, dtype=torch.float64), 0)
        v = self.vocab
        self.p0 = torch.zeros(v, v, v, dtype=torch.float64)
        self.p0[data[:, None, None], data[None, :, None], data[None, None, :]] = p.reshape(3, 3, 3)
        self.seqs = torch.cartesian_prod(data, data, data)  # [27, L]
        self.prob = self.p0[self.seqs[:, 0], self.seqs[:, 1], self.seqs[:, 2]]
        self.entropy = float(-(self.prob * self.prob.log()).sum())

    def kernel(self, sigma: torch.Tensor) -> torch.Tensor:
        """``q_sigma(c | a)`` ``[B, V, V]`` for ``sigma [B]``."""
        a = torch.exp(-sigma.double())[:, None, None]
        eye = torch.eye(self.vocab, dtype=torch.float64)
        if self.graph == "uniform":
            return a * eye + (1 - a) / self.vocab
        k = a * eye
        k[:, :, self.mask] += 1 - a[:, :, 0]
        k[:, self.mask, :] = 0.0
        k[:, self.mask, self.mask] = 1.0
        return k

    def marginal(self, sigma: torch.Tensor) -> torch.Tensor:
        """``p_t`` ``[B, V, V, V]``: the kernel applied along each axis (matmuls)."""
        k, b, v = self.kernel(sigma), sigma.shape[0], self.vocab
        a = torch.matmul(k.transpose(1, 2), self.p0.reshape(v, v * v))
        a = a.reshape(b, v, v, v).transpose(2, 3).reshape(b, v * v, v) @ k
        a = a.reshape(b, v, v, v).transpose(2, 3).reshape(b, v * v, v) @ k
        return a.reshape(b, v, v, v)

    def score(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact log-ratios ``log p_t(x_t with x_i = j) - log p_t(x_t)`` ``[B, L, V]``."""
        v = self.vocab
        logp = self.marginal(sigma).reshape(len(x_t), -1).log()
        here = (x_t[:, 0] * v + x_t[:, 1]) * v + x_t[:, 2]
        stride = torch.tensor([v * v, v, 1])
        cols = torch.arange(v)
        nb = here[:, None, None] + (cols - x_t[:, :, None]) * stride[:, None]
        return (logp.gather(1, nb.reshape(len(x_t), -1)) - logp.gather(1, here[:, None])).reshape(
            len(x_t), L, v
        )

    def posterior(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x0_i = j | x_t)`` (up to a constant per position) ``[B, L, V]``."""
        k, rows = self.kernel(sigma), torch.arange(len(x_t))
        w = (
            self.p0
            * k[rows, :, x_t[:, 0]][:, :, None, None]
            * k[rows, :, x_t[:, 1]][:, None, :, None]
            * k[rows, :, x_t[:, 2]][:, None, None, :]
        )
        return torch.stack([w.sum((2, 3)), w.sum((1, 3)), w.sum((1, 2))], 1).log()

    def denoiser(self, objective: str):
        return self.posterior if objective == "masked" else self.score

    def base(self, sigma1: float) -> torch.Tensor:
        """The base distribution ``pi`` of one token at ``t = 1``."""
        if self.graph == "uniform":
            return torch.full((self.vocab,), 1.0 / self.vocab, dtype=torch.float64)
        a = math.exp(-sigma1)
        pi = torch.full((self.vocab,), a / (self.vocab - 1), dtype=torch.float64)
        pi[self.mask] = 1 - a
        return pi

    def exact_nelbo(self, schedule) -> torch.Tensor:
        """``-log p(x0) - KL(q_1(.|x0) || p_1) + KL(q_1(.|x0) || pi)`` per sequence [27],
        everything by enumeration over the ``V^L`` noised sequences."""
        sigma1 = schedule.sigma(torch.tensor([1.0], dtype=torch.float64))
        k1 = self.kernel(sigma1)[0]
        p1 = self.marginal(sigma1).reshape(-1)
        pi = self.base(float(sigma1))
        pi_seq = (pi[:, None, None] * pi[None, :, None] * pi[None, None, :]).reshape(-1)
        out = []
        for s, p in zip(self.seqs, self.prob):
            q = k1[s[0]][:, None, None] * k1[s[1]][None, :, None] * k1[s[2]][None, None, :]
            q = q.reshape(-1)
            xlogx = torch.special.xlogy(q, q).sum()
            kl_p1 = xlogx - torch.special.xlogy(q, p1).sum()
            kl_pi = xlogx - torch.special.xlogy(q, pi_seq).sum()
            out.append(-p.log() - kl_p1 + kl_pi)
        return torch.stack(out)

    def expected_integrand(self, times: torch.Tensor) -> torch.Tensor:
        """``dsigma(t) E_{x_t ~ q_t(.|x0)} [sum_i score_entropy_i]`` of the exact score, by
        enumeration over every ``x_t``: ``[len(times), 27]``."""
        v = self.vocab
        states = torch.cartesian_prod(*[torch.arange(v)] * L)
        graph = "uniform" if self.graph == "uniform" else "absorb"
        rows = []
        for t in times:
            sigma, dsigma = SCHEDULE(t.reshape(1).double())
            k = self.kernel(sigma)[0]
            q = k[self.seqs[:, None, :], states[None, :, :]].prod(-1)  # [27, V^L]
            keep = q > 0
            x0 = self.seqs[:, None, :].expand(-1, len(states), -1)[keep]
            x_t = states[None].expand(len(self.seqs), -1, -1)[keep]
            sig = sigma.expand(len(x_t))
            with fastdiff.use_backend("reference"):
                se = fastdiff.score_entropy(
                    self.score(x_t, sig),
                    x_t,
                    x0,
                    sigma=sig,
                    graph=graph,
                    mask_id=self.mask,
                    reduction="none",
                )
            full = torch.zeros(keep.shape, dtype=torch.float64)
            full[keep] = se.sum(-1) * q[keep]
            rows.append(dsigma * full.sum(1))
        return torch.stack(rows)


TOYS = {"absorb": Toy("absorb"), "uniform": Toy("uniform")}


def _toy(objective: str) -> Toy:
    return TOYS["uniform" if objective == "uniform" else "absorb"]


# the test cases' names -> fastdiff's objective and graph
CASES = {
    "absorb": dict(objective="sedd", graph="absorb"),
    "uniform": dict(objective="sedd", graph="uniform"),
    "masked": dict(objective="mdlm"),
}


def _replicated_nelbo(objective, replicates, **kw) -> torch.Tensor:
    """``[replicates, 27]`` independent estimates (one batch of replicated rows)."""
    toy = _toy(objective)
    est = likelihood.nelbo(
        toy.denoiser(objective),
        toy.seqs.repeat(replicates, 1),
        **CASES[objective],
        schedule=kw.pop("schedule", SCHEDULE),
        vocab_size=toy.vocab,
        mask_id=toy.mask,
        **kw,
    )
    return est.reshape(replicates, len(toy.seqs))


def test_gauss_legendre_is_exact_to_degree_2n_minus_1():
    for n in (1, 2, 5, 12):
        nodes, weights = likelihood.gauss_legendre(n)
        assert nodes.dtype == torch.float64 and bool((nodes > 0).all() & (nodes < 1).all())
        assert bool((nodes[1:] > nodes[:-1]).all())
        for degree in range(2 * n):
            got = float((weights * nodes**degree).sum())
            assert abs(got - 1.0 / (degree + 1)) < 1e-13, (n, degree)
        if n <= 3:  # not exact one degree higher (the error is 3.6e-4 at n = 3)
            got = float((weights * nodes ** (2 * n)).sum())
            assert abs(got - 1.0 / (2 * n + 1)) > 1e-4


@pytest.mark.parametrize("schedule", [LogLinear(eps=0.1), LogLinear(eps=1e-3), LinearAlpha()])
@pytest.mark.parametrize("objective", ["absorb", "uniform", "masked"])
def test_prior_term_matches_enumeration(objective, schedule):
    """``KL(q_1(.|x0_i) || pi)`` per token, closed form against the sum over the vocabulary,
    for each clean token; 0 where ``sigma(1) = inf``."""
    toy = _toy(objective)
    sigma1 = schedule.sigma(torch.tensor([1.0], dtype=torch.float64))
    if torch.isinf(sigma1).all() and objective == "uniform":
        return  # sigma(1) = inf: a uniform-graph model starts at the stationary distribution
    k1 = toy.kernel(sigma1)[0]
    pi = toy.base(float(sigma1))
    got = likelihood.prior_nats_per_token(graph=toy.graph, schedule=schedule, vocab_size=toy.vocab)
    for x in toy.seqs[:, 0].unique():
        q = k1[x]
        want = float((torch.special.xlogy(q, q) - torch.special.xlogy(q, pi)).sum())
        assert abs(got - want) < 1e-12
    if schedule == LinearAlpha():
        assert got == 0.0


def test_exact_integral_identity_and_quadrature_convergence():
    """No Monte Carlo: the t-integral of the exact expected integrand (enumerated over every
    x_t) plus the prior term equals the identity of the module docstring. Absorbing graph:
    the integrand is a polynomial of degree L - 1 in t, so 2 Gauss-Legendre nodes are exact
    (1e-10). Uniform graph: the error falls with the number of nodes, much faster with the
    change of variable t = u^3 than in t itself."""
    toy = TOYS["absorb"]
    exact = toy.exact_nelbo(SCHEDULE)
    prior = L * likelihood.prior_nats_per_token(
        graph="absorb", schedule=SCHEDULE, vocab_size=toy.vocab
    )
    nodes, weights = likelihood.gauss_legendre(2)
    got = (weights[:, None] * toy.expected_integrand(nodes)).sum(0) + prior
    assert float((got - exact).abs().max()) < 1e-10
    assert float((exact + toy.prob.log()).abs().max()) > 0.1  # the corrections are visible

    toy = TOYS["uniform"]
    exact = toy.exact_nelbo(SCHEDULE)
    prior = L * likelihood.prior_nats_per_token(
        graph="uniform", schedule=SCHEDULE, vocab_size=toy.vocab
    )
    errors = {}
    for power in (1, 3):
        for n in (4, 8, 16):
            u, w = likelihood.gauss_legendre(n)
            g = toy.expected_integrand(u**power)
            got = (w[:, None] * power * u[:, None] ** (power - 1) * g).sum(0) + prior
            errors[power, n] = float((got - exact).abs().max())
    assert errors[3, 4] > errors[3, 8] > errors[3, 16] and errors[3, 16] < 1e-4
    assert errors[1, 4] > errors[1, 8] > errors[1, 16] > 10 * errors[3, 16]


@pytest.mark.parametrize(
    "objective, num_t, reps", [("absorb", 2, 384), ("masked", 2, 384), ("uniform", 16, 128)]
)
def test_exact_denoiser_bound_per_sequence(objective, num_t, reps):
    """Quadrature (in t: exact for absorbing / masked with 2 nodes; in ``u = t^(1/3)`` with 16
    nodes for uniform: error < 1e-4, see above), Monte Carlo over the noise
    only: the mean of ``reps`` independent estimates of every sequence is within 5 standard
    errors of the identity, the sum of the 27 residuals and the expected bound (p-weighted)
    within 4. Absorbing / masked: the expected bound is more than 3 standard errors away from
    the entropy (the corrections are seen; they are too small on the uniform toy, whose prior
    term the exact test above checks)."""
    toy = _toy(objective)
    est = _replicated_nelbo(
        objective, reps, num_t=num_t, method="quadrature", noise_draws=4, seed=1
    )
    exact = toy.exact_nelbo(SCHEDULE)
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    assert bool(((mean - exact).abs() <= 5 * se + 1e-4).all()), ((mean - exact) / se).tolist()
    total_se = float(se.square().sum().sqrt())
    assert abs(float((mean - exact).sum())) <= 4 * total_se + 27e-4
    expected = est @ toy.prob
    se = float(expected.std()) / math.sqrt(reps)
    assert abs(float(expected.mean()) - float(exact @ toy.prob)) <= 4 * se + 1e-4
    if objective != "uniform":
        assert float(expected.mean()) - toy.entropy > 3 * se


@pytest.mark.parametrize("method", ["antithetic", "stratified"])
@pytest.mark.parametrize("objective", ["absorb", "uniform"])
def test_monte_carlo_over_t_is_unbiased(objective, method):
    """Random times: the p-weighted mean of the estimates (the expected bound) is within 4.5
    standard errors of ``sum_x0 p(x0) NELBO(x0) = H + KL(p_1 || pi)`` and is >= H."""
    toy = _toy(objective)
    reps = 64
    est = _replicated_nelbo(objective, reps, num_t=8, method=method, seed=2)
    weighted = est @ toy.prob  # [reps]
    want = float(toy.exact_nelbo(SCHEDULE) @ toy.prob)
    mean, se = float(weighted.mean()), float(weighted.std()) / math.sqrt(reps)
    assert abs(mean - want) <= 4.5 * se, (mean, want, se)
    assert want > toy.entropy and mean > toy.entropy - 4.5 * se


def test_bound_is_above_entropy_and_tightens_as_the_denoiser_becomes_exact():
    """Exact log-scores plus ``lam`` times a fixed perturbation: the expected bound is convex
    in ``lam`` with its minimum H + KL(p_1 || pi) at 0 (at every t, the expected score entropy
    given x_t is minimal at the true ratios), so it falls as ``lam`` goes 1 -> 0.6 -> 0.3 -> 0
    and stays >= H. Quadrature nodes and the same seed for every ``lam`` (the same x_t draws)
    make the differences precise; each is checked beyond 4 standard errors."""
    toy = TOYS["absorb"]
    noise = torch.randn(toy.vocab**L, L, toy.vocab, generator=torch.Generator().manual_seed(5))
    reps = 24
    x0 = toy.seqs.repeat(reps, 1)
    curves = []
    for lam in (1.0, 0.6, 0.3, 0.0):

        def denoiser(x_t, sigma, lam=lam):
            here = (x_t[:, 0] * toy.vocab + x_t[:, 1]) * toy.vocab + x_t[:, 2]
            return toy.score(x_t, sigma) + lam * noise[here].double()

        est = likelihood.nelbo(
            denoiser, x0, objective="sedd", schedule=SCHEDULE, vocab_size=toy.vocab,
            mask_id=MASK, num_t=3, method="quadrature", noise_draws=2, seed=7,
        )  # fmt: skip
        curves.append(est.reshape(reps, -1) @ toy.prob)
    for worse, better in itertools.pairwise(curves):
        diff = worse - better
        assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(reps)
    exact = curves[-1]
    se = float(exact.std()) / math.sqrt(reps)
    assert float(exact.mean()) > toy.entropy - 4 * se
    assert abs(float(exact.mean()) - float(toy.exact_nelbo(SCHEDULE) @ toy.prob)) < 4.5 * se


def _bound(**kw) -> likelihood.LikelihoodBound:
    toy = TOYS["absorb"]
    return likelihood.perplexity_bound(
        toy.score,
        [toy.seqs[:14], toy.seqs[14:]],
        objective="sedd",
        graph="absorb",
        schedule=SCHEDULE,
        vocab_size=toy.vocab,
        mask_id=MASK,
        **kw,
    )


def test_standard_error_is_calibrated_and_shrinks_as_one_over_sqrt_samples():
    """Over 24 independent runs, the spread of ``nats_per_token`` matches the reported
    standard error (ratio in [0.6, 1.5]: the sample standard deviation of 24 runs is within
    about 15% of the truth) and the runs agree with the exact value within 4.5 standard
    errors of their mean. Four times the noise draws per node halves the standard error
    (ratio in [0.38, 0.65] over the mean of 6 runs each), and four times the stratified
    times shrinks it at least as fast (<= 0.65; with ``t = u^2``, which bounds the variance of
    a draw on this short toy: in t its 1/t tail makes the standard error itself erratic)."""
    toy = TOYS["absorb"]
    runs = [_bound(num_t=2, method="quadrature", seed=s) for s in range(24)]
    values = torch.tensor([r.nats_per_token for r in runs], dtype=torch.float64)
    reported = sum(r.stderr_nats_per_token for r in runs) / len(runs)
    spread = float(values.std())
    assert 0.6 <= spread / reported <= 1.5, (spread, reported)
    exact = float(toy.exact_nelbo(SCHEDULE).sum()) / (27 * L)
    assert abs(float(values.mean()) - exact) <= 4.5 * spread / math.sqrt(len(runs))

    def mean_stderr(**kw):
        return sum(_bound(seed=100 + s, **kw).stderr_nats_per_token for s in range(6)) / 6

    ratio = mean_stderr(num_t=2, method="quadrature", noise_draws=4) / reported
    assert 0.38 <= ratio <= 0.65, ratio
    kw = dict(method="stratified", time_power=2.0)
    ratio = mean_stderr(num_t=16, **kw) / mean_stderr(num_t=4, **kw)
    assert ratio <= 0.65, ratio


def test_perplexity_of_a_uniform_guess_byte_model():
    """A byte-level masked model (V = 257, mask 256) that always predicts the uniform
    distribution over the 256 bytes has the bound ``L log 256`` exactly in expectation
    (``int (1/t) (1 - eps) t L log 256 dt`` plus the prior ``L eps log 256``): perplexity 256
    within 4 standard errors, on 256 sequences of 32 bytes streamed in 4 batches. The same
    for the absorbing graph with the scale-by-sigma parameterization of zero logits
    (``S_j = r / 256``, score entropy ``r log 256``)."""
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (64, 32), generator=gen) for _ in range(4)]

    def masked_model(x_t, sigma):
        return torch.zeros(*x_t.shape, 257)

    def absorb_model(x_t, sigma):
        return fastdiff.scale_by_sigma(torch.zeros(*x_t.shape, 257), sigma=sigma)

    for objective, model in (("masked", masked_model), ("absorb", absorb_model)):
        bound = likelihood.perplexity_bound(
            model, iter(data), **CASES[objective], schedule=LogLinear(), vocab_size=257,
            mask_id=256, num_t=2, seed=3,
        )  # fmt: skip
        assert bound.num_sequences == 256 and bound.num_tokens == 256 * 32
        assert abs(bound.nats_per_token - math.log(256)) <= 4 * bound.stderr_nats_per_token
        assert bound.stderr_nats_per_token < 0.1
        assert bound.bits_per_token == pytest.approx(bound.nats_per_token / math.log(2))
        assert bound.perplexity == pytest.approx(math.exp(bound.nats_per_token))
        assert bound.prior_nats_per_token == pytest.approx(1e-3 * math.log(256))
        assert set(bound.to_dict()) == {
            "nats_per_token", "bits_per_token", "perplexity", "stderr_nats_per_token",
            "prior_nats_per_token", "num_tokens", "num_sequences",
        }  # fmt: skip


class _Module(torch.nn.Module):
    """A denoiser module: asserts inference mode and its own device for the inputs."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 5)

    def forward(self, x_t, sigma):
        assert torch.is_inference_mode_enabled()
        assert x_t.device == self.emb.weight.device and sigma.dtype == torch.float32
        return self.emb(x_t) - sigma[:, None, None]


def test_module_denoiser_streaming_and_reproducibility():
    """Batches of different lengths, an ``nn.Module`` denoiser run under inference mode, the
    same result for the same seed (and for the same generator state), a different one for
    another seed."""
    model = _Module()
    batches = [torch.randint(0, 4, (3, 7)), torch.randint(0, 4, (5, 2))]
    kw = dict(objective="sedd", graph="uniform", schedule=LogLinear(), vocab_size=5, num_t=3)
    a = likelihood.perplexity_bound(model, batches, seed=11, **kw)
    b = likelihood.perplexity_bound(model, batches, seed=11, **kw)
    c = likelihood.perplexity_bound(model, batches, seed=12, **kw)
    assert a == b and a.nats_per_token != c.nats_per_token
    assert a.num_sequences == 8 and a.num_tokens == 3 * 7 + 5 * 2
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    x0 = batches[0]
    e1 = likelihood.nelbo(model, x0, generator=g1, method="stratified", **kw)
    e2 = likelihood.nelbo(model, x0, generator=g2, method="stratified", **kw)
    assert torch.equal(e1, e2) and e1.shape == (3,) and e1.dtype == torch.float64


def test_bad_arguments_raise_before_the_denoiser_runs():
    def never(x_t, sigma):
        raise AssertionError("the denoiser must not run")

    x0 = torch.zeros(2, 3, dtype=torch.long)
    kw = dict(objective="sedd", schedule=LogLinear(), vocab_size=4, mask_id=3)
    bad = [
        (dict(objective="ar"), ValueError, "objective"),
        (dict(method="simpson"), ValueError, "method"),
        (dict(num_t=0), ValueError, "num_t"),
        (dict(noise_draws=1.5), ValueError, "noise_draws"),
        (dict(mask_id=None), ValueError, "mask_id"),
        (dict(mask_id=4), ValueError, "mask_id"),
        (dict(graph="uniform"), ValueError, "no mask"),
        (dict(graph="masked"), ValueError, "graph"),
        (dict(objective="mdlm", graph="uniform", mask_id=None), ValueError, "absorb"),
        (dict(schedule="loglinear"), TypeError, "NoiseSchedule"),
        (dict(time_power=0.5), ValueError, "time_power"),
        (dict(t_min=1.0), ValueError, "t_min"),
        (dict(t_min=-1e-3), ValueError, "t_min"),
        (dict(t_min=True), ValueError, "t_min"),
        (dict(include_prior=1), TypeError, "include_prior"),
    ]
    for change, error, match in bad:
        with pytest.raises(error, match=match):
            likelihood.nelbo(never, x0, **{**kw, **change})
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        likelihood.nelbo(never, x0[0], **kw)
    with pytest.raises(TypeError, match="int64"):
        likelihood.nelbo(never, x0.float(), **kw)
    with pytest.raises(ValueError, match="repeats"):
        likelihood.perplexity_bound(never, [x0], repeats=1, **kw)
    with pytest.raises(ValueError, match="no tokens"):
        likelihood.perplexity_bound(never, [], **kw)
    with pytest.raises(ValueError, match="shape"):
        likelihood.nelbo(lambda x_t, s: torch.zeros(2, 3, 5), x0, **kw)
    with pytest.raises(ValueError, match="mask token"):
        likelihood.nelbo(never, x0 + 3, **kw)
    with pytest.raises(ValueError, match="outside"):
        likelihood.nelbo(never, x0 + 4, **kw)


def test_include_prior_false_drops_exactly_the_prior_term():
    """Same seed, same draws: ``include_prior=False`` is the default minus ``L`` times the
    prior per token (1e-12), per sequence and in the perplexity bound, whose
    ``prior_nats_per_token`` is then 0.0 (the share included)."""
    toy = TOYS["absorb"]
    kw = dict(objective="sedd", schedule=SCHEDULE, vocab_size=toy.vocab, mask_id=MASK, seed=6)
    prior = likelihood.prior_nats_per_token(graph="absorb", schedule=SCHEDULE, vocab_size=4)
    assert prior > 0.1
    with_prior = likelihood.nelbo(toy.score, toy.seqs, **kw)
    without = likelihood.nelbo(toy.score, toy.seqs, include_prior=False, **kw)
    assert float((with_prior - without - L * prior).abs().max()) < 1e-12
    a = likelihood.perplexity_bound(toy.score, [toy.seqs], **kw)
    b = likelihood.perplexity_bound(toy.score, [toy.seqs], include_prior=False, **kw)
    assert a.prior_nats_per_token == prior and b.prior_nats_per_token == 0.0
    assert a.nats_per_token - b.nats_per_token == pytest.approx(prior, abs=1e-12)
    assert a.stderr_nats_per_token == pytest.approx(b.stderr_nats_per_token, rel=1e-9)


@pytest.mark.parametrize(
    "method, power", [("antithetic", 1.0), ("stratified", 2.0), ("quadrature", 3.0)]
)
def test_t_min_draws_no_time_below_it(method, power):
    """With ``t_min = 1e-3`` the denoiser never sees ``sigma < sigma(1e-3)`` (float32), while
    the default does, for every estimator and change of variable."""
    toy = TOYS["absorb"]
    seen = []

    def recorder(x_t, sigma):
        seen.append(sigma.clone())
        return toy.score(x_t, sigma)

    kw = dict(objective="sedd", schedule=SCHEDULE, vocab_size=toy.vocab, mask_id=MASK, seed=8)
    x0 = toy.seqs.repeat(20, 1)
    floor = SCHEDULE.sigma(torch.tensor(1e-3, dtype=torch.float64)).float()
    likelihood.nelbo(recorder, x0, num_t=4, method=method, time_power=power, t_min=1e-3, **kw)
    assert float(torch.cat(seen).min()) >= float(floor)
    seen.clear()
    likelihood.nelbo(recorder, x0, num_t=4, method=method, time_power=power, **kw)
    assert float(torch.cat(seen).min()) < float(floor)  # quadrature: first node 0.069^3


def test_t_min_integrates_over_the_rest_of_the_interval():
    """``t_min = 0.5`` with 2 quadrature nodes (exact for the absorbing toy's quadratic
    integrand, now on ``[0.5, 1]``): the mean of 128 independent estimates of every sequence
    is within 5 standard errors of ``int_0.5^1`` of the enumerated expected integrand plus the
    prior term, and well below the full bound (the dropped part is not small here)."""
    toy = TOYS["absorb"]
    reps = 128
    est = _replicated_nelbo(
        "absorb", reps, num_t=2, method="quadrature", noise_draws=2, t_min=0.5, seed=10
    )
    nodes, weights = likelihood.gauss_legendre(2)
    integral = (0.5 * weights[:, None] * toy.expected_integrand(0.5 + 0.5 * nodes)).sum(0)
    prior = L * likelihood.prior_nats_per_token(graph="absorb", schedule=SCHEDULE, vocab_size=4)
    want = integral + prior
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    assert bool(((mean - want).abs() <= 5 * se).all()), ((mean - want) / se).tolist()
    assert bool((toy.exact_nelbo(SCHEDULE) - want > 0.2).all())
