"""Confidence-based unmasking (MaskGIT / LLaDA / Fast-dLLM,
docs/ops.md#confidence-unmasking) as a scheduler.

Each step proposes a token for every masked, non-fixed position
(:func:`fastdiff.unmask_candidates`: argmax, or a Gumbel draw at ``temperature``, with its
confidence) and commits some of them (:func:`fastdiff.unmasking.select_commits`):

- quota (default): at step ``i`` of ``S``, ``k = ceil(R / (S - i))`` where ``R`` is the number
  of masked positions left; this is exactly LLaDA's schedule ``M // S`` per step with the
  remainder ``M % S`` given to the first steps, and it unmasks everything by the last step.
  With ``block_length`` (semi-autoregressive, LLaDA), blocks of ``block_length`` positions are
  counted from each row's first generated position ``g`` (its first non-fixed position, 0
  without ``fixed``; LLaDA's prompt length), the row's ``n_blocks = ceil((L - g) /
  block_length)`` blocks get ``S / n_blocks`` steps each (``S`` must be a multiple of every
  row's ``n_blocks``), left to right, and the quota is computed within the current block:
  LLaDA's tokens and model calls for a prompt of any length;
- ``threshold``: every position with confidence >= threshold, at least the best one;
- ``factor``: the largest ``n`` with ``c_(n) >= 1 - factor / (n + 1)``, at least one.
  With these two rules ``steps`` is an upper bound (the loop stops once nothing is masked),
  ``block_length`` restricts commits to the leftmost block with masked positions, and the last
  step commits every position still masked.

Ranking (LLaDA's options): ``remasking="low_confidence"`` (default) ranks the proposals by
``confidence``; ``"random"`` by a uniform draw (:func:`fastdiff.unmasking.random_confidence`,
quota rule only). ``logits_eos_inf`` never proposes ``eos_id`` (its logit set to ``-inf``, an
out-of-place copy of the model output); ``confidence_eos_eot_inf`` ranks proposals equal to
``eos_id`` / ``eot_id`` after every other one (the lowest finite confidence; leftmost first
among them), so they commit only when the step's quota reaches them.

The denoiser returns logits ``[B, L, V]``; it receives ``sigma(t_i)`` of the schedule (default
log-linear) on the grid ``t_i = 1 - i / steps`` (most such models ignore it; ``cache=True`` then
reuses outputs). The update never uses ``sigma``, so any schedule works, ``LinearAlpha()`` and
``CosineAlpha()`` included: where ``sigma(1) = inf`` the first step's time input is
``sigma(1 - 2^-53)`` instead (finite: about 36.7 for ``LinearAlpha``), the largest noise level a
float64 time below 1 gives.
"""

from __future__ import annotations

import torch

from fastdiff import backend, checks
from fastdiff.reference import updates as ref
from fastdiff.samplers.base import SchedulerOutput, check_steps, make_step_loop, step_seed
from fastdiff.samplers.discrete import F64, MDLMScheduler, scores_view
from fastdiff.samplers.loop import StepLoop
from fastdiff.schedules import NoiseSchedule
from fastdiff.unmasking import (
    REMASKING,
    block_index,
    generation_start,
    random_confidence,
    select_commits,
)
from fastdiff.updates import CONFIDENCES, unmask_candidates


