"""Reference categorical sampling (docs/ops.md#categorical-sampling) on flattened inputs.

The draw is the grouped exponential race of :mod:`fastdiff.random` (:func:`race`): for a
vocabulary of at most ``G = 256`` columns ``argmax_j w_j / E_j`` (equivalently Gumbel-max
``argmax_j log w_j + G_j``); for longer rows first a group ``g*`` by ``argmax_g W_g / E'_g``
over the group totals, then a column by the same race inside ``g*``, exactly ``Cat(w)``. The
noise is float64 with exact tails, keyed by ``(seed, offset, row, column)`` and ``(seed,
offset, row, group)``: the same numbers a Triton kernel draws. Zero weights never win; ties go
to the lowest group and the lowest index.
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
    stay: torch.Tensor | None = None,
) -> torch.Tensor:
    """The grouped exponential race per row of ``log_weights [n, V]`` (float64 inside).

    With ``G = RACE_GROUP`` (:mod:`fastdiff.random`):

    - ``V <= G``: ``argmax_j (log w_j - log E_j)``;
    - ``V > G``: ``g* = argmax_g (log W_g - log E'_g)`` with ``W_g = sum_{j in g} w_j`` over
      group ``g = [gG, (g + 1)G)`` (log-sum-exp with a per-group max; ``-inf`` if the group has
      no positive weight), ``E'_g`` from :func:`fastdiff.random.group_exponential`; then
      ``argmax_{j in g*} (log w_j - log E_j)``.

    ``E_j`` are the column exponentials of :func:`fastdiff.random.exponential`. Ties go to the
    lowest group and the lowest column. ``rows`` ``[n]`` are the global row indices that key the
    noise, so a subset of rows draws the same noise as the full tensor would. ``-inf`` entries
    never win; a row of only ``-inf`` returns 0.

    ``stay`` (``[n]`` column indices, optional) marks a *stay option* per row, as the reverse
    updates race it: when ``V > G`` the column ``stay_i`` is taken out of its group and raced on
    its own, key ``log w_stay - log E_stay`` (its column noise), against the best group key; it
    wins only when strictly larger, otherwise the within-group race of ``g*`` picks the column.
    When ``V <= G`` the stay column is an ordinary column of the race.

    Rows are processed in chunks: no ``[n, V]`` noise tensor exists at once.
    """
    n, vocab = log_weights.shape
    if vocab > frandom.MAX_RACE_COLUMNS:
        raise ValueError(f"the race supports fewer than 2^31 columns, got {vocab}")
    out = torch.empty(n, dtype=torch.int64, device=log_weights.device)
    step = max(1, _RACE_CHUNK_ELEMENTS // max(vocab, 1))
    group = frandom.RACE_GROUP
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        lw = log_weights[chunk].to(torch.float64)
        if vocab <= group:
            keys = frandom.exponential(seed, offset, rows[chunk], vocab).log_().neg_()
            out[chunk] = keys.add_(lw).argmax(-1)
            continue
        out[chunk] = _grouped_race(
            lw, rows[chunk], seed, offset, None if stay is None else stay[chunk]
        )
    return out


def group_log_sums(log_weights: torch.Tensor) -> torch.Tensor:
    """``log W_g`` ``[n, ceil(V / G)]``: float64 log-sum-exp over each group of columns with a
    per-group max (``-inf`` for a group without a positive weight)."""
    n, vocab = log_weights.shape
    group = frandom.RACE_GROUP
    n_groups = -(-vocab // group)
    padded = torch.full(
        (n, n_groups * group), -torch.inf, dtype=torch.float64, device=log_weights.device
    )
    padded[:, :vocab] = log_weights
    padded = padded.view(n, n_groups, group)
    top = padded.amax(-1, keepdim=True)
    safe = torch.where(top == -torch.inf, torch.zeros_like(top), top)
    return (safe + torch.log(torch.exp(padded - safe).sum(-1, keepdim=True))).squeeze(-1)


def _grouped_race(
    lw: torch.Tensor, rows: torch.Tensor, seed: Seed, offset: int, stay: torch.Tensor | None
) -> torch.Tensor:
    vocab = lw.shape[1]
    group = frandom.RACE_GROUP
    if stay is not None:
        stay_lw = lw.gather(-1, stay[:, None]).squeeze(-1)
        lw = lw.scatter(-1, stay[:, None], -torch.inf)
    log_sums = group_log_sums(lw)
    group_keys = log_sums - torch.log(
        frandom.group_exponential(seed, offset, rows, log_sums.shape[1])
    )
    best_group = group_keys.argmax(-1)  # the first maximal index: the lowest group on ties
    best_key = group_keys.gather(-1, best_group[:, None]).squeeze(-1)
    cols = best_group[:, None] * group + torch.arange(group, device=lw.device)
    noise = frandom.exponential_span(seed, offset, rows, best_group * group, group)
    inside = cols < vocab
    cols = torch.where(inside, cols, 0)
    col_keys = lw.gather(-1, cols) - torch.log(noise)
    col_keys = torch.where(inside, col_keys, -torch.inf)
    drawn = cols.gather(-1, col_keys.argmax(-1, keepdim=True)).squeeze(-1)
    if stay is not None:
        stay_key = stay_lw - torch.log(
            frandom.exponential_at(seed, offset, rows, stay[:, None])[:, 0]
        )
        drawn = torch.where(stay_key > best_key, stay, drawn)
    return drawn


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
