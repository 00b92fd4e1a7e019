"""Discrete-state samplers: SEDD Euler / analytic (with the final denoise), MDLM ancestral and
D3PM, as schedulers in the diffusers shape (:class:`fastdiff.samplers.base.Scheduler`).

Time grids (``steps`` reverse steps, float64 tables, the denoiser gets ``sigma`` as float32):

- SEDD: ``t_i = linspace(1, eps, steps + 1)`` (``eps = 1e-5``), ``dt = (1 - eps) / steps``;
  Euler step ``i`` uses ``rate = dt * dsigma(t_i)`` (docs/ops.md#sedd-euler-step), the
  analytic step ``Delta = sigma(t_i) - sigma(t_{i+1})`` (docs/ops.md#sedd-analytic-step); the
  model sees ``sigma(t_i)``. With ``denoise=True`` a last entry ``sigma(eps)`` runs the final
  denoise (no mask left).
- MDLM: ``t_i = linspace(1, 0, steps + 1)``: step ``i`` goes from ``sigma(t_i)`` to
  ``sigma(t_{i+1})`` (docs/ops.md#mdlm-ancestral-step), except that the last step ends at
  ``sigma = 0`` exactly (not ``sigma(0)``, which is > 0 for e.g. ``Geometric``), so it unmasks
  every position.
- D3PM: ``steps <= T`` segments ``t_k = round(linspace(T, 0, steps + 1))``; a segment from
  ``t`` to ``s`` uses ``Q_{s+1} ... Q_t`` and ``Qbar_s`` (the identity at ``s = 0``), so
  ``steps = T`` is the plain ancestral chain; the model sees ``t`` (a float).

SEDD and MDLM need a finite ``sigma(1)`` (e.g. ``LogLinear(eps > 0)``, not ``LinearAlpha()``).
With value checks on (:func:`fastdiff.checks.value_checks_enabled`) every model output is
checked for NaN / ``+inf`` before the step uses it.

Every step_loop closure calls the backend-resolved op implementation with the flattened
tensors and the precomputed per-step constants: the argument checks of the public ops run
once, before the loop (in ``set_timesteps``, the constructors and ``start``). Step ``i`` draws
with the derived seed ``derive_seeds(seed)[i]`` and offset 0 (:mod:`fastdiff.samplers.base`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.d3pm import d3pm_step
from fastdiff.noising import add_noise, add_noise_dense
from fastdiff.reference import d3pm as ref_d3pm
from fastdiff.reference import updates as ref
from fastdiff.samplers.base import (
    Scheduler,
    SchedulerOutput,
    check_steps,
    derive_seeds,
    init_seed,
    make_step_loop,
    resolve_run_seed,
    start_device,
    step_seed,
    token_start,
)
from fastdiff.samplers.loop import StepLoop
from fastdiff.sampling import sample_categorical
from fastdiff.schedules import LogLinear, NoiseSchedule
from fastdiff.transitions import TransitionSchedule
from fastdiff.updates import mdlm_step, sedd_analytic_step, sedd_denoise_step, sedd_euler_step

F64 = torch.float64


def scores_view(out: torch.Tensor, shape: torch.Size, vocab: int) -> torch.Tensor:
    """The denoiser output ``[*shape, V]`` as ``[N, V]``; a clear error for another shape, and
    (with value checks on) for NaN or ``+inf`` in it (``-inf`` logits / log-scores are fine)."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*shape, vocab):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the denoiser returned {got}; expected {(*tuple(shape), vocab)}")
    if checks.value_checks_enabled():
        checks.finite("the denoiser output", out, allow_neg_inf=True)
    return out.reshape(-1, vocab)


def _flat(fixed: torch.Tensor | None) -> torch.Tensor | None:
    return None if fixed is None else fixed.reshape(-1)


