"""fastdiff: fast fused kernels and an exact PyTorch reference for text diffusion models.

Public ops (each validates its inputs, then runs a Triton kernel or the reference, see
:mod:`fastdiff.backend`):

- noising: :func:`add_noise`, :func:`add_noise_dense`, :func:`add_noise_gaussian`
- losses: :func:`score_entropy`, :func:`masked_diffusion_loss`, :func:`gaussian_loss`,
  :func:`d3pm_hybrid_loss`, :func:`concrete_score_matching`
- likelihood: the diffusion ELBO and its perplexity bound, :mod:`fastdiff.likelihood`
- D3PM matrices: :mod:`fastdiff.transitions`
- sampling: :func:`sample_categorical`, the SEDD / MDLM / confidence / D3PM updates and the
  Gaussian DDPM / DDIM steps
- schedules: :mod:`fastdiff.schedules`
- samplers: :func:`sample` and the schedulers (diffusers shape) of :mod:`fastdiff.samplers`,
  run by the step loop of :mod:`fastdiff.samplers.loop` (C++ when ``fastdiff._C`` is built)
"""

from fastdiff import likelihood, nn, samplers, schedules, transitions
from fastdiff.backend import get_backend, register_kernel, set_backend, use_backend
from fastdiff.checks import set_value_checks, value_checks
from fastdiff.d3pm import d3pm_hybrid_loss, d3pm_posterior, d3pm_posterior_logits, d3pm_step
from fastdiff.gaussian import (
    GaussianNoised,
    add_noise_gaussian,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    gaussian_loss,
    round_to_embedding,
)
from fastdiff.losses import (
    concrete_score_matching,
    linear_masked_diffusion_loss,
    linear_score_entropy,
    masked_diffusion_loss,
    scale_by_sigma,
    score_entropy,
)
from fastdiff.noising import add_noise, add_noise_dense
from fastdiff.samplers import (
    ConfidenceScheduler,
    D3PMScheduler,
    DDIMScheduler,
    DDPMScheduler,
    MDLMScheduler,
    SampleOutput,
    SchedulerOutput,
    SEDDAnalyticScheduler,
    SEDDEulerScheduler,
    generate,
    infill_mask,
    prefix_mask,
    sample,
)
from fastdiff.samplers.loop import LoopResult, StepLoop, run_loop
from fastdiff.sampling import sample_categorical
from fastdiff.unmasking import confidence_unmask_step, select_commits, unmask_quota
from fastdiff.updates import (
    mdlm_step,
    sedd_analytic_step,
    sedd_denoise_step,
    sedd_euler_step,
    unmask_candidates,
)

__version__ = "0.2.0"

__all__ = [
    "ConfidenceScheduler",
    "D3PMScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "GaussianNoised",
    "LoopResult",
    "MDLMScheduler",
    "SEDDAnalyticScheduler",
    "SEDDEulerScheduler",
    "SampleOutput",
    "SchedulerOutput",
    "StepLoop",
    "__version__",
    "add_noise",
    "add_noise_dense",
    "add_noise_gaussian",
    "classifier_free_guidance",
    "concrete_score_matching",
    "confidence_unmask_step",
    "d3pm_hybrid_loss",
    "d3pm_posterior",
    "d3pm_posterior_logits",
    "d3pm_step",
    "ddim_step",
    "ddpm_step",
    "gaussian_loss",
    "generate",
    "get_backend",
    "infill_mask",
    "likelihood",
    "linear_masked_diffusion_loss",
    "linear_score_entropy",
    "masked_diffusion_loss",
    "mdlm_step",
    "nn",
    "prefix_mask",
    "register_kernel",
    "round_to_embedding",
    "run_loop",
    "sample",
    "sample_categorical",
    "samplers",
    "scale_by_sigma",
    "schedules",
    "score_entropy",
    "sedd_analytic_step",
    "sedd_denoise_step",
    "sedd_euler_step",
    "select_commits",
    "set_backend",
    "set_value_checks",
    "transitions",
    "unmask_candidates",
    "unmask_quota",
    "use_backend",
    "value_checks",
]
