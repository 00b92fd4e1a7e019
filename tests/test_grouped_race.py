"""The grouped exponential race (fastdiff.random, V > RACE_GROUP = 256 columns).

- kernels draw the same tokens as the reference for vocabularies just past one group (odd
  sizes, mask id first / middle / last, block sizes 256..1024, every op that races);
- the grouped race samples exactly ``Cat(w)``: chi-square over many draws against the exact
  probabilities, with a group of tiny total weight, z = (chi2 - df) / sqrt(2 df) <= 5;
- group counters ``(2^30 + g, ...)`` and column counters ``(j // 2, ...)`` never meet.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import random as frandom
from fastdiff.kernels import categorical, launch, noising, updates
from fastdiff.kernels import race as race_kernels
from fastdiff.reference import noising as ref_noising
from fastdiff.reference.sampling import race

G = frandom.RACE_GROUP
VOCABS = [257, 511, 513, 700]
BLOCKS = [0, 256, 512, 1024]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


def _both(fn, *args, **kwargs):
    out = {}
    for name in ("reference", "triton"):
        with fastdiff.use_backend(name):
            out[name] = fn(*args, **kwargs)
    return out


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**62),
    vocab=st.sampled_from(VOCABS),
    block_v=st.sampled_from(BLOCKS),
    filters=st.sampled_from([{}, {"top_k": 30}, {"top_p": 0.7}, {"min_p": 0.05}]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_categorical_kernel_tokens_equal_reference(seed, vocab, block_v, filters, dtype):
    gen = torch.Generator().manual_seed(seed % 2**31)
    logits = (torch.randn(6, vocab, generator=gen) * 2).to(dtype)
    with fastdiff.use_backend("reference"):
        want, p_ref = fastdiff.sample_categorical(
            logits=logits, seed=seed, offset=5, return_prob=True, **filters
        )
    args = (logits, True, seed, 5, 1.0, filters.get("top_k"), filters.get("top_p"))
    got, p_k = categorical.sample_categorical(*args, filters.get("min_p"), True, block_v=block_v)
    assert int((got != want).sum()) <= 1
    same = got == want
    torch.testing.assert_close(p_k[same], p_ref[same], rtol=2e-5, atol=1e-7)


UPDATES = {
    "euler": (fastdiff.sedd_euler_step, {"dsigma": 2.0, "dt": 0.05, "graph": "absorb"}),
    "analytic": (fastdiff.sedd_analytic_step, {"sigma": 1.2, "sigma_next": 1.0, "graph": "absorb"}),
    "denoise": (fastdiff.sedd_denoise_step, {"sigma": 1e-3, "graph": "absorb"}),
    "mdlm": (fastdiff.mdlm_step, {"sigma": 1.0, "sigma_next": 0.7}),
    "euler_uniform": (fastdiff.sedd_euler_step, {"dsigma": 3.0, "dt": 0.1, "graph": "uniform"}),
    "analytic_uniform": (
        fastdiff.sedd_analytic_step,
        {"sigma": 1.5, "sigma_next": 1.0, "graph": "uniform"},
    ),
}


@settings(max_examples=12, deadline=None)
@given(
    update=st.sampled_from(sorted(UPDATES)),
    seed=st.integers(0, 2**62),
    vocab=st.sampled_from(VOCABS),
    where=st.sampled_from(["first", "mid", "last"]),
    block_v=st.sampled_from(BLOCKS),
    scale=st.sampled_from([1.0, 3.0]),
)
def test_update_kernel_tokens_equal_reference(update, seed, vocab, where, block_v, scale):
    fn, kw = UPDATES[update]
    mask_id = {"first": 0, "mid": vocab // 2, "last": vocab - 1}[where]
    gen = torch.Generator().manual_seed(seed % 2**31)
    n = 8
    scores = torch.randn(n, vocab, generator=gen) * scale - 4.0
    x = torch.where(
        torch.rand(n, generator=gen) < 0.7, mask_id, torch.randint(0, vocab, (n,), generator=gen)
    )
    if "uniform" not in update:
        kw = {**kw, "mask_id": mask_id}
    with fastdiff.use_backend("reference"):
        want = fn(scores, x, seed=seed, offset=2, **kw)
    orig = updates._update

    def with_block(*args):
        return orig(*args[:-1], block_v)

    updates._update = with_block
    try:
        with fastdiff.use_backend("triton"):
            got = fn(scores, x, seed=seed, offset=2, **kw)
    finally:
        updates._update = orig
    assert int((got != want).sum()) <= 1


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**62), vocab=st.sampled_from(VOCABS), block_v=st.sampled_from(BLOCKS))
def test_dense_noising_and_candidates_tokens_equal_reference(seed, vocab, block_v):
    gen = torch.Generator().manual_seed(seed % 2**31)
    q = torch.softmax(torch.randn(vocab, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    x0 = torch.randint(0, vocab, (8,), generator=gen)
    want = ref_noising.corrupt_dense(x0, q, None, None, seed, 1)
    got = noising.corrupt_dense(x0, q.float(), None, None, seed, 1, block_v=block_v)
    assert int((got != want).sum()) <= 1
    mask_id = int(torch.randint(0, vocab, (), generator=gen))
    logits = torch.randn(8, vocab, generator=gen) * 2
    x = torch.full((8,), mask_id)
    out = _both(fastdiff.unmask_candidates, logits, x, mask_id=mask_id, temperature=0.8, seed=seed)
    assert int((out["reference"][0] != out["triton"][0]).sum()) <= 1


@pytest.mark.parametrize("hoisted", [True, False])
@pytest.mark.parametrize("vocab", [2500, 4096])
def test_full_blocks_hoisted_and_in_loop_races_equal_reference(monkeypatch, vocab, hoisted):
    """2048-column blocks: V = 2500 (rows not 16-aligned: permuted block columns, STRIDED) and
    V = 4096 (aligned); pass 1 keeps the group state in registers, or (``hoisted=False``, as
    above MAX_HOISTED_GROUPS) races the groups block by block. Same tokens as the reference."""
    assert race_kernels.strided_groups(torch.empty(3, vocab), 2048, 8) == (vocab % 16 != 0)
    assert race_kernels.race_groups(vocab, 2048) == triton_slots(vocab)
    if not hoisted:
        monkeypatch.setattr(race_kernels, "MAX_HOISTED_GROUPS", 0)
    seed, n = 12345, 3
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(n, vocab, generator=gen) * 3
    mask_id = vocab - 7
    for filters in ({}, {"min_p": 0.02}):
        with fastdiff.use_backend("reference"):
            want, p_ref = fastdiff.sample_categorical(
                logits=logits, seed=seed, offset=3, return_prob=True, temperature=0.8, **filters
            )
        args = (logits, True, seed, 3, 0.8, None, None, filters.get("min_p"), True)
        got, p_k = categorical.sample_categorical(*args)
        assert torch.equal(got, want)
        torch.testing.assert_close(p_k, p_ref, rtol=2e-5, atol=1e-7)
    x = torch.tensor([mask_id, mask_id, 5])
    for name in ("euler", "mdlm", "analytic_uniform"):
        fn, kw = UPDATES[name]
        if "uniform" not in name:
            kw = {**kw, "mask_id": mask_id}
        out = _both(fn, logits - 4.0, x, seed=seed, offset=2, **kw)
        assert torch.equal(out["reference"], out["triton"]), name
    for t in (1.0, 0.8):
        out = _both(
            fastdiff.unmask_candidates, logits, x, mask_id=mask_id, temperature=t, seed=seed
        )
        assert torch.equal(out["reference"][0], out["triton"][0])
        torch.testing.assert_close(
            out["triton"][1], out["reference"][1].float(), rtol=1e-4, atol=1e-6
        )
    q = torch.softmax(torch.randn(4, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    q = torch.cat([q, q.flip(0)]).repeat(vocab // 8 + 1, 1)[:vocab]
    x0 = torch.tensor([0, 1, vocab - 1])
    want = ref_noising.corrupt_dense(x0, q, None, None, seed, 1)
    assert torch.equal(noising.corrupt_dense(x0, q.float(), None, None, seed, 1), want)


def triton_slots(vocab: int) -> int:
    blocks = -(-vocab // 2048)
    return (1 << (blocks - 1).bit_length()) * (2048 // G)


def _weights() -> torch.Tensor:
    """600 columns (3 groups): group 1 holds a total weight of 1e-3 of the row."""
    gen = torch.Generator().manual_seed(11)
    w = torch.rand(600, generator=gen, dtype=torch.float64) + 0.05
    w[G : 2 * G] *= 1e-3 / float(w[G : 2 * G].sum()) * float(w.sum())
    w[::7] = 0.0  # zero weights never win
    return w / w.sum()


def _chi2_z(idx: torch.Tensor, p: torch.Tensor) -> float:
    """z of the chi-square statistic with cells of expected count < 5 pooled into one."""
    n = idx.numel()
    counts = torch.bincount(idx, minlength=p.numel()).double()
    assert float(counts[p == 0].sum()) == 0.0, "a zero-weight column was drawn"
    expected = n * p
    big = expected >= 5
    cells_c = torch.cat([counts[big], counts[~big & (p > 0)].sum()[None]])
    cells_e = torch.cat([expected[big], expected[~big & (p > 0)].sum()[None]])
    chi2 = float(((cells_c - cells_e) ** 2 / cells_e).sum())
    df = cells_c.numel() - 1
    return (chi2 - df) / math.sqrt(2 * df)


def test_grouped_race_reference_frequencies():
    """8000 reference draws over 600 columns: chi-square z <= 5 over all cells, and the tiny
    group (p = 1e-3, 8 expected draws) within a 5-sigma Poisson band."""
    p = _weights()
    n = 8000
    idx = race(torch.log(p).expand(n, -1), torch.arange(n), seed=77, offset=0)
    assert abs(_chi2_z(idx, p)) <= 5
    tiny = int(((idx >= G) & (idx < 2 * G)).sum())
    lam = n * float(p[G : 2 * G].sum())
    assert abs(tiny - lam) <= 5 * math.sqrt(lam) + 1, (tiny, lam)


def test_grouped_race_kernel_frequencies(monkeypatch):
    """1500 kernel draws over the same 600 columns: chi-square z <= 5 (cells pooled below 5)."""
    monkeypatch.setattr(launch, "TILE_ELEMENTS", 1 << 14)
    p = _weights()
    n = 1500
    idx = categorical.sample_categorical(
        p.float().expand(n, -1), False, 78, 0, 1.0, None, None, None, False
    )[0]
    assert abs(_chi2_z(idx, p)) <= 5


def test_group_and_column_counters_never_collide():
    """Column counters c0 = j // 2 stay below 2^30 for every j < 2^31 - 1 (the race's limit);
    group counters c0 = 2^30 + g start there and stay below 2^32. The words differ too."""
    top_col = frandom.MAX_RACE_COLUMNS - 1
    assert top_col // 2 < frandom.GROUP_COUNTER_BASE
    n_groups = -(-frandom.MAX_RACE_COLUMNS // G)
    assert frandom.GROUP_COUNTER_BASE + n_groups - 1 < 2**32
    rows = torch.arange(3)
    e_group = frandom.group_exponential(5, 9, rows, 4)
    e_cols = frandom.exponential(5, 9, rows, 8)
    assert not bool(torch.isin(e_group, e_cols).any())
    with pytest.raises(ValueError, match="2\\^31"):
        race(torch.zeros(1, 1).expand(1, 2**31), torch.arange(1), 0, 0)


def test_small_vocabulary_is_the_plain_race():
    """V <= G: no group draw; tokens equal the plain race argmax(log w - log E)."""
    gen = torch.Generator().manual_seed(3)
    lw = torch.randn(50, G, generator=gen, dtype=torch.float64)
    rows = torch.arange(50)
    plain = (lw - torch.log(frandom.exponential(4, 2, rows, G))).argmax(-1)
    assert torch.equal(race(lw, rows, 4, 2), plain)


def test_small_block_is_raised_to_the_group_and_matches_default():
    """A block smaller than G with V > G is raised to G: the same tokens as the default block."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 300, generator=gen) * 2
    args = (logits, True, 9, 1, 1.0, None, None, None, False)
    small = categorical.sample_categorical(*args, block_v=16)[0]
    assert torch.equal(small, categorical.sample_categorical(*args)[0])


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.sampled_from([300, 513, 700]),
    top_k=st.sampled_from([1, 2, 7, 64, 255]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_topk_radix_select_equals_bitwise_search(seed, vocab, top_k, dtype):
    """Tiles of <= 4 rows find the top-k threshold by radix select (4 histogram passes), tiles
    of many rows by 32 counting passes: the same thresholds, so the same tokens and
    probabilities, with ties at the boundary (every 5th logit repeats column 0) and -inf."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(8, vocab, generator=gen) * 3).to(dtype)
    logits[:, ::5] = logits[:, :1]
    logits[:, 3::11] = -math.inf
    args = (logits, True, seed, 0, 1.0, top_k, None, None, True)
    radix = categorical.sample_categorical(*args, block_v=1024)  # BLOCK_N = 4
    bitwise = categorical.sample_categorical(*args, block_v=256)  # BLOCK_N = 16
    assert torch.equal(radix[0], bitwise[0])
    torch.testing.assert_close(radix[1], bitwise[1], rtol=0, atol=0)
    with fastdiff.use_backend("reference"):
        want = fastdiff.sample_categorical(logits=logits, seed=seed, top_k=top_k)
    assert int((radix[0] != want).sum()) <= 1
