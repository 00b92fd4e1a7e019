"""Tests for fastdiff.unmasking: step quotas, commit rules (k / threshold / factor, semi-AR
blocks) and the end-to-end confidence-unmasking step (docs/ops.md#confidence-unmasking)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff.unmasking import (
    block_index,
    confidence_unmask_step,
    generation_start,
    random_confidence,
    restrict_to_block,
    select_commits,
    unmask_quota,
)

INF = math.inf
FAST = settings(max_examples=60, deadline=None)


def conf(*rows: list[float], dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def where(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(r).squeeze(1).tolist() for r in mask]


# --------------------------------------------------------------------------------------------
# unmask_quota
# --------------------------------------------------------------------------------------------


def test_quota_hand_cases():
    m = 9
    x = torch.tensor(
        [
            [m, m, m, m, m, 1, m],  # M = 6
            [m, m, m, m, m, m, m],  # M = 7
            [1, m, 2, m, 3, 4, 5],  # M = 2
            [1, 2, 3, 4, 5, 6, 7],  # M = 0
        ]
    )
    q = unmask_quota(x, mask_id=m, steps=3)
    assert q.dtype == torch.int64 and q.shape == (4, 3)
    assert q.tolist() == [[2, 2, 2], [3, 2, 2], [1, 1, 0], [0, 0, 0]]
    q = unmask_quota(x, mask_id=m, steps=4)
    assert q.tolist() == [[2, 2, 1, 1], [2, 2, 2, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert unmask_quota(x, mask_id=m, steps=1).tolist() == [[6], [7], [2], [0]]
    assert unmask_quota(x, mask_id=m, steps=10)[1].tolist() == [1] * 7 + [0] * 3


def test_quota_excludes_fixed_positions():
    m = 0  # the mask id at the first column
    x = torch.tensor([[0, 0, 0, 0, 0, 3], [0, 0, 2, 0, 0, 0]])
    fixed = torch.tensor([[True, True, False, False, False, True], [False] * 6])
    # row 0: 3 masked non-fixed; row 1: 5 masked
    assert unmask_quota(x, mask_id=m, steps=2, fixed=fixed).tolist() == [[2, 1], [3, 2]]
    # per-sequence (prefix-shaped) fixed: the whole first sequence is context
    q = unmask_quota(x, mask_id=m, steps=2, fixed=torch.tensor([True, False]))
    assert q.tolist() == [[0, 0], [3, 2]]


@FAST
@given(
    b=st.integers(1, 4),
    length=st.integers(1, 40),
    steps=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_quota_property(b, length, steps, seed):
    g = torch.Generator().manual_seed(seed)
    m = 5
    x = torch.randint(0, 7, (b, length), generator=g)
    fixed = torch.rand(b, length, generator=g) < 0.3
    q = unmask_quota(x, mask_id=m, steps=steps, fixed=fixed)
    total = ((x == m) & ~fixed).sum(-1)
    assert torch.equal(q.sum(-1), total)
    assert bool((q >= 0).all())
    # M // steps everywhere plus one for the first M % steps steps
    for i in range(b):
        mi = int(total[i])
        expected = [mi // steps + (1 if j < mi % steps else 0) for j in range(steps)]
        assert q[i].tolist() == expected


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        ({"steps": 0}, ValueError),
        ({"steps": -2}, ValueError),
        ({"steps": 2.0}, ValueError),
        ({"steps": True}, ValueError),
        ({"x_t": torch.full((6,), 3)}, ValueError),  # not [batch, length]
        ({"x_t": torch.full((1, 2, 3), 3)}, ValueError),
        ({"x_t": torch.full((2, 3), 3.0)}, TypeError),
        ({"fixed": torch.zeros(2, 3, dtype=torch.int64)}, TypeError),
        ({"fixed": torch.zeros(3, 2, dtype=torch.bool)}, ValueError),
    ],
)
def test_quota_bad_inputs(kwargs, exc):
    args = {"x_t": torch.full((2, 3), 3), "mask_id": 3, "steps": 2, **kwargs}
    with pytest.raises(exc):
        unmask_quota(**args)


@pytest.mark.parametrize("mask_id,exc", [(-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_quota_bad_mask_id(mask_id, exc):
    # unmask_quota compares x == mask_id without validating mask_id: a negative or non-integer
    # id silently gives all-zero quotas (nothing is ever unmasked) instead of an error, unlike
    # every other op (checks.mask_id raises TypeError / ValueError).
    x = torch.tensor([[1, 3, 3], [3, 0, 2]])
    with pytest.raises(exc):
        unmask_quota(x, mask_id=mask_id, steps=2)


# --------------------------------------------------------------------------------------------
# select_commits: hand cases
# --------------------------------------------------------------------------------------------


def test_k_rule_hand_cases():
    c = conf([0.9, 0.2, -INF, 0.9, 0.5], [-INF, -INF, -INF, -INF, -INF])
    assert where(select_commits(c, k=0)) == [[], []]
    assert where(select_commits(c, k=1)) == [[0], []]  # tie 0.9/0.9: leftmost
    assert where(select_commits(c, k=2)) == [[0, 3], []]
    assert where(select_commits(c, k=3)) == [[0, 3, 4], []]
    assert where(select_commits(c, k=4)) == [[0, 1, 3, 4], []]
    assert where(select_commits(c, k=50)) == [[0, 1, 3, 4], []]  # never an ineligible one
    out = select_commits(c, k=2)
    assert out.dtype == torch.bool and out.shape == c.shape


def test_k_rule_per_sequence_tensor():
    c = conf([0.1, 0.7, 0.3, 0.7], [0.4, -INF, 0.8, 0.6], [0.5, 0.5, 0.5, 0.5])
    out = select_commits(c, k=torch.tensor([1, 2, 3]))
    assert where(out) == [[1], [2, 3], [0, 1, 2]]
    out = select_commits(c, k=torch.tensor([0, 5, 1], dtype=torch.int32))
    assert where(out) == [[], [0, 2, 3], [0]]
    with pytest.raises(ValueError):
        select_commits(c, k=torch.tensor([1, 2]))


def test_threshold_rule_hand_cases():
    c = conf(
        [0.9, 0.2, -INF, 0.95, 0.5],
        [0.1, 0.3, 0.3, -INF, 0.2],  # nothing >= threshold: only the best (tie -> leftmost)
        [-INF, -INF, -INF, -INF, -INF],  # nothing eligible: nothing
    )
    assert where(select_commits(c, threshold=0.5)) == [[0, 3, 4], [1], []]
    assert where(select_commits(c, threshold=0.9)) == [[0, 3], [1], []]  # >= is inclusive
    assert where(select_commits(c, threshold=0.99)) == [[3], [1], []]
    assert where(select_commits(c, threshold=-1.0)) == [[0, 1, 3, 4], [0, 1, 2, 4], []]


def largest_n(sorted_c: list[float], f: float) -> int:
    n = 0
    for i, c in enumerate(sorted_c, start=1):
        if c >= 1 - f / (i + 1):
            n = i
    return max(n, 1)


def test_factor_rule_hand_cases():
    # sorted c = 0.99, 0.9, 0.8, 0.6:
    # f = 0.5: thresholds 1 - 0.5/(n+1) = 0.75, 0.833, 0.875, 0.9 -> n = 2
    # f = 1.0: thresholds 0.5, 0.667, 0.75, 0.8 -> n = 3
    # f = 0.01: threshold 0.995 > 0.99 at n = 1 -> none, at least 1 -> n = 1
    # f = 3.0: thresholds -0.5, 0, 0.25, 0.4 -> n = 4
    c = conf([0.8, -INF, 0.99, 0.6, 0.9, -INF])
    assert where(select_commits(c, factor=0.5)) == [[2, 4]]
    assert where(select_commits(c, factor=1.0)) == [[0, 2, 4]]
    assert where(select_commits(c, factor=0.01)) == [[2]]
    assert where(select_commits(c, factor=3.0)) == [[0, 2, 3, 4]]
    for f in (0.5, 1.0, 0.01, 3.0):
        assert largest_n([0.99, 0.9, 0.8, 0.6], f) == len(where(select_commits(c, factor=f))[0])
    # the boundary c_(n) == 1 - f/(n+1) counts (>=), with exactly representable values:
    # f = 1.5: thresholds 0.25, 0.5 -> c_(2) = 0.5 is in, 0.4999 is not
    assert where(select_commits(conf([0.9, 0.5], dtype=torch.float64), factor=1.5)) == [[0, 1]]
    assert where(select_commits(conf([0.9, 0.4999], dtype=torch.float64), factor=1.5)) == [[0]]
    # f = 1: thresholds 0.5, 2/3, 0.75 -> three equal confidences of 0.75 all commit
    c = conf([0.75, 0.75, 0.75], dtype=torch.float64)
    assert where(select_commits(c, factor=1.0)) == [[0, 1, 2]]
    # no eligible position: nothing (the "at least one" applies only when one exists)
    assert where(select_commits(conf([-INF, -INF]), factor=1.0)) == [[]]


def test_block_size_hand_cases():
    c = conf(
        [-INF, -INF, 0.3, 0.9, 0.95, 0.99, 0.2],  # blocks of 2: {0,1} empty -> block {2,3}
        [0.1, -INF, 0.99, 0.99, 0.99, 0.99, 0.99],  # block {0,1} has position 0
        [-INF] * 7,
    )
    assert where(select_commits(c, k=1, block_length=2)) == [[3], [0], []]
    assert where(select_commits(c, k=5, block_length=2)) == [[2, 3], [0], []]
    assert where(select_commits(c, threshold=0.5, block_length=2)) == [[3], [0], []]
    assert where(select_commits(c, threshold=0.5, block_length=4)) == [[3], [2, 3], []]
    # blocks of 3: row 0's active block {0,1,2} holds only position 2; row 1's holds 0 and 2
    assert where(select_commits(c, factor=1.0, block_length=3)) == [[2], [2], []]
    # a ragged last block: blocks of 3 are {0,1,2}, {3,4,5}, {6}
    c2 = conf([-INF, -INF, -INF, -INF, -INF, -INF, 0.4])
    assert where(select_commits(c2, k=2, block_length=3)) == [[6]]
    # block_length >= length: a single block, no restriction
    assert where(select_commits(c, k=2, block_length=100)) == where(select_commits(c, k=2))
    restricted = restrict_to_block(c, 2)
    assert restricted[0].tolist()[2:4] == pytest.approx([0.3, 0.9])
    assert bool(torch.all(restricted[0, 4:] == -INF))


def test_blocks_start_at_block_start():
    """Blocks aligned at ``block_start`` (per row): row 0 from 3, blocks {3,4}, {5,6}; row 1
    from 0, blocks {0,1}, {2,3}, {4,5}, {6}."""
    c = conf(
        [-INF, -INF, -INF, 0.2, 0.1, 0.9, 0.8],
        [-INF, -INF, 0.2, 0.1, 0.9, 0.8, 0.7],
    )
    start = torch.tensor([3, 0])
    assert where(select_commits(c, k=5, block_length=2, block_start=start)) == [[3, 4], [2, 3]]
    assert where(select_commits(c, k=1, block_length=2, block_start=3)) == [[3], [2]]
    # from position 0, row 0's active block would be {2, 3}: position 3 only
    assert where(select_commits(c, k=5, block_length=2)) == [[3], [2, 3]]
    assert where(select_commits(c, threshold=0.5, block_length=2, block_start=start)) == [
        [3],
        [2],
    ]
    assert block_index(7, 2, start, c.device).tolist() == [
        [-2, -1, -1, 0, 0, 1, 1],
        [0, 0, 1, 1, 2, 2, 3],
    ]
    assert torch.equal(
        restrict_to_block(c, 2, block_start=start),
        conf([-INF, -INF, -INF, 0.2, 0.1, -INF, -INF], [-INF, -INF, 0.2, 0.1, -INF, -INF, -INF]),
    )


def test_generation_start():
    fixed = torch.tensor(
        [[True, True, False, False], [False, True, False, True], [True, True, True, True]]
    )
    assert generation_start(fixed).tolist() == [2, 0, 4]
    with pytest.raises(TypeError):
        generation_start(fixed.long())
    with pytest.raises(ValueError):
        generation_start(fixed[0])


def test_random_confidence_is_uniform_on_eligible_positions():
    c = conf([0.5, -INF, 0.9, 0.1], [-INF, -INF, 0.3, 0.3])
    r = random_confidence(c, seed=7)
    assert torch.equal(r == -INF, c == -INF)
    assert bool(((r > 0) & (r < 1))[c > -INF].all())
    assert torch.equal(r, random_confidence(c, seed=7))
    assert not torch.equal(r, random_confidence(c, seed=8))
    u = random_confidence(torch.zeros(1, 4000), seed=1)
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / 4000)


def test_random_remasking_step():
    """remasking="random": the quota of masked positions commits, a different set per seed,
    each to its argmax proposal; the same seed gives the same step."""
    m, vocab = 3, 7
    g, x, fixed = make_problem(7)
    logits = torch.randn(*x.shape, vocab, generator=g)
    logits[..., m] = -30.0  # the proposal is the argmax of the row
    sets = set()
    for seed in range(8):
        out = confidence_unmask_step(
            logits, x, mask_id=m, k=3, fixed=fixed, seed=seed, remasking="random"
        )
        changed = out != x
        assert changed.sum(-1).tolist() == [3, 3, 3]
        assert bool((x[changed] == m).all()) and not bool(fixed[changed].any())
        assert torch.equal(out[changed], logits.argmax(-1)[changed])
        sets.add(tuple(changed.flatten().tolist()))
    assert len(sets) > 1
    with pytest.raises(ValueError, match="remasking"):
        confidence_unmask_step(logits, x, mask_id=m, k=1, remasking="lowest")
    with pytest.raises(ValueError, match="k rule"):
        confidence_unmask_step(logits, x, mask_id=m, threshold=0.5, remasking="random")


def test_exactly_one_rule():
    c = conf([0.5, 0.7])
    with pytest.raises(ValueError):
        select_commits(c)
    with pytest.raises(ValueError):
        select_commits(c, k=1, threshold=0.5)
    with pytest.raises(ValueError):
        select_commits(c, threshold=0.5, factor=1.0)
    with pytest.raises(ValueError):
        select_commits(c, k=1, threshold=0.5, factor=1.0)
    with pytest.raises(ValueError):
        select_commits(c, block_length=2)


@pytest.mark.parametrize(
    "args,kwargs,exc",
    [
        ((torch.tensor([[1, 2]]),), {"k": 1}, TypeError),  # integer confidences
        (([[0.5, 0.7]],), {"k": 1}, TypeError),  # not a tensor
        ((torch.tensor([0.5, 0.7]),), {"k": 1}, ValueError),  # not [batch, length]
        ((torch.rand(2, 3, 4),), {"k": 1}, ValueError),
        ((torch.rand(2, 3),), {"k": -1}, ValueError),
        ((torch.rand(2, 3),), {"k": True}, ValueError),
        ((torch.rand(2, 3),), {"k": 1.5}, ValueError),
        ((torch.rand(2, 3),), {"factor": 0.0}, ValueError),
        ((torch.rand(2, 3),), {"factor": -1.0}, ValueError),
        ((torch.rand(2, 3),), {"factor": math.nan}, ValueError),
        ((torch.rand(2, 3),), {"k": 1, "block_length": 0}, ValueError),
        ((torch.rand(2, 3),), {"k": 1, "block_length": 2.0}, ValueError),
        ((torch.rand(2, 3),), {"k": 1, "block_length": True}, ValueError),
        ((torch.rand(2, 3),), {"k": 1, "block_length": 2, "block_start": -1}, ValueError),
        ((torch.rand(2, 3),), {"k": 1, "block_length": 2, "block_start": 1.0}, ValueError),
        (
            (torch.rand(2, 3),),
            {"k": 1, "block_length": 2, "block_start": torch.tensor([0, 1, 2])},
            ValueError,
        ),
    ],
)
def test_select_commits_bad_inputs(args, kwargs, exc):
    with pytest.raises(exc):
        select_commits(*args, **kwargs)


@pytest.mark.parametrize("rule", [{"k": 1}, {"k": 2}, {"threshold": 0.95}, {"factor": 1.0}])
def test_nan_confidence_is_not_silently_a_winner(rule):
    # A NaN confidence sorts first in torch.sort(descending=True), takes rank 0 and, being
    # ineligible (NaN > -inf is False), makes the rules commit NOTHING although eligible
    # positions exist. Either reject NaN (ValueError) or treat it as not eligible (-inf).
    c = conf([0.5, math.nan, 0.9, -INF])
    try:
        out = select_commits(c, **rule)
    except ValueError:
        return
    nan_as_ineligible = select_commits(conf([0.5, -INF, 0.9, -INF]), **rule)
    assert torch.equal(out, nan_as_ineligible), where(out)


# --------------------------------------------------------------------------------------------
# select_commits: properties
# --------------------------------------------------------------------------------------------

# dyadic levels, exact in every floating dtype (so comparisons do not depend on rounding)
LEVELS = [-INF, -INF, 0.0, 0.125, 0.25, 0.5, 0.5, 0.75, 0.875, 0.9375, 1.0]


@st.composite
def confidences(draw):
    b = draw(st.integers(1, 4))
    length = draw(st.integers(1, 24))
    # few distinct levels so that ties are common
    vals = draw(st.lists(st.sampled_from(LEVELS), min_size=b * length, max_size=b * length))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    return torch.tensor(vals, dtype=torch.float64).reshape(b, length).to(dtype)


def assert_top_by_confidence_then_position(c: torch.Tensor, out: torch.Tensor) -> None:
    """Every committed position beats every eligible uncommitted one: higher confidence, or
    equal confidence and further left."""
    for i in range(c.shape[0]):
        row = c[i].double().tolist()
        chosen = torch.nonzero(out[i]).squeeze(1).tolist()
        rest = [j for j in range(len(row)) if row[j] > -INF and j not in chosen]
        for a in chosen:
            assert row[a] > -INF
            for r in rest:
                assert row[a] > row[r] or (row[a] == row[r] and a < r)


@FAST
@given(c=confidences(), data=st.data())
def test_k_rule_property(c, data):
    b, length = c.shape
    per_seq = data.draw(st.booleans())
    if per_seq:
        k = torch.tensor(data.draw(st.lists(st.integers(0, length + 2), min_size=b, max_size=b)))
        ks = k.tolist()
    else:
        k = data.draw(st.integers(0, length + 2))
        ks = [k] * b
    out = select_commits(c, k=k)
    eligible = (c > -INF).sum(-1).tolist()
    assert out.sum(-1).tolist() == [min(ki, e) for ki, e in zip(ks, eligible)]
    assert_top_by_confidence_then_position(c, out)


@FAST
@given(c=confidences(), threshold=st.sampled_from([-0.5, 0.0, 0.3, 0.5, 0.875, 1.0, 2.0]))
def test_threshold_rule_property(c, threshold):
    out = select_commits(c, threshold=threshold)
    for i in range(c.shape[0]):
        row = c[i].double().tolist()
        eligible = [j for j, v in enumerate(row) if v > -INF]
        expected = {j for j in eligible if row[j] >= threshold}
        if eligible:
            best = max(row)
            expected.add(row.index(best))  # the leftmost most confident
        assert set(torch.nonzero(out[i]).squeeze(1).tolist()) == expected


@FAST
@given(c=confidences(), factor=st.sampled_from([0.05, 0.3, 0.5, 1.0, 2.0, 10.0]))
def test_factor_rule_property(c, factor):
    out = select_commits(c, factor=factor)
    for i in range(c.shape[0]):
        row = c[i].double().tolist()
        eligible = sorted((v for v in row if v > -INF), reverse=True)
        # thresholds 1 - f/(n+1) are not representable: allow the comparison to be made in the
        # confidence dtype (tolerance: a few ulps of that dtype near 1)
        tol = 1e-2 if c.dtype in (torch.float16, torch.bfloat16) else 1e-6
        counts = []
        for shift in (tol, -tol):
            n = 0
            for j, v in enumerate(eligible, start=1):
                if v >= 1.0 - factor / (j + 1) + shift:
                    n = j
            counts.append(max(n, 1) if eligible else 0)
        assert counts[0] <= int(out[i].sum()) <= counts[1]
    assert_top_by_confidence_then_position(c, out)


@FAST
@given(c=confidences(), block=st.integers(1, 30), k=st.integers(1, 30))
def test_block_rule_property(c, block, k):
    out = select_commits(c, k=k, block_length=block)
    for i in range(c.shape[0]):
        row = c[i].double().tolist()
        eligible = [j for j, v in enumerate(row) if v > -INF]
        chosen = torch.nonzero(out[i]).squeeze(1).tolist()
        if not eligible:
            assert chosen == []
            continue
        active = eligible[0] // block  # the leftmost block holding an eligible position
        in_block = [j for j in eligible if j // block == active]
        assert all(j // block == active for j in chosen)
        assert len(chosen) == min(k, len(in_block))
    # within the active block the committed positions are the top ones
    blocks = torch.arange(c.shape[1]) // block
    elig = c > -INF
    big = torch.full_like(blocks, 10**6)
    active = torch.where(elig, blocks.expand_as(c), big).amin(-1, keepdim=True)
    in_active = torch.where(blocks == active, c, torch.full_like(c, -INF))
    assert_top_by_confidence_then_position(in_active, out)
    assert torch.equal(restrict_to_block(c, block), in_active)


# --------------------------------------------------------------------------------------------
# confidence_unmask_step end to end
# --------------------------------------------------------------------------------------------


def make_problem(seed: int, b=3, length=16, vocab=7, m=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((b, length), m)
    fixed = torch.zeros(b, length, dtype=torch.bool)
    # a prompt (real tokens, never m) of different lengths per sequence
    for i in range(b):
        plen = 2 + i
        prompt = torch.randint(0, vocab - 1, (plen,), generator=g)
        x[i, :plen] = prompt + (prompt >= m).long()
        fixed[i, :plen] = True
    # and one masked-but-fixed position
    fixed[0, length - 1] = True  # a fixed mask token: never counted, never unmasked
    return g, x, fixed


@pytest.mark.parametrize("confidence", ["prob", "margin", "entropy"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 5, 16])
def test_unmask_everything_in_steps(confidence, temperature, steps):
    m, vocab = 3, 7
    g, x0, fixed = make_problem(steps)
    quota = unmask_quota(x0, mask_id=m, steps=steps, fixed=fixed)
    x = x0.clone()
    for i in range(steps):
        logits = torch.randn(*x.shape, vocab, generator=g) * 2
        before = x.clone()
        x = confidence_unmask_step(
            logits,
            x,
            mask_id=m,
            k=quota[:, i],
            fixed=fixed,
            confidence=confidence,
            temperature=temperature,
            seed=i,
            offset=i,
        )
        assert x.dtype == torch.int64
        changed = x != before
        assert torch.equal(changed.sum(-1), quota[:, i])  # exactly the quota commits
        assert bool(torch.all(before[changed] == m))  # only masked positions change
        assert not bool((x[changed] == m).any())  # to a real token
        assert torch.equal(x[fixed], x0[fixed])  # prompt / fixed positions untouched
    assert not bool(((x == m) & ~fixed).any())  # everything unmasked after `steps` steps
    assert x[0, -1] == m  # the fixed mask token stays


def test_step_commits_the_argmax_of_the_most_confident_positions():
    m = 0
    x = torch.tensor([[0, 0, 2, 0]])
    logits = torch.tensor(
        [
            [
                [9.0, 1.0, 0.0, 0.0],  # p over {1,2,3} = softmax(1,0,0): xhat 1, p ~ 0.58
                [9.0, 0.0, 0.0, 5.0],  # xhat 3, p ~ 0.99
                [0.0, 0.0, 0.0, 0.0],  # not masked
                [9.0, 0.0, 2.0, 0.0],  # xhat 2, p ~ 0.79
            ]
        ]
    )
    assert confidence_unmask_step(logits, x, mask_id=m, k=1).tolist() == [[0, 3, 2, 0]]
    assert confidence_unmask_step(logits, x, mask_id=m, k=2).tolist() == [[0, 3, 2, 2]]
    assert confidence_unmask_step(logits, x, mask_id=m, threshold=0.7).tolist() == [[0, 3, 2, 2]]
    assert confidence_unmask_step(logits, x, mask_id=m, k=3).tolist() == [[1, 3, 2, 2]]
    assert confidence_unmask_step(logits, x, mask_id=m, k=1, block_length=1).tolist() == [
        [1, 0, 2, 0]
    ]
    # sorted p(xhat) = 0.987, 0.787, 0.576 (e^5/(e^5+2), e^2/(e^2+2), e/(e+2)):
    # factor 1: thresholds 0.5, 0.667, 0.75 -> n = 2; factor 0.2: 0.9, 0.933 -> n = 1;
    # factor 2: thresholds 0, 0.333, 0.5 -> n = 3
    assert confidence_unmask_step(logits, x, mask_id=m, factor=1.0).tolist() == [[0, 3, 2, 2]]
    assert confidence_unmask_step(logits, x, mask_id=m, factor=0.2).tolist() == [[0, 3, 2, 0]]
    assert confidence_unmask_step(logits, x, mask_id=m, factor=2.0).tolist() == [[1, 3, 2, 2]]


@pytest.mark.parametrize("rule", [{"threshold": 0.9}, {"factor": 0.5}, {"k": 2}])
@pytest.mark.parametrize("block", [3, 5])
def test_semi_autoregressive_blocks_fill_left_to_right(rule, block):
    """Blocks start at each row's first non-fixed position (prompts of 2, 3, 4 tokens)."""
    m, vocab = 3, 7
    g, x0, fixed = make_problem(11 + block)
    x = x0.clone()
    length = x.shape[1]
    for i in range(length + 1):
        eligible = (x == m) & ~fixed
        if not bool(eligible.any()):
            break
        logits = torch.randn(*x.shape, vocab, generator=g) * 3
        before = x.clone()
        x = confidence_unmask_step(
            logits, x, mask_id=m, block_length=block, fixed=fixed, seed=i, **rule
        )
        changed = x != before
        for r in range(x.shape[0]):
            blocks = (torch.arange(length) - (2 + r)) // block  # row r's prompt: 2 + r tokens
            if bool(eligible[r].any()):
                active = int(blocks[eligible[r]].min())
                assert int(changed[r].sum()) >= 1  # progress every step
                assert bool(torch.all(blocks[changed[r]] == active))
            else:
                assert not bool(changed[r].any())
        assert torch.equal(x[fixed], x0[fixed])
    assert not bool(((x == m) & ~fixed).any())
    assert i <= length


