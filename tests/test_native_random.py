"""The Philox transforms of the native backend (``fastdiff_native::philox_draw``,
``group_exponential``, ``row_uniform_and_index``, :mod:`fastdiff.native.random`) against
:mod:`fastdiff.random`.

Uniforms and integer indices must agree bit for bit (pure integer arithmetic and one exact
scaling). Exponentials and normals go through ``log`` / ``log1p`` / ``cos`` / ``sin``, which the
reference takes from torch (SLEEF, within 1 ulp) and the native code from the C library or its
own polynomials (within 1 ulp). An exponential is one such function of exact input, so the two
agree within 2 ulp (``ULPS``); a normal is ``sqrt(-2 log U) cos(angle)``, a product of two results
that may each be 1-2 ulp apart, so it is compared within ``ULPS_NORMAL = 4`` ulp (observed: 3).
An ulp here is ``eps * |reference|``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff import backend
from fastdiff import random as frandom

if not backend.native_available():
    pytest.skip("fastdiff._C (native kernels) is not built", allow_module_level=True)

from fastdiff.native import random as nrandom

F64 = torch.float64
ULPS = 2
ULPS_NORMAL = 4
FAST = settings(max_examples=30, deadline=None)
seeds = st.integers(-(2**63), 2**63 - 1)
offsets = st.integers(0, 2**40)
widths = st.sampled_from([0, 1, 2, 3, 255, 256, 257, 513]) | st.integers(1, 600)


def assert_ulps(actual: torch.Tensor, expected: torch.Tensor, ulps: int = ULPS) -> None:
    """``|actual - expected| <= ulps * ulp(expected)`` elementwise (float64)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == F64
    spacing = torch.finfo(F64).eps * expected.abs().clamp_min(torch.finfo(F64).tiny)
    bad = (actual - expected).abs() > ulps * spacing
    assert not bool(bad.any()), (actual[bad][:5], expected[bad][:5])


def rows_strategy() -> st.SearchStrategy[torch.Tensor]:
    """Row indices: a small range, or scattered indices up to 2^32 - 1."""
    ranges = st.integers(0, 40).map(lambda n: torch.arange(n))
    scattered = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12).map(torch.tensor)
    return ranges | scattered


@FAST
@given(seed=seeds, offset=offsets, rows=rows_strategy(), n_cols=widths)
def test_draws_match_the_reference(seed: int, offset: int, rows: torch.Tensor, n_cols: int):
    assert torch.equal(
        nrandom.uniform(seed, offset, rows, n_cols), frandom.uniform(seed, offset, rows, n_cols)
    )
    assert_ulps(
        nrandom.exponential(seed, offset, rows, n_cols),
        frandom.exponential(seed, offset, rows, n_cols),
    )
    assert_ulps(
        nrandom.normal(seed, offset, rows, n_cols),
        frandom.normal(seed, offset, rows, n_cols),
        ULPS_NORMAL,
    )
    n_groups = n_cols % 7
    assert_ulps(
        nrandom.group_exponential(seed, offset, rows, n_groups),
        frandom.group_exponential(seed, offset, rows, n_groups),
    )


@FAST
@given(
    seed=seeds,
    offset=offsets,
    rows=rows_strategy(),
    high=st.sampled_from([1, 2, 255, 256, 257, 513, 50258, 2**31 - 1]) | st.integers(1, 10**6),
)
def test_row_uniform_and_index_is_bit_exact(seed: int, offset: int, rows: torch.Tensor, high: int):
    u, k = nrandom.row_uniform_and_index(seed, offset, rows, high)
    u_ref, k_ref = frandom.row_uniform_and_index(seed, offset, rows, high)
    assert torch.equal(u, u_ref) and torch.equal(k, k_ref)
    assert bool(((k >= 0) & (k < high)).all())


def test_tensor_seed_equals_int_seed():
    rows = torch.arange(5)
    for seed in (0, -1, 2**63 - 1, -(2**63)):
        as_tensor = torch.tensor(seed, dtype=torch.int64)
        assert torch.equal(nrandom.normal(as_tensor, 3, rows, 9), nrandom.normal(seed, 3, rows, 9))


def _words(seed: int, offset: int, row: int, pair: int) -> tuple[int, ...]:
    """The four Philox words of counter ``(pair, row, offset, 0)``."""
    counter = (torch.tensor(pair), torch.tensor(row), torch.tensor(offset), torch.tensor(0))
    return tuple(int(w) for w in frandom.philox4x32(seed, *counter))


def test_box_muller_of_a_known_word():
    """Columns 4 and 5 of row 7 (the Philox call of pair 2) and the row draws of
    ``row_uniform_and_index`` (pair 0), by hand from the Philox words."""
    seed, offset, row = 0x0123456789ABCDEF, 5, 7
    r0, r1, r2, _ = _words(seed, offset, row, 2)
    u = (((r0 << 20) | (r1 >> 12)) + 0.5) * 2.0**-52
    radius = math.sqrt(-2.0 * math.log(u))
    angle = (r2 + 0.5) * (2.0 * math.pi * 2.0**-32)
    one_row = torch.tensor([row])
    z = nrandom.normal(seed, offset, one_row, 6)[0]
    expected = torch.tensor([radius * math.cos(angle), radius * math.sin(angle)], dtype=F64)
    assert_ulps(z[4:6], expected, ULPS_NORMAL)
    assert nrandom.uniform(seed, offset, one_row, 6)[0, 4].item() == u
    q0, q1, q2, q3 = _words(seed, offset, row, 0)
    u_row, k_row = nrandom.row_uniform_and_index(seed, offset, one_row, 1000)
    assert u_row.item() == (((q0 << 20) | (q1 >> 12)) + 0.5) * 2.0**-52
    assert k_row.item() == ((q2 << 32) | q3) * 1000 >> 64


def test_normal_moments():
    """2^18 draws: mean within 5 standard errors of 0, variance within 5 of 1."""
    z = nrandom.normal(11, 0, torch.arange(512), 512).flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)


def test_bad_arguments_raise():
    rows = torch.arange(3)
    with pytest.raises(RuntimeError, match="kind"):
        torch.ops.fastdiff_native.philox_draw(0, 0, rows, 4, "gamma")
    with pytest.raises(RuntimeError, match="int64"):
        nrandom.uniform(0, 0, rows.float(), 4)
    with pytest.raises(RuntimeError, match="high"):
        nrandom.row_uniform_and_index(0, 0, rows, 0)
