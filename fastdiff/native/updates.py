"""Native reverse updates (``csrc/native/updates.cpp``): SEDD Euler / analytic / denoise,
the MDLM ancestral step and the proposals of confidence unmasking.

Each wrapper has the signature of its reference in :mod:`fastdiff.reference.updates`. Shapes:
model output ``[N, V]`` (float32 / float64 / float16 / bfloat16, any strides), tokens
``x [N]`` int64, per-row scalars ``[N]`` (read as float64), ``fixed [N]`` bool or ``None``.
The kernels form each active row's float64 log-weights with the reference's formulas and race
them with the stay option of the reference's ``_draw``; inactive rows keep their token.
"""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int
from fastdiff.updates import CONFIDENCES

Seed = int | torch.Tensor


def _tokens_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.int64, memory_format=torch.contiguous_format)


for _name in ("sedd_euler", "sedd_analytic", "sedd_denoise"):
    torch.library.register_fake(f"fastdiff_native::{_name}")(
        lambda log_score, x, scalar, fixed, seed, offset, uniform, mask_id: _tokens_like(x)
    )


@torch.library.register_fake("fastdiff_native::mdlm_ancestral")
def _(logits, x, sigma_t, sigma_s, fixed, seed, offset, mask_id):
    return _tokens_like(x)


@torch.library.register_fake("fastdiff_native::unmask_candidates")
def _(logits, x, fixed, seed, offset, mask_id, temperature, confidence):
    return _tokens_like(x), x.new_empty(x.shape, dtype=torch.float32)


@register_native("sedd_euler")
def sedd_euler_native(
    log_score: torch.Tensor,
    x: torch.Tensor,
    rate: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """:func:`fastdiff.reference.updates.sedd_euler`: ``w_j = rate S_j`` (``rate S_j / V`` on
    the uniform graph), stay ``max(0, 1 - sum_{j != stay} w_j)``, one fused pass per row."""
    return ops.sedd_euler(
        log_score, x, rate, fixed, seed_int(seed), offset, graph == "uniform", mask_id
    )


@register_native("sedd_analytic")
def sedd_analytic_native(
    log_score: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """:func:`fastdiff.reference.updates.sedd_analytic`: absorbing ``p_j = expm1(D) S_j``,
    stay ``max(0, 1 - expm1(D) sum S)``; uniform ``stag(S, D) T(x, D)`` clamped at 0."""
    return ops.sedd_analytic(
        log_score, x, delta, fixed, seed_int(seed), offset, graph == "uniform", mask_id
    )


@register_native("sedd_denoise")
def sedd_denoise_native(
    log_score: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    graph: str,
    mask_id: int,
) -> torch.Tensor:
    """:func:`fastdiff.reference.updates.sedd_denoise`: absorbing ``p_j ∝ S_j`` over
    ``j != m``; uniform the analytic product with ``D = sigma``."""
    return ops.sedd_denoise(
        log_score, x, sigma, fixed, seed_int(seed), offset, graph == "uniform", mask_id
    )


@register_native("mdlm_ancestral")
def mdlm_ancestral_native(
    logits: torch.Tensor,
    x: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_s: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    mask_id: int,
) -> torch.Tensor:
    """:func:`fastdiff.reference.updates.mdlm_ancestral`: ``q_j = p_j (mc_t - mc_s)``
    (``j != m``), ``q_m = mc_s`` with ``p = softmax(logits, m excluded)``."""
    return ops.mdlm_ancestral(logits, x, sigma_t, sigma_s, fixed, seed_int(seed), offset, mask_id)


@register_native("unmask_candidates")
def unmask_candidates_native(
    logits: torch.Tensor,
    x: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: Seed,
    offset: int,
    mask_id: int,
    temperature: float,
    confidence: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fastdiff.reference.updates.unmask_candidates`: proposal ``argmax p`` or the race
    over ``log p / temperature``, confidence ``p(xhat)``, ``p1 - p2`` or ``sum p log p``
    (float32; ``-inf`` on inactive rows)."""
    return ops.unmask_candidates(
        logits,
        x,
        fixed,
        seed_int(seed),
        offset,
        mask_id,
        float(temperature),
        CONFIDENCES.index(confidence),
    )
