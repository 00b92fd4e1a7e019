"""Confidence-based unmasking (MaskGIT / LLaDA / Fast-dLLM, ops.md 4d) as a scheduler.

Each step proposes a token for every masked, non-fixed position
(:func:`fastdiff.unmask_candidates`: argmax, or a Gumbel draw at ``temperature``, with its
confidence) and commits some of them (:func:`fastdiff.unmasking.select_commits`):

- quota (default): at step ``i`` of ``S``, ``k = ceil(R / (S - i))`` where ``R`` is the number
  of masked positions left; this is exactly LLaDA's schedule ``M // S`` per step with the
  remainder ``M % S`` given to the first steps, and it unmasks everything by the last step.
  With ``block_length`` (semi-autoregressive, LLaDA), the ``n_blocks = ceil(L / block_length)``
  blocks get ``S / n_blocks`` steps each (``S`` must be a multiple), left to right, and the
  quota is computed within the current block;
- ``threshold``: every position with confidence >= threshold, at least the best one;
- ``factor``: the largest ``n`` with ``c_(n) >= 1 - factor / (n + 1)``, at least one.
  With these two rules ``steps`` is an upper bound (the loop stops once nothing is masked),
  ``block_length`` restricts commits to the leftmost block with masked positions, and the last
  step commits every position still masked.

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
from fastdiff.unmasking import select_commits
from fastdiff.updates import CONFIDENCES, unmask_candidates


class ConfidenceScheduler(MDLMScheduler):
    """Confidence unmasking with the quota, threshold or factor rule (module docstring)."""

    OPTIONS = ("threshold", "factor", "block_length", "temperature", "confidence")

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
        self.threshold, self.factor, self.block_length = threshold, factor, block_length
        self.temperature = checks.temperature(temperature)
        self.confidence = confidence

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

    def _check_blocks(self, length: int) -> None:
        if self.block_length is None or self.threshold is not None or self.factor is not None:
            return
        blocks = -(-length // self.block_length)
        if self.num_inference_steps % blocks:
            raise ValueError(
                f"steps ({self.num_inference_steps}) must be a multiple of the number of "
                f"blocks ({blocks} blocks of {self.block_length} in length {length})"
            )

    def commits(
        self,
        conf: torch.Tensor,
        x: torch.Tensor,
        fixed: torch.Tensor | None,
        i: int | torch.Tensor,
    ) -> torch.Tensor:
        """bool ``[B, L]``: the positions committed at step ``i`` (an int, or a 0-d int64
        tensor during CUDA-graph replay: tensor ops only) given the confidences."""
        steps = self.num_inference_steps
        length = x.shape[-1]
        if self.threshold is None and self.factor is None:
            masked = x == self.mask_id
            if fixed is not None:
                masked &= ~fixed
            left = steps - i
            if self.block_length is not None:
                per_block = steps // -(-length // self.block_length)
                block = torch.arange(length, device=x.device) // self.block_length
                inside = block == i // per_block
                masked &= inside
                conf = torch.where(inside, conf, torch.full_like(conf, -torch.inf))
                left = per_block - i % per_block
            remaining = masked.sum(-1)
            return select_commits(conf, k=(remaining + left - 1) // left)
        rule = select_commits(
            conf, threshold=self.threshold, factor=self.factor, block_length=self.block_length
        )
        last = i == steps - 1
        if isinstance(last, torch.Tensor):
            return torch.where(last, conf > -torch.inf, rule)
        return conf > -torch.inf if last else rule

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """Propose at every masked position, commit by the rule (module docstring)."""
        i = self.index_for(timestep)
        if sample.dim() != 2:
            raise ValueError(f"sample must have shape [batch, length], got {tuple(sample.shape)}")
        self._check_blocks(sample.shape[-1])
        fixed = checks.bool_mask("fixed", fixed, sample.shape)
        xhat, conf = unmask_candidates(
            model_output,
            sample,
            mask_id=self.mask_id,
            temperature=self.temperature,
            confidence=self.confidence,
            fixed=fixed,
            seed=step_seed(i, seed, generator, sample.device),
        )
        commit = self.commits(conf, sample, fixed, i)
        return SchedulerOutput(torch.where(commit, xhat, sample.long()))

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        self._check_blocks(x.shape[-1])
        impl = backend.resolve("unmask_candidates", ref.unmask_candidates, x.device)
        n, shape, v, m = x.numel(), x.shape, self.vocab_size, self.mask_id
        ffixed = None if fixed is None else fixed.reshape(-1)
        temperature, confidence = self.temperature, self.confidence

        def apply(out, x, key, values, i):
            s = scores_view(out, shape, v)
            xhat, conf = impl(s, x.reshape(n), ffixed, key, 0, m, temperature, confidence)
            commit = self.commits(conf.reshape(shape), x, fixed, i)
            return torch.where(commit, xhat.reshape(shape), x)

        return make_step_loop(apply, ts.to(x.device), {}, seed, fixed=fixed, mask_id=m)
