"""Native forward noising (``fastdiff_native::corrupt``, ``corrupt_dense``) against the
reference, through the public :func:`fastdiff.add_noise` and :func:`fastdiff.add_noise_dense`.

Both backends draw from the same Philox stream, so the tokens must be identical. (A row could
only differ when its uniform falls between the two backends' roundings of ``1 - e^-sigma``, or
two race keys tie within a few ulps: probability about ``2^-50`` per row.)
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend
from fastdiff import random as frandom

if not backend.native_available():
    pytest.skip("fastdiff._C (native kernels) is not built", allow_module_level=True)

FAST = settings(max_examples=40, deadline=None)
seeds = st.integers(-(2**63), 2**63 - 1)
vocabs = st.sampled_from([1, 2, 255, 256, 257, 513]) | st.integers(1, 600)


def both(fn, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` under the native and the reference backend."""
    with fastdiff.use_backend("native"):
        native = fn(*args, **kwargs)
    with fastdiff.use_backend("reference"):
        reference = fn(*args, **kwargs)
    return native, reference


@st.composite
def noising_case(draw):
    graph = draw(st.sampled_from(["absorb", "uniform"]))
    vocab = max(draw(vocabs), 2 if graph == "absorb" else 1)
    shape = tuple(draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)))
    x0 = torch.randint(
        0, vocab, shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
    )
    per = draw(st.sampled_from(["number", "sequence", "position"]))
    sigma_values = st.sampled_from([0.0, 1e-9, 0.3, 2.0, 40.0, float("inf")]) | st.floats(0, 8)
    if per == "number":
        sigma = draw(sigma_values)
    else:
        sigma_shape = shape[:1] if per == "sequence" else shape
        n = torch.Size(sigma_shape).numel()
        sigma = torch.tensor(draw(st.lists(sigma_values, min_size=n, max_size=n))).reshape(
            sigma_shape
        )
    fixed = None
    if draw(st.booleans()):
        fixed = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.3
    mask_id = draw(st.integers(0, vocab - 1)) if graph == "absorb" else None
    return dict(x0=x0, sigma=sigma, graph=graph, vocab_size=vocab, mask_id=mask_id, fixed=fixed)


@FAST
@given(case=noising_case(), seed=seeds, offset=st.integers(0, 2**40), tensor_seed=st.booleans())
def test_add_noise_matches_reference(case, seed, offset, tensor_seed):
    key = torch.tensor(seed) if tensor_seed else seed
    native, reference = both(fastdiff.add_noise, **case, seed=key, offset=offset)
    assert native.dtype == torch.int64 and torch.equal(native, reference)


def test_hand_checkable_cases():
    x0 = torch.arange(600) % 50
    fixed = torch.zeros(600, dtype=torch.bool)
    fixed[::7] = True
    with fastdiff.use_backend("native"):
        for graph in ("absorb", "uniform"):
            m = 49 if graph == "absorb" else None
            kept = fastdiff.add_noise(x0, sigma=0.0, graph=graph, vocab_size=50, mask_id=m, seed=1)
            assert torch.equal(kept, x0)  # sigma = 0 moves nothing
        full = fastdiff.add_noise(
            x0, sigma=float("inf"), graph="absorb", vocab_size=50, mask_id=49, fixed=fixed, seed=2
        )
        assert torch.equal(full, torch.where(fixed, x0, 49))  # sigma = inf absorbs all but fixed
        moved = fastdiff.add_noise(x0, sigma=float("inf"), graph="uniform", vocab_size=50, seed=3)
    # sigma = inf: every row takes its integer uniform K_i
    _, k = frandom.row_uniform_and_index(3, 0, torch.arange(600), 50)
    assert torch.equal(moved, k)


@st.composite
def dense_case(draw):
    vocab = max(draw(vocabs), 2)
    batched = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    m = draw(st.integers(1, 3)) if batched else 0
    q = torch.rand(
        (m, vocab, vocab) if batched else (vocab, vocab), generator=gen, dtype=torch.float64
    )
    q = torch.where(q < draw(st.sampled_from([0.0, 0.5, 0.95])), 0.0, q)  # exact zeros
    q[..., 0] += 1e-3  # no empty row
    q = (q / q.sum(-1, keepdim=True)).to(dtype)
    shape = (m, draw(st.integers(1, 6))) if batched else (draw(st.integers(1, 20)),)
    x0 = torch.randint(0, vocab, shape, generator=gen)
    fixed = (torch.rand(shape, generator=gen) < 0.3) if draw(st.booleans()) else None
    return dict(x0=x0, transition=q, fixed=fixed)


@settings(max_examples=30, deadline=None)
@given(case=dense_case(), seed=seeds, offset=st.integers(0, 2**40))
def test_add_noise_dense_matches_reference(case, seed, offset):
    native, reference = both(
        fastdiff.add_noise_dense,
        case["x0"],
        case["transition"],
        fixed=case["fixed"],
        seed=seed,
        offset=offset,
    )
    assert torch.equal(native, reference)


def test_dense_identity_keeps_tokens_and_one_hot_rows_move():
    x0 = torch.arange(300) % 257
    eye = torch.eye(257, dtype=torch.float64)
    shift = torch.roll(eye, 1, dims=1)  # row v is one-hot on v + 1
    with fastdiff.use_backend("native"):
        assert torch.equal(fastdiff.add_noise_dense(x0, eye, seed=4), x0)
        assert torch.equal(fastdiff.add_noise_dense(x0, shift, seed=4), (x0 + 1) % 257)


def test_bad_inputs_raise_the_public_errors():
    x0 = torch.tensor([0, 1, 5])
    with fastdiff.use_backend("native"):
        with pytest.raises(ValueError):
            fastdiff.add_noise(x0, sigma=0.5, graph="absorb", vocab_size=4, mask_id=3, seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise(x0, sigma=-1.0, graph="uniform", vocab_size=8, seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise(x0, sigma=0.5, graph="absorb", vocab_size=8, seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise_dense(x0, torch.full((4, 4), 0.25), seed=0)
        with pytest.raises(ValueError):
            fastdiff.add_noise_dense(x0, torch.full((8, 8), 0.5), seed=0)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    q = torch.rand(300, 300, generator=gen, dtype=torch.float64)
    q /= q.sum(-1, keepdim=True)
    wide = torch.zeros(300, 600, dtype=torch.float64)
    wide[:, ::2] = q
    x0 = torch.randint(0, 300, (40, 6), generator=gen)
    sigma = torch.rand(6, 40, generator=gen).t()  # per position, transposed
    fixed = (torch.rand(6, 40, generator=gen) < 0.3).t()
    for args, kwargs in (
        ((x0.t().t(),), dict(sigma=sigma, graph="uniform", vocab_size=300, fixed=fixed, seed=3)),
        ((x0[:, ::2],), dict(sigma=0.7, graph="absorb", vocab_size=300, mask_id=0, seed=3)),
    ):
        native, reference = both(fastdiff.add_noise, *args, **kwargs)
        assert torch.equal(native, reference)
    native, reference = both(fastdiff.add_noise_dense, x0[:, ::2], wide[:, ::2], seed=8)
    assert torch.equal(native, reference)
