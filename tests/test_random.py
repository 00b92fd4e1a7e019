"""Tests for fastdiff.random: Philox4x32-10 and the transforms built on its words.

Statistical tests use fixed seeds (so they are deterministic) and bounds that a correct
generator passes with probability at least 1 - 1e-6 for a random seed; each bound is stated
next to it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff import random as fr

M32 = 0xFFFFFFFF
U64 = (1 << 64) - 1
FAST = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------------------------
# an independent Philox4x32-10 on Python integers (Random123's philox4x32_R)
# --------------------------------------------------------------------------------------------


def philox_py(key: int, ctr: tuple[int, int, int, int], rounds: int = 10) -> list[int]:
    k0, k1 = key & M32, (key >> 32) & M32
    c0, c1, c2, c3 = ctr
    for _ in range(rounds):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


def lib_philox(seed, ctr) -> list[int]:
    cs = [torch.tensor(c, dtype=torch.int64) for c in ctr]
    return [int(v) for v in fr.philox4x32(seed, *cs)]


def words_py(seed: int, offset: int, row: int, col: int) -> tuple[int, int]:
    """The two words of (row, col): counter (col // 2, row, offset_lo, offset_hi)."""
    r = philox_py(seed, (col // 2, row, offset & M32, (offset >> 32) & M32))
    return (r[0], r[1]) if col % 2 == 0 else (r[2], r[3])


def t64(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# Random123 known-answer vectors for philox4x32_R(10): (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected) -> None:
    seed = key[0] | (key[1] << 32)
    assert philox_py(seed, ctr) == list(expected)  # the test's own Philox is right
    assert lib_philox(seed, ctr) == list(expected)
    # the same key given as an int64 tensor (two's complement for seeds >= 2^63)
    signed = seed - (1 << 64) if seed >= 1 << 63 else seed
    assert lib_philox(torch.tensor(signed, dtype=torch.int64), ctr) == list(expected)


def test_philox_broadcasts_and_keeps_32_bits() -> None:
    c0 = torch.arange(5, dtype=torch.int64)[:, None]
    c1 = torch.tensor([0, 1, M32], dtype=torch.int64)[None, :]
    zero = torch.zeros((), dtype=torch.int64)
    out = fr.philox4x32(0x299F31D0A4093822, c0, c1, zero, zero + 7)
    for w in out:
        assert w.shape == (5, 3) and w.dtype == torch.int64
        assert int(w.min()) >= 0 and int(w.max()) <= M32
    for i in range(5):
        for j, cj in enumerate([0, 1, M32]):
            expected = philox_py(0x299F31D0A4093822, (i, cj, 0, 7))
            assert [int(w[i, j]) for w in out] == expected


@FAST
@given(
    seed=st.integers(0, U64),
    ctr=st.tuples(*[st.integers(0, M32)] * 4),
)
def test_philox_matches_python_philox(seed: int, ctr: tuple[int, int, int, int]) -> None:
    assert lib_philox(seed, ctr) == philox_py(seed, ctr)


_TRITON_SNIPPET = textwrap.dedent(
    """
    import json, sys
    import torch, triton, triton.language as tl

    @triton.jit
    def kernel(seed_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        m = i < n
        seed = tl.load(seed_ptr)
        c0 = tl.load(c_ptr + 4 * i + 0, mask=m, other=0).to(tl.uint32)
        c1 = tl.load(c_ptr + 4 * i + 1, mask=m, other=0).to(tl.uint32)
        c2 = tl.load(c_ptr + 4 * i + 2, mask=m, other=0).to(tl.uint32)
        c3 = tl.load(c_ptr + 4 * i + 3, mask=m, other=0).to(tl.uint32)
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
        tl.store(out_ptr + 4 * i + 0, r0.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 1, r1.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 2, r2.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 3, r3.to(tl.int64), mask=m)

    job = json.load(sys.stdin)
    c = torch.tensor(job["counters"], dtype=torch.int64)
    result = []
    for seed in job["seeds"]:
        out = torch.full_like(c, -1)
        kernel[(1,)](torch.tensor([seed], dtype=torch.int64), c, out, c.shape[0],
                     BLOCK=triton.next_power_of_2(c.shape[0]))
        result.append(out.tolist())
    print(json.dumps(result))
    """
)


def test_philox_matches_triton_tl_philox_in_interpreter() -> None:
    """fastdiff's Philox gives the very words ``tl.philox`` gives (Triton interpreter, CPU)."""
    pytest.importorskip("triton")
    import json

    counters = [
        [0, 0, 0, 0],
        [M32, M32, M32, M32],
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [12345, 678, 3, 0],
        [0x80000000, 0x7FFFFFFF, 0xDEADBEEF, 0x12345678],
    ]
    # seeds as int64 bit patterns: key (lo, hi); -1 is key (0xffffffff, 0xffffffff)
    seeds = [0, 1, 0x299F31D0A4093822, -1, -(1 << 63), (1 << 32) + 5]
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_SNIPPET],
        input=json.dumps({"counters": counters, "seeds": seeds}),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    triton_words = json.loads(proc.stdout.strip().splitlines()[-1])
    c = torch.tensor(counters, dtype=torch.int64)
    for seed, got in zip(seeds, triton_words):
        ours = torch.stack(fr.philox4x32(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3]), dim=1)
        assert ours.tolist() == got, f"seed {seed:#x}"
        # and the int64-tensor form of the same seed
        ours_t = fr.philox4x32(torch.tensor(seed, dtype=torch.int64), *c.unbind(1))
        assert torch.stack(ours_t, dim=1).tolist() == got
    # the known answers hold for Triton too (key = seed's two halves)
    assert triton_words[3][1] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert triton_words[2][2] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    assert triton_words[0][0] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


# --------------------------------------------------------------------------------------------
# counter layout: (seed, offset, row, column) -> words
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 0x299F31D0A4093822, U64])
@pytest.mark.parametrize("offset", [0, 3, (1 << 32) + 1])
def test_draws_follow_the_documented_counter_layout(seed: int, offset: int) -> None:
    rows = t64(0, 1, 5, 1000, M32)
    n_cols = 5
    e = fr.exponential(seed, offset, rows, n_cols)
    u = fr.uniform(seed, offset, rows, n_cols)
    z = fr.normal(seed, offset, rows, n_cols)
    ui, idx = fr.row_uniform_and_index(seed, offset, rows, 11)
    for i, row in enumerate(rows.tolist()):
        for col in range(n_cols):
            a, b = words_py(seed, offset, row, col)
            assert e[i, col].item() == fr._exponential_from_words(t64(a), t64(b)).item()
            assert u[i, col].item() == fr._uniform_from_words(t64(a), t64(b)).item()
            # Box-Muller: the pair's words (r0, r1) give the radius uniform, r2 the angle
            r = philox_py(seed, (col // 2, row, offset & M32, offset >> 32))
            uu = fr._uniform_from_words(t64(r[0]), t64(r[1])).item()
            angle = (r[2] + 0.5) * 2.0 * math.pi * 2.0**-32
            trig = math.cos if col % 2 == 0 else math.sin
            assert z[i, col].item() == pytest.approx(
                math.sqrt(-2 * math.log(uu)) * trig(angle), rel=1e-12, abs=1e-12
            )
        # per-row draws: counter column 0; uniform from (r0, r1), index from (r2, r3)
        r = philox_py(seed, (0, row, offset & M32, offset >> 32))
        assert ui[i].item() == fr._uniform_from_words(t64(r[0]), t64(r[1])).item()
        assert int(idx[i]) == ((r[2] << 32) | r[3]) * 11 >> 64


def test_row_subsets_and_permutations_draw_the_same_numbers() -> None:
    rows = torch.arange(12, dtype=torch.int64)
    for fn in (fr.exponential, fr.uniform, fr.normal):
        full = fn(99, 4, rows, 9)
        assert torch.equal(fn(99, 4, rows[5:9], 9), full[5:9])
        pick = t64(7, 2, 11, 2)
        assert torch.equal(fn(99, 4, pick, 9), full[pick])
    u, k = fr.row_uniform_and_index(99, 4, rows, 13)
    u2, k2 = fr.row_uniform_and_index(99, 4, rows[5:9], 13)
    assert torch.equal(u2, u[5:9]) and torch.equal(k2, k[5:9])


def test_independent_of_chunking_and_of_column_count() -> None:
    # n_cols > 2^16 makes the reference draw one row per chunk; the numbers must not change
    n_cols = (1 << 16) + 3
    rows = t64(0, 1, 2)
    full = fr.exponential(5, 1, rows, n_cols)
    for r in range(3):
        assert torch.equal(fr.exponential(5, 1, rows[r : r + 1], n_cols), full[r : r + 1])
    # a column depends on its index only: a narrower draw is a prefix of a wider one
    assert torch.equal(fr.exponential(5, 1, rows, 7), full[:, :7])
    assert torch.equal(fr.uniform(5, 1, rows, 7), fr.uniform(5, 1, rows, 8)[:, :7])
    assert torch.equal(fr.normal(5, 1, rows, 7), fr.normal(5, 1, rows, 8)[:, :7])
    # many rows of a narrow draw (several chunks of 2^16 elements) against a one-row draw each
    rows = torch.arange(40000, dtype=torch.int64)
    many = fr.exponential(5, 1, rows, 3)
    for r in (0, 21845, 21846, 39999):
        assert torch.equal(fr.exponential(5, 1, rows[r : r + 1], 3), many[r : r + 1])


def test_different_seeds_and_offsets_give_different_streams() -> None:
    rows = torch.arange(64, dtype=torch.int64)
    draws = {
        (seed, off): fr.exponential(seed, off, rows, 16)
        for seed in (0, 1, 1 << 32, (1 << 63) + 1)
        for off in (0, 1, 1 << 32)
    }
    keys = list(draws)
    for i, ka in enumerate(keys):
        for kb in keys[i + 1 :]:
            # two independent continuous streams share no value (P(any tie) < 2^-40)
            assert not bool((draws[ka] == draws[kb]).any()), (ka, kb)
    # rows and columns are distinct streams too
    e = draws[(0, 0)]
    assert e.flatten().unique().numel() == e.numel()


def test_seed_forms_agree() -> None:
    rows = torch.arange(6, dtype=torch.int64)
    base = fr.exponential(123, 2, rows, 5)
    assert torch.equal(fr.exponential(torch.tensor(123), 2, rows, 5), base)
    key32 = fr.resolve_seed(torch.tensor([123], dtype=torch.int32), None, torch.device("cpu"))
    assert torch.equal(fr.exponential(key32, 2, rows, 5), base)
    assert torch.equal(fr.exponential(123 + (1 << 64), 2, rows, 5), base)  # key is 64 bits
    assert torch.equal(fr.exponential(-1, 2, rows, 5), fr.exponential(U64, 2, rows, 5))
    assert torch.equal(
        fr.exponential(torch.tensor(-1, dtype=torch.int64), 2, rows, 5),
        fr.exponential(U64, 2, rows, 5),
    )


def test_resolve_seed() -> None:
    cpu = torch.device("cpu")
    assert fr.resolve_seed(5, None, cpu) == 5
    t = fr.resolve_seed(torch.tensor([5], dtype=torch.int32), None, cpu)
    assert t.dtype == torch.int64 and t.shape == () and int(t) == 5
    with pytest.raises(TypeError, match="seed"):
        fr.resolve_seed(5.0, None, cpu)
    with pytest.raises(TypeError, match="seed"):
        fr.resolve_seed(True, None, cpu)
    with pytest.raises(ValueError, match="seed"):
        fr.resolve_seed(torch.tensor([1, 2]), None, cpu)
    with pytest.raises(ValueError, match="seed"):
        fr.resolve_seed(torch.tensor(1.0), None, cpu)
    # a generator is advanced exactly as one torch.randint(0, 2^63 - 1, ()) call advances it
    g = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    s1 = fr.resolve_seed(None, g, cpu)
    assert int(s1) == int(torch.randint(0, 2**63 - 1, (), generator=g2))
    s2 = fr.resolve_seed(None, g, cpu)
    assert int(s2) != int(s1) and 0 <= int(s2) < 2**63 - 1
    assert not torch.equal(g.get_state(), g2.get_state())
    torch.randint(0, 2**63 - 1, (), generator=g2)
    assert torch.equal(g.get_state(), g2.get_state())


# --------------------------------------------------------------------------------------------
# exponential: distribution and tails
# --------------------------------------------------------------------------------------------

N_STAT = 200_000


def test_exponential_moments_and_ks() -> None:
    e = fr.exponential(2024, 0, torch.arange(N_STAT // 8, dtype=torch.int64), 8).flatten()
    assert e.dtype == torch.float64
    assert bool((e > 0).all()) and bool(torch.isfinite(e).all())
    n = e.numel()
    # mean of Exp(1): sd 1/sqrt(n); bound 5 sd (two-sided p < 6e-7)
    assert abs(e.mean().item() - 1.0) < 5 / math.sqrt(n)
    # sample variance: sd sqrt((mu4 - 1)/n) = sqrt(8/n) for Exp(1); bound 5 sd
    assert abs(e.var().item() - 1.0) < 5 * math.sqrt(8 / n)
    # Kolmogorov-Smirnov against F(x) = 1 - e^-x: P(sqrt(n) D > 2.0) ~ 2 e^-8 = 6.7e-4;
    # sqrt(n) D > 2.7 has p ~ 1e-6
    x, _ = torch.sort(e)
    cdf = -torch.expm1(-x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert math.sqrt(n) * d < 2.7
    # the two halves: P(E > ln 2) = 1/2 exactly (bit 31 of the first word); 5-sigma binomial
    upper = (e > math.log(2)).double().mean().item()
    assert abs(upper - 0.5) < 5 * math.sqrt(0.25 / n)
    # a tail count: P(E > 8) = e^-8, n e^-8 = 67; Poisson 5-sigma band
    k = int((e > 8).sum())
    lam = n * math.exp(-8)
    assert abs(k - lam) < 5 * math.sqrt(lam)


def _exact_e(a: int, b: int) -> mpmath.mpf:
    """-log(W) (upper half) or -log1p(-W) (lower half) at the exact W = (k + 1/2) 2^-64."""
    with mpmath.workdps(60):
        k = ((a & 0x7FFFFFFF) << 32) | b
        w = (mpmath.mpf(k) + mpmath.mpf(0.5)) / mpmath.mpf(2) ** 64
        return -mpmath.log(w) if a >> 31 else -mpmath.log1p(-w)


def test_exponential_tails_reach_far_and_are_accurate() -> None:
    a = t64(0x80000000, 0x80000000, 0x80000001, 0x80001234, 0, 0, 0, 0, 0x00001234)
    b = t64(0, 1, 0, 0xFFFFFFFF, 0, 1, 1 << 20, 0xFFFFFFFF, 7)
    e = fr._exponential_from_words(a, b)
    # a = 0x80000000, b = 0: upper half with the smallest W = 2^-65: E = 65 ln 2 = 45.05
    assert e[0].item() > 40 and e[0].item() == pytest.approx(65 * math.log(2), rel=1e-15)
    # a = b = 0: lower half with the smallest W: E = 2^-65 = 2.7e-20
    assert e[4].item() < 1e-12 and e[4].item() == pytest.approx(2.0**-65, rel=1e-15)
    for i in range(a.numel()):
        exact = _exact_e(int(a[i]), int(b[i]))
        assert abs(e[i].item() - float(exact)) <= 4e-16 * float(exact), i
    # float32 uniforms stop far short of these values: the largest float32 below 1 gives
    # -log(u) = 6e-8, the smallest positive 2^-24 grid point gives 16.6
    assert e.max().item() > 44 and e.min().item() < 1e-19


@FAST
@given(
    k=st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 63) - 1)),
    upper=st.booleans(),
)
def test_exponential_transform_accurate_everywhere(k: int, upper: bool) -> None:
    a = (k >> 32) | (0x80000000 if upper else 0)
    b = k & M32
    got = fr._exponential_from_words(t64(a), t64(b)).item()
    exact = float(_exact_e(a, b))
    # k > 2^53 is rounded once when converted to float64 (relative 2^-53 on W), which moves E
    # by at most 2^-53 W/|dW/dE| <= 2^-53 relative in both halves; plus the log's rounding
    assert abs(got - exact) <= 6e-16 * exact
    assert (got > math.log(2)) == upper or abs(got - math.log(2)) < 1e-15


def _count_words_at_most(x: float) -> int:
    """Number of lower-half 63-bit words k whose E(k) <= x, by bisection on the transform."""
    lo, hi = 0, 1 << 53  # E is increasing in k on the lower half; answer < 2^53 for x < 4e-4
    while lo < hi:
        mid = (lo + hi) // 2
        e = fr._exponential_from_words(t64(mid >> 32), t64(mid & M32)).item()
        if e <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("x", [1e-15, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4])
def test_exponential_small_tail_cdf_is_exact(x: float) -> None:
    # P(E <= x) = (number of words with E <= x) / 2^64 must equal 1 - e^-x up to the word
    # quantization (2^-64, one word on each side) and float64 rounding of E (a relative
    # ~1e-16 shift of the boundary): the far tail is neither cut off nor under-sampled.
    p = _count_words_at_most(x) / 2.0**64
    exact = -math.expm1(-x)
    assert abs(p - exact) <= 2 * 2.0**-64 + 1e-14 * exact


@pytest.mark.parametrize("x", [8.0, 10.0, 20.0, 30.0, 40.0, 44.0])
def test_exponential_large_tail_cdf_is_exact(x: float) -> None:
    # P(E > x) = P(upper half and W < e^-x): E is decreasing in k on the upper half
    lo, hi = 0, 1 << 53
    while lo < hi:
        mid = (lo + hi) // 2
        e = fr._exponential_from_words(t64((mid >> 32) | 0x80000000), t64(mid & M32)).item()
        if e > x:
            lo = mid + 1
        else:
            hi = mid
    p = lo / 2.0**64
    exact = math.exp(-x)
    # same bound as the small tail; at x = 44 only one or two words remain (e^-44 2^64 = 1.4)
    assert abs(p - exact) <= 2 * 2.0**-64 + 1e-14 * exact


# --------------------------------------------------------------------------------------------
# uniform, normal, row_uniform_and_index
# --------------------------------------------------------------------------------------------


def test_uniform_strictly_inside_unit_interval_for_every_word() -> None:
    # The documented range is the open interval (0, 1) for EVERY 64-bit word pair. With 53 bits,
    # the all-ones words give k = 2^53 - 1 and (k + 0.5) (54 bits) rounds to 2^53: U = 1.0.
    # That happens with probability 2^-53 per draw, and then a noising comparison
    # `u < 1 - e^-sigma` fails to move a token at sigma = inf.
    a = t64(0, 0, M32, M32, M32, 0x80000000)
    b = t64(0, 1 << 12, M32, M32 - (1 << 12), 0, 0)
    u = fr._uniform_from_words(a, b)
    assert bool((u > 0).all()), u
    assert bool((u < 1).all()), f"uniform reached 1.0: {u.tolist()}"
    assert u.max().item() <= 1 - 2.0**-53


def test_uniform_transform_small_values_and_monotone() -> None:
    # documented: (k + 1/2) 2^-52 with k the top 52 bits of a:b (the low 12 bits of b dropped)
    u = fr._uniform_from_words(t64(0, 0, 0), t64(0, 1 << 12, 2 << 12))
    assert u.tolist() == [0.5 * 2.0**-52, 1.5 * 2.0**-52, 2.5 * 2.0**-52]
    low_bits = fr._uniform_from_words(t64(5), t64(0xFFF))
    assert torch.equal(low_bits, fr._uniform_from_words(t64(5), t64(0)))
    top = fr._uniform_from_words(t64(M32), t64(M32)).item()
    assert top == 1 - 0.5 * 2.0**-52  # exact: the largest value is 1 - 2^-53
    # strictly increasing in k
    k = torch.arange(0, 1 << 12, dtype=torch.int64) << 40
    uu = fr._uniform_from_words(k >> 32, k & M32)
    assert bool((uu.diff() > 0).all())
    assert fr._uniform_from_words(t64(0x80000000), t64(0)).item() == 0.5 + 2.0**-53


def test_uniform_draws_statistics() -> None:
    u = fr.uniform(11, 0, torch.arange(N_STAT // 4, dtype=torch.int64), 4).flatten()
    assert bool((u > 0).all()) and bool((u < 1).all())
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)  # 5 sd of the mean
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    assert _chi2_pvalue(counts, torch.full((20,), n / 20)) > 1e-6


def test_normal_draws_statistics() -> None:
    z = fr.normal(3, 1, torch.arange(N_STAT // 10, dtype=torch.int64), 10).flatten()
    assert bool(torch.isfinite(z).all())
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)  # sd of s^2 for N(0,1): sqrt(2/n)
    # KS against Phi: sqrt(n) D < 2.7 (p ~ 1e-6)
    x, _ = torch.sort(z)
    cdf = 0.5 * torch.erfc(-x / math.sqrt(2))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert math.sqrt(n) * d < 2.7


def _chi2_pvalue(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Upper-tail p-value of Pearson's chi-square with len - 1 degrees of freedom."""
    obs, exp = observed.double(), expected.double()
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    return float(mpmath.gammainc(dof / 2, stat / 2, mpmath.inf, regularized=True))


@pytest.mark.parametrize("high", [1, 2, 7, 50257, (1 << 31) - 1, 1 << 31])
def test_row_index_in_range_and_exact(high: int) -> None:
    rows = torch.arange(2000, dtype=torch.int64)
    u, k = fr.row_uniform_and_index(77, 5, rows, high)
    assert k.dtype == torch.int64
    assert int(k.min()) >= 0 and int(k.max()) < high
    assert bool((u > 0).all()) and bool((u < 1).all())
    for r in (0, 1, 999, 1999):
        w = philox_py(77, (0, r, 5, 0))
        assert int(k[r]) == (((w[2] << 32) | w[3]) * high) >> 64


@pytest.mark.parametrize("high", [2, 3, 10, 97])
def test_row_index_uniform_chi_square(high: int) -> None:
    n = N_STAT
    u, k = fr.row_uniform_and_index(314, 0, torch.arange(n, dtype=torch.int64), high)
    counts = torch.bincount(k, minlength=high)
    # Pearson chi-square, dof = high - 1: reject only at p < 1e-6
    assert _chi2_pvalue(counts, torch.full((high,), n / high)) > 1e-6
    # the index is independent of the row uniform: the 2 x high table of (u < 1/2, k)
    lowc = torch.bincount(k[u < 0.5], minlength=high).double()
    highc = counts.double() - lowc
    tot_low = lowc.sum()
    exp_low = counts.double() * tot_low / n
    exp_high = counts.double() - exp_low
    stat = float(((lowc - exp_low) ** 2 / exp_low + (highc - exp_high) ** 2 / exp_high).sum())
    p = float(mpmath.gammainc((high - 1) / 2, stat / 2, mpmath.inf, regularized=True))
    assert p > 1e-6


@FAST
@given(
    seed=st.integers(0, U64),
    offset=st.integers(0, U64),
    row0=st.integers(0, M32 - 8),
    n_cols=st.integers(1, 9),
)
def test_draws_are_finite_and_in_range(seed: int, offset: int, row0: int, n_cols: int) -> None:
    rows = torch.arange(row0, row0 + 8, dtype=torch.int64)
    e = fr.exponential(seed, offset, rows, n_cols)
    u = fr.uniform(seed, offset, rows, n_cols)
    z = fr.normal(seed, offset, rows, n_cols)
    assert e.shape == u.shape == z.shape == (8, n_cols)
    assert bool((e > 0).all()) and bool(torch.isfinite(e).all())
    assert bool((u > 0).all()) and bool((u < 1).all())
    assert bool(torch.isfinite(z).all())
    r = int(rows[3])
    col = n_cols - 1
    a, b = words_py(seed, offset, r, col)
    assert e[3, col].item() == fr._exponential_from_words(t64(a), t64(b)).item()
