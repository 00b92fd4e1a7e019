"""Noise schedules for text diffusion models (docs/ops.md#schedules).

Two families live here.

**Continuous-time discrete-diffusion schedules** (SEDD, MDLM, LLaDA, ...): small frozen
dataclasses deriving from :class:`NoiseSchedule`. Each maps a time ``t`` in ``[0, 1]`` (a tensor
of any shape, or a python number) to

- ``sigma(t)``: the total noise; a token is still clean with probability ``alpha = e^-sigma``,
- ``dsigma(t)``: its time derivative (``__call__`` returns both),
- ``alpha(t) = exp(-sigma)`` and ``move_chance(t) = 1 - alpha = -expm1(-sigma)``,
- ``loss_weight(t) = -alpha'/(1 - alpha) = dsigma / expm1(sigma)``: the continuous-time
  masked-diffusion (MDLM) loss weight.

Each quantity is computed from a closed form that keeps full relative accuracy for tiny ``t``
(and ``sigma``), so float32 results at ``t = 1e-8`` agree with float64 to a few ulps. All methods
are elementwise: the output has the shape of ``t``. A floating tensor keeps its dtype (float16
and bfloat16 are computed in float32 and rounded back once); python numbers and integer tensors
become ``torch.get_default_dtype()``. ``t`` outside ``[0, 1]`` or NaN raises ``ValueError``
(for a tensor the check reads the data, a host sync on a GPU: it follows
:func:`fastdiff.checks.set_value_checks` / ``FASTDIFF_CHECK_VALUES`` and is skipped while a
CUDA graph is captured or under ``torch.compile``; python numbers are always checked).

- ``LogLinear(eps)``: ``sigma = -log1p(-(1 - eps) t)``, ``dsigma = (1 - eps) / (1 - (1 - eps) t)``;
- ``Geometric(sigma_min, sigma_max)``: ``sigma = sigma_min^(1-t) sigma_max^t``,
  ``dsigma = sigma ln(sigma_max / sigma_min)``;
- ``LinearAlpha()``: ``alpha = 1 - t``, ``sigma = -log1p(-t)``, ``dsigma = 1 / (1 - t)``;
- ``CosineAlpha()``: ``alpha = cos(pi t / 2)``, ``sigma = -log cos(pi t / 2)``,
  ``dsigma = (pi / 2) tan(pi t / 2)``.

``LogLinear(eps=0)`` and ``LinearAlpha()`` are the same schedule; for every ``eps`` the
log-linear masked loss weight is exactly ``1 / t``.

**Discrete-step Gaussian schedules** (DDPM / improved DDPM / Diffusion-LM):
:class:`GaussianSchedule` holds the float64 tables ``betas``, ``alphas``, ``alphas_cumprod``,
``alphas_cumprod_prev`` and ``posterior_variance`` (all of shape ``[T]``, index ``i`` is step
``i + 1``), built by :meth:`GaussianSchedule.linear`, :meth:`GaussianSchedule.cosine`,
:meth:`GaussianSchedule.sqrt` or :func:`gaussian_schedule`.

:func:`sample_times` draws training times ``t = (1 - eps) u + eps``, optionally antithetic.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Union

import torch
from torch import Tensor

from . import checks as _checks

__all__ = [
    "CosineAlpha",
    "GaussianSchedule",
    "Geometric",
    "LinearAlpha",
    "LogLinear",
    "NoiseSchedule",
    "gaussian_schedule",
    "get_noise_schedule",
    "sample_times",
]

TimeLike = Union[Tensor, float, int]
"""A time: a tensor of any shape, or a python number."""

_HALF_PI = 0.5 * math.pi
_QUARTER_PI = 0.25 * math.pi


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _skip_value_checks() -> bool:
    """True where data-reading checks are off, or impossible (graph capture, compile)."""
    if not _checks.value_checks_enabled():
        return True
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    if is_compiling is not None and is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_range(lo: float, hi: float) -> None:
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("t contains NaN; diffusion times must lie in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"diffusion time t must lie in [0, 1]; got values in [{lo:.6g}, {hi:.6g}]")


def _as_time(t: TimeLike) -> tuple[Tensor, torch.dtype | None]:
    """Convert ``t`` to a floating tensor and validate ``0 <= t <= 1``.

    Returns the tensor to compute with and the dtype to round the results back to (``None``
    when the compute dtype is already the output dtype).
    """
    if isinstance(t, (bool, int, float)):
        _check_range(float(t), float(t))  # before rounding to the default dtype
        t = torch.as_tensor(float(t), dtype=torch.get_default_dtype())
        check = False
    else:
        if not isinstance(t, Tensor):
            try:
                t = torch.as_tensor(t)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(
                    f"t must be a tensor or a real number, got {type(t).__name__}"
                ) from exc
            check = True  # host data: checking costs no device sync
        else:
            check = not _skip_value_checks()
        if t.is_complex():
            raise TypeError(f"t must be real, got dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        if check and t.numel() > 0:
            if bool(torch.isnan(t).any()):
                _check_range(math.nan, math.nan)
            lo, hi = torch.aminmax(t)
            _check_range(float(lo), float(hi))
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float(), t.dtype
    return t, None


def _out(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x if dtype is None else x.to(dtype)


# --------------------------------------------------------------------------------------------
# continuous-time schedules
# --------------------------------------------------------------------------------------------


class NoiseSchedule(abc.ABC):
    """Base of the continuous-time noise schedules ``t in [0, 1] -> sigma(t)``.

    Subclasses implement :meth:`_sigma` and :meth:`_dsigma` on a validated floating tensor and
    may override :meth:`_alpha`, :meth:`_move_chance` and :meth:`_loss_weight` with closed forms
    that are more accurate than the generic ones derived from ``sigma``.

    Every public method takes ``t`` (tensor of any shape ``[*]`` or a python number) and returns
    a tensor of shape ``[*]`` and the dtype of ``t`` (see the module docstring).
    """

    # -- to implement -------------------------------------------------------------------------

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor:
        """Total noise ``sigma(t)`` for a validated floating tensor ``t``."""

    @abc.abstractmethod
    def _dsigma(self, t: Tensor) -> Tensor:
        """Rate ``d sigma / d t`` for a validated floating tensor ``t``."""

    # -- generic forms, overridable -----------------------------------------------------------

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-self._sigma(t))

    def _move_chance(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._sigma(t))

    def _loss_weight(self, t: Tensor) -> Tensor:
        # dsigma / expm1(sigma) written as dsigma e^-sigma / (1 - e^-sigma): the same value,
        # but expm1 cannot overflow for large sigma, and -expm1(-sigma) is exact for tiny sigma.
        sigma = self._sigma(t)
        return self._dsigma(t) * torch.exp(-sigma) / -torch.expm1(-sigma)

    # -- public API ---------------------------------------------------------------------------

    def sigma(self, t: TimeLike) -> Tensor:
        """Total noise ``sigma(t) >= 0``; a token is still clean with probability ``e^-sigma``."""
        x, dtype = _as_time(t)
        return _out(self._sigma(x), dtype)

    def dsigma(self, t: TimeLike) -> Tensor:
        """Time derivative ``d sigma / d t`` (the rate; SEDD's ``dsigma``)."""
        x, dtype = _as_time(t)
        return _out(self._dsigma(x), dtype)

    def __call__(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(sigma(t), dsigma(t))``, validating ``t`` once."""
        x, dtype = _as_time(t)
        return _out(self._sigma(x), dtype), _out(self._dsigma(x), dtype)

    def alpha(self, t: TimeLike) -> Tensor:
        """``alpha(t) = exp(-sigma(t))``: the probability that a token is still clean."""
        x, dtype = _as_time(t)
        return _out(self._alpha(x), dtype)

    def move_chance(self, t: TimeLike) -> Tensor:
        """``1 - alpha(t) = -expm1(-sigma(t))``: the probability that a token was noised."""
        x, dtype = _as_time(t)
        return _out(self._move_chance(x), dtype)

    def loss_weight(self, t: TimeLike) -> Tensor:
        """Continuous-time masked-diffusion weight ``-alpha'/(1 - alpha) = dsigma/expm1(sigma)``.

        Stable for tiny ``sigma``; ``+inf`` where ``sigma = 0`` and ``dsigma > 0`` (``t = 0`` for
        schedules that start clean).
        """
        x, dtype = _as_time(t)
        return _out(self._loss_weight(x), dtype)


def _check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {eps!r}")


@dataclasses.dataclass(frozen=True)
class LogLinear(NoiseSchedule):
    """Log-linear schedule (SEDD absorbing, MDLM): ``1 - e^-sigma = (1 - eps) t``.

    ``sigma(t) = -log1p(-(1 - eps) t)``, ``dsigma(t) = (1 - eps) / (1 - (1 - eps) t)``,
    ``alpha = 1 - (1 - eps) t``, ``move_chance = (1 - eps) t`` and ``loss_weight = 1 / t``.
    ``eps`` in ``[0, 1)`` keeps ``sigma(1) = -log(eps)`` finite; ``eps = 0`` is
    :class:`LinearAlpha`.
    """

    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    @property
    def _rate(self) -> float:
        return 1.0 - self.eps

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.log1p(-self._rate * t)

    def _dsigma(self, t: Tensor) -> Tensor:
        return self._rate / (1.0 - self._rate * t)

    def _alpha(self, t: Tensor) -> Tensor:
        return 1.0 - self._rate * t

    def _move_chance(self, t: Tensor) -> Tensor:
        return self._rate * t

    def _loss_weight(self, t: Tensor) -> Tensor:
        # (1 - eps) / ((1 - eps) t): eps cancels.
        return torch.reciprocal(t)


@dataclasses.dataclass(frozen=True)
class Geometric(NoiseSchedule):
    """Geometric schedule (SEDD uniform graph): ``sigma(t) = sigma_min^(1-t) sigma_max^t``.

    ``dsigma(t) = sigma(t) (ln sigma_max - ln sigma_min)``. ``sigma(0) = sigma_min`` and
    ``sigma(1) = sigma_max`` (up to one rounding of ``exp``). Requires
    ``0 < sigma_min < sigma_max < inf``.
    """

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def __post_init__(self) -> None:
        for name in ("sigma_min", "sigma_max"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if self.sigma_min <= 0.0:
            raise ValueError(f"sigma_min must be > 0, got {self.sigma_min!r}")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min!r}, "
                f"sigma_max={self.sigma_max!r}"
            )

    def _sigma(self, t: Tensor) -> Tensor:
        # (1 - t) ln(sigma_min) + t ln(sigma_max): exact logs at both endpoints.
        return torch.exp((1.0 - t) * math.log(self.sigma_min) + t * math.log(self.sigma_max))

    def _dsigma(self, t: Tensor) -> Tensor:
        return self._sigma(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))


@dataclasses.dataclass(frozen=True)
class LinearAlpha(NoiseSchedule):
    """Masked-diffusion linear schedule ``alpha(t) = 1 - t`` (MDLM linear, LLaDA).

    ``sigma = -log1p(-t)``, ``dsigma = 1/(1 - t)``, ``move_chance = t``,
    ``loss_weight = -alpha'/(1 - alpha) = 1/t``. Identical to ``LogLinear(eps=0)``;
    ``sigma(1) = dsigma(1) = +inf``.
    """

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.log1p(-t)

    def _dsigma(self, t: Tensor) -> Tensor:
        return torch.reciprocal(1.0 - t)

    def _alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def _move_chance(self, t: Tensor) -> Tensor:
        return t.clone()

    def _loss_weight(self, t: Tensor) -> Tensor:
        return torch.reciprocal(t)


@dataclasses.dataclass(frozen=True)
class CosineAlpha(NoiseSchedule):
    """Masked-diffusion cosine schedule ``alpha(t) = cos(pi t / 2)`` (MaskGIT-style, MDLM).

    - ``alpha = sin(pi (1 - t) / 2)`` (accurate near ``t = 1``, where ``alpha -> 0``),
    - ``move_chance = 1 - cos(pi t / 2) = 2 sin^2(pi t / 4)`` (accurate near ``t = 0``),
    - ``sigma = -log(alpha)``, evaluated as ``-log1p(-move_chance)`` while ``move_chance < 1/2``,
    - ``dsigma = (pi/2) tan(pi t / 2)``,
    - ``loss_weight = -alpha'/(1 - alpha) = (pi/2) sin(pi t/2) / (1 - cos(pi t/2))
      = (pi/2) cot(pi t / 4)``.

    ``sigma(1) = dsigma(1) = +inf``; ``loss_weight(0) = +inf``.
    """

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.sin(_HALF_PI * (1.0 - t))

    def _move_chance(self, t: Tensor) -> Tensor:
        return 2.0 * torch.sin(_QUARTER_PI * t).square()

    def _sigma(self, t: Tensor) -> Tensor:
        mc = self._move_chance(t)
        small = -torch.log1p(-mc.clamp(max=0.5))
        large = -torch.log(self._alpha(t))
        return torch.where(mc < 0.5, small, large)

    def _dsigma(self, t: Tensor) -> Tensor:
        return _HALF_PI * torch.sin(_HALF_PI * t) / self._alpha(t)

    def _loss_weight(self, t: Tensor) -> Tensor:
        return _HALF_PI / torch.tan(_QUARTER_PI * t)


_NOISE_SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "loglinear": LogLinear,
    "geometric": Geometric,
    "linear": LinearAlpha,
    "cosine": CosineAlpha,
}


def _normalize_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a string, got {type(name).__name__}")
    return name.strip().lower().replace("-", "").replace("_", "")


def get_noise_schedule(name: str, **kwargs: float) -> NoiseSchedule:
    """Build a continuous-time schedule by name.

    ``"loglinear"`` -> :class:`LogLinear` (``eps``), ``"geometric"`` -> :class:`Geometric`
    (``sigma_min``, ``sigma_max``), ``"linear"`` -> :class:`LinearAlpha`, ``"cosine"`` ->
    :class:`CosineAlpha`. Case, ``-`` and ``_`` are ignored (``"log-linear"`` works).
    Unknown names raise ``ValueError``; unknown keyword arguments raise ``TypeError``.
    """
    key = _normalize_name(name)
    if key not in _NOISE_SCHEDULES:
        raise ValueError(
            f"unknown noise schedule {name!r}; expected one of {sorted(_NOISE_SCHEDULES)}"
        )
    return _NOISE_SCHEDULES[key](**kwargs)


# --------------------------------------------------------------------------------------------
# discrete-step Gaussian schedules
# --------------------------------------------------------------------------------------------


def _check_num_steps(num_steps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return num_steps


def _check_max_beta(max_beta: float) -> None:
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must lie in (0, 1], got {max_beta!r}")


def _betas_for_alpha_bar(abar_grid: Tensor, max_beta: float) -> Tensor:
    """``beta_i = min(1 - abar(t_{i+1}) / abar(t_i), max_beta)`` for a grid ``[T + 1]``."""
    return (1.0 - abar_grid[1:] / abar_grid[:-1]).clamp(max=max_beta)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianSchedule:
    """Discrete-step Gaussian (DDPM) schedule: float64 tables of shape ``[T]``.

    Index ``i`` holds step ``i + 1`` of ``1..T``:

    - ``betas``: ``beta_t``, in ``(0, 1]``,
    - ``alphas = 1 - betas``,
    - ``alphas_cumprod``: ``abar_t = prod_{s <= t} alpha_s`` (a float64 ``cumprod``),
    - ``alphas_cumprod_prev``: ``abar_{t-1}``, with ``abar_0 = 1``,
    - ``posterior_variance``: ``beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (0 at the first step).

    Build with :meth:`from_betas`, :meth:`linear`, :meth:`cosine`, :meth:`sqrt` or
    :func:`gaussian_schedule`. The tables live on the CPU; move them with :meth:`to`.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    posterior_variance: Tensor

    def __post_init__(self) -> None:
        shape = self.betas.shape
        if self.betas.dim() != 1 or shape[0] < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(shape)}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, Tensor) or v.shape != shape:
                raise ValueError(f"{f.name} must be a tensor of shape {tuple(shape)}")

    @property
    def num_steps(self) -> int:
        """``T``, the number of diffusion steps."""
        return self.betas.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianSchedule:
        """A copy with every table moved to ``device`` and/or cast to ``dtype``."""
        moved = {
            f.name: getattr(self, f.name).to(device=device, dtype=dtype)
            for f in dataclasses.fields(self)
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        b = self.betas
        return (
            f"GaussianSchedule(num_steps={self.num_steps}, beta=[{float(b[0]):.4g} .. "
            f"{float(b[-1]):.4g}], abar_T={float(self.alphas_cumprod[-1]):.4g})"
        )

    @classmethod
    def from_betas(cls, betas: Tensor | list[float]) -> GaussianSchedule:
        """Derive every table from ``betas`` ``[T]`` (converted to float64, each in ``(0, 1]``)."""
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if b.dim() != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1]; got values in [{float(b.min()):.6g}, "
                f"{float(b.max()):.6g}]"
            )
        alphas = 1.0 - b
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_variance = b * (1.0 - abar_prev) / (1.0 - abar)
        return cls(b, alphas, abar, abar_prev, posterior_variance)

    @classmethod
    def linear(
        cls, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> GaussianSchedule:
        """DDPM linear schedule: ``betas = linspace(beta_start, beta_end, T)`` exactly.

        No rescaling with ``T`` (improved DDPM's ``1000 / T`` factor is not applied).
        """
        _check_num_steps(num_steps)
        if not (0.0 < beta_start <= 1.0 and 0.0 < beta_end <= 1.0):
            raise ValueError(
                f"beta_start and beta_end must lie in (0, 1], got {beta_start!r}, {beta_end!r}"
            )
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        return cls.from_betas(betas)

    @classmethod
    def cosine(cls, num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> GaussianSchedule:
        """Improved-DDPM cosine schedule.

        ``abar(t) = cos^2(((t + s)/(1 + s)) pi/2) / cos^2((s/(1 + s)) pi/2)`` and
        ``beta_i = min(1 - abar(i/T) / abar((i-1)/T), max_beta)`` for ``i = 1..T``; so
        ``alphas_cumprod[i-1] = abar(i/T)`` until the clip first applies.
        """
        _check_num_steps(num_steps)
        _check_max_beta(max_beta)
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"s must be a finite number >= 0, got {s!r}")
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((t + s) / (1.0 + s) * _HALF_PI).square()
        abar = f / math.cos(s / (1.0 + s) * _HALF_PI) ** 2
        return cls.from_betas(_betas_for_alpha_bar(abar, max_beta))

    @classmethod
    def sqrt(cls, num_steps: int, max_beta: float = 0.999) -> GaussianSchedule:
        """Diffusion-LM ``sqrt`` schedule, ``abar(t) = 1 - sqrt(t + 1e-4)``.

        Diffusion-LM's ``betas_for_alpha_bar`` convention: for ``i = 0..T-1``,
        ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)``. Since ``abar(0) = 0.99``,
        ``alphas_cumprod[i] = abar((i+1)/T) / abar(0)`` until the clip applies (the last step,
        where ``abar(1) < 0``, is always clipped to ``max_beta``).
        """
        _check_num_steps(num_steps)
        _check_max_beta(max_beta)
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        abar = 1.0 - torch.sqrt(t + 1e-4)
        return cls.from_betas(_betas_for_alpha_bar(abar, max_beta))


_GAUSSIAN_SCHEDULES = {"linear": "linear", "cosine": "cosine", "sqrt": "sqrt"}


def gaussian_schedule(name: str, num_steps: int, **kwargs: float) -> GaussianSchedule:
    """Build a :class:`GaussianSchedule` by name: ``"linear"``, ``"cosine"`` or ``"sqrt"``.

    ``kwargs`` go to the matching constructor (``beta_start``/``beta_end``, ``s``/``max_beta``,
    ``max_beta``).
    """
    key = _normalize_name(name)
    if key not in _GAUSSIAN_SCHEDULES:
        raise ValueError(
            f"unknown Gaussian schedule {name!r}; expected one of {sorted(_GAUSSIAN_SCHEDULES)}"
        )
    return getattr(GaussianSchedule, _GAUSSIAN_SCHEDULES[key])(num_steps, **kwargs)


# --------------------------------------------------------------------------------------------
# training-time draw
# --------------------------------------------------------------------------------------------


def sample_times(
    n: int,
    *,
    eps: float = 1e-3,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` training times ``t = (1 - eps) u + eps`` in ``[eps, 1]``; returns ``[n]``.

    ``u ~ U[0, 1)`` i.i.d., or with ``antithetic=True`` (low-discrepancy, MDLM) one
    ``u_0 ~ U[0, 1)`` and ``u_i = (u_0 + i/n) mod 1``. The draw is made in float64 and rounded
    once to ``dtype``, then clamped to ``[eps, 1]`` in ``dtype``. ``generator`` makes it
    reproducible; it must live on ``device``.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_eps(eps)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if device is None and generator is not None:
        device = generator.device
    if antithetic:
        u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        u = torch.remainder(u0 + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    t = (1.0 - eps) * u + eps
    return t.to(dtype).clamp(min=eps, max=1.0)