class TokenScheduler(Scheduler):
    """Base of the samplers over tokens ``[B, L]`` with a vocabulary of ``vocab_size``."""

    def __init__(self, vocab_size: int, mask_id: int | None, *, mask_required: bool) -> None:
        self.vocab_size = checks.vocab_size(vocab_size, minimum=2)
        self.mask_id = checks.mask_id(mask_id, self.vocab_size, required=mask_required)

    def prior(self, n: int, seed: int, device: torch.device) -> torch.Tensor:
        """``n`` tokens from the prior: all ``mask_id`` (absorbing samplers)."""
        return torch.full((n,), self.mask_id, dtype=torch.int64, device=device)

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
        """``(x, fixed)``: the prior draw with ``init`` kept where ``fixed``. With ``init`` and no
        ``fixed``, the non-mask positions of ``init`` are fixed (infilling by mask tokens)."""
        shape, init, fixed = token_start(shape, init, fixed, self.vocab_size, self.mask_id, device)
        dev = start_device(device, init)
        key = resolve_run_seed(seed, generator, dev)
        x = self.prior(shape[0] * shape[1], key, dev).reshape(shape)
        if init is not None:
            x = torch.where(fixed, init, x)
        return x, fixed


class _NoiseScheduleMixin(TokenScheduler):
    """Samplers driven by a continuous-time :class:`~fastdiff.schedules.NoiseSchedule`."""

    def __init__(
        self,
        vocab_size: int,
        mask_id: int | None,
        graph: str,
        schedule: NoiseSchedule | None,
    ) -> None:
        self.graph = checks.graph(graph)
        super().__init__(vocab_size, mask_id, mask_required=self.graph == "absorb")
        schedule = LogLinear() if schedule is None else schedule
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                "schedule must be a fastdiff.schedules.NoiseSchedule, got "
                f"{type(schedule).__name__}"
            )
        self.schedule = schedule

    @property
    def absorbing(self) -> bool:
        return self.graph == "absorb"

    def prior(self, n: int, seed: int, device: torch.device) -> torch.Tensor:
        """All mask (absorbing) or uniform tokens on ``[0, V)`` (uniform graph)."""
        if self.absorbing:
            return super().prior(n, seed, device)
        rows = torch.arange(n, device=device)
        draw = backend.draw_function("uniform", frandom.uniform, rows.device)
        u = draw(init_seed(seed), 0, rows, 1)[:, 0]
        return (u * self.vocab_size).long().clamp(max=self.vocab_size - 1)

    def add_noise(
        self,
        original: torch.Tensor,
        noise: None,
        timesteps: float | torch.Tensor,
        *,
        fixed: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forward noising ``x_t ~ q(x_t | x0)`` at ``sigma = timesteps`` (a number, or per
        sequence ``[B]``): :func:`fastdiff.corrupt`. ``noise`` must be ``None`` (the draw is
        keyed by ``seed`` / ``generator``)."""
        if noise is not None:
            raise ValueError("discrete noising draws its own randomness: pass noise=None")
        return add_noise(
            original,
            sigma=timesteps,
            graph=self.graph,
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            fixed=fixed,
            generator=generator,
            seed=seed,
        )

    def _grid(self, start: float, end: float, steps: int, device) -> torch.Tensor:
        t = torch.linspace(start, end, steps + 1, dtype=F64, device=device)
        sigma = self.schedule.sigma(t)
        _check_max_noise(sigma[0], start)
        return sigma


def _check_max_noise(sigma0: torch.Tensor, start: float) -> None:
    """A clear error for a schedule whose ``sigma`` at the first grid time is not finite."""
    if not bool(torch.isfinite(sigma0)):
        raise ValueError(
            f"the schedule has sigma(t={start}) = inf: use one with a finite maximum noise "
            "(e.g. LogLinear(eps > 0))"
        )


class _SEDD(_NoiseScheduleMixin):
    OPTIONS = ("eps", "denoise")
    OP = ""

    def __init__(
        self,
        vocab_size: int,
        *,
        mask_id: int | None = None,
        graph: str = "absorb",
        schedule: NoiseSchedule | None = None,
        eps: float = 1e-5,
        denoise: bool = True,
    ) -> None:
        super().__init__(vocab_size, mask_id, graph, schedule)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
            raise ValueError(f"eps (the last time) must lie in (0, 1), got {eps!r}")
        self.eps = float(eps)
        self.denoise = bool(denoise)

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """``sigma(t_i)`` for ``t_i = linspace(1, eps, steps + 1)``; the last entry (the final
        denoise) only when ``denoise=True``."""
        steps = check_steps(num_steps)
        t = torch.linspace(1.0, self.eps, steps + 1, dtype=F64, device=device)
        sigma, dsigma = self.schedule(t)
        _check_max_noise(sigma[0], 1.0)
        self._sigma, self._dsigma = sigma, dsigma
        self._dt = (1.0 - self.eps) / steps
        self.num_inference_steps = steps
        self._set(self._sigma if self.denoise else self._sigma[:-1])

    @property
    def _op_mask(self) -> int:
        return -1 if self.mask_id is None else self.mask_id

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """One Euler / analytic step, or the final denoise at the last timestep."""
        i = self.index_for(timestep)
        key = step_seed(i, seed, generator, sample.device)
        common = dict(graph=self.graph, mask_id=self.mask_id, fixed=fixed, seed=key)
        if i == self.num_inference_steps:
            out = sedd_denoise_step(model_output, sample, sigma=self._sigma[-1], **common)
        else:
            out = self._public(model_output, sample, i, common)
        return SchedulerOutput(out)

    def _final(self, x: torch.Tensor, seed: int, fixed) -> Callable | None:
        if not self.denoise:
            return None
        impl = backend.resolve("sedd_denoise", ref.sedd_denoise, x.device)
        n, shape, v = x.numel(), x.shape, self.vocab_size
        sigma = self._sigma[-1].to(x.device).expand(n)
        ffixed, graph, m = _flat(fixed), self.graph, self._op_mask
        key = derive_seeds(seed, 1, start=self.num_inference_steps)[0]

        def final(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            s = scores_view(out, shape, v)
            return impl(s, x.reshape(n), sigma, ffixed, key, 0, graph, m).reshape(shape)

        return final

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        steps = self.num_inference_steps
        impl = backend.resolve(self.OP, getattr(ref, self.OP), x.device)
        n, shape, v = x.numel(), x.shape, self.vocab_size
        ffixed, graph, m = _flat(fixed), self.graph, self._op_mask

        def apply(out, x, key, values, i):
            s = scores_view(out, shape, v)
            new = impl(s, x.reshape(n), values["c"].expand(n), ffixed, key, 0, graph, m)
            return new.reshape(shape)

        return make_step_loop(
            apply,
            ts[:steps].to(x.device),
            {"c": self._constant().to(x.device)},
            seed,
            fixed=fixed,
            mask_id=self.mask_id if self.absorbing else None,
            final=self._final(x, seed, fixed),
            final_input=float(ts[steps]) if self.denoise else None,
        )


class SEDDEulerScheduler(_SEDD):
    """SEDD Euler sampler (docs/ops.md#sedd-euler-step) for the absorbing or uniform graph.

    The denoiser returns log-scores ``[B, L, V]`` at ``sigma [B]``. Step ``i``:
    ``rate = dt dsigma(t_i)``, :func:`fastdiff.sedd_euler_step`; then (``denoise=True``) the
    final denoise :func:`fastdiff.sedd_denoise_step` at ``sigma(eps)``.
    """

    OP = "sedd_euler"

    def _public(self, model_output, sample, i, common) -> torch.Tensor:
        return sedd_euler_step(model_output, sample, dsigma=self._dsigma[i], dt=self._dt, **common)

    def _constant(self) -> torch.Tensor:
        """``rate_i = dsigma(t_i) dt`` (the product the public op forms)."""
        return self._dsigma[:-1] * torch.full_like(self._dsigma[:-1], self._dt)


class SEDDAnalyticScheduler(_SEDD):
    """SEDD analytic (Tweedie tau-leaping) sampler (docs/ops.md#sedd-analytic-step),
    absorbing or uniform graph.

    Step ``i`` moves from ``sigma(t_i)`` to ``sigma(t_{i+1})`` with
    :func:`fastdiff.sedd_analytic_step`; then the final denoise as in
    :class:`SEDDEulerScheduler`.
    """

    OP = "sedd_analytic"

    def _public(self, model_output, sample, i, common) -> torch.Tensor:
        sig, nxt = self._sigma[i], self._sigma[i + 1]
        return sedd_analytic_step(model_output, sample, sigma=sig, sigma_next=nxt, **common)

    def _constant(self) -> torch.Tensor:
        """``Delta_i = sigma(t_i) - sigma(t_{i+1})``."""
        return self._sigma[:-1] - self._sigma[1:]


class MDLMScheduler(_NoiseScheduleMixin):
    """MDLM ancestral (SUBS) sampler (docs/ops.md#mdlm-ancestral-step): the denoiser returns
    logits ``[B, L, V]`` at ``sigma [B]``; step ``i`` is :func:`fastdiff.mdlm_step` from
    ``sigma(t_i)`` to ``sigma(t_{i+1})`` on ``t = linspace(1, 0, steps + 1)``, except that the
    last step goes to ``sigma = 0`` exactly (whatever ``sigma(0)`` is), so it unmasks all.
    With a model that ignores the time, ``cache=True`` reuses its output (:class:`StepLoop`)."""

    OPTIONS = ()

    def __init__(
        self, vocab_size: int, *, mask_id: int, schedule: NoiseSchedule | None = None
    ) -> None:
        super().__init__(vocab_size, mask_id, "absorb", schedule)

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """``sigma(t_i)``, ``t_i = 1 - i / steps`` for ``i < steps``; the table ends with
        ``sigma = 0`` (not ``sigma(0)``): the last step unmasks every position."""
        steps = check_steps(num_steps)
        sigma = self._grid(1.0, 0.0, steps, device).clone()
        sigma[-1] = 0.0
        self._sigma = sigma
        self.num_inference_steps = steps
        self._set(self._sigma[:-1])

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """One ancestral step from ``timestep`` to the next grid time."""
        i = self.index_for(timestep)
        out = mdlm_step(
            model_output,
            sample,
            sigma=self._sigma[i],
            sigma_next=self._sigma[i + 1],
            mask_id=self.mask_id,
            fixed=fixed,
            seed=step_seed(i, seed, generator, sample.device),
        )
        return SchedulerOutput(out)

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        impl = backend.resolve("mdlm_ancestral", ref.mdlm_ancestral, x.device)
        n, shape, v, ffixed, m = x.numel(), x.shape, self.vocab_size, _flat(fixed), self.mask_id

        def apply(out, x, key, values, i):
            s = scores_view(out, shape, v)
            sig_t, sig_s = values["t"].expand(n), values["s"].expand(n)
            return impl(s, x.reshape(n), sig_t, sig_s, ffixed, key, 0, m).reshape(shape)

        sig = self._sigma.to(x.device)
        tables = {"t": sig[:-1], "s": sig[1:]}
        return make_step_loop(apply, ts.to(x.device), tables, seed, fixed=fixed, mask_id=m)


class D3PMScheduler(TokenScheduler):
    """D3PM ancestral sampler with dense transition matrices (docs/ops.md#d3pm-step).

    ``transitions`` (:class:`fastdiff.transitions.TransitionSchedule`, ``T`` steps) gives
    ``Q_t`` and ``Qbar_t``. The denoiser returns ``x0`` logits ``[B, L, V]`` at the time ``t``
    (a float in ``1..T``); each step is :func:`fastdiff.d3pm_step`. The start state is drawn
    from ``mean_i Qbar_T[i, :]`` (the stationary distribution once the chain has mixed: all
    ``mask_id`` for an absorbing chain). ``mask_id`` (absorbing chains) lets ``init`` mark the
    positions to fill with it. The step matrices are stacked ``[steps, V, V]`` (float64) on the
    run's device. When the chain absorbs into ``mask_id`` (:attr:`absorbing`: every ``Q_t`` moves
    a token only to ``mask_id``, so the reverse chain never changes an unmasked token), the step
    loop stops early once nothing is masked.
    """

    OPTIONS = ()

    def __init__(self, transitions: TransitionSchedule, *, mask_id: int | None = None) -> None:
        if not isinstance(transitions, TransitionSchedule):
            raise TypeError(
                "d3pm needs schedule=fastdiff.transitions.TransitionSchedule, got "
                f"{type(transitions).__name__}"
            )
        super().__init__(transitions.vocab_size, mask_id, mask_required=False)
        self.transitions = transitions
        self.absorbing = self.mask_id is not None and _absorbs_into(transitions, self.mask_id)

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Segments ``t_k = round(linspace(T, 0, steps + 1))`` (``steps <= T``)."""
        steps = check_steps(num_steps)
        big_t = self.transitions.num_steps
        if steps > big_t:
            raise ValueError(f"d3pm steps ({steps}) must be <= the schedule's T ({big_t})")
        tables = self.transitions if device is None else self.transitions.to(device)
        bounds = torch.linspace(big_t, 0, steps + 1, dtype=F64).round().long().tolist()
        eye = torch.eye(self.vocab_size, dtype=F64, device=tables.q_bar.device)
        q, qbar = [], []
        for t, s in itertools.pairwise(bounds):
            seg = tables.q_steps[s]
            for k in range(s + 1, t):
                seg = seg @ tables.q_steps[k]
            q.append(seg)
            qbar.append(eye if s == 0 else tables.q_bar[s - 1])
        self._q, self._qbar = torch.stack(q), torch.stack(qbar)
        self.num_inference_steps = steps
        self._set(torch.tensor(bounds[:-1], dtype=F64, device=tables.q_bar.device))

    def prior(self, n: int, seed: int, device: torch.device) -> torch.Tensor:
        probs = self.transitions.q_bar[-1].mean(0).to(device).expand(n, self.vocab_size)
        return sample_categorical(probs, seed=init_seed(seed))

    def add_noise(
        self,
        original: torch.Tensor,
        noise: None,
        timesteps: int | torch.Tensor,
        *,
        fixed: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_t ~ Cat(Qbar_t[x0, :])`` for ``t = timesteps`` (an int, or per sequence
        ``[B]``): :func:`fastdiff.corrupt_dense`. ``noise`` must be ``None``."""
        if noise is not None:
            raise ValueError("discrete noising draws its own randomness: pass noise=None")
        if isinstance(timesteps, torch.Tensor) and timesteps.numel() > 1:
            t = timesteps.to(self.transitions.q_bar.device).round().long()
        else:
            t = round(float(timesteps))
        qbar = self.transitions.cumulative(t).to(original.device)
        return add_noise_dense(original, qbar, fixed=fixed, generator=generator, seed=seed)

    def step(self, model_output, timestep, sample, *, seed=None, generator=None, fixed=None):
        """One reverse segment from ``timestep`` (= ``t``) to the next grid time."""
        i = self.index_for(timestep)
        dev = sample.device
        out = d3pm_step(
            model_output,
            sample,
            q_step=self._q[i].to(dev),
            qbar_next=self._qbar[i].to(dev),
            fixed=fixed,
            seed=step_seed(i, seed, generator, dev),
        )
        return SchedulerOutput(out)

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        ts = self._require_timesteps()
        impl = backend.resolve("d3pm_step", ref_d3pm.d3pm_step, x.device)
        q, qbar = self._q.to(x.device), self._qbar.to(x.device)
        n, shape, v, ffixed = x.numel(), x.shape, self.vocab_size, _flat(fixed)

        def apply(out, x, key, values, i):
            s = scores_view(out, shape, v)
            if isinstance(i, torch.Tensor):
                qi, qbi = q.index_select(0, i.reshape(1))[0], qbar.index_select(0, i.reshape(1))[0]
            else:
                qi, qbi = q[i], qbar[i]
            return impl(s, x.reshape(n), qi, qbi, ffixed, key, 0).reshape(shape)

        m = self.mask_id if self.absorbing else None
        return make_step_loop(apply, ts.to(x.device), {}, seed, fixed=fixed, mask_id=m)


def _absorbs_into(transitions: TransitionSchedule, mask_id: int) -> bool:
    """Whether every ``Q_t`` is zero off the diagonal outside column ``mask_id`` (a token stays
    or becomes ``mask_id``; the mask row is then ``e_m``): the absorbing chain."""
    q = transitions.q_steps
    eye = torch.eye(q.shape[-1], dtype=torch.bool, device=q.device)
    keep = eye.clone()
    keep[:, mask_id] = True
    return not bool((q.masked_select(~keep) != 0).any())