class ConfidenceScheduler(MDLMScheduler):
    """Confidence unmasking with the quota, threshold or factor rule (module docstring)."""

    OPTIONS = (
        "threshold",
        "factor",
        "block_length",
        "temperature",
        "confidence",
        "remasking",
        "logits_eos_inf",
        "confidence_eos_eot_inf",
        "eos_id",
        "eot_id",
    )

    def __init__(
        self,
        vocab_size: int,
        *,
        mask_id: int,
        schedule: NoiseSchedule | None = None,
        threshold: float | None = None,
        factor: float | None = None,
        block_length: int | None = None,
        temperature: float = 0.0,
        confidence: str = "prob",
        remasking: str = "low_confidence",
        logits_eos_inf: bool = False,
        confidence_eos_eot_inf: bool = False,
        eos_id: int | None = None,
        eot_id: int | None = None,
    ) -> None:
        super().__init__(vocab_size, mask_id=mask_id, schedule=schedule)
        if threshold is not None and factor is not None:
            raise ValueError("pass at most one of threshold and factor (none: the step quota)")
        for name, v in (("threshold", threshold), ("factor", factor)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"{name} must be a number, got {type(v).__name__}")
        if factor is not None and not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        if block_length is not None and (
            isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1
        ):
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
        if remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
        if remasking == "random" and (threshold is not None or factor is not None):
            raise ValueError(
                "remasking='random' works with the step quota only (no threshold / factor)"
            )
        for name, flag in (
            ("logits_eos_inf", logits_eos_inf),
            ("confidence_eos_eot_inf", confidence_eos_eot_inf),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        for name, token in (("eos_id", eos_id), ("eot_id", eot_id)):
            if token is None:
                continue
            if isinstance(token, bool) or not isinstance(token, int):
                raise TypeError(f"{name} must be an int, got {type(token).__name__}")
            if not 0 <= token < self.vocab_size or token == self.mask_id:
                raise ValueError(
                    f"{name} {token} must be a token of [0, {self.vocab_size}) other than mask_id"
                )
        if logits_eos_inf and eos_id is None:
            raise ValueError("logits_eos_inf needs eos_id")
        if confidence_eos_eot_inf and eos_id is None and eot_id is None:
            raise ValueError("confidence_eos_eot_inf needs eos_id or eot_id")
        self.threshold, self.factor, self.block_length = threshold, factor, block_length
        self.temperature = checks.temperature(temperature)
        self.confidence, self.remasking = confidence, remasking
        self.banned_id = eos_id if logits_eos_inf else None
        """The token never proposed (``logits_eos_inf``), or None."""
        self.last_ids = tuple(
            t for t in (eos_id, eot_id) if t is not None and confidence_eos_eot_inf
        )
        """Tokens whose proposals rank last (``confidence_eos_eot_inf``)."""

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """``sigma(t_i)``, ``t_i = 1 - i / steps`` (the model input only); a non-finite
        ``sigma(1)`` is replaced by ``sigma(1 - 2^-53)`` (module docstring)."""
        steps = check_steps(num_steps)
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=F64, device=device)
        sigma = self.schedule.sigma(t)
        if not bool(torch.isfinite(sigma[0])):
            below_one = torch.nextafter(t[:1], t.new_zeros(1))
            sigma = torch.cat([self.schedule.sigma(below_one), sigma[1:]])
        if not bool(torch.isfinite(sigma[:-1]).all()):
            raise ValueError("the schedule gives a non-finite sigma on the confidence time grid")
        self._sigma = sigma
        self.num_inference_steps = steps
        self._set(sigma[:-1])

    def _blocks(
        self, fixed: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, blocks)``, ``[B]`` int64 each: every row's first generated position and
        its number of blocks ``ceil((L - start) / block_length)``, at least 1 (tensor ops)."""
        batch, length = x.shape
        if fixed is None:
            start = torch.zeros(batch, dtype=torch.int64, device=x.device)
        else:
            start = generation_start(fixed)
        blocks = -torch.div(start - length, self.block_length, rounding_mode="floor")
        return start, torch.clamp(blocks, min=1)

    def _check_blocks(self, fixed: torch.Tensor | None, x: torch.Tensor) -> None:
        """The quota rule with blocks: ``steps`` a multiple of every row's number of blocks."""
        if self.block_length is None or self.threshold is not None or self.factor is not None:
            return
        steps = self.num_inference_steps
        start, blocks = self._blocks(fixed, x)
        bad = (steps % blocks).nonzero()
        if bad.numel():
            row = int(bad[0, 0])
            raise ValueError(
                f"steps ({steps}) must be a multiple of the number of blocks ({int(blocks[row])}"
                f" blocks of {self.block_length} from the first generated position "
                f"{int(start[row])} to the length {x.shape[-1]}, row {row})"
            )

    def ranking(
        self, xhat: torch.Tensor, conf: torch.Tensor, seed: int | torch.Tensor
    ) -> torch.Tensor:
        """The values the commit rule ranks ``[B, L]``: the confidences, or uniform draws
        (``remasking="random"``, stream 1 of the step's ``seed``), with proposals of
        :attr:`last_ids` moved below every other eligible position."""
        if self.remasking == "random":
            conf = random_confidence(conf, seed=seed, offset=1)
        if self.last_ids:
            late = xhat == self.last_ids[0]
            for token in self.last_ids[1:]:
                late |= xhat == token
            late &= conf > -torch.inf
            conf = torch.where(late, torch.finfo(conf.dtype).min, conf)
        return conf

    def commits(
        self,
        conf: torch.Tensor,
        x: torch.Tensor,
        fixed: torch.Tensor | None,
        i: int | torch.Tensor,
    ) -> torch.Tensor:
        """bool ``[B, L]``: the positions committed at step ``i`` (an int, or a 0-d int64
        tensor during CUDA-graph replay: tensor ops only) given the ranking values."""
        steps = self.num_inference_steps
        length = x.shape[-1]
        start = 0
        if self.block_length is not None:
            start, blocks = self._blocks(fixed, x)
            per_block = steps // blocks
        if self.threshold is None and self.factor is None:
            masked = x == self.mask_id
            if fixed is not None:
                masked &= ~fixed
            left = steps - i
            if self.block_length is not None:
                block = block_index(length, self.block_length, start, x.device)
                inside = block == (i // per_block)[:, None]
                masked &= inside
                conf = torch.where(inside, conf, torch.full_like(conf, -torch.inf))
                left = per_block - i % per_block
            remaining = masked.sum(-1)
            return select_commits(conf, k=(remaining + left - 1) // left)
        rule = select_commits(
            conf,
            threshold=self.threshold,
            factor=self.factor,
            block_length=self.block_length,
            block_start=start,
        )
        last = i == steps - 1
        if isinstance(last, torch.Tensor):
            return torch.where(last, conf > -torch.inf, rule)
        return conf > -torch.inf if last else rule

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """Propose at every masked position, commit by the rule (module docstring)."""
        i = self.index_for(timestep)
        if not isinstance(sample, torch.Tensor) or sample.dim() != 2:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample)
            raise ValueError(f"sample must be tokens of shape [batch, length], got {shape}")
        fixed = checks.bool_mask("fixed", fixed, sample.shape)
        self._check_blocks(fixed, sample)
        if self.banned_id is not None:
            checks.floating("model_output", model_output, min_dim=1)
            banned = torch.tensor([self.banned_id], device=model_output.device)
            model_output = model_output.index_fill(-1, banned, -torch.inf)
        key = step_seed(i, seed, generator, sample.device)
        xhat, conf = unmask_candidates(
            model_output,
            sample,
            mask_id=self.mask_id,
            temperature=self.temperature,
            confidence=self.confidence,
            fixed=fixed,
            seed=key,
        )
        commit = self.commits(self.ranking(xhat, conf, key), sample, fixed, i)
        return SchedulerOutput(torch.where(commit, xhat, sample.long()))

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        self._check_blocks(fixed, x)
        impl = backend.resolve("unmask_candidates", ref.unmask_candidates, x.device)
        n, shape, v, m = x.numel(), x.shape, self.vocab_size, self.mask_id
        ffixed = None if fixed is None else fixed.reshape(-1)
        temperature, confidence = self.temperature, self.confidence
        banned = None
        if self.banned_id is not None:
            banned = torch.tensor([self.banned_id], device=x.device)

        def apply(out, x, key, values, i):
            s = scores_view(out, shape, v)
            if banned is not None:
                s = s.index_fill(1, banned, -torch.inf)
            xhat, conf = impl(s, x.reshape(n), ffixed, key, 0, m, temperature, confidence)
            xhat = xhat.reshape(shape)
            commit = self.commits(self.ranking(xhat, conf.reshape(shape), key), x, fixed, i)
            return torch.where(commit, xhat, x)

        return make_step_loop(apply, ts.to(x.device), {}, seed, fixed=fixed, mask_id=m)
