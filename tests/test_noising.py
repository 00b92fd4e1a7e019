"""Tests for fastdiff.add_noise: absorbing and uniform forward noising
(docs/ops.md#absorbing-and-uniform-noising).

Frequency checks use fixed seeds and bounds a correct sampler passes with probability at least
1 - 1e-6 for a random seed: counts within 5 binomial standard deviations (two-sided
p = 5.7e-7), Pearson chi-square rejected only at p < 1e-6.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import add_noise

F64 = torch.float64
N = 200_000
FAST = settings(max_examples=25, deadline=None)


def within_5_sigma(count: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 5 * sd + 1  # +1: the lattice of a discrete count


def chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value (dof = categories - 1) of counts against probabilities."""
    obs = observed.double()
    exp = probs.double() * obs.sum()
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(mpmath.gammainc((obs.numel() - 1) / 2, stat / 2, mpmath.inf, regularized=True))


def move_prob(sigma: float) -> float:
    return -math.expm1(-sigma)


# --------------------------------------------------------------------------------------------
# frequencies
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.02, 0.7, 3.0])
def test_absorb_scalar_sigma_frequency(sigma: float) -> None:
    v, m = 50, 17
    x0 = torch.arange(N) % (v - 1)
    x0[x0 >= m] += 1  # clean tokens avoid the mask id
    xt = add_noise(x0, sigma=sigma, graph="absorb", vocab_size=v, mask_id=m, seed=123)
    assert xt.dtype == torch.int64 and xt.shape == x0.shape
    moved = xt != x0
    assert bool((xt[moved] == m).all())  # the only move is to the mask
    assert within_5_sigma(int(moved.sum()), N, move_prob(sigma))


def test_absorb_per_sequence_sigma_frequency() -> None:
    sig = torch.tensor([0.05, 0.3, 1.0, 3.0], dtype=F64)
    b, length, m = 4, N // 4, 0
    x0 = torch.randint(1, 30, (b, length), generator=torch.Generator().manual_seed(0))
    xt = add_noise(x0, sigma=sig, graph="absorb", vocab_size=30, mask_id=m, seed=7)
    for i in range(b):
        assert within_5_sigma(int((xt[i] == m).sum()), length, move_prob(float(sig[i]))), i


def test_absorb_per_token_sigma_frequency() -> None:
    values = torch.tensor([0.01, 0.25, 1.5, 6.0], dtype=F64)
    b, length, m = 2, N // 2, 9
    sig = values[torch.arange(length) % 4].expand(b, length)
    x0 = torch.zeros(b, length, dtype=torch.int64)
    xt = add_noise(x0, sigma=sig, graph="absorb", vocab_size=10, mask_id=m, seed=8, offset=3)
    for k in range(4):
        group = xt[:, k::4]
        assert within_5_sigma(int((group == m).sum()), group.numel(), move_prob(float(values[k])))


@pytest.mark.parametrize("sigma", [0.05, 0.8, 4.0])
def test_uniform_distribution_of_x_t(sigma: float) -> None:
    v, x0_value = 5, 3
    x0 = torch.full((N,), x0_value)
    xt = add_noise(x0, sigma=sigma, graph="uniform", vocab_size=v, seed=11)
    a = math.exp(-sigma)
    p_stay = a + (1 - a) / v  # P(x_t = x0) = e^-sigma + (1 - e^-sigma)/V
    assert within_5_sigma(int((xt == x0_value).sum()), N, p_stay)
    probs = torch.full((v,), (1 - a) / v, dtype=F64)
    probs[x0_value] = p_stay
    assert chi2_pvalue(torch.bincount(xt, minlength=v), probs) > 1e-6


