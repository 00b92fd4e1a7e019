"""Sampling kernels: categorical draws and the absorbing-graph reverse updates, one pass each.

Every kernel streams a row of the model output in blocks with a running argmax of
``log w_j - log E_j`` (the exponential race of :mod:`fastdiff.reference.sampling`), with
``E_j`` drawn from the reference's Philox stream keyed by (seed, offset, row, column) (see
:mod:`fastdiff.kernels.philox_noise`). The same seed therefore gives the same token as the
reference backend except where two keys tie within fp32 rounding; ties go to the lowest index.
No ``[N, V]`` intermediate is written: each row reads its scores once and writes one token.

Registered ops (signatures of the references they replace):

- ``sample_categorical``: weights or log-weights, temperature (0 = argmax), optional probability
  of the drawn token (an online log-sum-exp in the same pass). Calls with top-k / top-p / min-p
  filters run the reference.
- ``sedd_analytic``, ``sedd_euler``, ``sedd_denoise`` (absorbing graph) and ``mdlm_ancestral``:
  only masked, non-fixed rows are read; the stay-masked option (column ``m``) is raced after
  the row's sum is known. The uniform graph runs the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.backend import register_kernel
from fastdiff.kernels.launch import block_size, new_output, num_warps, rows_per_program
from fastdiff.kernels.noising import seed_tensor
from fastdiff.kernels.philox_noise import exponential_from_words, tile_words
from fastdiff.reference import sampling as ref_sampling
from fastdiff.reference import updates as ref_updates

_MASK32 = 0xFFFFFFFF


@triton.jit
def _take(best, best_idx, key, idx):
    """Running argmax with the lowest index winning ties (elementwise over rows)."""
    take = (key > best) | ((key == best) & (idx < best_idx))
    return tl.where(take, key, best), tl.where(take, idx, best_idx)


@triton.jit
def _block_argmax(key, cols):
    """Row-wise max of ``key [R, B]`` and its column (lowest on ties), as int64."""
    blk = tl.max(key, axis=1)
    idx = tl.min(tl.where(key == blk[:, None], cols[None, :], 2**62), axis=1)
    return blk, idx


@triton.jit
def _online_lse(run_max, run_sum, x):
    """One step of a blockwise log-sum-exp: per-lane running max and rescaled sum."""
    new_max = tl.maximum(run_max, x)
    safe = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, run_sum * tl.exp(run_max - safe) + tl.exp(x - safe)


@triton.jit
def _lse_finish(run_max, run_sum):
    """``log sum`` per row of the lanes kept by :func:`_online_lse` (``-inf`` for empty rows)."""
    top = tl.max(run_max, axis=1)
    safe = tl.where(top == float("-inf"), 0.0, top)
    return safe + tl.log(tl.sum(run_sum * tl.exp(run_max - safe[:, None]), axis=1))


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "inv_t"])
def _categorical_kernel(
    w_ptr,
    out_ptr,
    prob_ptr,
    seed_ptr,
    N,
    V,
    stride,
    offset_lo,
    offset_hi,
    inv_t,
    IS_LOG: tl.constexpr,
    ARGMAX: tl.constexpr,
    WANT_PROB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    seed = tl.load(seed_ptr)
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
    best_lw = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        inside = row_ok[:, None] & (cols < V)[None, :]
        x = tl.load(w_ptr + rows[:, None] * stride + cols[None, :], mask=inside, other=0.0)
        x = x.to(tl.float32)
        if IS_LOG:
            lw = tl.where(inside, x, float("-inf"))
        else:
            lw = tl.where(inside, tl.log(x), float("-inf"))
        lw = lw * inv_t
        if ARGMAX:
            key = lw
        else:
            a, b = tile_words(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
            key = lw - tl.log(exponential_from_words(a, b))
        blk, blk_idx = _block_argmax(key, cols)
        blk_lw = tl.max(tl.where(cols[None, :] == blk_idx[:, None], lw, float("-inf")), axis=1)
        best_lw = tl.where(blk > best, blk_lw, best_lw)
        best, best_idx = _take(best, best_idx, blk, blk_idx)
        if WANT_PROB:
            run_max, run_sum = _online_lse(run_max, run_sum, lw)
    tl.store(out_ptr + rows, best_idx, mask=row_ok)
    if WANT_PROB:
        tl.store(prob_ptr + rows, tl.exp(best_lw - _lse_finish(run_max, run_sum)), mask=row_ok)


@torch.library.custom_op("fastdiff::sample_categorical", mutates_args=())
def sample_categorical_op(
    weights: torch.Tensor,
    is_log: bool,
    seed: torch.Tensor,
    offset: int,
    temperature: float,
    want_prob: bool,
    block_v: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row of ``weights [N, V]``; returns ``(index [N] int64, prob [N] fp32 or
    [0])``."""
    n, vocab = weights.shape
    out = new_output((n,), torch.int64, weights.device)
    prob = new_output((n if want_prob else 0,), torch.float32, weights.device)
    if n:
        block = block_v or block_size(vocab)
        block_n = rows_per_program(block, n)
        argmax = temperature == 0.0
        _categorical_kernel[(triton.cdiv(n, block_n),)](
            weights,
            out,
            prob if want_prob else out,
            seed,
            n,
            vocab,
            weights.stride(0),
            offset & _MASK32,
            (offset >> 32) & _MASK32,
            1.0 if argmax else 1.0 / temperature,
            IS_LOG=is_log,
            ARGMAX=argmax,
            WANT_PROB=want_prob,
            BLOCK_N=block_n,
            BLOCK_V=block,
            num_warps=num_warps(block * block_n),
        )
    return out, prob


