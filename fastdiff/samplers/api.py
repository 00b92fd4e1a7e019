"""One-call sampling: :func:`sample` builds a scheduler, its start state and its
:class:`~fastdiff.samplers.loop.StepLoop` (:func:`build_loop`), wraps the denoiser for
classifier-free guidance (:func:`guided_denoiser`) and runs the step loop
(:func:`~fastdiff.samplers.loop.run_loop`, the C++ engine when the extension is built).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastdiff.gaussian import classifier_free_guidance
from fastdiff.samplers.base import Scheduler, check_steps, resolve_run_seed
from fastdiff.samplers.confidence import ConfidenceScheduler
from fastdiff.samplers.discrete import (
    D3PMScheduler,
    MDLMScheduler,
    SEDDAnalyticScheduler,
    SEDDEulerScheduler,
)
from fastdiff.samplers.gaussian import DDIMScheduler, DDPMScheduler
from fastdiff.samplers.loop import StepLoop, run_loop

SCHEDULERS: dict[str, type[Scheduler]] = {
    "sedd_euler": SEDDEulerScheduler,
    "sedd_analytic": SEDDAnalyticScheduler,
    "mdlm": MDLMScheduler,
    "confidence": ConfidenceScheduler,
    "d3pm": D3PMScheduler,
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
}
METHODS = tuple(SCHEDULERS)
GAUSSIAN_METHODS = ("ddpm", "ddim")
CACHEABLE_METHODS = ("mdlm", "confidence", "d3pm")
"""Methods whose denoiser predicts ``x0`` logits, which a model that ignores the time gives
unchanged for an unchanged sequence (SEDD scores and Gaussian outputs depend on the time)."""
ENGINES = ("auto", "python", "cpp", "cuda_graph")


@dataclass
class SampleOutput:
    """What :func:`sample` returns with ``return_trajectory=True``."""

    tokens: torch.Tensor
    """The final tokens ``[B, L]`` (the final state ``[B, L, H]`` for ddpm / ddim)."""
    trajectory: list[torch.Tensor] | None
    """The state after every step (as recorded by the step loop)."""
    steps_run: int
    """Steps taken (fewer than ``steps`` after an early exit: nothing left masked)."""
    denoiser_calls: int
    """Calls of the (guided) denoiser; cached outputs save calls."""


def make_scheduler(
    method: str,
    *,
    vocab_size: int | None = None,
    mask_id: int | None = None,
    graph: str = "absorb",
    schedule=None,
    **options,
) -> Scheduler:
    """The scheduler of ``method`` (one of :data:`METHODS`) with its method options.

    sedd_euler / sedd_analytic: ``eps`` (last time, 1e-5), ``denoise`` (final denoise, True);
    confidence: ``threshold`` / ``factor`` / ``block_length`` / ``temperature`` / ``confidence``
    / ``remasking`` / ``logits_eos_inf`` / ``confidence_eos_eot_inf`` / ``eos_id`` / ``eot_id``;
    ddpm / ddim: the arguments of :class:`~fastdiff.samplers.gaussian.DDPMScheduler` /
    :class:`~fastdiff.samplers.gaussian.DDIMScheduler` (diffusers' names: ``prediction_type``,
    ``variance_type``, ``clip_sample``, ``timestep_spacing``, ..., and DDIM's ``eta``) with
    ``convention="fastdiff"`` unless given; mdlm, d3pm: none.
    ``schedule``: a :class:`~fastdiff.schedules.NoiseSchedule` (SEDD / MDLM / confidence,
    default ``LogLinear()``), a :class:`~fastdiff.transitions.TransitionSchedule` (d3pm,
    required) or a :class:`~fastdiff.schedules.GaussianSchedule` (ddpm / ddim, default
    ``GaussianSchedule.linear(1000)``).
    """
    if method not in SCHEDULERS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    cls = SCHEDULERS[method]
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; accepted: {list(cls.OPTIONS)}"
        )
    if method in GAUSSIAN_METHODS:
        options.setdefault("convention", "fastdiff")
        return cls(schedule=schedule, **options)
    if method == "d3pm":
        if schedule is None:
            raise ValueError("d3pm needs schedule=fastdiff.transitions.TransitionSchedule")
        if vocab_size is not None and vocab_size != schedule.vocab_size:
            raise ValueError(
                f"vocab_size {vocab_size} differs from the transition matrices' "
                f"{schedule.vocab_size}"
            )
        return cls(schedule, mask_id=mask_id)
    if vocab_size is None:
        raise ValueError(f"method {method!r} needs vocab_size")
    if method.startswith("sedd"):
        return cls(vocab_size, mask_id=mask_id, graph=graph, schedule=schedule, **options)
    return cls(vocab_size, mask_id=mask_id, schedule=schedule, **options)


def build_loop(
    method: str,
    shape,
    *,
    steps: int,
    vocab_size: int | None = None,
    mask_id: int | None = None,
    graph: str = "absorb",
    schedule=None,
    init: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    cache: bool = False,
    device: torch.device | str | None = None,
    **method_options,
) -> tuple[torch.Tensor, StepLoop]:
    """The start state and the :class:`StepLoop` of a sampling run (arguments as in
    :func:`sample`): ``run_loop(denoiser, x, loop)`` then performs it. Every argument check
    happens here; the loop's closures call the resolved op implementations directly."""
    check_steps(steps)
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {type(cache).__name__}")
    if cache and method not in CACHEABLE_METHODS:
        raise ValueError(
            f"cache=True needs a denoiser output that does not depend on the time: only for "
            f"{CACHEABLE_METHODS} (with a model that ignores its time input), not {method!r}"
        )
    sched = make_scheduler(
        method,
        vocab_size=vocab_size,
        mask_id=mask_id,
        graph=graph,
        schedule=schedule,
        **method_options,
    )
    if device is None:
        device = init.device if isinstance(init, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    key = resolve_run_seed(seed, generator, device)
    x, kept = sched.start(shape, init=init, fixed=fixed, seed=key, device=device)
    sched.set_timesteps(steps, device)
    loop = sched.step_loop(x, seed=key, fixed=kept)
    loop.cache = cache
    return x, loop


def guided_denoiser(denoiser: Callable, uncond, guidance_scale: float) -> Callable:
    """The denoiser with classifier-free guidance ``out = u + s (c - u)``
    (docs/ops.md#classifier-free-guidance; logit / log-score space for discrete models, eps /
    x0 space for Gaussian ones), ``s = guidance_scale`` in diffusers' convention (1 = no
    guidance):

    - ``uncond`` a callable: a second (unconditional) denoiser with the same signature; two
      calls per step, ``c = denoiser(x, t)``, ``u = uncond(x, t)``;
    - ``uncond="batch"``: one call on the doubled batch,
      ``denoiser(cat([x, x]), cat([t, t]), cond=flag)`` with ``flag`` bool ``[2B]``, True for the
      first ``B`` rows (conditional) and False for the last ``B`` (unconditional); ``c`` and
      ``u`` are the two halves of the output.

    ``s = 1`` returns ``denoiser`` itself (no unconditional call). Entries equal in ``c`` and
    ``u`` are returned unchanged, so an ``uncond`` identical to ``denoiser`` changes nothing.
    """
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    batch = isinstance(uncond, str) and uncond == "batch"
    if uncond is not None and not (batch or callable(uncond)):
        raise ValueError(f"uncond must be a denoiser (callable) or 'batch', got {uncond!r}")
    if guidance_scale == 1.0:
        return denoiser
    if uncond is None:
        raise ValueError("guidance_scale != 1 needs uncond (a denoiser or 'batch')")
    s = float(guidance_scale)
    if batch:

        def doubled(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            flag = torch.arange(2 * b, device=x.device) < b
            out = denoiser(torch.cat([x, x]), torch.cat([t, t]), cond=flag)
            return classifier_free_guidance(out[:b], out[b:], guidance_scale=s)

        return doubled

    def pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return classifier_free_guidance(denoiser(x, t), uncond(x, t), guidance_scale=s)

    return pair


def sample(
    denoiser,
    shape,
    *,
    method: str,
    steps: int,
    vocab_size: int | None = None,
    mask_id: int | None = None,
    graph: str = "absorb",
    schedule=None,
    init=None,
    fixed=None,
    guidance_scale: float = 1.0,
    uncond=None,
    seed: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback=None,
    return_trajectory: bool = False,
    loop: str = "auto",
    cache: bool = False,
    check_every: int = 1,
    device=None,
    **method_options,
) -> torch.Tensor | SampleOutput:
    """Sample from a diffusion model in one call.

    Args:
        denoiser: discrete methods: ``denoiser(x_t [B, L] int64, sigma [B]) -> [B, L, V]``,
            log-scores for ``sedd_*``, logits for ``mdlm`` / ``confidence`` and ``x0`` logits
            for ``d3pm`` (whose time input is the step ``t`` as a float); Gaussian methods:
            ``denoiser(x_t [B, L, H], t [B]) -> eps`` (``x0`` with
            ``prediction_type="sample"``), ``t`` the 0-based schedule index.
        shape: ``(B, L)`` (discrete) or ``(B, L, H)`` (Gaussian).
        method: one of ``"sedd_euler"``, ``"sedd_analytic"``, ``"mdlm"``, ``"confidence"``,
            ``"d3pm"``, ``"ddpm"``, ``"ddim"``.
        steps: number of reverse steps (>= 1; for confidence with a threshold / factor rule,
            an upper bound).
        vocab_size, mask_id, graph: the vocabulary (mask token at any index), and the SEDD
            graph (``"absorb"`` or ``"uniform"``).
        schedule: see :func:`make_scheduler` (default log-linear for SEDD / MDLM).
        init, fixed: start tokens (or state) and bool ``[B, L]`` positions of ``init`` kept
            through every step (prefix, suffix or any infill pattern, see
            :func:`~fastdiff.samplers.base.prefix_mask` / ``infill_mask``). Without ``fixed``,
            every non-``mask_id`` position of ``init`` is kept. ``fixed`` needs ``init``.
        guidance_scale, uncond: classifier-free guidance, see :func:`guided_denoiser`.
        seed, generator: the run's randomness: step ``i`` draws with a seed derived from
            ``(seed, i)`` (:func:`~fastdiff.samplers.base.derive_seeds`); a ``generator`` (or,
            with neither, torch's default one) gives the run seed, drawn once.
        progress, callback: a tqdm progress bar; ``callback(i, x)`` after every step.
        return_trajectory: return a :class:`SampleOutput` with every intermediate state.
        loop: ``"auto"`` (C++ step loop when the extension is built), ``"python"``, ``"cpp"``,
            or ``"cuda_graph"`` (CUDA only: one step captured in a CUDA graph and replayed,
            with the step's schedule values and seed read from device tables; needs ops that
            do not synchronize with the host, i.e. the Triton kernels, and no ``cache``).
        cache: reuse the model output for sequences that did not change (mdlm, confidence,
            d3pm; only valid for a model that ignores its time input).
        check_every: test the early exit (nothing left masked: absorbing SEDD, mdlm,
            confidence, absorbing d3pm) only before steps ``i`` with ``i % check_every == 0``
            (each test reads the tokens back to the host, a sync per test on a GPU, e.g.
            before every replay with ``loop="cuda_graph"``). The tokens are the same; up to
            ``check_every - 1`` more steps may run (they change nothing once all is unmasked).
        device: where the run happens (default: the device of ``init``, else the CPU).
        method_options: see :func:`make_scheduler`.

    Returns the final tokens ``[B, L]`` int64 (state ``[B, L, H]`` for ddpm / ddim), or a
    :class:`SampleOutput` with ``return_trajectory=True``.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    if loop not in ENGINES:
        raise ValueError(f"loop must be one of {ENGINES}, got {loop!r}")
    if method not in SCHEDULERS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if isinstance(check_every, bool) or not isinstance(check_every, int):
        raise TypeError(f"check_every must be an int, got {type(check_every).__name__}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    model = guided_denoiser(denoiser, uncond, guidance_scale)
    x, step_loop = build_loop(
        method,
        shape,
        steps=steps,
        vocab_size=vocab_size,
        mask_id=mask_id,
        graph=graph,
        schedule=schedule,
        init=init,
        fixed=fixed,
        seed=seed,
        generator=generator,
        cache=cache,
        device=device,
        **method_options,
    )
    result = run_loop(
        model,
        x,
        step_loop,
        engine="auto" if loop == "cuda_graph" else loop,
        cuda_graph=loop == "cuda_graph",
        callback=callback,
        progress=progress,
        trajectory=return_trajectory,
        check_every=check_every,
    )
    if not return_trajectory:
        return result.x_t
    return SampleOutput(result.x_t, result.trajectory, result.steps_run, result.denoiser_calls)
