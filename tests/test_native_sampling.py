"""Native CPU categorical sampling (csrc/native/sampling.cpp, race.cpp) against the reference.

Both compute float64 keys from the same Philox words; the native kernel uses its own
vectorized log / exp (csrc/native/vmath.h, within 1 ulp of the C library) and, for plain draws
from float32 / float16 / bfloat16 weights, the ratio keys ``w / E`` instead of
``log w - log E``. Draws can then differ only where two keys tie within a few ulps, which
these inputs never produce: every property demands identical tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend
from fastdiff.native._ops import ops

pytestmark = pytest.mark.skipif(
    not backend.native_available(), reason="fastdiff._C (native CPU kernels) is not built"
)

FILTERS = [
    {},
    {"top_k": 1},
    {"top_k": 5},
    {"top_p": 0.6},
    {"top_p": 0.95},
    {"min_p": 0.2},
    {"top_k": 8, "top_p": 0.8, "min_p": 0.05},
]
VOCABS = [1, 2, 3, 17, 255, 256, 257, 513, 600]


def _draw(name: str, **kwargs):
    with fastdiff.use_backend(name):
        return fastdiff.sample_categorical(**kwargs)


def _inputs(n: int, vocab: int, is_log: bool, dtype: torch.dtype, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed % 2**31)
    if is_log:
        logits = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 4
        logits[:, ::7] = -math.inf  # forbidden tokens
        logits[:, -1] = logits[:, -1].clamp(min=-30.0)  # every row keeps a token
        return {"logits": logits.to(dtype)}
    probs = torch.rand(n, vocab, generator=gen, dtype=torch.float64) ** 3
    probs[:, ::5] = 0.0
    probs[:, -1] += 1e-3
    return {"probs": probs.to(dtype)}


@settings(max_examples=60)
@given(
    seed=st.integers(-(2**63), 2**63 - 1),
    offset=st.integers(0, 2**62),
    n=st.integers(1, 12),
    vocab=st.sampled_from(VOCABS),
    is_log=st.booleans(),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    filters=st.sampled_from(FILTERS),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
)
def test_native_draws_the_reference_tokens(
    seed, offset, n, vocab, is_log, temperature, filters, dtype
):
    kw = _inputs(n, vocab, is_log, dtype, seed)
    common = dict(temperature=temperature, seed=seed, offset=offset, return_prob=True, **filters)
    i_ref, p_ref = _draw("reference", **kw, **common)
    i_nat, p_nat = _draw("native", **kw, **common)
    assert torch.equal(i_nat, i_ref)
    torch.testing.assert_close(p_nat, p_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("is_log", [False, True])
def test_native_gpt2_vocabulary_rows_equal_reference(is_log):
    """V = 50258 (GPT-2 + mask): 197 groups, the last one partial; 6 rows, 4 seeds."""
    kw = _inputs(6, 50258, is_log, torch.float32, 5)
    for seed in (0, 1, -7, 2**62 + 3):
        ref = _draw("reference", **kw, seed=seed, offset=seed % 5)
        assert torch.equal(_draw("native", **kw, seed=seed, offset=seed % 5), ref)


def test_native_tensor_seed_and_row_subsets():
    """A 0-d int64 seed tensor draws what the int does; a row's draw depends on its index only
    (the first rows of a batch draw what the whole batch draws there)."""
    probs = torch.rand(40, 300, generator=torch.Generator().manual_seed(1))
    whole = _draw("native", probs=probs, seed=torch.tensor(123))
    assert torch.equal(whole, _draw("native", probs=probs, seed=123))
    assert torch.equal(_draw("native", probs=probs[:13], seed=123), whole[:13])


def test_native_non_contiguous_and_batched_inputs():
    logits = torch.randn(3, 5, 2 * 129, generator=torch.Generator().manual_seed(2))[..., ::2]
    assert not logits.is_contiguous()
    ref = _draw("reference", logits=logits, seed=9)
    assert ref.shape == (3, 5) and torch.equal(_draw("native", logits=logits, seed=9), ref)


def test_native_threads_do_not_change_the_draws():
    probs = torch.rand(257, 700, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _draw("native", probs=probs, seed=4, top_p=0.9)
        torch.set_num_threads(2)
        two = _draw("native", probs=probs, seed=4, top_p=0.9)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_native_hand_cases():
    """A single positive weight is always drawn; temperature 0 takes the first maximum; top-k 1
    keeps the tied maxima only; the probability returned is that of the filtered
    distribution."""
    w = torch.zeros(50, 600)
    w[:, 417] = 2.0
    assert bool((_draw("native", probs=w, seed=1) == 417).all())
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0]]).expand(20, 4)
    assert bool((_draw("native", logits=logits, temperature=0.0) == 1).all())
    assert set(_draw("native", logits=logits, seed=5, top_k=1).tolist()) == {1, 2}
    probs = torch.tensor([[4.0, 2.0, 2.0, 1.0, 1.0]]).expand(400, 5)
    idx, prob = _draw("native", probs=probs, seed=3, top_p=0.5, return_prob=True)
    assert set(idx.tolist()) == {0, 1, 2}
    torch.testing.assert_close(prob, probs[0, idx] / 8.0)


@pytest.mark.parametrize("vocab", [4, 1000])
def test_native_frequencies(vocab):
    """Tokens drawn from w = (1, 2, ..., V) (scaled): each count within 5 sigma of its binomial
    mean over 40000 rows (V = 1000 also checks the grouped race); P(fail) < 1e-4."""
    n = 40000
    w = torch.arange(1, vocab + 1, dtype=torch.float32).expand(n, vocab)
    counts = torch.bincount(_draw("native", probs=w, seed=11), minlength=vocab).double()
    p = w[0].double() / w[0].double().sum()
    if vocab > 4:  # pool into 8 bins of equal width to keep the counts large
        counts, p = counts.view(8, -1).sum(-1), p.view(8, -1).sum(-1)
    sigma = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() < 5 * sigma).all()), (counts, n * p)


def test_native_op_passes_opcheck():
    probs = torch.rand(4, 300)
    args = (probs, False, 7, 3, 1.0, 0, 1.0, 0.0, True)
    torch.library.opcheck(ops.sample_categorical.default, args)
