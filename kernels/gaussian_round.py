"""Rounding to the nearest embedding row (Diffusion-LM clamping,
docs/ops.md#rounding-to-the-embedding) without the ``[N, V]`` score matrix.

``token = argmax_v 2 E_v . x - ||E_v||^2`` (``= argmin_v ||E_v - x||^2``). A first small
kernel writes the fp32 row norms ``||E_v||^2`` ``[V]``. Then one program takes ``BLOCK_M`` rows
of ``x`` and streams the table in ``[BLOCK_V, BLOCK_K]`` tiles: ``tl.dot`` accumulates
``x E_v^T`` over the features, and a running row argmax (lowest index on ties, as the
reference) keeps the best column of each ``[BLOCK_M, BLOCK_V]`` score tile. Extra memory is the
``[V]`` norms, the ``[N]`` tokens and the ``[N, H]`` rounded rows, which the same program
gathers at the end.

Precision: fp32 accumulation everywhere. fp32 inputs use ``input_precision="ieee"`` (the GPU's
default TF32 would change which row wins); fp16 / bf16 tables with inputs of the same dtype
feed ``tl.dot`` directly on the GPU (their products are exact in fp32, so this is the
reference's fp32 matmul up to summation order); mixed dtypes, and every dtype in the
interpreter (whose bf16 ``tl.dot`` is wrong), are upcast to fp32 first. float64 inputs run the
reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff.backend import interpreter_enabled, register_kernel
from fastdiff.kernels.launch import new_output
from fastdiff.kernels.race import take
from fastdiff.reference import gaussian as ref

_NORM_ROWS = 16  # table rows per program of the norm kernel


@triton.jit
def _norms_kernel(emb_ptr, norms_ptr, V, H, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """``||E_v||^2`` in fp32 for ``BLOCK_V`` rows of the table per program."""
    vs = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    acc = tl.zeros((BLOCK_V, BLOCK_K), dtype=tl.float32)
    for k_start in range(0, H, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        inside = (vs < V)[:, None] & (ks < H)[None, :]
        e = tl.load(emb_ptr + vs[:, None] * H + ks[None, :], mask=inside, other=0.0)
        e = e.to(tl.float32)
        acc += e * e
    tl.store(norms_ptr + vs, tl.sum(acc, axis=1), mask=vs < V)


# Tiles (BLOCK_M, BLOCK_V, BLOCK_K, warps, stages). 16-bit inputs go to the tensor cores; fp32
# (IEEE, upcast) products are FFMAs whose [BLOCK_M, BLOCK_V] accumulator lives in registers, so
# they take smaller tiles. Each set compiles without spills for sm_80 and sm_90 (checked by
# tests/test_gpu_compile.py).
_TENSOR_CORE_TILES = ((128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 4))
_UPCAST_TILES = ((64, 64, 32, 4, 1), (64, 64, 16, 4, 2))


def _configs() -> list[triton.Config]:
    if interpreter_enabled():  # one config: autotuning needs a GPU
        return [triton.Config({"BLOCK_M": 16, "BLOCK_V": 32, "BLOCK_K": 32, "TILES": 1})]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_K": bk, "TILES": kind},
            num_warps=w,
            num_stages=s,
        )
        for kind, tiles in ((0, _TENSOR_CORE_TILES), (1, _UPCAST_TILES))
        for bm, bv, bk, w, s in tiles
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The tile set of the product path: tensor-core tiles unless the inputs are upcast."""
    kind = 1 if kwargs.get("UPCAST", named_args.get("UPCAST")) else 0
    return [c for c in configs if c.kwargs["TILES"] == kind] or configs


