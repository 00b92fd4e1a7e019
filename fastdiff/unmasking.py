"""Commit rules of confidence-based unmasking (MaskGIT / LLaDA / Fast-dLLM,
docs/ops.md#commit-rules).

All rules work on a confidence tensor ``[B, L]`` (``-inf`` = not eligible: unmasked, fixed or
outside the active block) with tensor ops only: no host synchronization, so they run inside a
CUDA-graph-captured step on the GPU as well as on the CPU. Ties are broken by position (the
leftmost of equally confident positions commits first).
"""

from __future__ import annotations

import math

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
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
    checks.same_device(x_t=x, fixed=fixed)
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


def generation_start(fixed: torch.Tensor) -> torch.Tensor:
    """Each row's first generated position: ``[B]`` int64, the index of the first ``False`` of
    ``fixed [B, L]`` (``L`` for a row that is fixed throughout). Semi-autoregressive blocks are
    counted from it (LLaDA's blocks start right after the prompt)."""
    if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool:
        raise TypeError("fixed must be a bool tensor")
    if fixed.dim() != 2:
        raise ValueError(f"fixed must have shape [batch, length], got {tuple(fixed.shape)}")
    free = ~fixed
    first = free.to(torch.uint8).argmax(-1)
    return torch.where(free.any(-1), first, fixed.shape[-1])