def test_uniform_per_sequence_and_per_token_sigma() -> None:
    v = 4
    sig_seq = torch.tensor([0.1, 2.0], dtype=F64)
    x0 = torch.ones(2, N // 2, dtype=torch.int64)
    xt = add_noise(x0, sigma=sig_seq, graph="uniform", vocab_size=v, seed=21)
    for i in range(2):
        a = math.exp(-float(sig_seq[i]))
        assert within_5_sigma(int((xt[i] == 1).sum()), N // 2, a + (1 - a) / v)
    sig_tok = torch.where(torch.arange(N // 2) % 2 == 0, 0.1, 2.0).to(F64).expand(2, N // 2)
    xt = add_noise(x0, sigma=sig_tok, graph="uniform", vocab_size=v, seed=22)
    for k, s in enumerate((0.1, 2.0)):
        group = xt[:, k::2]
        a = math.exp(-s)
        assert within_5_sigma(int((group == 1).sum()), group.numel(), a + (1 - a) / v)


@pytest.mark.parametrize("v", [2, 97])
def test_uniform_moves_cover_the_whole_vocab_uniformly(v: int) -> None:
    # sigma = 50: every token moves (1 - e^-50 = 1 - 2e-22); x_t ~ U[0, V) whatever x0 is
    x0 = torch.randint(0, v, (N,), generator=torch.Generator().manual_seed(1))
    xt = add_noise(x0, sigma=50.0, graph="uniform", vocab_size=v, seed=5)
    counts = torch.bincount(xt, minlength=v)
    assert counts.numel() == v and bool((counts > 0).all())
    assert chi2_pvalue(counts, torch.full((v,), 1.0 / v)) > 1e-6
    # the destination does not depend on the source: x_t = x0 with probability 1/V
    assert within_5_sigma(int((xt == x0).sum()), N, 1.0 / v)


def test_uniform_vocab_of_one_never_changes() -> None:
    x0 = torch.zeros(1000, dtype=torch.int64)
    assert torch.equal(add_noise(x0, sigma=5.0, graph="uniform", vocab_size=1, seed=0), x0)


# --------------------------------------------------------------------------------------------
# fixed positions, sigma = 0 / inf
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_fixed_positions_untouched(graph: str) -> None:
    v, m = 13, 12
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, v - 1, (8, 5000), generator=gen)
    fixed = torch.rand(8, 5000, generator=gen) < 0.3
    xt = add_noise(x0, sigma=30.0, graph=graph, vocab_size=v, mask_id=m, fixed=fixed, seed=3)
    assert torch.equal(xt[fixed], x0[fixed])
    if graph == "absorb":
        # P(a free position stays) = e^-30 = 9e-14 per position
        assert bool((xt[~fixed] == m).all())
    else:
        changed = (xt[~fixed] != x0[~fixed]).double().mean().item()
        n_free = int((~fixed).sum())
        assert within_5_sigma(round(changed * n_free), n_free, 1 - 1 / v)
    # a per-sequence fixed mask (prefix of the batch shape) fixes whole rows
    rows = torch.tensor([True, False] * 4)
    xt = add_noise(x0, sigma=30.0, graph=graph, vocab_size=v, mask_id=m, fixed=rows, seed=3)
    assert torch.equal(xt[rows], x0[rows])
    assert bool((xt[~rows] != x0[~rows]).any())
    # fixing changes nothing at the free positions (the same counters are used)
    free = add_noise(x0, sigma=30.0, graph=graph, vocab_size=v, mask_id=m, seed=3)
    assert torch.equal(xt[~rows], free[~rows])


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_sigma_zero_never_moves(graph: str) -> None:
    x0 = torch.randint(0, 7, (N,), generator=torch.Generator().manual_seed(4))
    xt = add_noise(x0, sigma=0.0, graph=graph, vocab_size=8, mask_id=7, seed=9)
    assert torch.equal(xt, x0)
    sig = torch.tensor([0.0, 2.0], dtype=F64)
    xt = add_noise(x0.reshape(2, -1), sigma=sig, graph=graph, vocab_size=8, mask_id=7, seed=9)
    assert torch.equal(xt[0], x0.reshape(2, -1)[0])
    assert not torch.equal(xt[1], x0.reshape(2, -1)[1])


def test_sigma_infinite_always_masks() -> None:
    x0 = torch.zeros(N, dtype=torch.int64)
    xt = add_noise(x0, sigma=math.inf, graph="absorb", vocab_size=3, mask_id=2, seed=10)
    assert bool((xt == 2).all())


@FAST
@given(
    sigma=st.floats(0.0, 30.0),
    seed=st.integers(0, 2**63 - 1),
    offset=st.integers(0, 2**40),
    v=st.integers(2, 40),
    data=st.data(),
)
def test_noising_invariants(sigma: float, seed: int, offset: int, v: int, data) -> None:
    m = data.draw(st.integers(0, v - 1))
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 50)))
    x0 = torch.randint(0, v, shape, generator=torch.Generator().manual_seed(seed % 1000))
    fixed = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    a = add_noise(
        x0,
        sigma=sigma,
        graph="absorb",
        vocab_size=v,
        mask_id=m,
        fixed=fixed,
        seed=seed,
        offset=offset,
    )
    u = add_noise(
        x0, sigma=sigma, graph="uniform", vocab_size=v, fixed=fixed, seed=seed, offset=offset
    )
    assert a.shape == u.shape == shape
    assert bool(((a == x0) | (a == m)).all())
    assert bool(((u >= 0) & (u < v)).all())
    assert torch.equal(a[fixed], x0[fixed]) and torch.equal(u[fixed], x0[fixed])
    # both graphs take the move decision from the same per-position uniform (reference docs):
    # where the absorbing draw kept a (non-mask) token, the uniform draw kept it too
    kept = (a == x0) & (x0 != m)
    assert torch.equal(u[kept], x0[kept])
    # keyed by the flat position: reshaping the batch does not change the draw
    flat = add_noise(
        x0.reshape(-1),
        sigma=sigma,
        graph="absorb",
        vocab_size=v,
        mask_id=m,
        fixed=fixed.reshape(-1),
        seed=seed,
        offset=offset,
    )
    assert torch.equal(flat, a.reshape(-1))


