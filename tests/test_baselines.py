"""The SEDD / MDLM / LLaDA-style baselines of :mod:`fastdiff.bench.baselines` compute
fastdiff's math.

The benchmarks compare fastdiff's reference with these baselines; these tests make sure the
comparison is like with like: same losses and gradients (fp64), same transition
probabilities and, through sampling, the same distributions. They also pin down where the
public code differs on purpose (the unstable uniform ratio in float32).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdiff
from fastdiff.bench import baselines


@pytest.fixture(autouse=True)
def _reference_backend():
    with fastdiff.use_backend("reference"):
        yield


def _absorb_inputs(n: int, v: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = v - 1
    log_score = torch.randn(n, v, generator=g, dtype=dtype) - math.log(v)
    x0 = torch.randint(0, v - 1, (n,), generator=g)
    masked = torch.rand(n, generator=g) < 0.6
    x_t = torch.where(masked, m, x0)
    sigma = (0.05 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    return log_score, x_t, x0, sigma, m


def _loss_and_grad(fn, scores: torch.Tensor):
    s = scores.clone().requires_grad_(True)
    loss = fn(s)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    return loss.detach(), grad


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def test_score_entropy_absorb_matches_fastdiff_fp64():
    s, x_t, x0, sigma, m = _absorb_inputs(64, 17, torch.float64)
    got, got_g = _loss_and_grad(
        lambda t: baselines.sedd_score_entropy_absorb(t, x_t, x0, sigma, m), s
    )
    want, want_g = _loss_and_grad(
        lambda t: fastdiff.score_entropy(
            t, x_t, x0, sigma=sigma, graph="absorb", mask_id=m, reduction="none"
        ),
        s,
    )
    assert (x_t == m).any() and (x_t != m).any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12)


def test_score_entropy_absorb_requires_mask_last():
    s, x_t, x0, sigma, _ = _absorb_inputs(4, 9, torch.float32)
    with pytest.raises(ValueError, match="last column"):
        baselines.sedd_score_entropy_absorb(s, x_t, x0, sigma, 3)


def _uniform_inputs(n: int, v: int, sigma: float, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    log_score = 0.3 * torch.randn(n, v, generator=g, dtype=dtype)
    x0 = torch.randint(0, v, (n,), generator=g)
    moved = torch.rand(n, generator=g) < 0.5
    x_t = torch.where(moved, torch.randint(0, v, (n,), generator=g), x0)
    return log_score, x_t, x0, torch.full((n,), sigma, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_score_entropy_uniform_matches_fastdiff_at_moderate_sigma(dtype):
    s, x_t, x0, sigma = _uniform_inputs(64, 33, 1.0, dtype)
    assert (x_t == x0).any() and (x_t != x0).any()
    got, got_g = _loss_and_grad(
        lambda t: baselines.sedd_score_entropy_uniform(t, x_t, x0, sigma), s
    )
    want, want_g = _loss_and_grad(
        lambda t: fastdiff.score_entropy(
            t, x_t, x0, sigma=sigma, graph="uniform", reduction="none"
        ),
        s,
    )
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(got_g, want_g, rtol=tol, atol=tol)


def test_score_entropy_uniform_baseline_breaks_at_small_sigma_in_fp32():
    # SEDD's ratio 1 - V/(e + V) cancels in float32: for V = 50257 and sigma = 1e-4 it comes
    # out ~30x too large (e + V rounds to V, V/V to 1 - 2^-24), and the constant term of moved
    # rows, ~1/(V ratio), with it. fastdiff's stable ratio e / (e + V) stays exact.
    v, n = 50257, 8
    s, x_t, x0, sigma = _uniform_inputs(n, v, 1e-4, torch.float32)
    x_t[:4] = x0[:4]  # both branches: unmoved rows and moved ones
    x_t[4:] = (x0[4:] + 1) % v
    base = baselines.sedd_score_entropy_uniform(s, x_t, x0, sigma)
    ours = fastdiff.score_entropy(s, x_t, x0, sigma=sigma, graph="uniform", reduction="none")
    exact = fastdiff.score_entropy(
        s.double(), x_t, x0, sigma=sigma.double(), graph="uniform", reduction="none"
    )
    torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-4)
    moved_err = (base[4:].double() - exact[4:]).abs() / exact[4:].abs()
    assert not torch.isfinite(base).all() or bool((moved_err > 0.5).all())
    # at sigma = 1 the same float32 baseline agrees (the cancellation still costs ~1e-3
    # relative at this V: ratio = 3.4e-5 is computed as 1 - 0.99997)
    sigma1 = torch.ones(n)
    base1 = baselines.sedd_score_entropy_uniform(s, x_t, x0, sigma1)
    exact1 = fastdiff.score_entropy(
        s.double(), x_t, x0, sigma=sigma1.double(), graph="uniform", reduction="none"
    )
    torch.testing.assert_close(base1.double(), exact1, rtol=1e-2, atol=1e-3)


def test_mdlm_loss_matches_masked_diffusion_loss_times_weight_fp64():
    g = torch.Generator().manual_seed(1)
    n, v = 64, 19
    m = v - 1
    logits = 3.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    x0 = torch.randint(0, v - 1, (n,), generator=g)
    x_t = torch.where(torch.rand(n, generator=g) < 0.5, m, x0)
    sigma = 0.1 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
    dsigma = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    weight = dsigma / torch.expm1(sigma)
    got, got_g = _loss_and_grad(lambda t: baselines.mdlm_loss(t, x_t, x0, sigma, dsigma, m), logits)
    want, want_g = _loss_and_grad(
        lambda t: fastdiff.masked_diffusion_loss(
            t, x_t, x0, mask_id=m, weight=weight, reduction="none"
        ),
        logits,
    )
    # MDLM's mask column gets -1e6, not -inf: exp(-1e6 - max) is exactly 0 in fp64 here
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12)


def test_mdlm_loss_inplace_flag():
    logits = torch.zeros(3, 5)
    x_t = torch.tensor([4, 4, 1])
    x0 = torch.tensor([0, 2, 1])
    sig = torch.ones(3)
    baselines.mdlm_loss(logits, x_t, x0, sig, sig, 4)
    assert torch.equal(logits, torch.zeros(3, 5))  # untouched by default
    baselines.mdlm_loss(logits, x_t, x0, sig, sig, 4, inplace=True)
    assert (logits[:, 4] == baselines.MDLM_NEG_INFINITY).all()  # MDLM edits its model output


# --------------------------------------------------------------------------------------------
# transition probabilities of the sampling steps (fp64, against docs/ops.md#sedd-sampling
# and docs/ops.md#mdlm-ancestral-step)
# --------------------------------------------------------------------------------------------


def _step_inputs(n: int, v: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    m = v - 1
    log_score = torch.randn(n, v, generator=g, dtype=torch.float64) - math.log(v)
    x = torch.where(torch.rand(n, generator=g) < 0.5, m, torch.randint(0, v - 1, (n,), generator=g))
    log_score.scatter_(1, x[:, None], 0.0)  # SEDD's model puts log-score 0 at the current token
    return log_score, x, m


def test_sedd_analytic_probs_absorb_match_the_spec():
    s, x, m = _step_inputs(32, 11)
    sigma = torch.full((32,), 1.3, dtype=torch.float64)
    sigma_next = torch.full((32,), 1.1, dtype=torch.float64)
    p = baselines.sedd_analytic_probs_absorb(s, x, sigma, sigma_next)
    e = math.expm1(0.2)
    score = s.exp()
    want = e * score
    want[:, m] = 1.0 - e * score[:, :m].sum(-1)
    masked = x == m
    torch.testing.assert_close(p[masked], want[masked], rtol=1e-12, atol=1e-14)
    # unmasked rows: a point mass on the current token
    torch.testing.assert_close(p[~masked], torch.nn.functional.one_hot(x[~masked], 11).double())


def test_sedd_euler_probs_absorb_match_the_spec():
    s, x, m = _step_inputs(32, 11)
    dsigma = torch.full((32,), 2.0, dtype=torch.float64)
    dt = 0.01
    p = baselines.sedd_euler_probs_absorb(s, x, dsigma, dt)
    score = s.exp()
    want = dt * 2.0 * score
    want[:, m] = 1.0 - dt * 2.0 * score[:, :m].sum(-1)
    masked = x == m
    torch.testing.assert_close(p[masked], want[masked], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p[~masked], torch.nn.functional.one_hot(x[~masked], 11).double())


def test_sedd_analytic_probs_uniform_match_the_spec():
    s, x, _ = _step_inputs(32, 11)
    x = torch.randint(0, 11, (32,), generator=torch.Generator().manual_seed(2))
    s.scatter_(1, x[:, None], 0.0)
    sigma = torch.full((32,), 1.3, dtype=torch.float64)
    sigma_next = torch.full((32,), 1.1, dtype=torch.float64)
    p = baselines.sedd_analytic_probs_uniform(s, x, sigma, sigma_next)
    d, score = 0.2, s.exp()
    stag = math.exp(d) * score - math.expm1(d) / 11 * score.sum(-1, keepdim=True)
    trans = torch.full_like(s, -math.expm1(-d) / 11)
    trans.scatter_(1, x[:, None], math.exp(-d) - math.expm1(-d) / 11)
    torch.testing.assert_close(p, stag * trans, rtol=1e-12, atol=1e-14)


def test_mdlm_step_probs_match_the_spec():
    s, x, m = _step_inputs(32, 11)
    st = torch.full((32,), 0.9, dtype=torch.float64)
    ss = torch.full((32,), 0.6, dtype=torch.float64)
    q = baselines.mdlm_step_probs(s, x, st, ss, m)
    p = torch.softmax(s[:, :m], -1)
    mc_t, mc_s = -math.expm1(-0.9), -math.expm1(-0.6)
    masked = x == m
    torch.testing.assert_close(q[masked, :m], p[masked] * (mc_t - mc_s), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q[:, m], torch.full((32,), mc_s, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# sampling: the baselines and fastdiff draw from the same distributions
# --------------------------------------------------------------------------------------------

DRAWS = 20000


def _freqs(tokens: torch.Tensor, v: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=v).double() / tokens.numel()


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def _one_row(v: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    row = 0.8 * torch.randn(v, generator=g) - math.log(v)
    row[v - 1] = 0.0
    return row.expand(DRAWS, v).contiguous()


def test_sedd_analytic_step_same_distribution_as_fastdiff():
    v = 6
    m = v - 1
    torch.manual_seed(0)
    s = _one_row(v)
    x = torch.full((DRAWS,), m)
    sig, sig_next = torch.full((DRAWS,), 1.0), torch.full((DRAWS,), 0.7)
    base = baselines.sedd_analytic_step_absorb(s, x, sig, sig_next, m)
    ours = fastdiff.sedd_analytic_step(
        s, x, sigma=sig, sigma_next=sig_next, graph="absorb", mask_id=m, seed=1
    )
    p = baselines.sedd_analytic_probs_absorb(s[:1].double(), x[:1], sig[:1].double(),
                                             sig_next[:1].double())[0]  # fmt: skip
    p = p.clamp(min=0) / p.clamp(min=0).sum()
    assert _tv(_freqs(base, v), p) < 0.02
    assert _tv(_freqs(ours, v), p) < 0.02


def test_sedd_euler_step_same_distribution_as_fastdiff():
    v = 6
    m = v - 1
    torch.manual_seed(0)
    s = _one_row(v)
    x = torch.full((DRAWS,), m)
    sig, dsig, dt = torch.full((DRAWS,), 1.0), torch.full((DRAWS,), 2.0), 0.1
    base = baselines.sedd_euler_step_absorb(s, x, sig, dsig, dt, m)
    ours = fastdiff.sedd_euler_step(s, x, dsigma=dsig, dt=dt, graph="absorb", mask_id=m, seed=1)
    p = baselines.sedd_euler_probs_absorb(s[:1].double(), x[:1], dsig[:1].double(), dt)[0]
    p = p.clamp(min=0) / p.clamp(min=0).sum()
    assert _tv(_freqs(base, v), p) < 0.02
    assert _tv(_freqs(ours, v), p) < 0.02


def test_mdlm_step_same_distribution_as_fastdiff():
    v = 6
    m = v - 1
    torch.manual_seed(0)
    logits = _one_row(v) * 3.0
    x = torch.full((DRAWS,), m)
    x[:10] = 2  # unmasked rows are carried over
    st, ss = torch.full((DRAWS,), 1.2), torch.full((DRAWS,), 0.5)
    base = baselines.mdlm_step(logits, x, st, ss, m)
    ours = fastdiff.mdlm_step(logits, x, sigma=st, sigma_next=ss, mask_id=m, seed=1)
    assert (base[:10] == 2).all() and (ours[:10] == 2).all()
    q = baselines.mdlm_step_probs(logits[:1].double(), x[10:11], st[:1].double(), ss[:1].double(),
                                  m)[0]  # fmt: skip
    q = q / q.sum()
    assert _tv(_freqs(base[10:], v), q) < 0.02
    assert _tv(_freqs(ours[10:], v), q) < 0.02


def test_sedd_denoise_step_same_distribution_as_fastdiff():
    v = 6
    m = v - 1
    torch.manual_seed(0)
    s = _one_row(v)
    x = torch.full((DRAWS,), m)
    sig = torch.full((DRAWS,), 1e-3)
    base = baselines.sedd_denoise_step_absorb(s, x, sig, m)
    ours = fastdiff.sedd_denoise_step(s, x, sigma=sig, graph="absorb", mask_id=m, seed=1)
    p = torch.softmax(s[0, :m].double(), -1)  # docs/ops.md#sedd-denoise-step: p_j ∝ S_j, j != m
    assert _tv(_freqs(base, m), p) < 0.02
    assert _tv(_freqs(ours, v), torch.cat([p, p.new_zeros(1)])) < 0.02


def test_sedd_analytic_uniform_step_same_distribution_as_fastdiff():
    v = 6
    torch.manual_seed(0)
    s = _one_row(v)
    x = torch.full((DRAWS,), 2)
    s[:, 2] = 0.0  # SEDD's model puts log-score 0 at the current token
    sig, sig_next = torch.full((DRAWS,), 1.0), torch.full((DRAWS,), 0.6)
    base = baselines.sedd_analytic_step_uniform(s, x, sig, sig_next)
    ours = fastdiff.sedd_analytic_step(
        s, x, sigma=sig, sigma_next=sig_next, graph="uniform", seed=1
    )
    p = baselines.sedd_analytic_probs_uniform(s[:1].double(), x[:1], sig[:1].double(),
                                              sig_next[:1].double())[0]  # fmt: skip
    p = p.clamp(min=0) / p.clamp(min=0).sum()
    assert _tv(_freqs(base, v), p) < 0.02
    assert _tv(_freqs(ours, v), p) < 0.02


def test_d3pm_step_same_distribution_as_fastdiff():
    v = 6
    g = torch.Generator().manual_seed(5)
    q_step = torch.softmax(torch.randn(v, v, generator=g, dtype=torch.float64), -1)
    qbar_prev = torch.softmax(torch.randn(v, v, generator=g, dtype=torch.float64), -1)
    logits = torch.randn(v, generator=g, dtype=torch.float64).expand(DRAWS, v).contiguous()
    x_t = torch.full((DRAWS,), 4)
    torch.manual_seed(0)
    base = baselines.d3pm_step(logits.float(), x_t, q_step.float(), qbar_prev.float())
    ours = fastdiff.d3pm_step(logits, x_t, q_step=q_step, qbar_next=qbar_prev, seed=1)
    p = q_step[:, 4] * (torch.softmax(logits[0], -1) @ qbar_prev)
    p = p / p.sum()
    assert _tv(_freqs(base, v), p) < 0.02
    assert _tv(_freqs(ours, v), p) < 0.02


def test_corrupt_same_masking_rate_as_fastdiff():
    n, v = 50000, 100
    m = v - 1
    x0 = torch.randint(0, v - 1, (n,), generator=torch.Generator().manual_seed(4))
    sigma = torch.full((n,), 0.7)
    torch.manual_seed(0)
    base = baselines.sedd_corrupt_absorb(x0, sigma, m)
    ours = fastdiff.add_noise(x0, sigma=sigma, graph="absorb", vocab_size=v, mask_id=m, seed=2)
    rate = -math.expm1(-0.7)
    for out in (base, ours):
        assert torch.equal(out[out != m], x0[out != m])
        assert abs(float((out == m).double().mean()) - rate) < 0.01


def test_sedd_sample_categorical_frequencies_and_zero_weights():
    torch.manual_seed(0)
    w = torch.tensor([0.0, 1.0, 2.0, 0.0, 5.0])
    draws = baselines.sedd_sample_categorical(w.expand(DRAWS, 5).contiguous())
    assert _tv(_freqs(draws, 5), w.double() / w.sum()) < 0.02
    assert not ((draws == 0) | (draws == 3)).any()


# --------------------------------------------------------------------------------------------
# LLaDA
# --------------------------------------------------------------------------------------------


def _peaked_logits(tops: list[list[tuple[int, float]]], vocab: int) -> torch.Tensor:
    """float32 logits ``[B, L, V]``: at each position probability ``p`` on token ``top``, the
    rest spread evenly over the other tokens."""
    probs = torch.tensor(
        [
            [[p if j == top else (1 - p) / (vocab - 1) for j in range(vocab)] for top, p in row]
            for row in tops
        ]
    )
    return probs.log()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llada_step_commits_the_k_most_confident_argmax_proposals(dtype):
    """Hand-built: per sequence the ``num_transfer[j]`` masked positions whose argmax has the
    highest probability take that argmax; positions already decoded are never chosen (their
    confidence is high here); the mask column is a proposal like any other (LLaDA does not
    exclude it: the committed mask leaves the position masked); ``block_end`` shuts out the
    positions past the block."""
    m = 4
    x = torch.tensor([[1, m, m, 2, m, m], [m, m, m, m, m, m]])
    logits = _peaked_logits(
        [
            [(1, 0.99), (3, 0.9), (0, 0.5), (2, 0.99), (m, 0.95), (2, 0.7)],
            [(1, 0.6), (2, 0.8), (3, 0.4), (0, 0.4), (1, 0.4), (2, 0.4)],
        ],
        vocab=5,
    ).to(dtype)
    before = x.clone()
    num_transfer = torch.tensor([2, 1])
    got = baselines.llada_unmask_step(logits, x, m, num_transfer)
    assert torch.equal(x, before)
    # row 0: position 4 (0.95, proposes the mask) and position 1 (0.9); row 1: position 1
    assert got.tolist() == [[1, 3, m, 2, m, m], [m, 2, m, m, m, m]]
    in_block = baselines.llada_unmask_step(logits, x, m, num_transfer, block_end=4)
    assert in_block.tolist() == [[1, 3, 0, 2, m, m], [m, 2, m, m, m, m]]