def block_index(
    length: int, block_length: int, block_start: int | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The block of every position ``j < length``, ``floor((j - block_start) / block_length)``
    (negative before ``block_start``): ``[1, L]`` for an int start, ``[B, L]`` for ``[B]``."""
    start = torch.as_tensor(block_start, device=device).reshape(-1, 1)
    pos = torch.arange(length, device=device)[None, :]
    return torch.div(pos - start, block_length, rounding_mode="floor")


def restrict_to_block(
    confidence: torch.Tensor, block_length: int, *, block_start: int | torch.Tensor = 0
) -> torch.Tensor:
    """Semi-autoregressive blocks: keep only the leftmost block that still has an eligible
    position; the rest becomes ``-inf``. Blocks are ``block_length`` positions long and
    aligned at ``block_start`` (an int, or ``[B]`` per row): block ``b`` of a row holds the
    positions ``block_start + [b * block_length, (b + 1) * block_length)``."""
    length = confidence.shape[-1]
    block = block_index(length, block_length, block_start, confidence.device)
    eligible = confidence > -torch.inf
    big = torch.full_like(block, length)
    active = torch.where(eligible, block.expand_as(confidence), big).amin(-1, keepdim=True)
    return torch.where(block == active, confidence, torch.full_like(confidence, -torch.inf))


def random_confidence(
    confidence: torch.Tensor, *, seed: int | torch.Tensor, offset: int = 1
) -> torch.Tensor:
    """LLaDA's random remasking: a uniform ``U(0, 1)`` draw (from ``(seed, offset)``, row
    ``b``, column ``j``; see :mod:`fastdiff.random`) in place of every eligible (finite)
    confidence of ``[B, L]``, ``-inf`` kept elsewhere, so the ``k`` rule commits a uniformly
    random ``k``-subset of the eligible positions. Returns float64 ``[B, L]`` (52-bit draws:
    no ties in practice)."""
    batch, length = confidence.shape
    rows = torch.arange(batch, device=confidence.device)
    draw = backend.draw_function("uniform", frandom.uniform, rows.device)
    u = draw(seed, offset, rows, length)
    return torch.where(confidence > -torch.inf, u, confidence.to(u.dtype))


def _check_block_start(block_start: int | torch.Tensor, batch: int) -> None:
    if isinstance(block_start, torch.Tensor):
        ok = block_start.dtype in (torch.int64, torch.int32) and block_start.numel() in (1, batch)
    else:
        ok = isinstance(block_start, int) and not isinstance(block_start, bool) and block_start >= 0
    if not ok:
        raise ValueError(
            f"block_start must be an int >= 0 or an integer tensor of [batch] entries, "
            f"got {block_start!r}"
        )


def select_commits(
    confidence: torch.Tensor,
    *,
    k: int | torch.Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
    block_length: int | None = None,
    block_start: int | torch.Tensor = 0,
) -> torch.Tensor:
    """Which positions to unmask this step: bool ``[B, L]``. Exactly one rule:

    - ``k`` (int or ``[B]`` tensor): the ``k`` most confident eligible positions per sequence;
    - ``threshold``: every eligible position with confidence >= threshold, and always at least
      the most confident one (Fast-dLLM);
    - ``factor`` ``f``: with confidences sorted ``c_(1) >= c_(2) >= ...``, the largest ``n`` with
      ``c_(n) >= 1 - f / (n + 1)``, at least 1.

    ``block_length`` first restricts eligibility to the active semi-autoregressive block (see
    :func:`restrict_to_block`; blocks aligned at ``block_start``, an int or ``[B]``).
    Sequences with no eligible position commit nothing.
    """
    checks.floating("confidence", confidence)
    checks.same_device(confidence=confidence)
    if confidence.dim() != 2:
        raise ValueError(
            f"confidence must have shape [batch, length], got {tuple(confidence.shape)}"
        )
    if sum(r is not None for r in (k, threshold, factor)) != 1:
        raise ValueError("pass exactly one commit rule: k, threshold or factor")
    for name, rule in (("threshold", threshold), ("factor", factor)):
        if rule is not None:
            if isinstance(rule, bool) or not isinstance(rule, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(rule).__name__}")
            if math.isnan(rule):
                raise ValueError(f"{name} must be a number, got NaN")
    if checks.value_checks_enabled() and bool(torch.isnan(confidence).any()):
        raise ValueError("confidence contains NaN (use -inf for positions that may not commit)")
    # with value checks off, NaN is treated as not eligible rather than sorting first
    confidence = torch.where(torch.isnan(confidence), -torch.inf, confidence)
    if block_length is not None:
        if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        _check_block_start(block_start, confidence.shape[0])
        confidence = restrict_to_block(confidence, block_length, block_start=block_start)
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


REMASKING = ("low_confidence", "random")
"""Which proposals commit first: the most confident (``confidence``), or uniformly random
ones (LLaDA's ``remasking`` names)."""


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
    remasking: str = "low_confidence",
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """One confidence-unmasking step on ``x_t [B, L]`` with the logits ``model_output
    [B, L, V]``: propose with :func:`fastdiff.updates.unmask_candidates`, choose with
    :func:`select_commits`, and write the committed proposals. Returns the new tokens
    ``[B, L]``.

    ``block_length`` blocks start at each row's first non-fixed position
    (:func:`generation_start`; position 0 without ``fixed``). ``remasking="random"`` ranks the
    proposals by a uniform draw (:func:`random_confidence`, stream ``offset + 1``) instead of
    their ``confidence``; it needs the ``k`` rule.
    """
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if remasking == "random" and k is None:
        raise ValueError("remasking='random' needs the k rule (not threshold / factor)")
    # one key for the proposals (stream offset) and the random ranks (offset + 1)
    checks.offset(offset)
    seed = frandom.resolve_seed(seed, generator, checks.tokens("x_t", x_t).device)
    xhat, conf = unmask_candidates(
        model_output,
        x_t,
        mask_id=mask_id,
        temperature=temperature,
        confidence=confidence,
        fixed=fixed,
        seed=seed,
        offset=offset,
    )
    if remasking == "random":
        # the counter wraps as the Philox offset words do
        conf = random_confidence(conf, seed=seed, offset=(offset + 1) % checks.OFFSET_LIMIT)
    start = 0 if fixed is None or block_length is None else generation_start(fixed)
    commit = select_commits(
        conf, k=k, threshold=threshold, factor=factor, block_length=block_length, block_start=start
    )
    return torch.where(commit, xhat, x_t.long())
