"""Gaussian (continuous-state) samplers, DDPM ancestral and DDIM(eta) (docs/ops.md#ddpm-step,
docs/ops.md#ddim-step), as drop-in replacements of diffusers' ``DDPMScheduler`` and
``DDIMScheduler`` (diffusers 0.42.1).

diffusers compatibility. The constructor arguments (``num_train_timesteps``, ``beta_start``,
``beta_end``, ``beta_schedule``, ``trained_betas``, ``variance_type``, ``clip_sample``,
``clip_sample_range``, ``prediction_type``, ``thresholding``, ``dynamic_thresholding_ratio``,
``sample_max_value``, ``set_alpha_to_one``, ``steps_offset``, ``timestep_spacing``,
``rescale_betas_zero_snr``), the attributes (``betas``, ``alphas``, ``alphas_cumprod``,
``timesteps`` (int64), ``num_inference_steps``, ``init_noise_sigma``, ``order``, ``config``
(a frozen mapping with attribute access), DDIM's ``final_alpha_cumprod``) and the methods
(``from_config``, ``set_timesteps``, ``scale_model_input``, ``step``, ``add_noise``,
``get_velocity``) mean what they mean in diffusers, with diffusers' defaults, so a diffusers
sampling loop runs with only the import changed and gives diffusers' result. Noise: DDPM's
``step`` draws ``torch.randn(model_output.shape, generator=generator)`` at every step with
``t > 0``, as diffusers does (a CPU generator draws on the CPU; a list of generators draws one
sample each), so the same generator gives the same noise; DDIM also takes ``variance_noise``.
Known differences, where diffusers 0.42.1 gives NaN or a spurious timestep:
``variance_type="fixed_large_log"`` uses ``log(beta_t)`` as a log variance
(``std = exp(log(beta_t) / 2)``, the ``fixed_large`` step; diffusers takes its square root:
NaN); DDIM clamps ``1 - alpha_bar' - std^2`` at 0 as the fused op does (``eta > 1``; diffusers:
NaN); ``timestep_spacing="trailing"`` gives exactly ``num_inference_steps`` timesteps (for some
``(num_train_timesteps, num_inference_steps)``, e.g. ``(1000, 61)``, diffusers' float
``arange`` appends a ``-1``). Also: custom ``timesteps`` set ``num_inference_steps`` to their
number; ``save_config`` / ``from_pretrained`` are not provided (``from_config`` takes a
diffusers config).

Arithmetic. The tables are float32 as diffusers builds them, or float64 (``schedule=`` or
``convention="fastdiff"``). Per-step coefficients are formed in the tables' dtype in diffusers'
order. With float64 tables the update is one call of the fused op :func:`fastdiff.ddpm_step` /
:func:`fastdiff.ddim_step` (a Triton kernel on the GPU, noise drawn in the kernel), fed the
model output or, after clipping / thresholding / a v-prediction, the predicted ``x0``. The
update runs in torch instead, as diffusers computes it, where the ops cannot express the step:

- float32 tables: diffusers forms ``beta_t = 1 - alpha_bar_t / alpha_bar_prev`` in float32
  (relative error up to ~1e-4 where ``beta_t`` is small); the ops form their coefficients in
  float64, which moves a 50-step DDPM run by up to ~6e-6 from diffusers' result, so these
  steps use diffusers' float32 coefficients;
- DDPM ``variance_type="learned"`` / ``"learned_range"`` (a per-element variance from the
  model), and ``"fixed_large"`` / ``"fixed_large_log"`` in a plan whose last timestep is above
  0 (diffusers adds ``beta_t`` noise there; the op adds none at ``alpha_bar_next = 1``);
- DDIM with clipping or thresholding and ``use_clipped_model_output=False`` (the clipped
  ``x0`` with the unclipped noise prediction);
- timesteps with ``alpha_bar = 0`` (zero terminal SNR), which the ops do not take.

At a last step from ``t > 0`` the fused DDPM step adds no noise with ``fixed_small``, where
diffusers adds ``1e-10 z`` (its variance floor ``1e-20``).

fastdiff's conventions, ``convention="fastdiff"`` (what :func:`fastdiff.sample` uses): the
defaults of the arguments left out become float64 tables (built from the same beta
arguments; ``GaussianSchedule.linear(1000)`` by default), ``timestep_spacing="linspace"``
(``round(linspace(T - 1, 0, n))``), ``clip_sample=False``, DDPM ``variance_type="fixed_large"``
(``sigma_t^2 = beta_t``) and DDIM ``step_target="next"`` (each step goes to the next planned
timestep, ``final_alpha_cumprod`` after the last; diffusers' ``"stride"`` goes to
``t - num_train_timesteps // num_inference_steps``). Every one can still be given explicitly.
``schedule=`` takes a :class:`fastdiff.schedules.GaussianSchedule` instead of the beta
arguments (float64 tables, ``num_train_timesteps`` its length). DDIM's ``eta=`` is the default
``eta`` of ``step`` and the ``eta`` of :func:`fastdiff.sample`.

fastdiff additions. ``step(..., seed=)`` draws counter-based noise keyed by the run's ``seed``
and the step's index in ``timesteps`` (so a hand-written loop reproduces
:func:`fastdiff.sample` with that seed), ``fixed=`` (bool, a prefix of the state's leading
dimensions) keeps those positions; ``add_noise`` also takes ``noise=None`` (drawn with
``seed`` / ``generator``), number timesteps and ``fixed``; ``start`` / ``init_sample`` draw the
``N(0, I)`` start state keyed by a seed; ``step_loop`` runs the plan in fastdiff's step loop.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.gaussian import add_noise_gaussian
from fastdiff.reference import gaussian as ref
from fastdiff.samplers.base import (
    Scheduler,
    SchedulerOutput,
    derive_seeds,
    init_seed,
    make_step_loop,
    resolve_run_seed,
    start_device,
    state_start,
)
from fastdiff.samplers.loop import StepLoop
from fastdiff.schedules import GaussianSchedule

F64 = torch.float64
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
STEP_TARGETS = ("stride", "next")
CONVENTIONS = ("diffusers", "fastdiff")
CONVENTION_DEFAULTS = {
    "diffusers": {
        "timestep_spacing": "leading",
        "clip_sample": True,
        "variance_type": "fixed_small",
        "step_target": "stride",
    },
    "fastdiff": {
        "timestep_spacing": "linspace",
        "clip_sample": False,
        "variance_type": "fixed_large",
        "step_target": "next",
    },
}
"""The defaults of the arguments left as ``None``, by ``convention``."""
_POSTERIOR_FLOOR = 1e-20  # diffusers' clamp of the posterior variance


class SchedulerConfig(dict):
    """A scheduler's configuration: a frozen ``dict`` whose keys are also attributes
    (``scheduler.config.num_train_timesteps``), like diffusers' ``FrozenDict``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no {name!r}") from None

    def _frozen(self, *args, **kwargs):
        raise TypeError("the scheduler config is frozen: build a new scheduler with from_config")

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _frozen
    clear = pop = popitem = setdefault = update = _frozen

    def __reduce__(self):
        return (SchedulerConfig, (dict(self),))


