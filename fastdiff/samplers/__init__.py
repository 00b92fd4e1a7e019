"""Samplers: schedulers in the diffusers shape (``set_timesteps`` / ``timesteps`` / ``step`` /
``add_noise``) for SEDD Euler and analytic, MDLM, confidence unmasking, D3PM, DDPM and DDIM,
the one-call :func:`sample`, which runs the steps in the step loop of
:mod:`fastdiff.samplers.loop` (C++ when the extension is built), and LLaDA's :func:`generate`
on the confidence sampler."""

from fastdiff.samplers.api import (
    METHODS,
    SampleOutput,
    build_loop,
    guided_denoiser,
    make_scheduler,
    sample,
)
from fastdiff.samplers.base import Scheduler, SchedulerOutput, infill_mask, prefix_mask
from fastdiff.samplers.confidence import ConfidenceScheduler
from fastdiff.samplers.discrete import (
    D3PMScheduler,
    MDLMScheduler,
    SEDDAnalyticScheduler,
    SEDDEulerScheduler,
)
from fastdiff.samplers.gaussian import DDIMScheduler, DDPMScheduler
from fastdiff.samplers.generate import generate

__all__ = [
    "METHODS",
    "ConfidenceScheduler",
    "D3PMScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "MDLMScheduler",
    "SEDDAnalyticScheduler",
    "SEDDEulerScheduler",
    "SampleOutput",
    "Scheduler",
    "SchedulerOutput",
    "build_loop",
    "generate",
    "guided_denoiser",
    "infill_mask",
    "make_scheduler",
    "prefix_mask",
    "sample",
]
