"""Gaussian (continuous-state) samplers: DDPM ancestral and DDIM(eta) (ops.md 4e), as schedulers
in the diffusers shape, over states ``[B, L, H]`` (e.g. Diffusion-LM embeddings).

``set_timesteps(steps)`` picks ``steps <= T`` indices ``j_k = round(linspace(T - 1, 0, steps))``
of the :class:`fastdiff.schedules.GaussianSchedule` (0-based: index ``j`` is step ``j + 1``);
step ``k`` goes from ``abar = alphas_cumprod[j_k]`` to ``abar_prev = alphas_cumprod[j_{k+1}]``
(``1`` after the last), so ``steps = T`` is the full chain and fewer steps skip (respacing). The
denoiser gets ``t = j_k`` (a float, the diffusers convention) and returns ``eps`` (or ``x0``
with ``prediction="x0"``). The start state is ``N(0, I)`` keyed by the run's seed.
"""

from __future__ import annotations

import math

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.gaussian import PREDICTIONS, VARIANCES, add_noise_gaussian, ddim_step, ddpm_step
from fastdiff.reference import gaussian as ref
from fastdiff.samplers.base import (
    Scheduler,
    SchedulerOutput,
    check_steps,
    init_seed,
    make_step_loop,
    resolve_run_seed,
    start_device,
    state_start,
    step_seed,
)
from fastdiff.samplers.loop import StepLoop
from fastdiff.schedules import GaussianSchedule

F64 = torch.float64


