"""Native Gaussian noise paths (``csrc/native/gaussian.cpp``): forward noising
(:func:`fastdiff.reference.gaussian.q_sample`, with the Diffusion-LM embedding gather) and the
DDPM / DDIM steps, each drawing its ``N(0, 1)`` noise row by row inside the fused loop.

The wrappers do what the reference does before its ``[N, H]`` arithmetic, with the same torch
calls: pick the compute dtype (:func:`fastdiff.reference.gaussian.compute_dtype`), form the
float64 per-row coefficients ``[N]`` and cast them to it, apply classifier-free guidance with the
reference's own function when an unconditional output is given (the step itself stays native),
and convert a given ``noise`` to the compute dtype (exact: an upcast). The kernels then fuse the
noise draw with the ``[N, H]`` pass.
"""

from __future__ import annotations

import torch

from fastdiff.backend import register_native
from fastdiff.native._ops import ops, seed_int
from fastdiff.reference import gaussian as ref


@torch.library.register_fake("fastdiff_native::q_sample")
def _(x0, coef, noise, embedding, fixed, seed, offset):
    src = x0 if embedding is None else embedding
    n, h = coef.shape[0], src.shape[-1]
    eps = src.new_empty((0 if noise is not None else n, h))
    return src.new_empty((n, h)), eps, src.new_empty((0 if embedding is None else n, h))


@torch.library.register_fake("fastdiff_native::ddpm_step")
def _(model_output, x_t, coef, noise, fixed, seed, offset):
    return torch.empty_like(x_t)


@torch.library.register_fake("fastdiff_native::ddim_step")
def _(model_output, x_t, coef, eps_prediction, stochastic, noise, fixed, seed, offset):
    return torch.empty_like(x_t)


def _columns(dtype: torch.dtype, *coefficients: torch.Tensor) -> torch.Tensor:
    """float64 per-row coefficients ``[N]`` as one ``[N, K]`` tensor in the compute dtype (the
    reference's ``_col`` casts, one column each)."""
    return torch.stack(coefficients, dim=1).to(dtype)


@register_native("q_sample")
def q_sample_native(
    x0: torch.Tensor,
    abar: torch.Tensor,
    noise: torch.Tensor | None,
    embedding: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` for ``x0 [N, H]`` or token ids ``[N]`` with
    ``embedding [V, H]``; ``eps`` is ``noise`` or the keyed normal rounded to the state dtype.
    Returns ``(x_t, eps, x0)`` as the reference does (fixed rows: ``x_t = x0``, ``eps = 0``)."""
    state_dtype = (x0 if embedding is None else embedding).dtype
    ct = ref.compute_dtype(state_dtype, state_dtype if noise is None else noise.dtype)
    coef = _columns(ct, abar.sqrt(), (1.0 - abar).sqrt())
    noise_ct = None if noise is None else noise.to(ct)
    key = 0 if noise is not None else seed_int(seed)
    x_t, eps, clean = ops.q_sample(x0, coef, noise_ct, embedding, fixed, key, offset)
    if noise is not None:
        eps = noise
        if fixed is not None:
            eps = torch.where(fixed[:, None], torch.zeros((), dtype=noise.dtype), noise)
    return x_t, eps, x0 if embedding is None else clean


def _step_inputs(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    seed: int | torch.Tensor,
) -> tuple[torch.dtype, torch.Tensor, torch.Tensor | None, int]:
    """The compute dtype, the (guided) model output and the noise in it, and the seed as an
    int."""
    ct = ref._step_dtype(model_output, x_t, model_output_uncond, noise)
    out = ref._model_output(model_output, model_output_uncond, guidance_scale, ct)
    if noise is not None:
        return ct, out, noise.to(ct), 0
    return ct, out, None, seed_int(seed)


@register_native("ddpm_step")
def ddpm_step_native(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    prediction: str,
    variance: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """DDPM step ``x_{t-1} = c_xt x_t + c_out out + sigma z`` ``[N, H]``
    (:func:`fastdiff.reference.gaussian.ddpm_step`): the float64 per-row coefficients with the
    reference's expressions, the ``[N, H]`` pass with the draw in C++."""
    ct, out, noise_ct, key = _step_inputs(
        model_output, x_t, model_output_uncond, guidance_scale, noise, seed
    )
    coef = _columns(ct, *ref.ddpm_coefficients(abar, abar_prev, prediction, variance))
    return ops.ddpm_step(out, x_t, coef, noise_ct, fixed, key, offset)


@register_native("ddim_step")
def ddim_step_native(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: torch.Tensor,
    prediction: str,
    model_output_uncond: torch.Tensor | None,
    guidance_scale: torch.Tensor | None,
    noise: torch.Tensor | None,
    fixed: torch.Tensor | None,
    seed: int | torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """DDIM(eta) step ``x' = sqrt(abar') x0_hat + sqrt(1 - abar' - sig^2) eps + sig z``
    ``[N, H]`` (:func:`fastdiff.reference.gaussian.ddim_step`); as there, no noise is drawn
    when every row has ``sig = 0`` and none is given."""
    ct, out, noise_ct, key = _step_inputs(
        model_output, x_t, model_output_uncond, guidance_scale, noise, seed
    )
    c1, c2, sig2, dir2 = ref.ddim_coefficients(abar, abar_prev, eta, prediction)
    stochastic = noise is not None or not bool((sig2 == 0).all())
    coef = _columns(ct, c1, c2, abar_prev.sqrt(), dir2.sqrt(), sig2.sqrt())
    return ops.ddim_step(
        out, x_t, coef, prediction == "eps", stochastic, noise_ct, fixed, key, offset
    )