@sample_categorical_op.register_fake
def _(weights, is_log, seed, offset, temperature, want_prob, block_v):
    n = weights.shape[0]
    return (
        weights.new_empty(n, dtype=torch.int64),
        weights.new_empty(n if want_prob else 0, dtype=torch.float32),
    )


@register_kernel("sample_categorical")
def sample_categorical(
    weights: torch.Tensor,
    is_log: bool,
    seed: int | torch.Tensor,
    offset: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    return_prob: bool,
    *,
    block_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kernel for :func:`fastdiff.reference.sampling.sample_categorical` (no filters)."""
    if top_k is not None or top_p is not None or min_p is not None:
        return ref_sampling.sample_categorical(
            weights, is_log, seed, offset, temperature, top_k, top_p, min_p, return_prob
        )
    index, prob = sample_categorical_op(
        weights.contiguous(),
        is_log,
        seed_tensor(seed, weights.device),
        offset,
        float(temperature),
        return_prob,
        block_v,
    )
    return index, prob if return_prob else None


MODE_RATE, MODE_DENOISE, MODE_MDLM = 0, 1, 2


@triton.jit(do_not_specialize=["offset_lo", "offset_hi", "mask_id"])
def _absorb_update_kernel(
    s_ptr,
    x_ptr,
    fixed_ptr,
    a_ptr,
    b_ptr,
    out_ptr,
    seed_ptr,
    N,
    V,
    stride,
    offset_lo,
    offset_hi,
    mask_id,
    MODE: tl.constexpr,
    HAS_FIXED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    x = tl.load(x_ptr + rows, mask=row_ok, other=0)
    active = row_ok & (x == mask_id)
    if HAS_FIXED:
        active = active & (tl.load(fixed_ptr + rows, mask=row_ok, other=1) == 0)
    out = x
    if tl.max(active.to(tl.int32), axis=0) > 0:  # a tile with nothing masked reads nothing
        seed = tl.load(seed_ptr)
        a = tl.load(a_ptr + rows, mask=active, other=0.0)  # log rate, or log(mc_t - mc_s)
        best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
        total = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)  # sum of S_j (rate modes)
        run_max = tl.full((BLOCK_N, BLOCK_V), float("-inf"), tl.float32)  # MDLM softmax
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            keep = active[:, None] & ((cols < V) & (cols != mask_id))[None, :]
            ptrs = s_ptr + rows[:, None] * stride + cols[None, :]
            s = tl.load(ptrs, mask=keep, other=float("-inf")).to(tl.float32)
            w_a, w_b = tile_words(seed, offset_lo, offset_hi, rows, start, BLOCK_V)
            key = tl.where(keep, s - tl.log(exponential_from_words(w_a, w_b)), float("-inf"))
            blk, blk_idx = _block_argmax(key, cols)
            best, best_idx = _take(best, best_idx, blk, blk_idx)
            if MODE == 0:
                total += tl.exp(s)
            if MODE == 2:
                run_max, total = _online_lse(run_max, total, s)
        if MODE == 0:
            best = best + a
            stay = 1.0 - tl.exp(a) * tl.sum(total, axis=1)
            log_stay = tl.where(stay > 0.0, tl.log(tl.maximum(stay, 1e-38)), float("-inf"))
        if MODE == 1:
            log_stay = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        if MODE == 2:
            lse = _lse_finish(run_max, total)
            best = tl.where(best == float("-inf"), best, best - lse + a)
            log_stay = tl.load(b_ptr + rows, mask=active, other=0.0)
        # the stay option: column m, raced with its own noise once the row's sums are known
        pair_start = (mask_id // 2) * 2
        m_a, m_b = tile_words(seed, offset_lo, offset_hi, rows, pair_start, 2)
        e_m = exponential_from_words(m_a, m_b)
        e_m = tl.sum(tl.where((tl.arange(0, 2) == mask_id - pair_start)[None, :], e_m, 0.0), 1)
        best, best_idx = _take(best, best_idx, log_stay - tl.log(e_m), best_idx * 0 + mask_id)
        out = tl.where(active & (best > float("-inf")), best_idx, x)
    tl.store(out_ptr + rows, out, mask=row_ok)


@torch.library.custom_op("fastdiff::absorb_update", mutates_args=())
def absorb_update_op(
    scores: torch.Tensor,
    x: torch.Tensor,
    fixed: Optional[torch.Tensor],
    a: torch.Tensor,
    b: torch.Tensor,
    seed: torch.Tensor,
    offset: int,
    mask_id: int,
    mode: int,
    block_v: int,
) -> torch.Tensor:
    """New tokens ``[N]`` for the absorbing updates; ``a``, ``b`` ``[N]`` fp32 per-row
    constants (module docstring of the registered functions)."""
    n, vocab = scores.shape
    out = new_output((n,), torch.int64, scores.device)
    if n:
        block = block_v or block_size(vocab)
        block_n = rows_per_program(block, n)
        _absorb_update_kernel[(triton.cdiv(n, block_n),)](
            scores,
            x,
            fixed.view(torch.uint8) if fixed is not None else x,
            a,
            b,
            out,
            seed,
            n,
            vocab,
            scores.stride(0),
            offset & _MASK32,
            (offset >> 32) & _MASK32,
            mask_id,
            MODE=mode,
            HAS_FIXED=fixed is not None,
            BLOCK_N=block_n,
            BLOCK_V=block,
            num_warps=num_warps(block * block_n),
        )
    return out


@absorb_update_op.register_fake
def _(scores, x, fixed, a, b, seed, offset, mask_id, mode, block_v):
    return torch.empty_like(x)


def _update(scores, x, fixed, a, b, seed, offset, mask_id, mode, block_v) -> torch.Tensor:
    return absorb_update_op(
        scores.contiguous(),
        x.contiguous(),
        None if fixed is None else fixed.contiguous(),
        a.float().contiguous(),
        b.float().contiguous(),
        seed_tensor(seed, x.device),
        offset,
        mask_id,
        mode,
        block_v,
    )


@register_kernel("sedd_analytic")
def sedd_analytic(
    log_score, x, delta, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_analytic` (absorbing graph):
    ``p_j = expm1(D) S_j``, stay ``max(0, 1 - expm1(D) sum S)``."""
    if graph != "absorb":
        return ref_updates.sedd_analytic(log_score, x, delta, fixed, seed, offset, graph, mask_id)
    log_rate = torch.log(torch.expm1(delta))
    return _update(
        log_score, x, fixed, log_rate, log_rate, seed, offset, mask_id, MODE_RATE, block_v
    )


@register_kernel("sedd_euler")
def sedd_euler(
    log_score, x, rate, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_euler` (absorbing graph)."""
    if graph != "absorb":
        return ref_updates.sedd_euler(log_score, x, rate, fixed, seed, offset, graph, mask_id)
    log_rate = torch.log(rate)
    return _update(
        log_score, x, fixed, log_rate, log_rate, seed, offset, mask_id, MODE_RATE, block_v
    )


@register_kernel("sedd_denoise")
def sedd_denoise(
    log_score, x, sigma, fixed, seed, offset, graph, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.sedd_denoise` (absorbing graph)."""
    if graph != "absorb":
        return ref_updates.sedd_denoise(log_score, x, sigma, fixed, seed, offset, graph, mask_id)
    return _update(log_score, x, fixed, sigma, sigma, seed, offset, mask_id, MODE_DENOISE, block_v)


@register_kernel("mdlm_ancestral")
def mdlm_ancestral(
    logits, x, sigma_t, sigma_s, fixed, seed, offset, mask_id, *, block_v: int = 0
) -> torch.Tensor:
    """Kernel for :func:`fastdiff.reference.updates.mdlm_ancestral`: unmask weight
    ``p_j (mc_t - mc_s)``, stay ``mc_s``, with ``p`` an online softmax over ``j != m``."""
    log_unmask = -sigma_s + torch.log(-torch.expm1(sigma_s - sigma_t))
    log_stay = torch.log(-torch.expm1(-sigma_s))
    return _update(
        logits, x, fixed, log_unmask, log_stay, seed, offset, mask_id, MODE_MDLM, block_v
    )