# --------------------------------------------------------------------------------------------
# seeds, offsets, generators
# --------------------------------------------------------------------------------------------


def _draw(**kw):
    x0 = torch.zeros(4096, dtype=torch.int64)
    return add_noise(x0, sigma=0.7, graph="uniform", vocab_size=50, **kw)


def test_seed_offset_reproducibility() -> None:
    a = _draw(seed=1)
    assert torch.equal(a, _draw(seed=1))
    assert torch.equal(a, _draw(seed=torch.tensor(1)))
    assert torch.equal(a, _draw(seed=1, offset=0))
    for other in (_draw(seed=2), _draw(seed=1, offset=1), _draw(seed=1, offset=1 << 32)):
        # two independent draws agree at a position with probability ~0.25 here
        assert (other == a).double().mean().item() < 0.5


def test_generator_is_used_and_advances() -> None:
    g = torch.Generator().manual_seed(1234)
    first = _draw(generator=g)
    second = _draw(generator=g)
    assert not torch.equal(first, second)
    g.manual_seed(1234)
    assert torch.equal(_draw(generator=g), first)
    # the key is one torch.randint(0, 2^63 - 1, ()) draw from the generator (random.py docs)
    g2 = torch.Generator().manual_seed(1234)
    key = int(torch.randint(0, 2**63 - 1, (), generator=g2))
    assert torch.equal(_draw(seed=key), first)
    # and the default generator follows torch.manual_seed
    torch.manual_seed(99)
    c = _draw()
    torch.manual_seed(99)
    assert torch.equal(_draw(), c)
    assert not torch.equal(_draw(), c)


def test_int32_and_scalar_inputs() -> None:
    x0 = torch.arange(10, dtype=torch.int32)
    xt = add_noise(x0, sigma=100.0, graph="absorb", vocab_size=11, mask_id=10, seed=0)
    assert xt.dtype == torch.int64 and bool((xt == 10).all())
    s = add_noise(torch.tensor(3), sigma=0.0, graph="uniform", vocab_size=5, seed=0)
    assert s.shape == () and int(s) == 3


def test_noising_validation() -> None:
    x0 = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="mask_id"):
        add_noise(x0, sigma=1.0, graph="absorb", vocab_size=4)
    with pytest.raises(ValueError, match="mask_id"):
        add_noise(x0, sigma=1.0, graph="absorb", vocab_size=4, mask_id=4)
    with pytest.raises(ValueError, match="graph"):
        add_noise(x0, sigma=1.0, graph="masked", vocab_size=4, mask_id=3)
    with pytest.raises(ValueError, match="x0"):
        add_noise(x0, sigma=1.0, graph="uniform", vocab_size=2)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x0, sigma=-0.5, graph="uniform", vocab_size=4)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x0, sigma=math.nan, graph="uniform", vocab_size=4)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x0, sigma=torch.tensor([0.5, 0.5]), graph="uniform", vocab_size=4)
    with pytest.raises(ValueError, match="fixed"):
        add_noise(x0, sigma=1.0, graph="uniform", vocab_size=4, fixed=torch.tensor([True, False]))
    with pytest.raises(TypeError, match="fixed"):
        add_noise(x0, sigma=1.0, graph="uniform", vocab_size=4, fixed=torch.tensor([[1, 0, 0]]))
    with pytest.raises(TypeError, match="x0"):
        add_noise(x0.float(), sigma=1.0, graph="uniform", vocab_size=4)
    with pytest.raises(TypeError, match="vocab_size"):
        add_noise(x0, sigma=1.0, graph="uniform", vocab_size=4.0)
    with pytest.raises(TypeError, match="seed"):
        add_noise(x0, sigma=1.0, graph="uniform", vocab_size=4, seed=1.5)
    assert fastdiff.add_noise is add_noise