def test_step_is_seeded_and_row_keyed():
    m, vocab = 3, 7
    g, x, fixed = make_problem(5)
    logits = torch.randn(*x.shape, vocab, generator=g)
    a = confidence_unmask_step(logits, x, mask_id=m, k=4, temperature=1.0, fixed=fixed, seed=3)
    assert torch.equal(
        a, confidence_unmask_step(logits, x, mask_id=m, k=4, temperature=1.0, fixed=fixed, seed=3)
    )
    # changing the other sequences does not change sequence 0
    logits2 = logits.clone()
    logits2[1:] = torch.randn(logits2[1:].shape, generator=g)
    b = confidence_unmask_step(logits2, x, mask_id=m, k=4, temperature=1.0, fixed=fixed, seed=3)
    assert torch.equal(a[0], b[0])


def test_step_bad_inputs():
    x = torch.full((2, 4), 3)
    logits = torch.randn(2, 4, 6)
    with pytest.raises(ValueError):
        confidence_unmask_step(logits, x, mask_id=3)  # no rule
    with pytest.raises(ValueError):
        confidence_unmask_step(logits, x, mask_id=3, k=1, factor=1.0)
    with pytest.raises(ValueError):
        confidence_unmask_step(logits, x, mask_id=6, k=1)
    with pytest.raises(ValueError):
        confidence_unmask_step(logits, x, mask_id=3, k=1, confidence="max")
    with pytest.raises(ValueError):
        confidence_unmask_step(logits, x, mask_id=3, k=1, temperature=-1.0)
    with pytest.raises(ValueError):
        confidence_unmask_step(torch.randn(2, 5, 6), x, mask_id=3, k=1)
    with pytest.raises(ValueError):  # [B, L] required by the commit rules
        confidence_unmask_step(torch.randn(8, 6), x.reshape(-1), mask_id=3, k=1)


