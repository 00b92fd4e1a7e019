"""LLaDA's ``generate`` (Nie et al. 2025, semi-autoregressive confidence remasking) with
LLaDA's argument names and meanings, run by fastdiff's confidence sampler.

``x = [prompt, gen_length masks]``; the generated part is split into
``gen_length / block_length`` blocks, counted from the first generated position (the prompt
length), filled left to right with ``steps / num_blocks`` steps each. At each step the model
gives logits ``[B, L, V]`` (with ``cfg_scale = w > 0``: ``u + (w + 1)(c - u)``, ``u`` the
logits of ``x`` with its prompt masked, both rows in one model call on a doubled batch); every
masked position of the current block gets a proposal ``x0`` (argmax, or a Gumbel draw at
``temperature``) and a confidence (``"low_confidence"``: the probability of ``x0``;
``"random"``: a uniform draw); the block's ``M`` masked positions are committed
``M // s + [j < M % s]`` at its step ``j`` of ``s``, the most confident first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fastdiff import checks
from fastdiff.samplers.api import ENGINES, sample
from fastdiff.samplers.base import prefix_mask
from fastdiff.unmasking import REMASKING


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _model_vocab_size(model: Callable) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None:
        raise ValueError(
            "vocab_size is needed (the size of the model's last output dimension): pass it, "
            "or give a model with config.vocab_size"
        )
    return size


def generate(
    model: Callable,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    mask_id: int,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    eos_id: int | None = None,
    eot_id: int | None = None,
    vocab_size: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    loop: str = "auto",
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after ``prompt`` as LLaDA's ``generate`` does.

    Greedy runs (``temperature = 0``, ``remasking="low_confidence"``) give LLaDA's tokens for
    the same model, prompt and settings, whatever the prompt length; the model is called
    ``steps`` times (with ``cfg_scale > 0`` too: one call on ``2B`` rows per step, as LLaDA),
    fewer only when ``steps > gen_length`` leaves nothing masked before the last steps.

    fastdiff's proposals and probabilities leave out the mask token (``softmax`` over
    ``j != mask_id``), where LLaDA's include it: the two agree when the model gives the mask
    token no probability, as a trained mask predictor does to within its precision. fastdiff
    ranks the probabilities in float64 (float32 in the GPU kernel), ties leftmost first;
    LLaDA's code computes them in the logits' dtype, so with bfloat16 logits its confidences
    tie often and ``torch.topk`` breaks those ties in no set order: there the two can differ.

    Args:
        model: ``model(x) -> logits [B', L, V]`` for token ids ``x [B', L]`` int64 (called as
            ``model(x, attention_mask=mask)`` when ``attention_mask`` is given), or a model
            returning an object with ``.logits`` (a Hugging Face LLaDA model).
        prompt: token ids ``[B, P]`` (int64 or int32), without ``mask_id``; left padding is
            part of the prompt (pass ``attention_mask`` for it).
        attention_mask: optional ``[B, P]``, extended with ones over the generated part
            (doubled with the batch for ``cfg_scale > 0``).
        mask_id: the mask token (LLaDA's is 126336).
        steps: model calls; a multiple of ``gen_length // block_length``.
        gen_length: tokens to generate; a multiple of ``block_length``.
        block_length: semi-autoregressive block length (``gen_length``: one block).
        temperature: 0 for argmax proposals, else Gumbel-max draws from ``softmax(l / T)``
            (fastdiff's counter-based randomness: LLaDA's distribution, not its numbers).
        cfg_scale: LLaDA's unsupervised classifier-free guidance ``w >= 0``
            (``u + (w + 1)(c - u)``; 0 = none).
        remasking: ``"low_confidence"`` or ``"random"`` (which proposals commit first).
        logits_eos_inf: never propose ``eos_id`` (its logit is ``-inf``; the probabilities are
            renormalized over the other tokens).
        confidence_eos_eot_inf: proposals equal to ``eos_id`` or ``eot_id`` commit after every
            other proposal of the step (the lowest confidence; leftmost first among them),
            when the step's quota reaches them (LLaDA, Appendix B.4).
        eos_id, eot_id: the end-of-sequence / end-of-turn ids of those options (LLaDA's are
            126081 and 126348).
        vocab_size: the model's output size ``V`` (default ``model.config.vocab_size``).
        seed, generator: randomness of ``temperature > 0`` and ``remasking="random"``.
        loop: the step-loop engine, as in :func:`fastdiff.sample`.

    Returns the tokens ``[B, P + gen_length]`` int64: the prompt, then the generated tokens.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    prompt = checks.tokens("prompt", prompt)
    if prompt.dim() != 2 or prompt.shape[0] < 1:
        raise ValueError(f"prompt must have shape [batch, length], got {tuple(prompt.shape)}")
    steps = _positive_int("steps", steps)
    gen_length = _positive_int("gen_length", gen_length)
    block_length = _positive_int("block_length", block_length)
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps ({steps}) must be a multiple of the number of blocks "
            f"(gen_length // block_length = {num_blocks})"
        )
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
        raise TypeError(f"cfg_scale must be a number, got {type(cfg_scale).__name__}")
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be finite and >= 0, got {cfg_scale!r}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if loop not in ENGINES:
        raise ValueError(f"loop must be one of {ENGINES}, got {loop!r}")
    vocab_size = checks.vocab_size(
        _model_vocab_size(model) if vocab_size is None else vocab_size, minimum=2
    )
    checks.mask_id(mask_id, vocab_size)
    checks.token_range("prompt", prompt, vocab_size)
    if prompt.numel() and bool((prompt == mask_id).any()):
        raise ValueError(f"prompt holds the mask token {mask_id}: the prompt must be given")
    batch, prompt_length = prompt.shape
    length = prompt_length + gen_length
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError("attention_mask must be a torch.Tensor")
        if tuple(attention_mask.shape) != tuple(prompt.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{tuple(prompt.shape)} (the prompt's)"
            )
        checks.same_device(prompt=prompt, attention_mask=attention_mask)
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones((batch, gen_length))], dim=1
        )
    device = prompt.device
    x = torch.cat([prompt, prompt.new_full((batch, gen_length), mask_id)], dim=1)
    fixed = prefix_mask((batch, length), prompt_length, device=device)

    def logits(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = model(ids) if mask is None else model(ids, attention_mask=mask)
        return getattr(out, "logits", out)

    if cfg_scale == 0:

        def denoiser(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return logits(x_t, attention_mask)

    else:
        mask2 = None if attention_mask is None else torch.cat([attention_mask, attention_mask])

        def denoiser(x_t: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            # the unconditional rows (cond False) see the prompt masked
            drop = ~cond[:, None] & fixed[:1]
            return logits(x_t.masked_fill(drop, mask_id), mask2)

    return sample(
        denoiser,
        (batch, length),
        method="confidence",
        steps=steps,
        vocab_size=vocab_size,
        mask_id=mask_id,
        init=x,
        fixed=fixed,
        guidance_scale=cfg_scale + 1.0,
        uncond="batch" if cfg_scale > 0 else None,
        seed=seed,
        generator=generator,
        loop=loop,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        logits_eos_inf=logits_eos_inf,
        confidence_eos_eot_inf=confidence_eos_eot_inf,
        eos_id=eos_id,
        eot_id=eot_id,
    )
