"""Reference categorical sampling (ops.md section 5) on flattened inputs.

The draw is the exponential race ``argmax_j w_j / E_j`` (equivalently Gumbel-max
``argmax_j log w_j + G_j``) with ``E_j`` from :func:`fastdiff.random.exponential`, keyed by
``(seed, offset, row, column)``: float64 noise with exact tails, the same numbers a Triton
kernel draws. Zero weights never win; ties go to the lowest index.
"""

from __future__ import annotations

import torch

from fastdiff import random as frandom

Seed = int | torch.Tensor

# noise elements drawn per chunk of the race (8 MiB of float64)
_RACE_CHUNK_ELEMENTS = 1 << 20


def race(
    log_weights: torch.Tensor,
    rows: torch.Tensor,
    seed: Seed,
    offset: int,
) -> torch.Tensor:
    """``argmax_j (log w_j - log E_j)`` per row of ``log_weights [n, V]`` (float64 inside).

    ``rows`` ``[n]`` are the global row indices that key the noise, so a subset of rows draws
    the same noise as the full tensor would. ``-inf`` entries never win. The noise is drawn and
    consumed in row chunks, so no ``[n, V]`` noise tensor exists at once.
    """
    n, vocab = log_weights.shape
    out = torch.empty(n, dtype=torch.int64, device=log_weights.device)
    step = max(1, _RACE_CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        keys = frandom.exponential(seed, offset, rows[chunk], vocab).log_().neg_()
        out[chunk] = keys.add_(log_weights[chunk].to(torch.float64)).argmax(-1)
    return out


def filter_logits(
    logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Set the logits of filtered-out tokens to ``-inf`` (``[n, V]``, returns a new tensor).

    Applied in order, each on the distribution left by the previous one:

    - ``top_k``: keep tokens whose logit is >= the k-th largest (ties at the boundary kept);
    - ``top_p``: keep tokens whose probability is >= ``tau``, the largest threshold whose kept
      set holds at least ``top_p`` of the mass (the smallest nucleus, ties kept);
    - ``min_p``: keep tokens with ``p_j >= min_p * max_k p_k``.
    """
    out = logits.clone()
    neg_inf = torch.tensor(-torch.inf, dtype=out.dtype, device=out.device)
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]
        out = torch.where(out >= kth, out, neg_inf)
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(out, dim=-1)
        sorted_p = torch.sort(probs, dim=-1, descending=True).values
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each entry
        # tau = the smallest kept probability: the last sorted entry whose preceding mass < top_p
        keep_sorted = before < top_p
        tau = torch.where(keep_sorted, sorted_p, torch.full_like(sorted_p, torch.inf)).amin(-1)
        out = torch.where(probs >= tau[:, None], out, neg_inf)
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(out, dim=-1)
        limit = min_p * probs.amax(-1, keepdim=True)
        out = torch.where(probs >= limit, out, neg_inf)
    return out


def sample_categorical(
    weights: torch.Tensor,
    is_log: bool,
    seed: Seed,
    offset: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    return_prob: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one index per row of ``weights [N, V]`` (unnormalized; log-weights if ``is_log``).

    ``temperature`` divides the log-weights (0 means argmax); filters as in
    :func:`filter_logits`. Returns ``(index [N] int64, prob [N] float32 or None)`` where
    ``prob`` is the chosen token's probability under the final filtered distribution.
    """
    lw = weights.to(torch.float64)
    if not is_log:
        lw = torch.log(lw)
    if temperature != 1.0 and temperature > 0.0:
        # shift by the (finite) row maximum first: l / T then cannot overflow to +-inf
        lw = (lw - lw.amax(-1, keepdim=True)) / temperature
    if top_k is not None or top_p is not None or min_p is not None:
        lw = filter_logits(lw, top_k, top_p, min_p)
    if temperature == 0.0:
        index = lw.argmax(-1)
    else:
        rows = torch.arange(lw.shape[0], device=lw.device)
        index = race(lw, rows, seed, offset)
    prob = None
    if return_prob:
        prob = torch.softmax(lw, -1).gather(-1, index[:, None]).squeeze(-1).float()
    return index, prob