@dataclass
class GaussianSchedulerOutput(SchedulerOutput):
    """Result of ``step`` (diffusers' ``DDPMSchedulerOutput`` / ``DDIMSchedulerOutput``)."""

    pred_original_sample: torch.Tensor | None = None
    """The predicted ``x0`` of this step (clipped / thresholded as configured)."""

    def __getitem__(self, key: int | str) -> torch.Tensor:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (self.prev_sample, self.pred_original_sample)


def state_view(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The denoiser output, checked to have the state's ``shape`` (and, with value checks on,
    to be finite)."""
    if not isinstance(out, torch.Tensor) or out.shape != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the denoiser returned {got}; expected {tuple(shape)}")
    if checks.value_checks_enabled():
        checks.finite("the denoiser output", out)
    return out


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _real(name: str, value, *, low: float, high: float = math.inf, closed: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = low <= value <= high if closed else low < value <= high
    if not (ok and math.isfinite(value)):
        side = "[" if closed else "("
        raise ValueError(f"{name} must be a finite number in {side}{low}, {high}], got {value}")
    return value


def _int(name: str, value, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so that ``alpha_bar`` ends at 0 (Lin et al. 2023, Algorithm 1): shift
    ``sqrt(alpha_bar)`` so its last value is 0 and scale it so its first is unchanged."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def _spaced_timesteps(spacing: str, train: int, steps: int, offset: int) -> np.ndarray:
    """diffusers' ``timestep_spacing`` grids (int64, descending)."""
    if spacing == "linspace":
        grid = np.linspace(0, train - 1, steps).round()[::-1]
    elif spacing == "leading":
        grid = (np.arange(steps) * (train // steps))[::-1] + offset
    else:  # trailing: round(T - k T / n) - 1 (the first n values of diffusers' float arange)
        grid = np.round(np.arange(train, 0, -train / steps))[:steps] - 1
    return grid.astype(np.int64)


def _randn(
    shape: torch.Size,
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``N(0, 1)`` drawn as diffusers' ``randn_tensor``: with a CPU generator for another
    device on the CPU, then moved; a list of generators draws one leading-dimension slice
    each."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    for g in gens:
        if g is not None and not isinstance(g, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(g).__name__}")
    where = device
    first = gens[0]
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(f"cannot draw a {device} tensor with a {first.device} generator")
        where = torch.device("cpu")
    if len(gens) == 1:
        return torch.randn(shape, generator=first, device=where, dtype=dtype).to(device)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    one = (1, *shape[1:])
    parts = [torch.randn(one, generator=g, device=where, dtype=dtype) for g in gens]
    return torch.cat(parts).to(device)


class _GaussianScheduler(Scheduler):
    """Shared tables, configuration, timesteps, noising and step loop of the two schedulers."""

    order = 1
    init_noise_sigma = 1.0
    _BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")
    _CONVENTION_KEYS: tuple[str, ...] = ("timestep_spacing", "clip_sample")

    # ---------------------------------------------------------------------------- set-up

    def _setup(self, args: dict, schedule: GaussianSchedule | None) -> None:
        """Check the constructor's ``args``, fill the convention's defaults, build the tables."""
        convention = _choice("convention", args["convention"], CONVENTIONS)
        for key in self._CONVENTION_KEYS:
            if args[key] is None:
                args[key] = CONVENTION_DEFAULTS[convention][key]
        if schedule is not None and not isinstance(schedule, GaussianSchedule):
            raise TypeError(
                "schedule must be a fastdiff.schedules.GaussianSchedule, got "
                f"{type(schedule).__name__}"
            )
        train = args["num_train_timesteps"]
        if schedule is not None:
            if train is not None and train != schedule.num_steps:
                raise ValueError(
                    f"num_train_timesteps ({train}) differs from the schedule's length "
                    f"({schedule.num_steps})"
                )
            if args["trained_betas"] is not None and not torch.equal(
                torch.as_tensor(args["trained_betas"], dtype=F64), schedule.betas
            ):
                raise ValueError("pass schedule or trained_betas, not both")
            train = schedule.num_steps
            args["trained_betas"] = schedule.betas.tolist()
        elif train is None and args["trained_betas"] is not None:
            train = torch.as_tensor(args["trained_betas"]).numel()
        args["num_train_timesteps"] = _int(
            "num_train_timesteps", 1000 if train is None else train, low=1
        )
        args["schedule"] = schedule
        self._check(args)
        dtype = F64 if schedule is not None or convention == "fastdiff" else torch.float32
        self._internal_dict = SchedulerConfig(args)
        self.schedule = schedule
        self.betas = self._make_betas(args, dtype)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        train = args["num_train_timesteps"]
        self.timesteps = torch.arange(train - 1, -1, -1, dtype=torch.int64)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._plan: list[int] | None = None
        self._positions: dict[int, int] = {}
        self._cache: dict = {}

    def _check(self, args: dict) -> None:
        _real("beta_start", args["beta_start"], low=0.0, high=1.0)
        _real("beta_end", args["beta_end"], low=0.0, high=1.0)
        _choice("beta_schedule", args["beta_schedule"], self._BETA_SCHEDULES)
        _choice("prediction_type", args["prediction_type"], PREDICTION_TYPES)
        _choice("timestep_spacing", args["timestep_spacing"], TIMESTEP_SPACINGS)
        for key in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
            _flag(key, args[key])
        _real("clip_sample_range", args["clip_sample_range"], low=0.0, closed=False)
        _real("dynamic_thresholding_ratio", args["dynamic_thresholding_ratio"], low=0.0, high=1.0)
        _real("sample_max_value", args["sample_max_value"], low=1.0)
        _int("steps_offset", args["steps_offset"], low=0)
        train = args["num_train_timesteps"]
        if args["trained_betas"] is not None:
            shape = tuple(torch.as_tensor(args["trained_betas"]).shape)
            if shape != (train,):
                raise ValueError(
                    f"trained_betas must have shape ({train},) (num_train_timesteps), got {shape}"
                )

    def _make_betas(self, args: dict, dtype: torch.dtype) -> torch.Tensor:
        train, start, end = args["num_train_timesteps"], args["beta_start"], args["beta_end"]
        kind = args["beta_schedule"]
        if args["trained_betas"] is not None:
            betas = torch.as_tensor(args["trained_betas"], dtype=dtype).clone()
        elif kind == "linear":
            betas = torch.linspace(start, end, train, dtype=dtype)
        elif kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, train, dtype=dtype) ** 2
        elif kind == "squaredcos_cap_v2":
            betas = GaussianSchedule.cosine(train).betas.to(dtype)
        else:  # sigmoid (DDPM)
            betas = torch.sigmoid(torch.linspace(-6, 6, train, dtype=dtype)) * (end - start)
            betas = betas + start
        if args["rescale_betas_zero_snr"]:
            betas = _zero_terminal_snr(betas)
        return betas

    @property
    def config(self) -> SchedulerConfig:
        """The constructor's arguments (convention defaults filled in), frozen; attribute
        access as in diffusers (``scheduler.config.prediction_type``)."""
        return self._internal_dict

    @classmethod
    def from_config(cls, config: Mapping | object, **kwargs):
        """A scheduler from ``config`` (a mapping such as another scheduler's ``.config``,
        diffusers' included, or an object with a ``config`` mapping) with ``kwargs`` on top.
        Keys of ``config`` that are not arguments of this class are ignored (a DDPM config
        gives a DDIM scheduler, as in diffusers); unknown ``kwargs`` are an error."""
        if not isinstance(config, Mapping):
            config = getattr(config, "config", None)
            if not isinstance(config, Mapping):
                raise TypeError("config must be a mapping (a scheduler's .config)")
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(kwargs) - params)
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown} for {cls.__name__}")
        args = {k: v for k, v in config.items() if k in params}
        args.update(kwargs)
        if "schedule" in kwargs and "trained_betas" not in kwargs:
            args.pop("trained_betas", None)
            args.pop("num_train_timesteps", None)
        return cls(**args)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v!r}" for k, v in self.config.items() if k not in ("trained_betas", "schedule")
        )
        return f"{type(self).__name__}({shown})"

    # ---------------------------------------------------------------------------- timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Plan the reverse steps: ``timesteps`` (int64, descending, on ``device``).

        ``num_inference_steps = n <= num_train_timesteps`` picks ``n`` timesteps by
        ``config.timestep_spacing``: ``"linspace"`` ``round(linspace(0, T - 1, n))``,
        ``"leading"`` ``k (T // n) + steps_offset``, ``"trailing"`` ``round(T - k T / n) - 1``
        (``k = n - 1 .. 0``; diffusers' grids). Or ``timesteps``: a custom strictly
        descending list in ``[0, T)`` (``num_inference_steps`` is then its length).
        """
        train = self.config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass num_inference_steps or timesteps, not both")
            grid = self._custom_timesteps(timesteps, train)
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps (or timesteps=)")
            n = _int("num_inference_steps", num_inference_steps, low=1)
            if n > train:
                raise ValueError(
                    f"num_inference_steps ({n}) cannot be larger than num_train_timesteps ({train})"
                )
            grid = _spaced_timesteps(
                self.config.timestep_spacing, train, n, self.config.steps_offset
            )
            if grid.max() >= train:
                raise ValueError(
                    f"steps_offset ({self.config.steps_offset}) moves the timesteps past "
                    f"num_train_timesteps ({train})"
                )
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(grid)
        self.timesteps = torch.from_numpy(grid).to(device)
        self._plan = grid.tolist()
        self._positions = {t: i for i, t in enumerate(self._plan)}
        self._cache = {}

    def _custom_timesteps(self, timesteps, train: int) -> np.ndarray:
        grid = np.asarray(
            timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps
        )
        if grid.ndim != 1 or grid.size < 1 or not np.issubdtype(grid.dtype, np.integer):
            raise ValueError(f"timesteps must be a non-empty 1-D list of ints, got {timesteps!r}")
        if (np.diff(grid) >= 0).any():
            raise ValueError("custom timesteps must be in descending order")
        if grid[0] >= train or grid[-1] < 0:
            raise ValueError(f"custom timesteps must lie in [0, num_train_timesteps = {train})")
        return grid.astype(np.int64)

    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sample`` itself (DDPM / DDIM do not scale the model input)."""
        return sample

    def _timestep(self, timestep) -> int:
        """The integer timestep of ``step`` (a number or a tensor holding one value)."""
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().reshape(-1)
            if flat.numel() < 1 or not bool((flat == flat[0]).all()):
                raise ValueError("timestep must hold a single value (one step for the batch)")
            timestep = flat[0].item()
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
            raise TypeError(f"timestep must be an int or a tensor, got {type(timestep).__name__}")
        train = self.config.num_train_timesteps
        if timestep != int(timestep) or not 0 <= timestep < train:
            raise ValueError(f"timestep must be an integer in [0, {train}), got {timestep!r}")
        return int(timestep)

    def _position(self, t: int) -> int:
        """The index of ``t`` in the planned ``timesteps``."""
        if t not in self._positions:
            raise ValueError(f"timestep {t} is not one of the planned timesteps")
        return self._positions[t]

    def _next_planned(self, i: int) -> int:
        return self._plan[i + 1] if i + 1 < len(self._plan) else -1

    # ---------------------------------------------------------------------------- columns

    @abc.abstractmethod
    def _columns(self, t: torch.Tensor, prev: torch.Tensor, eta: float) -> dict:
        """Per-step values ``[K]`` for timesteps ``t`` stepping to ``prev`` (-1: past the end):
        the coefficients in the tables' dtype, ``alpha_bar`` / ``alpha_bar_next`` in float64."""

    def _values_allow_op(self, cols: dict) -> bool:
        """Whether these steps' values let the fused op run (float64 tables, ``0 < alpha_bar <
        1``, and the scheduler's own conditions)."""
        a = cols["alpha_bar"]
        return self.alphas_cumprod.dtype == F64 and bool(((a > 0) & (a < 1)).all())

    @abc.abstractmethod
    def _prev_of(self, t: int, i: int | None) -> int:
        """The timestep the step from ``t`` (plan index ``i``, or ``None``) goes to."""

    def _step_columns(
        self, t: int, i: int | None, eta: float, device: torch.device
    ) -> tuple[dict, bool]:
        """The 0-d values of the step from ``t`` (plan index ``i``) and whether the values
        allow the fused op (the plan's answer for a planned step)."""
        if i is not None:
            cols, ok = self._plan_columns(eta, device)
            return {k: v[i] for k, v in cols.items()}, ok
        prev = self._prev_of(t, None)
        cols = self._columns(torch.tensor([t]), torch.tensor([prev]), eta)
        ok = self._values_allow_op(cols)
        return {k: v[0].to(device) for k, v in cols.items()}, ok

    def _plan_columns(self, eta: float, device: torch.device) -> tuple[dict, bool]:
        """The columns ``[steps]`` of the plan on ``device`` (cached until ``set_timesteps``)."""
        key = (eta, str(device))
        if key not in self._cache:
            plan = self._plan
            t = torch.tensor(plan)
            prev = torch.tensor([self._prev_of(s, i) for i, s in enumerate(plan)])
            cols = self._columns(t, prev, eta)
            ok = self._values_allow_op(cols)
            self._cache[key] = ({k: v.to(device) for k, v in cols.items()}, ok)
        return self._cache[key]

    # ---------------------------------------------------------------------------- predictions

    def _clipped(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0`` after dynamic thresholding or clipping to ``clip_sample_range``."""
        cfg = self.config
        if cfg.thresholding:
            dtype = x0.dtype
            flat = x0.reshape(x0.shape[0], -1)
            if dtype not in (torch.float32, F64):
                flat = flat.float()
            s = torch.quantile(flat.abs(), cfg.dynamic_thresholding_ratio, dim=1)
            s = torch.clamp(s, min=1, max=cfg.sample_max_value)[:, None]
            return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def _x0(self, model_output: torch.Tensor, x_t: torch.Tensor, v: dict) -> torch.Tensor:
        """The predicted ``x0`` before clipping."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (x_t - v["sqrt_one_minus_alpha_bar"] * model_output) / v["sqrt_alpha_bar"]
        if kind == "sample":
            return model_output
        return v["sqrt_alpha_bar"] * x_t - v["sqrt_one_minus_alpha_bar"] * model_output

    def _clipping(self) -> bool:
        return bool(self.config.clip_sample or self.config.thresholding)

    # ---------------------------------------------------------------------------- checks

    def _check_step(self, model_output, sample, fixed, seed, generator) -> torch.Tensor | None:
        """Check ``step``'s tensors; returns ``fixed`` expanded to ``sample.shape[:-1]``."""
        checks.floating("sample", sample, min_dim=1)
        checks.floating("model_output", model_output)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}; expected "
                f"{tuple(sample.shape)} (the shape of sample)"
            )
        fixed = checks.bool_mask("fixed", fixed, sample.shape[:-1])
        checks.same_device(model_output=model_output, sample=sample, fixed=fixed)
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if checks.value_checks_enabled():
            checks.finite("model_output", model_output)
            checks.finite("sample", sample)
        return fixed

    def _step_key(self, seed, i: int | None, device: torch.device) -> int:
        """The counter-based seed of step ``i`` of a run keyed by ``seed``."""
        if i is None:
            raise ValueError("seed= needs a timestep of the plan (call set_timesteps first)")
        return derive_seeds(resolve_run_seed(seed, None, device), 1, start=i)[0]

    @staticmethod
    def _keyed_noise(key, like: torch.Tensor) -> torch.Tensor:
        """The ops' counter-based ``N(0, 1)`` for ``like``'s shape (rows = flattened leading
        positions, columns = the last dimension)."""
        h = like.shape[-1]
        rows = torch.arange(like.numel() // h, device=like.device)
        draw = backend.draw_function("normal", frandom.normal, rows.device)
        return draw(key, 0, rows, h).to(like.dtype).reshape(like.shape)

    @staticmethod
    def _keep(new: torch.Tensor, x_t: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
        return new if fixed is None else torch.where(fixed[..., None], x_t, new)

    # ---------------------------------------------------------------------------- noising

    def _alpha_bar_at(self, timesteps, batch: int, device: torch.device):
        """``alphas_cumprod[timesteps]`` as the ops take it: a float, or a float64 tensor of
        ``1`` or ``batch`` values (float timesteps are rounded, halves to even)."""
        train = self.config.num_train_timesteps
        table = self.alphas_cumprod
        if isinstance(timesteps, torch.Tensor):
            t = timesteps.detach()
            t = (t.round() if t.is_floating_point() else t).long().reshape(-1)
            if t.numel() not in (1, batch):
                raise ValueError(
                    f"timesteps must hold 1 or {batch} values (one per sample), got {t.numel()}"
                )
            if checks.value_checks_enabled() and t.numel():
                lo, hi = int(t.min()), int(t.max())
                if lo < 0 or hi >= train:
                    raise ValueError(
                        f"timesteps must lie in [0, {train}), got {lo if lo < 0 else hi}"
                    )
            a = table.to(device)[t.to(device)].to(F64)
            return a.reshape(()) if a.numel() == 1 else a
        if isinstance(timesteps, bool) or not isinstance(timesteps, numbers.Real):
            raise TypeError(f"timesteps must be a number or a tensor, got {timesteps!r}")
        if not math.isfinite(timesteps) or not 0 <= round(timesteps) < train:
            raise ValueError(f"timesteps must lie in [0, {train}), got {timesteps!r}")
        return float(table[round(timesteps)])

    def add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor | None,
        timesteps: int | torch.Tensor,
        *,
        fixed: torch.Tensor | None = None,
        seed: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forward noising ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` with
        ``alpha_bar_t = alphas_cumprod[timesteps]`` (diffusers' ``add_noise``), by
        :func:`fastdiff.add_noise_gaussian`.

        ``original_samples`` ``[B, ...]``; ``timesteps``: an int tensor of 1 or ``B`` values
        (one per sample; float tensors are rounded, halves to even) or a number, in
        ``[0, num_train_timesteps)``; ``noise`` like ``original_samples``, or ``None`` to draw
        it keyed by ``seed`` / ``generator``; ``fixed``: positions left clean.
        """
        checks.floating("original_samples", original_samples, min_dim=1)
        x0 = original_samples
        a = self._alpha_bar_at(timesteps, x0.shape[0], x0.device)
        if x0.dim() == 1:  # one value per sample: the feature dimension is 1
            x0 = x0[:, None]
            noise = None if noise is None else noise.reshape(x0.shape)
        noised = add_noise_gaussian(
            x0, alpha_bar=a, noise=noise, fixed=fixed, generator=generator, seed=seed
        )
        return noised.x_t.reshape(original_samples.shape)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target ``sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) sample``
        (per sample ``timesteps``, in the dtype of ``sample``)."""
        checks.floating("sample", sample, min_dim=1)
        t = self._alpha_bar_at(timesteps, sample.shape[0], sample.device)
        a = torch.as_tensor(t, device=sample.device).to(sample.dtype).reshape(-1)
        a = a.reshape(a.shape + (1,) * (sample.dim() - 1))
        return a**0.5 * noise - (1 - a) ** 0.5 * sample

    # ---------------------------------------------------------------------------- fastdiff loop

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
        """``(x_t, fixed)``: ``N(0, I)`` ``[B, L, H]`` keyed by the run's seed (dtype of
        ``init``, else the default dtype), with ``init`` kept at ``fixed`` positions."""
        shape, init, fixed = state_start(shape, init, fixed, device)
        dev = start_device(device, init)
        dtype = init.dtype if init is not None else torch.get_default_dtype()
        key = resolve_run_seed(seed, generator, dev)
        rows = torch.arange(shape[0] * shape[1], device=dev)
        draw = backend.draw_function("normal", frandom.normal, rows.device)
        x_t = draw(init_seed(key), 0, rows, shape[2]).to(dtype).reshape(shape)
        if init is not None:
            x_t = torch.where(fixed[..., None], init, x_t)
        return x_t, fixed

    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        """The plan as a :class:`StepLoop` keyed by the run's ``seed``: every step computes what
        ``step(..., seed=seed, fixed=fixed)`` computes (DDIM with the constructor's ``eta``)."""
        if self._plan is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) first")
        self._check_loop()
        shape = x.shape
        kept = checks.bool_mask("fixed", fixed, shape[:-1])
        cols, ok = self._plan_columns(self._loop_eta(), x.device)
        use_op = ok and self._static_op_ok(self._loop_eta(), False)
        eta_rows = self._eta_rows(self._loop_eta(), x)

        def apply(out, x_t, key, values, i):
            model_output = state_view(out, shape)
            prev, _ = self._advance(
                model_output,
                x_t,
                values,
                use_op=use_op,
                eta=self._loop_eta(),
                eta_rows=eta_rows,
                use_clipped=False,
                predicted_variance=None,
                noise=None,
                seed=key,
                fixed=kept,
                want_x0=False,
            )
            return prev

        inputs = self.timesteps.to(device=x.device, dtype=torch.float32)
        return make_step_loop(apply, inputs, cols, seed, fixed=fixed)

    def _check_loop(self) -> None:
        """Options that the step loop cannot run (none by default)."""

    def _loop_eta(self) -> float:
        return 0.0

    def _eta_rows(self, eta: float, x: torch.Tensor) -> torch.Tensor | None:
        return None

    @abc.abstractmethod
    def _static_op_ok(self, eta: float, use_clipped: bool) -> bool:
        """Whether the step options let the fused op run."""

    @abc.abstractmethod
    def _advance(self, model_output, x_t, v, **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_t', x0)`` of one step with the 0-d values ``v``."""

    def _op_call(self, name: str, fallback, model_output, x_t, v, fixed, noise, seed, *extra):
        """One call of the fused op ``name`` (its resolved implementation) on ``[N, H]`` rows:
        ``extra`` are the op's arguments after ``alpha_bar_next`` and before the guidance
        inputs."""
        h = x_t.shape[-1]
        n = x_t.numel() // h
        impl = backend.resolve(name, fallback, x_t.device)
        out = impl(
            model_output.reshape(n, h),
            x_t.reshape(n, h),
            v["alpha_bar"].expand(n),
            v["alpha_bar_next"].expand(n),
            *extra,
            None,
            None,
            None if noise is None else noise.reshape(n, h),
            None if fixed is None else fixed.reshape(n),
            0 if seed is None else seed,
            0,
        )
        return out.reshape(x_t.shape)


class DDPMScheduler(_GaussianScheduler):
    """DDPM ancestral sampler, diffusers' ``DDPMScheduler`` (see the module docstring).

    Step from ``t`` to ``t'`` (the next planned timestep; ``t - 1`` before ``set_timesteps``;
    ``alpha_bar' = 1`` after the last), ``alpha_t = alpha_bar / alpha_bar'``,
    ``beta_t = 1 - alpha_t``::

        x0  = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)      epsilon
            = model_output                                          sample
            = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v             v_prediction
        x0  <- clip(x0) / threshold(x0)                             clip_sample / thresholding
        x_t' = sqrt(alpha_bar') beta_t / (1 - alpha_bar) x0
               + sqrt(alpha_t) (1 - alpha_bar') / (1 - alpha_bar) x_t + std z   (z at t > 0)

    ``std^2``: ``fixed_small`` the posterior variance
    ``beta_t (1 - alpha_bar') / (1 - alpha_bar)`` (floored at 1e-20), ``fixed_large``
    ``beta_t``, the ``_log`` variants the same through a log variance, ``learned`` the
    model's variance, ``learned_range`` ``exp(f log beta_t + (1 - f) log posterior)`` with
    ``f = (v + 1) / 2`` (the model output then holds ``[eps, v]`` along dimension 1). Runs
    :func:`fastdiff.ddpm_step` where the module docstring says so.

    ``convention="fastdiff"`` defaults: ``variance_type="fixed_large"``,
    ``timestep_spacing="linspace"``, ``clip_sample=False``, float64 tables.
    """

    _BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
    _CONVENTION_KEYS = ("timestep_spacing", "clip_sample", "variance_type")
    OPTIONS = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "variance_type",
        "clip_sample",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
        "convention",
    )
    """The arguments :func:`fastdiff.sample` passes on (``schedule`` apart)."""

    def __init__(
        self,
        num_train_timesteps: int | None = None,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        variance_type: str | None = None,
        clip_sample: bool | None = None,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str | None = None,
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        *,
        schedule: GaussianSchedule | None = None,
        convention: str = "diffusers",
    ) -> None:
        """diffusers' arguments and defaults (``num_train_timesteps=None`` is 1000, or the
        length of ``schedule`` / ``trained_betas``; ``None`` for ``variance_type`` /
        ``clip_sample`` / ``timestep_spacing`` takes the ``convention``'s default), plus
        fastdiff's ``schedule`` and ``convention`` (module docstring)."""
        args = dict(locals())
        for key in ("self", "__class__"):
            args.pop(key, None)
        schedule = args.pop("schedule")
        self._setup(args, schedule)
        _choice("variance_type", self.config.variance_type, VARIANCE_TYPES)
        self.variance_type = self.config.variance_type
        self.one = torch.tensor(1.0, dtype=self.alphas_cumprod.dtype)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep a step from ``timestep`` goes to: the next planned one (-1 after the
        last), or ``timestep - 1`` before ``set_timesteps``."""
        t = self._timestep(timestep)
        return self._prev_of(t, self._position(t) if self._plan is not None else None)

    def _prev_of(self, t: int, i: int | None) -> int:
        if self._plan is None:
            return t - 1
        return self._next_planned(self._position(t) if i is None else i)

    def _columns(self, t: torch.Tensor, prev: torch.Tensor, eta: float) -> dict:
        table = self.alphas_cumprod
        a = table[t]
        a_next = torch.where(prev >= 0, table[prev.clamp(min=0)], self.one)
        one_minus, one_minus_next = 1 - a, 1 - a_next
        alpha = a / a_next
        beta = 1 - alpha
        posterior = torch.clamp(one_minus_next / one_minus * beta, min=_POSTERIOR_FLOOR)
        cols = {
            "alpha_bar": a.to(F64),
            "alpha_bar_next": a_next.to(F64),
            "sqrt_alpha_bar": a**0.5,
            "sqrt_one_minus_alpha_bar": one_minus**0.5,
            "coef_x0": (a_next**0.5 * beta) / one_minus,
            "coef_x_t": alpha**0.5 * one_minus_next / one_minus,
            "noise_on": t > 0,
        }
        kind = self.config.variance_type
        if kind == "fixed_small":
            cols["std"] = posterior**0.5
        elif kind == "fixed_small_log":
            cols["std"] = torch.exp(0.5 * torch.log(posterior))
        elif kind == "fixed_large":
            cols["std"] = beta**0.5
        elif kind == "fixed_large_log":
            cols["std"] = torch.exp(0.5 * torch.log(beta))
        else:
            cols["log_posterior"] = torch.log(posterior)
            cols["log_beta"] = torch.log(beta)
        return cols

    def _values_allow_op(self, cols: dict) -> bool:
        kind = self.config.variance_type
        if kind.startswith("learned") or not super()._values_allow_op(cols):
            return False
        last_noise = cols["noise_on"] & (cols["alpha_bar_next"] == 1)
        return not (kind.startswith("fixed_large") and bool(last_noise.any()))

    def _static_op_ok(self, eta: float, use_clipped: bool) -> bool:
        return True

    def _check_loop(self) -> None:
        if self.config.variance_type.startswith("learned"):
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs the model's variance "
                "output: run the scheduler's step() loop"
            )

    def _split(self, model_output, sample):
        """diffusers' rule: with a learned variance and twice ``sample``'s channels (dim 1),
        the model output is ``[prediction, variance]``."""
        if (
            self.config.variance_type.startswith("learned")
            and model_output.dim() >= 2
            and sample.dim() >= 2
            and model_output.shape[1] == 2 * sample.shape[1]
        ):
            return torch.split(model_output, sample.shape[1], dim=1)
        return model_output, None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        seed: int | torch.Tensor | None = None,
        fixed: torch.Tensor | None = None,
    ) -> GaussianSchedulerOutput | tuple:
        """One DDPM step from ``timestep`` (class docstring) on ``sample`` (any shape; the
        last dimension is the feature one for ``fixed`` and the keyed noise).

        Noise ``z`` (steps with ``t > 0``): drawn like diffusers from ``generator`` (a
        ``torch.Generator``, a list of one per sample, or torch's default one), or keyed by
        ``seed`` and the step's index (fastdiff). Returns ``(prev_sample,
        pred_original_sample)`` as a :class:`GaussianSchedulerOutput`, or a tuple with
        ``return_dict=False``.
        """
        t = self._timestep(timestep)
        model_output, variance = self._split(model_output, sample)
        kept = self._check_step(model_output, sample, fixed, seed, generator)
        learned = self.config.variance_type.startswith("learned")
        if learned and variance is None:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs a model output with twice "
                f"the channels (dim 1) of sample: got {tuple(model_output.shape)}"
            )
        i = self._position(t) if self._plan is not None else None
        v, ok = self._step_columns(t, i, 0.0, sample.device)
        noise, key = None, None
        if seed is not None:
            key = self._step_key(seed, i, sample.device)
        elif t > 0:
            noise = _randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev, x0 = self._advance(
            model_output,
            sample,
            v,
            use_op=ok,
            eta=0.0,
            eta_rows=None,
            use_clipped=False,
            predicted_variance=variance,
            noise=noise,
            seed=key,
            fixed=kept,
            want_x0=True,
        )
        out = GaussianSchedulerOutput(prev, x0)
        return out if return_dict else out.to_tuple()

    def _advance(
        self,
        model_output,
        x_t,
        v,
        *,
        use_op,
        eta,
        eta_rows,
        use_clipped,
        predicted_variance,
        noise,
        seed,
        fixed,
        want_x0,
    ):
        """``(x_t', x0)`` of one step with the values ``v``; ``noise`` given, or drawn keyed by
        ``seed`` (``seed`` and ``noise`` both ``None``: a step without noise, ``t = 0``)."""
        clipping = self._clipping()
        kind = self.config.prediction_type
        direct = not clipping and kind in ("epsilon", "sample")
        x0 = None
        if want_x0 or not (use_op and direct):
            x0 = self._clipped(self._x0(model_output, x_t, v))
        if use_op:
            inp, prediction = (model_output, "eps" if kind == "epsilon" else "x0")
            if not direct:
                inp, prediction = x0, "x0"
            variance = (
                "posterior" if self.config.variance_type.startswith("fixed_small") else "beta"
            )
            new = self._op_call(
                "ddpm_step", ref.ddpm_step, inp, x_t, v, fixed, noise, seed, prediction, variance
            )
            return new, x0
        new = v["coef_x0"] * x0 + v["coef_x_t"] * x_t
        if noise is None and seed is not None:
            noise = self._keyed_noise(seed, x_t)
        if noise is not None:
            kind_var = self.config.variance_type
            if kind_var == "learned":
                std = predicted_variance**0.5
            elif kind_var == "learned_range":
                frac = (predicted_variance + 1) / 2
                log_var = frac * v["log_beta"] + (1 - frac) * v["log_posterior"]
                std = torch.exp(0.5 * log_var)
            else:
                std = v["std"]
            term = std * noise
            if seed is not None:  # the keyed draw of every step: no noise at t = 0
                term = torch.where(v["noise_on"], term, term.new_zeros(()))
            new = new + term
        return self._keep(new, x_t, fixed), x0


class DDIMScheduler(_GaussianScheduler):
    """DDIM(eta) sampler, diffusers' ``DDIMScheduler`` (see the module docstring).

    Step from ``t`` to ``t'`` (``step_target``: ``"stride"``, diffusers',
    ``t - num_train_timesteps // num_inference_steps``; ``"next"``, the next planned timestep)
    with ``alpha_bar' = final_alpha_cumprod`` (1, or ``alphas_cumprod[0]`` with
    ``set_alpha_to_one=False``) when ``t' < 0``::

        x0, eps from the model output (epsilon / sample / v_prediction), x0 clipped or
        thresholded (eps recomputed from the clipped x0 with use_clipped_model_output)
        std  = eta sqrt((1 - alpha_bar') / (1 - alpha_bar) (1 - alpha_bar / alpha_bar'))
        x_t' = sqrt(alpha_bar') x0 + sqrt(1 - alpha_bar' - std^2) eps + std z   (z if eta > 0)

    Runs :func:`fastdiff.ddim_step` where the module docstring says so.
    ``convention="fastdiff"`` defaults: ``step_target="next"``, ``timestep_spacing="linspace"``,
    ``clip_sample=False``, float64 tables.
    """

    _CONVENTION_KEYS = ("timestep_spacing", "clip_sample", "step_target")
    OPTIONS = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "clip_sample",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "rescale_betas_zero_snr",
        "convention",
        "step_target",
        "eta",
    )
    """The arguments :func:`fastdiff.sample` passes on (``schedule`` apart)."""

    def __init__(
        self,
        num_train_timesteps: int | None = None,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        clip_sample: bool | None = None,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str | None = None,
        rescale_betas_zero_snr: bool = False,
        *,
        schedule: GaussianSchedule | None = None,
        convention: str = "diffusers",
        step_target: str | None = None,
        eta: float = 0.0,
    ) -> None:
        """diffusers' arguments and defaults (``num_train_timesteps=None`` is 1000, or the
        length of ``schedule`` / ``trained_betas``; ``None`` for ``clip_sample`` /
        ``timestep_spacing`` / ``step_target`` takes the ``convention``'s default), plus
        fastdiff's ``schedule``, ``convention``, ``step_target`` and ``eta`` (the default
        ``eta`` of ``step``)."""
        args = dict(locals())
        for key in ("self", "__class__"):
            args.pop(key, None)
        schedule = args.pop("schedule")
        args["eta"] = _real("eta", eta, low=0.0)
        _flag("set_alpha_to_one", set_alpha_to_one)
        self._setup(args, schedule)
        _choice("step_target", self.config.step_target, STEP_TARGETS)
        self.eta = self.config.eta
        dtype = self.alphas_cumprod.dtype
        self.final_alpha_cumprod = (
            torch.tensor(1.0, dtype=dtype) if set_alpha_to_one else self.alphas_cumprod[0]
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """As :meth:`DDPMScheduler.set_timesteps`; custom ``timesteps`` need
        ``step_target="next"`` (the stride is defined by an even spacing only)."""
        if timesteps is not None and self.config.step_target == "stride":
            raise ValueError('custom timesteps need step_target="next" (the stride needs n)')
        super().set_timesteps(num_inference_steps, device, timesteps)

    def _prev_of(self, t: int, i: int | None) -> int:
        if self.config.step_target == "stride":
            return t - self.config.num_train_timesteps // self.num_inference_steps
        return self._next_planned(self._position(t) if i is None else i)

    def _columns(self, t: torch.Tensor, prev: torch.Tensor, eta: float) -> dict:
        table = self.alphas_cumprod
        a = table[t]
        a_next = torch.where(prev >= 0, table[prev.clamp(min=0)], self.final_alpha_cumprod)
        one_minus, one_minus_next = 1 - a, 1 - a_next
        variance = (one_minus_next / one_minus) * (1 - a / a_next)
        std = eta * variance**0.5
        return {
            "alpha_bar": a.to(F64),
            "alpha_bar_next": a_next.to(F64),
            "sqrt_alpha_bar": a**0.5,
            "sqrt_one_minus_alpha_bar": one_minus**0.5,
            "coef_x0": a_next**0.5,
            "coef_eps": torch.clamp(1 - a_next - std**2, min=0) ** 0.5,
            "std": std,
        }

    def _static_op_ok(self, eta: float, use_clipped: bool) -> bool:
        return use_clipped or not self._clipping()

    def _loop_eta(self) -> float:
        return self.eta

    def _eta_rows(self, eta: float, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.numel() // x.shape[-1],), eta, dtype=F64, device=x.device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | None = None,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        seed: int | torch.Tensor | None = None,
        fixed: torch.Tensor | None = None,
    ) -> GaussianSchedulerOutput | tuple:
        """One DDIM step from ``timestep`` (class docstring) on ``sample``.

        ``eta``: ``None`` takes the constructor's (0 by default, as diffusers). Noise (only
        when ``eta > 0``): ``variance_noise``, else drawn like diffusers from ``generator``
        (or torch's default generator), or keyed by ``seed`` and the step's index. Returns
        ``(prev_sample, pred_original_sample)`` as a :class:`GaussianSchedulerOutput`, or a
        tuple with ``return_dict=False``.
        """
        if self.num_inference_steps is None:
            raise ValueError("the number of inference steps is not set: call set_timesteps first")
        eta = self.eta if eta is None else _real("eta", eta, low=0.0)
        use_clipped = _flag("use_clipped_model_output", use_clipped_model_output)
        t = self._timestep(timestep)
        kept = self._check_step(model_output, sample, fixed, seed, generator)
        i = self._positions.get(t)
        if i is None and self.config.step_target == "next":
            self._position(t)  # the error: a timestep outside the plan has no next one
        v, ok = self._step_columns(t, i, eta, sample.device)
        noise, key = None, None
        if eta > 0:
            if variance_noise is not None and (generator is not None or seed is not None):
                raise ValueError("pass variance_noise or generator / seed, not both")
            if seed is not None:
                key = self._step_key(seed, i, sample.device)
            elif variance_noise is not None:
                checks.floating("variance_noise", variance_noise)
                if variance_noise.shape != sample.shape:
                    raise ValueError(
                        f"variance_noise has shape {tuple(variance_noise.shape)}; expected "
                        f"{tuple(sample.shape)}"
                    )
                noise = variance_noise
            else:
                noise = _randn(
                    model_output.shape, generator, model_output.device, model_output.dtype
                )
        prev, x0 = self._advance(
            model_output,
            sample,
            v,
            use_op=ok and self._static_op_ok(eta, use_clipped),
            eta=eta,
            eta_rows=None,
            use_clipped=use_clipped,
            predicted_variance=None,
            noise=noise,
            seed=key,
            fixed=kept,
            want_x0=True,
        )
        out = GaussianSchedulerOutput(prev, x0)
        return out if return_dict else out.to_tuple()

    def _advance(
        self,
        model_output,
        x_t,
        v,
        *,
        use_op,
        eta,
        eta_rows,
        use_clipped,
        predicted_variance,
        noise,
        seed,
        fixed,
        want_x0,
    ):
        """``(x_t', x0)`` of one step with the values ``v``; noise (``eta > 0``) given or keyed
        by ``seed``."""
        clipping = self._clipping()
        kind = self.config.prediction_type
        direct = not clipping and kind in ("epsilon", "sample")
        raw = None
        x0 = None
        if want_x0 or not (use_op and direct):
            raw = self._x0(model_output, x_t, v)
            x0 = self._clipped(raw)
        if use_op:
            inp, prediction = (model_output, "eps" if kind == "epsilon" else "x0")
            if not direct:
                inp, prediction = x0, "x0"
            if eta_rows is None:
                eta_rows = self._eta_rows(eta, x_t)
            noisy = eta > 0
            new = self._op_call(
                "ddim_step",
                ref.ddim_step,
                inp,
                x_t,
                v,
                fixed,
                noise if noisy else None,
                seed if noisy else None,
                eta_rows,
                prediction,
            )
            return new, x0
        sqrt_a, sqrt_one_minus = v["sqrt_alpha_bar"], v["sqrt_one_minus_alpha_bar"]
        if use_clipped:
            eps = (x_t - sqrt_a * x0) / sqrt_one_minus
        elif kind == "epsilon":
            eps = model_output
        elif kind == "sample":
            eps = (x_t - sqrt_a * raw) / sqrt_one_minus
        else:
            eps = sqrt_a * model_output + sqrt_one_minus * x_t
        new = v["coef_x0"] * x0 + v["coef_eps"] * eps
        if eta > 0:
            if noise is None:
                noise = self._keyed_noise(seed, x_t)
            new = new + v["std"] * noise
        return self._keep(new, x_t, fixed), x0
