"""The Gaussian embedding diffusion bound (fastdiff.likelihood_gaussian) on a 1-token toy.

The toy: ``V = 3`` tokens with probabilities ``PI``, embeddings ``E`` on a circle of radius 3 in
``H = 2`` (so the tied decoder ``softmax(x E^T)`` is sharp: ``p(w | E[w]) = 1 - 3e-6``) and
``L = 1``. Under the module's chain the data law in embedding space is the Gaussian mixture
``x_0 ~ sum_w PI_w N(E[w], beta_1 I)`` and ``q(x_t | w) = N(sqrt(alpha_bar_t) E[w],
(1 - alpha_bar_t) I)``, so the Bayes-optimal denoiser ``E[e0 | x_t]`` is the posterior mean of
the mixture of point masses, computable in closed form.

What is checked:

- every term against an independent computation: each KL at the recorded ``x_t`` by numerical
  integration over ``x_{t-1}`` (per feature: both kernels are products over features) of the
  posterior built by Bayes' rule from the forward kernels, against the model kernel whose mean
  :func:`fastdiff.ddpm_step` gives; the prior KL with ``torch.distributions``; the decoder
  cross entropy at the same keyed draw of ``x_0``;
- with the Bayes-optimal denoiser, ``E_PI[NELBO] >= H(PI)`` (the true NLL of the discrete
  data) within 4 standard errors, and within 0.03 nats of it for a 1000-step cosine schedule
  (measured gap 0.002); the posterior mean under a wrong token law raises the bound by more
  than 0.3 nats (about ``KL(PI || WRONG)`` = 0.36) and more than 10 paired standard errors;
- the stratified estimate within 4 standard errors of the all-steps one (and equal to it with
  ``num_t = T``); the three prediction types agree for equivalent predictions; bad inputs raise.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiff
from fastdiff import likelihood_gaussian as lg
from fastdiff.schedules import GaussianSchedule

PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
ENTROPY = float(-(PI * PI.log()).sum())
_ANGLES = torch.tensor([0.0, 2.1, 4.2], dtype=torch.float64)
E = 3.0 * torch.stack([_ANGLES.cos(), _ANGLES.sin()], -1)  # [V = 3, H = 2]
SHORT = GaussianSchedule.from_betas([0.02, 0.1, 0.25, 0.4, 0.6])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Bayes:
    """``E[e0 | x_t]`` of the toy (times ``shrink``; under the token law ``prior``, default
    ``PI``), as a ``prediction_type`` output; records its inputs and ``e0_hat`` when ``record``
    is set."""

    def __init__(self, schedule, prediction_type="sample", shrink=1.0, prior=PI, record=False):
        self.alpha_bar = schedule.alphas_cumprod
        self.prediction_type = prediction_type
        self.shrink = shrink
        self.log_prior = prior.log()
        self.calls = [] if record else None

    def __call__(self, x_t, j):
        assert torch.is_inference_mode_enabled()
        a = self.alpha_bar[j.long()][:, None, None]
        dist = (x_t[..., None, :] - a[..., None].sqrt() * E).square().sum(-1)
        post = (self.log_prior - dist / (2.0 * (1.0 - a))).softmax(-1)
        e0_hat = self.shrink * (post @ E)
        if self.calls is not None:
            self.calls.append((x_t.clone(), j.clone(), e0_hat.clone()))
        eps = (x_t - a.sqrt() * e0_hat) / (1.0 - a).sqrt()
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return a.sqrt() * eps - (1.0 - a).sqrt() * e0_hat
        return e0_hat


def _normal_logpdf(x, mean, var):
    return -0.5 * (math.log(2.0 * math.pi * var) + (x - mean) ** 2 / var)


def _kl_by_integration(t, e, x_t, mean_p, var_p, schedule):
    """``KL(q(x_{t-1} | x_t, w) || N(mean_p, var_p))`` of one feature: the posterior from
    Bayes' rule on a grid (forward kernel times the marginal of ``x_{t-1}``), the integral a
    Riemann sum (spectrally accurate for these smooth, rapidly decaying integrands)."""
    beta, alpha_bar = schedule.betas, schedule.alphas_cumprod
    b1 = float(beta[0])
    if t == 1:  # x_0 ~ N(e, beta_1), x_1 | x_0 ~ N(sqrt(alpha_1) x_0, beta_1^2)
        m0, s0, k, v = e, b1, math.sqrt(1.0 - b1), b1**2
    else:
        a_prev = float(alpha_bar[t - 2])
        m0, s0 = math.sqrt(a_prev) * e, 1.0 - a_prev
        k, v = math.sqrt(1.0 - float(beta[t - 1])), float(beta[t - 1])
    precision = 1.0 / s0 + k * k / v  # only places the grid
    center = (m0 / s0 + k * x_t / v) / precision
    grid = torch.linspace(-14.0, 14.0, 8001, dtype=torch.float64) * precision**-0.5 + center
    dx = float(grid[1] - grid[0])
    log_u = _normal_logpdf(x_t, k * grid, v) + _normal_logpdf(grid, m0, s0)
    log_q = log_u - torch.logsumexp(log_u, 0) - math.log(dx)
    log_p = _normal_logpdf(grid, mean_p, var_p)
    return float((log_q.exp() * (log_q - log_p)).sum() * dx)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_each_term_matches_an_independent_computation(variance_type):
    schedule, seed = SHORT, 11
    denoiser = Bayes(schedule, shrink=0.8, record=True)
    x0 = torch.tensor([[0], [1], [2], [1]])
    decoder = torch.nn.Linear(2, 3, dtype=torch.float64)
    with torch.no_grad():
        decoder.weight.copy_(0.7 * E)
        decoder.bias.copy_(torch.tensor([0.3, -0.2, 0.5]))
    terms = lg.gaussian_nelbo_terms(
        denoiser,
        x0,
        embedding=torch.nn.Embedding.from_pretrained(E),
        schedule=schedule,
        decoder=decoder,
        variance_type=variance_type,
        seed=seed,
    )
    steps = schedule.num_steps
    assert torch.equal(terms.steps, torch.arange(1, steps + 1).expand(4, steps))
    assert torch.equal(terms.weights, torch.ones(4, steps, dtype=torch.float64))
    e0 = E[x0[:, 0]]
    beta, alpha_bar = schedule.betas, schedule.alphas_cumprod
    b1 = float(beta[0])
    assert len(denoiser.calls) == steps
    for k, (x_t, j, e0_hat) in enumerate(denoiser.calls):
        t = k + 1
        assert torch.equal(j, torch.full((4,), float(k)))
        if t == 1:
            mean_p = math.sqrt(1.0 - b1) * x_t + b1 * e0_hat
            var_p = b1**2
        else:
            a, a_prev = float(alpha_bar[t - 1]), float(alpha_bar[t - 2])
            mean_p = fastdiff.ddpm_step(
                e0_hat,
                x_t,
                alpha_bar=a,
                alpha_bar_next=a_prev,
                prediction_type="sample",
                noise=torch.zeros_like(x_t),
            )
            posterior = float(beta[t - 1]) * (1.0 - a_prev) / (1.0 - a)
            var_p = posterior if variance_type == "fixed_small" else float(beta[t - 1])
        for b in range(4):
            want = sum(
                _kl_by_integration(
                    t, float(e0[b, h]), float(x_t[b, 0, h]), float(mean_p[b, 0, h]), var_p, schedule
                )
                for h in range(2)
            )
            assert float(terms.diffusion[b, k]) == pytest.approx(want, rel=1e-7, abs=1e-10)
        if t == 1:  # Diffusion-LM's t = 0 term: half the squared error of the prediction
            half_sq = 0.5 * (e0 - e0_hat[:, 0]).square().sum(-1)
            torch.testing.assert_close(terms.diffusion[:, 0], half_sq, rtol=1e-12, atol=1e-14)
    a_last = float(alpha_bar[-1])
    q_last = torch.distributions.Normal(math.sqrt(a_last) * e0, math.sqrt(1.0 - a_last))
    prior = torch.distributions.kl_divergence(q_last, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(terms.prior, prior.sum(-1), rtol=1e-12, atol=1e-14)
    z = fastdiff.random.normal(seed, 0, torch.arange(4), 2)
    logits = (e0 + math.sqrt(b1) * z) @ decoder.weight.detach().T + decoder.bias.detach()
    want_decoder = -logits.log_softmax(-1).gather(1, x0)[:, 0]
    torch.testing.assert_close(terms.decoder, want_decoder, rtol=1e-12, atol=1e-14)
    total = terms.prior + terms.decoder + terms.diffusion.sum(-1)
    torch.testing.assert_close(terms.nelbo, total, rtol=0, atol=0)


def _data(n):
    return torch.arange(3).repeat_interleave(n)[:, None]


def _expected_bound(nelbo, n):
    """``(sum_w PI_w mean NELBO(w), its standard error)`` from ``n`` draws per token."""
    per_token = nelbo.reshape(3, n)
    mean = float((PI * per_token.mean(1)).sum())
    return mean, float((PI.square() * per_token.var(1) / n).sum().sqrt())


def test_bayes_bound_exceeds_the_data_nll_and_approaches_it_on_a_fine_schedule():
    n = 300
    fine = GaussianSchedule.cosine(1000)
    nelbo = lg.gaussian_nelbo(Bayes(fine), _data(n), embedding=E, schedule=fine, seed=1)
    bound, se = _expected_bound(nelbo, n)
    assert bound >= ENTROPY - 4.0 * se
    assert bound - ENTROPY < 0.03, (bound, ENTROPY, se)
    coarse = GaussianSchedule.cosine(10)
    nelbo = lg.gaussian_nelbo(Bayes(coarse), _data(n), embedding=E, schedule=coarse, seed=2)
    coarse_bound, coarse_se = _expected_bound(nelbo, n)
    assert coarse_bound - bound > 4.0 * math.hypot(se, coarse_se)  # 0.5 nats looser


WRONG = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)  # KL(PI || WRONG) = 0.36 nats


def test_a_worse_denoiser_gives_a_larger_bound():
    """The posterior mean of the mixture under the wrong token law ``WRONG``: a model whose
    samples follow ``WRONG`` pays about ``KL(PI || WRONG)`` more (measured: 0.37 nats)."""
    n, schedule = 200, GaussianSchedule.cosine(100)
    kwargs = dict(embedding=E, schedule=schedule, seed=3)  # the same draws: a paired difference
    best = lg.gaussian_nelbo(Bayes(schedule), _data(n), **kwargs)
    worse = lg.gaussian_nelbo(Bayes(schedule, prior=WRONG), _data(n), **kwargs)
    diff, se = _expected_bound(worse - best, n)
    assert diff > 0.3 and diff > 10.0 * se, (diff, se)


def test_stratified_steps_estimate_the_all_steps_bound():
    schedule = GaussianSchedule.cosine(40)
    denoiser = Bayes(schedule, prior=WRONG)
    kwargs = dict(embedding=E, schedule=schedule)
    batches = [_data(100), _data(100)]
    full = lg.gaussian_perplexity_bound(denoiser, batches, repeats=2, seed=4, **kwargs)
    strat = lg.gaussian_perplexity_bound(denoiser, batches, num_t=6, repeats=4, seed=5, **kwargs)
    both = math.hypot(full.stderr_nats_per_token, strat.stderr_nats_per_token)
    assert 0 < strat.stderr_nats_per_token < 0.1
    assert abs(full.nats_per_token - strat.nats_per_token) < 4.0 * both
    terms = lg.gaussian_nelbo_terms(denoiser, _data(20), num_t=6, seed=6, **kwargs)
    bounds = torch.tensor([0, 6, 13, 20, 26, 33, 40])  # floor(k T / K): strata of 6 or 7 steps
    sizes = (bounds[1:] - bounds[:-1]).to(torch.float64)
    assert torch.equal(terms.weights, sizes.expand(60, 6))
    assert bool(((terms.steps > bounds[:-1]) & (terms.steps <= bounds[1:])).all())
    assert len(set(terms.steps[:, 0].tolist())) > 1  # each sequence draws its own step


def test_one_step_per_stratum_is_the_all_steps_estimate():
    kwargs = dict(embedding=E, schedule=SHORT, seed=7)
    denoiser = Bayes(SHORT, shrink=0.8)
    full = lg.gaussian_nelbo(denoiser, _data(3), **kwargs)
    strat = lg.gaussian_nelbo(denoiser, _data(3), num_t=SHORT.num_steps, **kwargs)
    torch.testing.assert_close(strat, full, rtol=0, atol=0)


@pytest.mark.parametrize("num_t", [None, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prediction_types_agree_for_equivalent_predictions(prediction_type, num_t):
    kwargs = dict(embedding=E, schedule=SHORT, num_t=num_t, seed=8)
    want = lg.gaussian_nelbo(Bayes(SHORT, shrink=0.8), _data(4), **kwargs)
    got = lg.gaussian_nelbo(
        Bayes(SHORT, prediction_type, shrink=0.8),
        _data(4),
        prediction_type=prediction_type,
        **kwargs,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_perplexity_bound_fields_and_randomness():
    schedule = GaussianSchedule.cosine(8)
    denoiser = Bayes(schedule)
    kwargs = dict(embedding=E, schedule=schedule, num_t=4)
    batches = [torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 0, 2]])]
    got = lg.gaussian_perplexity_bound(denoiser, batches, repeats=3, seed=9, **kwargs)
    assert (got.num_tokens, got.num_sequences) == (7, 3)
    assert got.bits_per_token == pytest.approx(got.nats_per_token / math.log(2.0))
    assert got.perplexity == pytest.approx(math.exp(got.nats_per_token))
    a_last = float(schedule.alphas_cumprod[-1])
    per_token = 0.5 * (a_last * 9.0 - 2.0 * (a_last + math.log1p(-a_last)))  # ||E[w]||^2 = 9
    assert got.prior_nats_per_token == pytest.approx(per_token, rel=1e-12)
    again = lg.gaussian_perplexity_bound(denoiser, batches, repeats=3, seed=9, **kwargs)
    assert again == got
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    first, second = (lg.gaussian_nelbo(denoiser, _data(2), generator=g, **kwargs) for g in gens)
    assert torch.equal(first, second)


def _raises(exc, match, **overrides):
    args = dict(denoiser=Bayes(SHORT), x0=_data(1), embedding=E, schedule=SHORT, seed=0) | overrides
    denoiser, x0 = args.pop("denoiser"), args.pop("x0")
    with pytest.raises(exc, match=match):
        lg.gaussian_nelbo(denoiser, x0, **args)


@pytest.mark.parametrize(
    ("exc", "match", "overrides"),
    [
        (TypeError, "x0 must be an int64", dict(x0=torch.zeros(3, 1))),
        (ValueError, "x0 must have shape", dict(x0=torch.tensor([0, 1]))),
        (ValueError, "x0", dict(x0=torch.tensor([[3]]))),
        (TypeError, "embedding must be", dict(embedding=[[0.0, 1.0]])),
        (ValueError, "embedding must have shape", dict(embedding=E[0])),
        (ValueError, "decoder weight must have", dict(decoder=E[:2])),
        (ValueError, "decoder bias must have", dict(decoder=(E, torch.zeros(2)))),
        (TypeError, "decoder must be", dict(decoder="tied")),
        (TypeError, "schedule must be", dict(schedule=fastdiff.schedules.LogLinear())),
        (ValueError, "prediction_type must be", dict(prediction_type="x0")),
        (ValueError, "variance_type must be", dict(variance_type="learned")),
        (ValueError, "num_t must be", dict(num_t=0)),
        (ValueError, "num_t must be", dict(num_t=6)),
        (ValueError, "num_t must be", dict(num_t=True)),
        (TypeError, "denoiser must be callable", dict(denoiser=3)),
        (ValueError, "the denoiser must return", dict(denoiser=lambda x_t, j: x_t[..., :1])),
        (ValueError, "non-finite", dict(denoiser=lambda x_t, j: x_t * math.nan)),
        (TypeError, "seed must be an int", dict(seed=1.5)),
        (
            ValueError,
            "alpha_bar_t > 0",
            dict(prediction_type="epsilon", schedule=GaussianSchedule.from_betas([0.1, 1.0])),
        ),
    ],
)
def test_bad_inputs_raise(exc, match, overrides):
    _raises(exc, match, **overrides)


def test_perplexity_bound_bad_inputs_raise():
    kwargs = dict(embedding=E, schedule=SHORT)
    with pytest.raises(ValueError, match="repeats"):
        lg.gaussian_perplexity_bound(Bayes(SHORT), [_data(1)], repeats=1, **kwargs)
    with pytest.raises(ValueError, match="no tokens"):
        lg.gaussian_perplexity_bound(Bayes(SHORT), [], **kwargs)
    with pytest.raises(TypeError, match="callable"):
        lg.gaussian_perplexity_bound(None, [_data(1)], **kwargs)
    with pytest.raises(TypeError, match="x0 must be"):
        lg.gaussian_perplexity_bound(Bayes(SHORT), [_data(1).float()], **kwargs)


def test_module_denoiser_runs_on_its_device_in_inference_mode():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, x_t, j):
            assert torch.is_inference_mode_enabled() and x_t.dtype == torch.float64
            assert j.dtype == torch.get_default_dtype()
            return self.scale * x_t

    out = lg.gaussian_nelbo(Model(), _data(2), embedding=E, schedule=SHORT, seed=0)
    assert out.shape == (6,) and out.dtype == torch.float64 and bool(torch.isfinite(out).all())
    assert not out.requires_grad
