"""Commit rules of confidence-based unmasking (MaskGIT / LLaDA / Fast-dLLM, ops.md 4d).

All rules work on a confidence tensor ``[B, L]`` (``-inf`` = not eligible: unmasked, fixed or
outside the active block) with tensor ops only: no host synchronization, so they run inside a
CUDA-graph-captured step on the GPU as well as on the CPU. Ties are broken by position (the
leftmost of equally confident positions commits first).
"""

from __future__ import annotations

import torch

from fastdiff import checks
from fastdiff.updates import unmask_candidates


def unmask_quota(
    x_t: torch.Tensor,
    *,
    mask_id: int,
    steps: int,
    fixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens to commit at each step, per sequence: ``[B, steps]`` int64.

    With ``M`` masked, non-fixed positions in a sequence: ``M // steps`` per step and the
    remainder ``M % steps`` given one each to the first steps (LLaDA's schedule).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
    if mask_id < 0:
        raise ValueError(f"mask_id must be >= 0, got {mask_id}")
    x = checks.tokens("x_t", x_t)
    if x.dim() != 2:
        raise ValueError(f"x_t must have shape [batch, length], got {tuple(x.shape)}")
    fixed = checks.bool_mask("fixed", fixed, x.shape)
    masked = x == mask_id
    if fixed is not None:
        masked &= ~fixed
    total = masked.sum(-1, keepdim=True)
    step = torch.arange(steps, device=x.device)[None, :]
    return total // steps + (step < total % steps).long()


def _ranks(confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted confidences (descending, stable) and each position's rank in that order."""
    sorted_conf, order = torch.sort(confidence, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return sorted_conf, ranks


def restrict_to_block(confidence: torch.Tensor, block_length: int) -> torch.Tensor:
    """Semi-autoregressive blocks: keep only the leftmost block (of ``block_length`` positions)
    that still has an eligible position; the rest becomes ``-inf``."""
    length = confidence.shape[-1]
    block = torch.arange(length, device=confidence.device) // block_length
    eligible = confidence > -torch.inf
    big = torch.full_like(block, length)
    active = torch.where(eligible, block.expand_as(confidence), big).amin(-1, keepdim=True)
    return torch.where(block == active, confidence, torch.full_like(confidence, -torch.inf))


def select_commits(
    confidence: torch.Tensor,
    *,
    k: int | torch.Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
    block_length: int | None = None,
) -> torch.Tensor:
    """Which positions to unmask this step: bool ``[B, L]``. Exactly one rule:

    - ``k`` (int or ``[B]`` tensor): the ``k`` most confident eligible positions per sequence;
    - ``threshold``: every eligible position with confidence >= threshold, and always at least
      the most confident one (Fast-dLLM);
    - ``factor`` ``f``: with confidences sorted ``c_(1) >= c_(2) >= ...``, the largest ``n`` with
      ``c_(n) >= 1 - f / (n + 1)``, at least 1.

    ``block_length`` first restricts eligibility to the active semi-autoregressive block.
    Sequences with no eligible position commit nothing.
    """
    checks.floating("confidence", confidence)
    if confidence.dim() != 2:
        raise ValueError(
            f"confidence must have shape [batch, length], got {tuple(confidence.shape)}"
        )
    if sum(r is not None for r in (k, threshold, factor)) != 1:
        raise ValueError("pass exactly one commit rule: k, threshold or factor")
    if checks.value_checks_enabled() and bool(torch.isnan(confidence).any()):
        raise ValueError("confidence contains NaN (use -inf for positions that may not commit)")
    # with value checks off, NaN is treated as not eligible rather than sorting first
    confidence = torch.where(torch.isnan(confidence), -torch.inf, confidence)
    if block_length is not None:
        if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        confidence = restrict_to_block(confidence, block_length)
    eligible = confidence > -torch.inf
    sorted_conf, ranks = _ranks(confidence)
    if k is not None:
        if isinstance(k, torch.Tensor):
            count = k.to(device=confidence.device, dtype=torch.int64).reshape(-1, 1)
            if count.shape[0] != confidence.shape[0]:
                raise ValueError(
                    f"k has {count.shape[0]} entries for {confidence.shape[0]} sequences"
                )
            if checks.value_checks_enabled() and bool((count < 0).any()):
                raise ValueError("k must be >= 0")
        elif isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0 or a [batch] tensor, got {k!r}")
        else:
            count = torch.full((confidence.shape[0], 1), k, device=confidence.device)
        return eligible & (ranks < count)
    if threshold is not None:
        return eligible & ((confidence >= threshold) | (ranks == 0))
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    n = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device, dtype=sorted_conf.dtype)
    ok = (sorted_conf >= 1.0 - factor / (n + 1.0)) & (sorted_conf > -torch.inf)
    count = torch.clamp(ok.sum(-1, keepdim=True), min=1)
    return eligible & (ranks < count)


def confidence_unmask_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    mask_id: int,
    k: int | torch.Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
    block_length: int | None = None,
    temperature: float = 0.0,
    confidence: str = "prob",
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """One confidence-unmasking step on ``x_t [B, L]`` with the logits ``model_output
    [B, L, V]``: propose with
    :func:`fastdiff.updates.unmask_candidates`, choose with :func:`select_commits`, and write
    the committed proposals. Returns the new tokens ``[B, L]``."""
    xhat, conf = unmask_candidates(
        model_output,
        x_t,
        mask_id=mask_id,
        temperature=temperature,
        confidence=confidence,
        fixed=fixed,
        generator=generator,
        seed=seed,
        offset=offset,
    )
    commit = select_commits(
        conf, k=k, threshold=threshold, factor=factor, block_length=block_length
    )
    return torch.where(commit, xhat, x_t.long())
