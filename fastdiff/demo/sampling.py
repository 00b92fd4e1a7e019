"""The demo's sampling: unconditional sequences and infilling of held-out text, both with
:func:`fastdiff.samplers.sample` (``mdlm`` for the mdlm objective, ``sedd_analytic`` for the
SEDD ones, ``d3pm`` and ``ddpm`` for the discrete-time ones through the ``sample`` of their
:mod:`fastdiff.table.systems` row).

Infilling keeps the first and last quarter of a held-out window ``[B, L]`` (``fixed``
positions, passed with ``init``) and generates the middle half; the middle of ``init`` is the
mask token on the absorbing graph (mdlm, sedd, d3pm) and uniform random bytes on the uniform
graph. gaussian: ``init`` is the embeddings ``E[window] [B, L, H]``, kept clean at the fixed
positions at every DDPM step; the generated vectors are rounded to bytes by the decoder's
argmax.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from fastdiff.demo import corpus
from fastdiff.demo.objectives import AnyObjective, DiscreteTime, Objective
from fastdiff.samplers import sample
from fastdiff.samplers.base import infill_mask


def _draw(
    model: nn.Module,
    objective: AnyObjective,
    shape: tuple[int, int],
    steps: int,
    seed: int,
    progress: bool,
    windows: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(tokens [B, L], fixed [B, L] or None)``: unconditional samples, or with ``windows
    [B, L]`` their infilling (:func:`infill_start`'s ``fixed`` positions kept)."""
    if isinstance(objective, DiscreteTime):
        fixed = None if windows is None else _ends(windows)
        tokens = objective.system.sample(
            model, shape[0], seed, given=windows, fixed=fixed, progress=progress
        )
        return tokens, fixed
    init, fixed = (None, None) if windows is None else infill_start(objective, windows, seed)
    device = next(model.parameters()).device
    tokens = sample(
        objective.denoiser(model),
        shape,
        method=objective.sampler,
        steps=steps,
        vocab_size=objective.vocab_size,
        mask_id=objective.mask_id,
        graph=objective.graph,
        schedule=objective.schedule,
        init=init,
        fixed=fixed,
        seed=seed,
        progress=progress,
        device=device,
    )
    return tokens, fixed


def _ends(windows: Tensor) -> Tensor:
    """The fixed positions of ``windows [B, L]``: the first and last ``L // 4`` (bool)."""
    keep = windows.shape[1] // 4
    return infill_mask(tuple(windows.shape), prefix=keep, suffix=keep, device=windows.device)


def infill_start(objective: Objective, windows: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``(init, fixed)`` for infilling ``windows [B, L]``: the first and last ``L // 4``
    positions fixed, the middle masked (absorbing graph) or uniform random (uniform graph)."""
    fixed = _ends(windows)
    if objective.mask_id is not None:
        filler = torch.full_like(windows, objective.mask_id)
    else:
        gen = torch.Generator().manual_seed(seed)
        filler = torch.randint(0, objective.vocab_size, windows.shape, generator=gen)
        filler = filler.to(windows.device)
    return torch.where(fixed, windows, filler), fixed


@torch.no_grad()
def run(
    model: nn.Module,
    objective: AnyObjective,
    heldout: Tensor,
    s: dict,
    *,
    seed: int,
    progress: bool,
) -> dict:
    """Sample ``s["num_samples"]`` sequences of ``s["seq_len"]`` bytes unconditionally and
    infill as many held-out windows, with ``s["sample_steps"]`` steps.

    Returns ``{"unconditional": [text], "infill": [{"prefix", "middle", "suffix",
    "original_middle"}], "tokens": (unconditional [B, L], infilled [B, L]), "windows": the
    held-out windows ``[B, L]``, "fixed": ``[B, L]``, "seconds", "tokens_per_s"}`` (tokens per
    second of the unconditional run).
    """
    device = next(model.parameters()).device
    n, length, steps = s["num_samples"], s["seq_len"], s["sample_steps"]
    t0 = time.perf_counter()
    free, _ = _draw(model, objective, (n, length), steps, seed, progress)
    free_seconds = time.perf_counter() - t0
    windows = corpus.fixed_windows(heldout[length // 2 :], n, length).to(device)
    filled, fixed = _draw(model, objective, (n, length), steps, seed + 1, progress, windows)
    keep = length // 4
    infill = [
        {
            "prefix": corpus.decode(row[:keep]),
            "middle": corpus.decode(row[keep : length - keep]),
            "suffix": corpus.decode(row[length - keep :]),
            "original_middle": corpus.decode(orig[keep : length - keep]),
        }
        for row, orig in zip(filled.cpu(), windows.cpu())
    ]
    return {
        "unconditional": [corpus.decode(row) for row in free.cpu()],
        "infill": infill,
        "tokens": (free, filled),
        "windows": windows,
        "fixed": fixed,
        "seconds": time.perf_counter() - t0,
        "tokens_per_s": n * length / free_seconds,
    }