def state_view(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The denoiser output ``[B, L, H]`` as ``[N, H]``; a clear error for another shape, and
    (with value checks on) for NaN or inf in it."""
    if not isinstance(out, torch.Tensor) or out.shape != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the denoiser returned {got}; expected {tuple(shape)}")
    if checks.value_checks_enabled():
        checks.finite("the denoiser output", out)
    return out.reshape(-1, shape[-1])


class _GaussianScheduler(Scheduler):
    def __init__(self, schedule: GaussianSchedule | None, prediction: str) -> None:
        schedule = GaussianSchedule.linear(1000) if schedule is None else schedule
        if not isinstance(schedule, GaussianSchedule):
            raise TypeError(
                "a Gaussian sampler needs schedule=fastdiff.schedules.GaussianSchedule, got "
                f"{type(schedule).__name__}"
            )
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.schedule = schedule
        self.prediction = prediction

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Indices ``round(linspace(T - 1, 0, steps))`` and their ``abar`` / ``abar_prev``."""
        steps = check_steps(num_steps)
        big_t = self.schedule.num_steps
        if steps > big_t:
            raise ValueError(f"steps ({steps}) must be <= the schedule's T ({big_t})")
        idx = torch.linspace(big_t - 1, 0, steps, dtype=F64).round().long()
        abar = self.schedule.alphas_cumprod.to(F64)
        self._abar = abar[idx].to(device)
        self._abar_prev = torch.cat([abar[idx[1:]], abar.new_ones(1)]).to(device)
        self.num_inference_steps = steps
        self._set(idx.to(device=device, dtype=F64))

    def start(
        self,
        shape,
        *,
        init: torch.Tensor | None = None,
        fixed: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, fixed)``: ``N(0, I)`` ``[B, L, H]`` (dtype of ``init``, else the default dtype)
        with ``init`` kept at ``fixed`` positions."""
        shape, init, fixed = state_start(shape, init, fixed, device)
        dev = start_device(device, init)
        dtype = init.dtype if init is not None else torch.get_default_dtype()
        key = resolve_run_seed(seed, generator, dev)
        n = shape[0] * shape[1]
        rows = torch.arange(n, device=dev)
        x = frandom.normal(init_seed(key), 0, rows, shape[2]).to(dtype).reshape(shape)
        if init is not None:
            x = torch.where(fixed[..., None], init, x)
        return x, fixed

    def add_noise(
        self,
        original: torch.Tensor,
        noise: torch.Tensor | None,
        timesteps: int | torch.Tensor,
        *,
        fixed: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` with ``abar_t = alphas_cumprod[t]`` for
        the 0-based ``t = timesteps`` (a number or per sequence ``[B]``, rounded to the nearest
        index, halves to even, in ``[0, T)``): :func:`fastdiff.q_sample` (``noise=None`` draws
        it with ``seed`` / ``generator``)."""
        abar = self.schedule.alphas_cumprod.to(F64)
        big_t = abar.shape[0]
        if isinstance(timesteps, torch.Tensor):
            t = timesteps.round().long()
            if checks.value_checks_enabled() and t.numel():
                lo, hi = int(t.min()), int(t.max())
                if lo < 0 or hi >= big_t:
                    raise ValueError(
                        f"timesteps must lie in [0, {big_t}), got {lo if lo < 0 else hi}"
                    )
            a = abar.to(timesteps.device)[t]
        else:
            if isinstance(timesteps, bool) or not isinstance(timesteps, (int, float)):
                raise TypeError(f"timesteps must be a number or a tensor, got {timesteps!r}")
            if not math.isfinite(timesteps) or not 0 <= round(timesteps) < big_t:
                raise ValueError(f"timesteps must lie in [0, {big_t}), got {timesteps!r}")
            a = float(abar[round(timesteps)])
        return add_noise_gaussian(
            original, alpha_bar=a, noise=noise, fixed=fixed, generator=generator, seed=seed
        ).x_t

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        n, shape = x.shape[0] * x.shape[1], x.shape
        ffixed = None if fixed is None else fixed.reshape(-1)
        impl = self._impl(x.device, n)

        def apply(out, x, key, values, i):
            eps = state_view(out, shape)
            abar, abar_prev = values["abar"].expand(n), values["abar_prev"].expand(n)
            new = impl(eps, x.reshape(n, shape[-1]), abar, abar_prev, ffixed, key)
            return new.reshape(shape)

        tables = {"abar": self._abar.to(x.device), "abar_prev": self._abar_prev.to(x.device)}
        return make_step_loop(apply, ts.to(x.device), tables, seed, fixed=fixed)


class DDPMScheduler(_GaussianScheduler):
    """DDPM ancestral sampler: each step is :func:`fastdiff.ddpm_step` with ``variance``
    ``"beta"`` (``sigma_t^2 = beta_t``) or ``"posterior"``; no noise at the last step."""

    OPTIONS = ("prediction", "variance")

    def __init__(
        self,
        schedule: GaussianSchedule | None = None,
        *,
        prediction: str = "eps",
        variance: str = "beta",
    ) -> None:
        super().__init__(schedule, prediction)
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.variance = variance

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """One DDPM step from ``timestep`` to the next planned index."""
        i = self.index_for(timestep)
        out = ddpm_step(
            model_output,
            sample,
            alpha_bar=self._abar[i],
            alpha_bar_next=self._abar_prev[i],
            prediction=self.prediction,
            variance=self.variance,
            fixed=fixed,
            seed=step_seed(i, seed, generator, sample.device),
        )
        return SchedulerOutput(out)

    def _impl(self, device: torch.device, n: int):
        impl = backend.resolve("ddpm_step", ref.ddpm_step, device)
        prediction, variance = self.prediction, self.variance

        def call(out, xt, abar, abar_prev, fixed, seed):
            return impl(
                out, xt, abar, abar_prev, prediction, variance, None, None, None, fixed, seed, 0
            )

        return call


class DDIMScheduler(_GaussianScheduler):
    """DDIM(eta) sampler: each step is :func:`fastdiff.ddim_step`; ``eta = 0`` is
    deterministic given the start state, ``eta = 1`` is DDPM with the posterior variance."""

    OPTIONS = ("prediction", "eta")

    def __init__(
        self,
        schedule: GaussianSchedule | None = None,
        *,
        prediction: str = "eps",
        eta: float = 0.0,
    ) -> None:
        super().__init__(schedule, prediction)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta < 1e30:
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = float(eta)

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """One DDIM step from ``timestep`` to the next planned index."""
        i = self.index_for(timestep)
        out = ddim_step(
            model_output,
            sample,
            alpha_bar=self._abar[i],
            alpha_bar_next=self._abar_prev[i],
            eta=self.eta,
            prediction=self.prediction,
            fixed=fixed,
            seed=step_seed(i, seed, generator, sample.device),
        )
        return SchedulerOutput(out)

    def _impl(self, device: torch.device, n: int):
        impl = backend.resolve("ddim_step", ref.ddim_step, device)
        eta = torch.full((n,), self.eta, dtype=F64, device=device)
        prediction = self.prediction

        def call(out, xt, abar, abar_prev, fixed, seed):
            return impl(out, xt, abar, abar_prev, eta, prediction, None, None, None, fixed, seed, 0)

        return call
