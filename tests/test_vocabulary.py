"""One vocabulary across the public API (README "API conventions"): every public op, sampler,
scheduler and module uses the chosen name for each concept, with the noise levels keyword-only
and one reduction default. Introspects the signatures, so a new function that strays fails."""

from __future__ import annotations

import inspect

import pytest

import fastdiff
from fastdiff import likelihood, samplers, schedules

# old or foreign names of a concept -> the chosen name
RETIRED = {
    "log_score": "model_output",
    "x0_logits": "model_output",
    "sigma_t": "sigma",
    "sigma_s": "sigma_next",
    "abar": "alpha_bar",
    "abar_prev": "alpha_bar_next",
    "qbar_prev": "qbar_next",
    "block_size": "block_length",
    "x": "x_t",
    "scale": "guidance_scale",
}
NOISE_LEVELS = {"sigma", "sigma_next", "dsigma", "dt", "alpha_bar", "alpha_bar_next", "q_step"}
NOISE_LEVELS |= {"qbar_next"}
# classes that keep another project's names on purpose: diffusers' schedulers (their
# step(model_output, timestep, sample) and constructor arguments) and LLaDA's generate entry
FOREIGN = {"DDPMScheduler", "DDIMScheduler", "generate"}


def _public_callables():
    seen = {}
    for module in (fastdiff, samplers, likelihood, schedules):
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name, None)
            if name.startswith("_") or name in FOREIGN or not callable(obj):
                continue
            if inspect.ismodule(obj) or getattr(obj, "__module__", "").split(".")[0] != "fastdiff":
                continue
            seen[f"{module.__name__}.{name}"] = obj
    for name in fastdiff.nn.__all__:
        obj = getattr(fastdiff.nn, name)
        if callable(obj):
            seen[f"fastdiff.nn.{name}"] = obj
    return seen


PUBLIC = _public_callables()


def _signature(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    return inspect.signature(target)


def test_the_introspection_sees_the_api():
    names = {n.rsplit(".", 1)[1] for n in PUBLIC}
    assert {"add_noise", "score_entropy", "mdlm_step", "ddpm_step", "sample"} <= names
    assert len(PUBLIC) > 40


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_retired_name(name):
    params = _signature(PUBLIC[name]).parameters
    stray = {p: RETIRED[p] for p in params if p in RETIRED}
    assert not stray, f"{name} uses {stray} (old name -> chosen name)"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_noise_levels_are_keyword_only(name):
    params = _signature(PUBLIC[name]).parameters
    for p in params.values():
        if p.name in NOISE_LEVELS:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} is positional"


def test_losses_share_one_reduction_default():
    losses = [
        fastdiff.score_entropy,
        fastdiff.concrete_score_matching,
        fastdiff.masked_diffusion_loss,
        fastdiff.linear_score_entropy,
        fastdiff.linear_masked_diffusion_loss,
        fastdiff.d3pm_hybrid_loss,
        fastdiff.gaussian_loss,
    ]
    for fn in losses:
        reduction = inspect.signature(fn).parameters["reduction"]
        assert reduction.default == "mean", fn.__name__
        assert reduction.kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__


def test_model_output_comes_first_in_every_step_and_loss():
    first = [
        fastdiff.score_entropy,
        fastdiff.concrete_score_matching,
        fastdiff.masked_diffusion_loss,
        fastdiff.d3pm_hybrid_loss,
        fastdiff.d3pm_posterior_logits,
        fastdiff.d3pm_step,
        fastdiff.sedd_euler_step,
        fastdiff.sedd_analytic_step,
        fastdiff.sedd_denoise_step,
        fastdiff.mdlm_step,
        fastdiff.unmask_candidates,
        fastdiff.confidence_unmask_step,
        fastdiff.ddpm_step,
        fastdiff.ddim_step,
        fastdiff.scale_by_sigma,
    ]
    for fn in first:
        names = list(inspect.signature(fn).parameters)
        assert names[0] == "model_output", fn.__name__
        if fn is not fastdiff.scale_by_sigma:
            assert names[1] == "x_t", fn.__name__


def test_randomness_is_named_alike_and_sample_takes_a_seed_tensor():
    for name, obj in PUBLIC.items():
        params = _signature(obj).parameters
        if "seed" in params:
            assert params["seed"].kind is inspect.Parameter.KEYWORD_ONLY, name
            if "generator" in params or "offset" in params:
                assert "generator" in params, name
    ann = str(inspect.signature(fastdiff.sample).parameters["seed"].annotation)
    assert "Tensor" in ann


def test_guidance_uses_diffusers_scale():
    for fn in (fastdiff.ddpm_step, fastdiff.ddim_step, fastdiff.sample):
        assert inspect.signature(fn).parameters["guidance_scale"].default == 1.0, fn.__name__