@triton.autotune(
    configs=_configs(),
    key=["V", "H", "UPCAST"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _round_kernel(
    x_ptr,
    emb_ptr,
    norms_ptr,
    tokens_ptr,
    rows_ptr,
    N,
    V,
    H,
    UPCAST: tl.constexpr,
    WRITE_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TILES: tl.constexpr,  # which tile set the config came from (see _prune); unused here
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_M,), dtype=tl.int64)
    for v_start in range(0, V, BLOCK_V):
        local = tl.arange(0, BLOCK_V)  # int32 columns of the tile: half the registers of int64
        vs = v_start + local.to(tl.int64)
        v_ok = vs < V
        dots = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        for k_start in range(0, H, BLOCK_K):
            ks = k_start + offs_k
            k_ok = ks < H
            x = tl.load(
                x_ptr + rows[:, None] * H + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            e = tl.load(  # the table tile transposed: [BLOCK_K, BLOCK_V]
                emb_ptr + vs[None, :] * H + ks[:, None],
                mask=k_ok[:, None] & v_ok[None, :],
                other=0.0,
            )
            if UPCAST:
                dots = tl.dot(x.to(tl.float32), e.to(tl.float32), dots, input_precision="ieee")
            else:
                dots = tl.dot(x, e, dots)
        norms = tl.load(norms_ptr + vs, mask=v_ok, other=0.0)
        score = tl.where(v_ok[None, :], 2.0 * dots - norms[None, :], float("-inf"))
        top = tl.max(score, axis=1)  # the row's best column of the tile, lowest on ties
        top_idx = tl.min(tl.where(score == top[:, None], local[None, :], BLOCK_V), axis=1)
        best, best_idx = take(best, best_idx, top, v_start + top_idx.to(tl.int64))
    tl.store(tokens_ptr + rows, best_idx, mask=row_ok)
    if WRITE_ROWS:
        for k_start in range(0, H, BLOCK_K):
            ks = k_start + offs_k
            inside = row_ok[:, None] & (ks < H)[None, :]
            e = tl.load(emb_ptr + best_idx[:, None] * H + ks[None, :], mask=inside, other=0.0)
            tl.store(
                rows_ptr + rows[:, None] * H + ks[None, :],
                e.to(rows_ptr.dtype.element_ty),
                mask=inside,
            )


@torch.library.custom_op("fastdiff::round_to_embedding", mutates_args=())
def round_to_embedding_op(
    x: torch.Tensor, embedding: torch.Tensor, write_rows: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [N] int64, embedding[tokens] [N, H])`` for ``x [N, H]``, the rows in the
    dtype of ``x`` (``[0, H]`` when ``write_rows`` is off)."""
    n, h = x.shape
    vocab = embedding.shape[0]
    tokens = new_output((n,), torch.int64, x.device)
    rows = new_output((n if write_rows else 0, h), x.dtype, x.device)
    if n:
        norms = new_output((vocab,), torch.float32, x.device)
        block_k = min(max(triton.next_power_of_2(max(h, 1)), 16), 128)
        _norms_kernel[(triton.cdiv(vocab, _NORM_ROWS),)](
            embedding, norms, vocab, h, BLOCK_V=_NORM_ROWS, BLOCK_K=block_k
        )
        upcast = interpreter_enabled() or x.dtype == torch.float32 or x.dtype != embedding.dtype
        _round_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)](
            x,
            embedding,
            norms,
            tokens,
            rows if write_rows else x,
            n,
            vocab,
            h,
            UPCAST=upcast,
            WRITE_ROWS=write_rows,
        )
    return tokens, rows


@round_to_embedding_op.register_fake
def _(x, embedding, write_rows):
    n, h = x.shape
    return x.new_empty(n, dtype=torch.int64), x.new_empty((n if write_rows else 0, h))


@register_kernel("round_to_embedding")
def round_to_embedding(
    x: torch.Tensor, embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel for :func:`fastdiff.reference.gaussian.round_to_embedding`. When the table needs
    a gradient the rows are gathered with ``index_select`` outside the op (differentiable in
    ``embedding``, as the reference); the argmax itself has no gradient."""
    if torch.float64 in (x.dtype, embedding.dtype):
        return ref.round_to_embedding(x, embedding)
    grad = torch.is_grad_enabled() and embedding.requires_grad
    tokens, rows = round_to_embedding_op(
        x.detach().contiguous(), embedding.detach().contiguous(), not grad
    )
    if grad:
        rows = embedding.index_select(0, tokens).to(x.dtype)
    return tokens, rows
