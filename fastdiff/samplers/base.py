"""Shared pieces of the samplers: the scheduler base class (the diffusers shape), its output,
seed derivation, start-state checks and the infilling masks.

Randomness of a whole sampling run is keyed by ONE integer seed. :func:`derive_seeds` turns it
into per-step seeds (Philox of the step index, keyed by the run's seed): step ``i`` draws with
``(step_seed[i], offset=0)``, the final denoising step with ``step_seed[steps]`` and the start
state with a seed of its own stream. The same seed therefore gives the same tokens whichever
loop engine (Python, C++, CUDA-graph replay, which reads the step's seed from a device table)
or backend runs the steps, and a hand-written scheduler loop that passes the same ``seed`` to
every :meth:`Scheduler.step` reproduces :func:`fastdiff.samplers.sample`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastdiff import checks
from fastdiff import random as frandom
from fastdiff.samplers.loop import StepLoop

STEP_STREAM = 0
"""Seed stream of the reverse steps (index ``i`` = step ``i``, ``steps`` = final denoise)."""
INIT_STREAM = 1
"""Seed stream of the start-state draw (uniform tokens, Gaussian noise, D3PM prior)."""
_SEED_SALT = 0x5EED5A17


def derive_seeds(seed: int, count: int, stream: int = STEP_STREAM, start: int = 0) -> list[int]:
    """Seeds ``start .. start + count - 1`` of ``stream`` derived from the run's ``seed``: the
    Philox4x32 words ``(r0, r1)`` of counter ``(index, stream, 0, SALT)`` under key ``seed``,
    as the 63-bit ``(r0 & 0x7fffffff) << 32 | r1``."""
    index = torch.arange(start, start + count, dtype=torch.int64)
    zero = torch.zeros_like(index)
    r0, r1, _, _ = frandom.philox4x32(seed, index, zero + stream, zero, zero + _SEED_SALT)
    return (((r0 & 0x7FFFFFFF) << 32) | r1).tolist()


def step_seed(
    i: int, seed: int | None, generator: torch.Generator | None, device: torch.device
) -> int:
    """The seed of step ``i`` for :meth:`Scheduler.step`: derived from ``seed``, or from a
    run seed drawn from ``generator`` (or torch's default generator) at this call."""
    return derive_seeds(resolve_run_seed(seed, generator, device), 1, start=i)[0]


def init_seed(seed: int) -> int:
    """The seed of the start-state draw."""
    return derive_seeds(seed, 1, INIT_STREAM)[0]


Apply = Callable[..., torch.Tensor]


def _check_model_output(out: torch.Tensor) -> None:
    """The denoiser's output is floating (logits, log-scores or a Gaussian prediction): an
    integer tensor would otherwise be read as weights without complaint. Metadata only: no
    host synchronization."""
    if not out.is_floating_point():
        raise TypeError(
            "the denoiser must return a floating tensor (logits, log-scores or the Gaussian "
            f"prediction), got {out.dtype}"
        )


def make_step_loop(
    apply: Apply,
    inputs: torch.Tensor,
    tables: dict[str, torch.Tensor],
    seed: int,
    *,
    fixed: torch.Tensor | None,
    mask_id: int | None = None,
    final: Callable | None = None,
    final_input: float | None = None,
) -> StepLoop:
    """A :class:`StepLoop` from one step function ``apply(out, x, step_seed, values, i)``.

    ``tables`` are per-step float64 columns ``[steps]`` on ``x``'s device; ``values`` holds
    their 0-d entries of the step. ``update(out, x, i)`` passes the python int ``i`` and the
    step's seed as an int; ``update_graphed(out, x, step)`` (CUDA-graph replay) passes the 0-d
    int64 device tensor ``step`` and reads the seed and values from device tables with
    ``index_select``, so both compute the same step with no host synchronization of their own.
    """
    steps = inputs.shape[0]
    seeds = derive_seeds(seed, steps)
    device = inputs.device
    seeds_dev = torch.tensor(seeds, dtype=torch.int64, device=device)

    def update(out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        _check_model_output(out)
        return apply(out, x, seeds[i], {k: v[i] for k, v in tables.items()}, i)

    def update_graphed(out: torch.Tensor, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        _check_model_output(out)
        idx = step.reshape(1)
        values = {k: v.index_select(0, idx).reshape(()) for k, v in tables.items()}
        return apply(out, x, seeds_dev.index_select(0, idx).reshape(()), values, step)

    return StepLoop(
        inputs=inputs,
        update=update,
        fixed=fixed,
        mask_id=mask_id,
        final=final,
        final_input=final_input,
        update_graphed=update_graphed,
    )


@dataclass
class SchedulerOutput:
    """Result of :meth:`Scheduler.step`."""

    prev_sample: torch.Tensor
    """The state after the step (tokens ``[B, L]`` int64, or the Gaussian state ``[B, L, H]``)."""


def resolve_run_seed(
    seed: int | torch.Tensor | None, generator: torch.Generator | None, device: torch.device
) -> int:
    """The run's seed: ``seed`` itself (an int, or a one-value int32 / int64 tensor as the ops
    take), or one 63-bit draw from ``generator`` (or the default generator of ``device``); read
    to the host once."""
    return int(frandom.resolve_seed(seed, generator, device))


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def prefix_mask(shape: tuple[int, int], n: int, *, device=None) -> torch.Tensor:
    """bool ``[B, L]``: the first ``n`` positions of every sequence are fixed (a prompt)."""
    b, length = shape
    if not 0 <= n <= length:
        raise ValueError(f"prefix length {n} is outside [0, {length}]")
    pos = torch.arange(length, device=device)
    return (pos < n).expand(b, length).clone()


def infill_mask(
    shape: tuple[int, int], *, prefix: int = 0, suffix: int = 0, spans=(), device=None
) -> torch.Tensor:
    """bool ``[B, L]`` of fixed positions: the first ``prefix`` and last ``suffix`` positions and
    every half-open ``(start, end)`` span in ``spans``; the rest is generated."""
    b, length = shape
    if prefix < 0 or suffix < 0 or prefix + suffix > length:
        raise ValueError(f"prefix {prefix} + suffix {suffix} does not fit length {length}")
    pos = torch.arange(length, device=device)
    keep = (pos < prefix) | (pos >= length - suffix)
    for start, end in spans:
        if not 0 <= start <= end <= length:
            raise ValueError(f"span ({start}, {end}) is outside [0, {length}]")
        keep |= (pos >= start) & (pos < end)
    return keep.expand(b, length).clone()


def _check_shape(shape, dims: int, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from exc
    if len(shape) != dims or any(s < 1 for s in shape):
        raise ValueError(f"shape must be {what} with positive sizes, got {shape}")
    return shape


def token_start(
    shape,
    init: torch.Tensor | None,
    fixed: torch.Tensor | None,
    vocab_size: int,
    mask_id: int | None,
    device,
) -> tuple[tuple[int, int], torch.Tensor | None, torch.Tensor | None]:
    """Checked ``(shape [B, L], init, fixed)`` for a discrete sampler.

    ``fixed`` needs ``init``; with ``init`` and no ``fixed``, the non-mask positions of ``init``
    are fixed when there is a mask token, else ``fixed`` is required."""
    shape = _check_shape(shape, 2, "(batch, length)")
    if init is None:
        if fixed is not None:
            raise ValueError("fixed needs init: the tokens to keep at the fixed positions")
        return shape, None, None
    init = checks.tokens("init", init)
    if tuple(init.shape) != shape:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
    if device is not None:
        init = init.to(device)
        fixed = None if fixed is None else fixed.to(device)
    checks.token_range("init", init, vocab_size)
    if fixed is None:
        if mask_id is None:
            raise ValueError(
                "init without a mask token needs fixed (bool [B, L]): the positions to keep"
            )
        fixed = init != mask_id
    fixed = checks.bool_mask("fixed", fixed, init.shape)
    checks.same_device(init=init, fixed=fixed)
    return shape, init, fixed.contiguous()


def state_start(
    shape, init: torch.Tensor | None, fixed: torch.Tensor | None, device
) -> tuple[tuple[int, int, int], torch.Tensor | None, torch.Tensor | None]:
    """Checked ``(shape [B, L, H], init, fixed [B, L])`` for a Gaussian sampler."""
    shape = _check_shape(shape, 3, "(batch, length, hidden)")
    if init is None:
        if fixed is not None:
            raise ValueError("fixed needs init: the state to keep at the fixed positions")
        return shape, None, None
    checks.floating("init", init)
    if tuple(init.shape) != shape:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
    if device is not None:
        init = init.to(device)
        fixed = None if fixed is None else fixed.to(device)
    if fixed is None:
        raise ValueError("init for a Gaussian sampler needs fixed (bool [B, L]): what to keep")
    fixed = checks.bool_mask("fixed", fixed, init.shape[:-1])
    checks.same_device(init=init, fixed=fixed)
    checks.finite("init", init)
    return shape, init, fixed.contiguous()


class Scheduler(abc.ABC):
    """Base of the samplers, in the diffusers scheduler shape::

        sched.set_timesteps(steps)
        x = sched.init_sample(shape, seed=seed)
        for t in sched.timesteps:
            out = model(x, t.expand(batch))
            x = sched.step(out, t, x, seed=seed).prev_sample

    ``timesteps`` (float32 ``[n]``) are the denoiser's time inputs, one per step (``sigma`` for
    the discrete samplers, the 0-based schedule index for the Gaussian ones). ``step`` draws
    with the seed derived from ``seed`` for the step's index: pass the same ``seed`` at every
    step (a ``generator`` instead gives a fresh run seed at each call).
    """

    timesteps: torch.Tensor | None = None
    num_inference_steps: int | None = None

    def _set(self, timesteps: torch.Tensor) -> None:
        self.timesteps = timesteps.to(torch.float32)
        self._next = 0

    def _require_timesteps(self) -> torch.Tensor:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_steps) first")
        return self.timesteps

    def index_for(self, timestep: float | torch.Tensor) -> int:
        """Index of ``timestep`` in :attr:`timesteps` (the step after the previous one when it
        matches, else the first equal entry). A ``[B]`` tensor must hold one value."""
        ts = self._require_timesteps()
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().reshape(-1).to("cpu", torch.float32)
            if flat.numel() < 1 or not bool((flat == flat[0]).all()):
                raise ValueError("timestep must hold a single value (one step for the batch)")
            value = float(flat[0])
        else:
            value = float(timestep)
        host = ts.to("cpu")
        if self._next < len(host) and float(host[self._next]) == value:
            i = self._next
        else:
            hits = torch.nonzero(host == value)
            if hits.numel() == 0:
                raise ValueError(f"timestep {value!r} is not one of this scheduler's timesteps")
            i = int(hits[0, 0])
        self._next = i + 1
        return i

    @abc.abstractmethod
    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Plan ``num_steps`` reverse steps: fills :attr:`timesteps` and the schedule tables."""

    @abc.abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        fixed: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One reverse step from ``timestep`` with the public (checked) op."""

    @abc.abstractmethod
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
        """``(x, fixed)``: the start state, a draw from the prior with ``init`` kept at
        ``fixed`` positions, and the fixed positions in force."""

    def init_sample(self, shape, **kw) -> torch.Tensor:
        """The start state (see :meth:`start`)."""
        return self.start(shape, **kw)[0]

    @abc.abstractmethod
    def step_loop(self, x: torch.Tensor, *, seed: int, fixed: torch.Tensor | None) -> StepLoop:
        """The :class:`StepLoop` running every planned step on ``x`` (checks done here, once)."""


def start_device(device: torch.device | str | None, init: torch.Tensor | None) -> torch.device:
    """Where a start state lives: ``device`` when given, else the device of ``init``, else the
    CPU."""
    if device is not None:
        return torch.device(device)
    return init.device if init is not None else torch.device("cpu")