def test_public_names_are_exported():
    assert fastdiff.confidence_unmask_step is confidence_unmask_step
    assert fastdiff.select_commits is select_commits
    assert fastdiff.unmask_quota is unmask_quota


def test_select_commits_reads_no_values_while_a_cuda_graph_is_captured(monkeypatch) -> None:
    """During CUDA-graph capture the value checks (which synchronize) are skipped: a NaN
    confidence is then not eligible instead of raising."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    conf = torch.tensor([[0.2, float("nan"), 0.9, -torch.inf]])
    commit = select_commits(conf, k=2)
    assert commit.tolist() == [[True, False, True, False]]


@pytest.mark.parametrize(
    "rule",
    [{"k": 2}, {"k": torch.tensor([1, 3])}, {"threshold": 0.5}, {"factor": 0.6}],
    ids=["k", "k-tensor", "threshold", "factor"],
)
def test_commit_rules_trace_without_host_synchronization(rule) -> None:
    """``torch.compile(fullgraph=True)`` refuses any data-dependent host read (``.item()``,
    ``bool(tensor)``, ``nonzero``): the commit rules, with semi-autoregressive blocks, compile
    into one graph and give the eager result, so on a GPU they run without a sync."""
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(2, 12, generator=gen)
    conf[0, :3] = -torch.inf

    def commits(c):
        return select_commits(c, block_length=4, **rule)

    compiled = torch.compile(commits, fullgraph=True, backend="aot_eager")
    with fastdiff.value_checks(False):
        assert torch.equal(compiled(conf), commits(conf))
