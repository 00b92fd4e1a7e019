"""The native D3PM reverse step (csrc/native/d3pm.cpp) against the PyTorch reference.

:func:`fastdiff.d3pm_step` is called under ``use_backend("reference")`` and
``use_backend("native")`` on the same inputs: tiny shapes (V from 2 to 520, the race's group
boundaries included), shared ``[V, V]`` and per-sequence ``[B, V, V]`` matrices (mixed too),
sparse matrices (zero entries give ``-inf`` log-weights), ``-inf`` logits, fixed rows, seeds over
the int64 range (ints and tensors), large offsets, four dtypes and non-contiguous inputs. Both
backends race the same float64 log-weights with the same noise, so the tokens must be equal.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiff
from fastdiff import backend

pytestmark = pytest.mark.skipif(
    not backend.native_available(), reason="fastdiff._C (native kernels) is not built"
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _stochastic(batch: int | None, vocab: int, gen: torch.Generator, sparse: bool) -> torch.Tensor:
    """Row-stochastic float64 matrices ``[V, V]`` (or ``[batch, V, V]``); ``sparse`` zeroes
    about half of the off-diagonal entries."""
    shape = (vocab, vocab) if batch is None else (batch, vocab, vocab)
    w = torch.rand(shape, generator=gen, dtype=torch.float64)
    if sparse:
        w = w * (torch.rand(shape, generator=gen) < 0.5) + torch.eye(vocab, dtype=torch.float64)
    return w / w.sum(-1, keepdim=True)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 12),
    vocab=st.one_of(st.sampled_from([2, 255, 256, 257, 513]), st.integers(2, 520)),
    per_sequence=st.sampled_from([(False, False), (True, False), (False, True), (True, True)]),
    sparse=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    neg_inf=st.booleans(),
    non_contiguous=st.booleans(),
    with_fixed=st.booleans(),
    seed=st.integers(-(2**63), 2**63 - 1),
    tensor_seed=st.booleans(),
    offset=st.sampled_from([0, 3, 2**32, 2**63 - 1]),
    data_seed=st.integers(0, 2**31),
)
def test_d3pm_step_equals_reference(
    batch,
    length,
    vocab,
    per_sequence,
    sparse,
    dtype,
    neg_inf,
    non_contiguous,
    with_fixed,
    seed,
    tensor_seed,
    offset,
    data_seed,
):
    gen = torch.Generator().manual_seed(data_seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64) * 3
    if neg_inf:
        logits[torch.rand(logits.shape, generator=gen) < 0.3] = -math.inf
        logits[..., 0] = 0.0  # every row keeps a possible x0
    logits = logits.to(dtype)
    if non_contiguous:
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    x_t = torch.randint(0, vocab, (batch, length), generator=gen)
    q_step = _stochastic(batch if per_sequence[0] else None, vocab, gen, sparse)
    qbar = _stochastic(batch if per_sequence[1] else None, vocab, gen, sparse)
    fixed = torch.rand(batch, length, generator=gen) < 0.3 if with_fixed else None
    key = torch.tensor(seed) if tensor_seed else seed
    out = []
    for name in ("reference", "native"):
        with fastdiff.use_backend(name):
            out.append(
                fastdiff.d3pm_step(
                    logits, x_t, q_step=q_step, qbar_next=qbar, fixed=fixed, seed=key, offset=offset
                )
            )
    want, got = out
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(want, got), f"{int((want != got).sum())} rows differ"


def test_d3pm_step_by_hand():
    """Identity Q_t: only j = x_t has weight, so x_{t-1} = x_t; Q_t of equal columns and Qbar the
    identity: the draw follows softmax(logits), which is a point mass on column 1 here; fixed
    rows keep x_t."""
    vocab = 4
    logits = torch.tensor([[-math.inf, 0.0, -math.inf, -math.inf]] * 6)
    x_t = torch.tensor([0, 1, 2, 3, 2, 1])
    eye = torch.eye(vocab, dtype=torch.float64)
    flat = torch.full((vocab, vocab), 1.0 / vocab, dtype=torch.float64)
    fixed = torch.tensor([False, False, True, False, False, False])
    with fastdiff.use_backend("native"):
        same = fastdiff.d3pm_step(logits, x_t, q_step=eye, qbar_next=eye, seed=5)
        drawn = fastdiff.d3pm_step(logits, x_t, q_step=flat, qbar_next=eye, fixed=fixed, seed=5)
    assert torch.equal(same, x_t)
    assert drawn.tolist() == [1, 1, 2, 1, 1, 1]


def test_d3pm_step_bad_input_raises_under_native():
    logits = torch.zeros(2, 3)
    x_t = torch.tensor([0, 1])
    q = torch.full((3, 3), 1.0 / 3, dtype=torch.float64)
    with fastdiff.use_backend("native"):
        with pytest.raises(ValueError):
            fastdiff.d3pm_step(logits, x_t, q_step=q * 2, qbar_next=q, seed=0)
        with pytest.raises(ValueError):
            fastdiff.d3pm_step(logits[:, :2], x_t, q_step=q, qbar_next=q, seed=0)
        with pytest.raises(ValueError):
            fastdiff.d3pm_step(logits * math.nan, x_t, q_step=q, qbar_next=q, seed=0)
