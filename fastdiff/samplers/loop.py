"""The sampler step loop: the reverse process run as one call, in C++ or in Python.

A sampler turns its schedule into a :class:`StepLoop` (time inputs of every step, an update
closure holding the precomputed schedule table and per-step seeds, fixed positions, ...) and
:func:`run_loop` runs it. Step ``i`` of ``steps = len(inputs)``:

1. early exit (``mask_id`` given, ``i % check_every == 0``): stop when no non-fixed position
   of ``x`` equals ``mask_id`` (one host sync per check);
2. ``out = denoiser(x, inputs[i].expand(B))``; with ``cache=True`` the denoiser sees only the
   sequences (dim 0) whose tokens changed since it last saw them (``index_select``), its output
   is scattered into the cached output (``index_copy``), and it is not called at all when none
   changed;
3. ``x = update(out, x, i)``, then ``x = where(fixed, x_initial, x)``;
4. ``callback(i, x)``; the trajectory keeps a copy of ``x``.

After the steps, ``final`` (SEDD's final denoise) is one more denoiser call at ``final_input``,
then ``x = final(out, x)`` and the fixed positions again (no callback; the trajectory gets one
more entry). Everything runs under ``torch.no_grad()``.

Engines: ``"cpp"`` is ``fastdiff._C.run_loop`` (the loop in C++, the GIL taken only around
Python calls; a scripted / traced denoiser runs without Python at all); ``"python"`` runs the
same statements in Python; ``"auto"`` takes C++ when the extension loaded, else Python with a
warning (once). Both engines make the same calls in the same order and give identical results.

``cuda_graph=True`` (CUDA only): step 0 runs eagerly on a side stream (the warm-up), one step
(denoiser, :attr:`StepLoop.update_graphed`, fixed positions, step counter + 1) is captured in
a CUDA graph, and every later step is one replay; the step index lives in a device int64
tensor from which the graph reads the time input, the schedule values and the seeds. The
replays are issued from Python whatever the engine (one ``replay()`` per step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastdiff import _extension

ENGINES = ("auto", "python", "cpp")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None]


@dataclass
class StepLoop:
    """Everything the step loop needs, built by a sampler before the loop starts.

    ``inputs`` ``[steps]`` (float): the time input of step ``i`` (sigma_i for discrete
    samplers, t_i for Gaussian ones), passed as ``inputs[i].expand(B)``; it lives where the
    denoiser wants it. ``update(model_output, x, i) -> x_next`` (same shape, dtype and device as
    ``x``; it must not modify its arguments in place). ``fixed``: bool, a leading-dims prefix of
    ``x``'s shape (``[B, L]`` for tokens ``[B, L]`` and for Gaussian states ``[B, L, H]``):
    positions kept at their initial value. ``mask_id``: discrete only, enables the early exit.
    ``cache``: reuse model outputs of unchanged sequences (models not conditioned on time, whose
    output for a sequence does not depend on the rest of the batch). ``final`` /
    ``final_input``: the extra denoising step after the loop.

    ``update_graphed(model_output, x, step) -> x_next`` is the CUDA-graph form of ``update``
    (needed for ``cuda_graph=True`` only): ``step`` is a 0-d int64 CUDA tensor holding ``i``,
    and the function must give exactly ``update(model_output, x, i)`` while reading every
    per-step value (schedule entries, seeds) from device tensors indexed by ``step``, with no
    host synchronization, no host-to-device copy and no Python branch on tensor values.
    """

    inputs: torch.Tensor
    update: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    fixed: torch.Tensor | None = None
    mask_id: int | None = None
    cache: bool = False
    final: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    final_input: float | None = None
    update_graphed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class LoopResult:
    """Outcome of :func:`run_loop`."""

    x_t: torch.Tensor
    """The final state."""
    steps_run: int
    """Steps whose update ran (``< len(inputs)`` after an early exit)."""
    denoiser_calls: int
    """Denoiser calls, the final one included (cache hits save calls)."""
    trajectory: list[torch.Tensor] | None
    """With ``trajectory=True``: the state after each step run, then after ``final``."""


def run_loop(
    denoiser: Denoiser,
    x_t: torch.Tensor,
    loop: StepLoop,
    *,
    engine: str = "auto",
    callback: Callback | None = None,
    progress: bool = False,
    trajectory: bool = False,
    cuda_graph: bool = False,
    check_every: int = 1,
) -> LoopResult:
    """Run every step of ``loop`` on the start state ``x_t`` (``[B, ...]``); see the module doc.

    ``denoiser(x, time[B]) -> model_output`` is any callable, or a ``torch.jit.ScriptModule``
    (scripted or traced), which the C++ engine calls without Python. ``callback(i, x)`` runs
    after each step, ``progress`` shows a tqdm bar. ``check_every = k`` tests the early exit
    only at steps ``i % k == 0`` (each test is a host sync on a GPU).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    fixed = _check(denoiser, x_t, loop, check_every)
    ext = None
    if engine == "cpp" or (engine == "auto" and not cuda_graph):
        ext = _extension.load()
        if ext is None and engine == "cpp":
            raise RuntimeError(
                f"engine='cpp' needs fastdiff._C, which is not available "
                f"({_extension.missing_reason()}); {_extension.INSTALL_HINT}"
            )
        if ext is None:
            _extension.warn_missing_once()
    if cuda_graph:
        _check_graphable(x_t, loop)
    bar = None
    if progress:
        callback, bar = _with_progress(callback, loop.inputs.shape[0])
    try:
        if cuda_graph:
            return _graph_loop(denoiser, x_t, loop, fixed, callback, trajectory, check_every)
        if ext is not None:
            return _cpp_loop(ext, denoiser, x_t, loop, fixed, callback, trajectory, check_every)
        return _python_loop(denoiser, x_t, loop, fixed, callback, trajectory, check_every)
    finally:
        if bar is not None:
            bar.close()


def _check(denoiser: Denoiser, x: torch.Tensor, loop: StepLoop, check_every: int):
    """Validate the arguments; return ``fixed`` viewed with trailing 1s to broadcast over x."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor with a batch dimension (dim 0)")
    inputs = loop.inputs
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 1 or not inputs.is_floating_point():
        raise ValueError("StepLoop.inputs must be a 1-D floating tensor [steps]")
    if not callable(loop.update):
        raise TypeError("StepLoop.update must be callable")
    if (loop.final is None) != (loop.final_input is None):
        raise ValueError("StepLoop.final and StepLoop.final_input go together")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    if loop.mask_id is not None:
        if isinstance(loop.mask_id, bool) or not isinstance(loop.mask_id, int):
            raise TypeError(f"StepLoop.mask_id must be an int, got {type(loop.mask_id).__name__}")
        if x.is_floating_point() or x.is_complex():
            raise ValueError("StepLoop.mask_id needs integer tokens x")
    fixed = loop.fixed
    if fixed is None:
        return None
    if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool:
        raise TypeError("StepLoop.fixed must be a bool tensor")
    if fixed.dim() == 0 or fixed.shape != x.shape[: fixed.dim()]:
        raise ValueError(
            f"StepLoop.fixed has shape {tuple(fixed.shape)}, expected a leading part of x's "
            f"shape {tuple(x.shape)}"
        )
    if fixed.device != x.device:
        raise ValueError(f"StepLoop.fixed is on {fixed.device}, x on {x.device}")
    return fixed.reshape(fixed.shape + (1,) * (x.dim() - fixed.dim()))


def _check_graphable(x: torch.Tensor, loop: StepLoop) -> None:
    if x.device.type != "cuda":
        raise ValueError("cuda_graph=True needs x on a CUDA device")
    if loop.update_graphed is None:
        raise ValueError("cuda_graph=True needs StepLoop.update_graphed")
    if loop.cache:
        raise ValueError("cuda_graph=True cannot cache (the changed sequences vary per step)")
    if loop.inputs.device != x.device:
        raise ValueError("cuda_graph=True needs StepLoop.inputs on x's device")


def _with_progress(callback: Callback | None, total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from error
    bar = tqdm(total=total, unit="step")

    def tick(i: int, x: torch.Tensor) -> None:
        bar.update(1)
        if callback is not None:
            callback(i, x)

    return tick, bar


def _tensor(value, who: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{who} must return a torch.Tensor, got {type(value).__name__}")
    return value


def _check_next(xn: torch.Tensor, x: torch.Tensor, who: str) -> None:
    if xn.shape != x.shape or xn.dtype != x.dtype or xn.device != x.device:
        raise ValueError(
            f"{who} must return a tensor shaped like x {tuple(x.shape)} ({x.dtype}, {x.device}), "
            f"got {tuple(xn.shape)} ({xn.dtype}, {xn.device})"
        )


def _check_batch(out: torch.Tensor, batch: int) -> None:
    if out.dim() < 1 or out.shape[0] != batch:
        raise ValueError(
            f"with cache=True the denoiser output must have the batch (dim 0) of its input, "
            f"{batch}, got shape {tuple(out.shape)}"
        )


def _exit_now(x, fixed, mask_id: int | None, i: int, check_every: int) -> bool:
    """Early exit before step ``i``: a checked step where no non-fixed position is masked."""
    if mask_id is None or i % check_every != 0:
        return False
    masked = x == mask_id
    if fixed is not None:
        masked = masked & ~fixed
    return not bool(masked.any())


def _final_step(denoiser, x, x0, loop, fixed) -> torch.Tensor:
    """One denoiser call at ``final_input``, then ``final`` and the fixed positions."""
    time = torch.full(
        (x.shape[0],), loop.final_input, dtype=loop.inputs.dtype, device=loop.inputs.device
    )
    out = _tensor(denoiser(x, time), "denoiser")
    xn = _tensor(loop.final(out, x), "final")
    _check_next(xn, x, "final")
    return xn if fixed is None else torch.where(fixed, x0, xn)


@torch.no_grad()
def _python_loop(denoiser, x, loop, fixed, callback, trajectory, check_every) -> LoopResult:
    """The Python engine: statement for statement what ``csrc/step_loop.cpp`` does."""
    steps = loop.inputs.shape[0]
    batch = x.shape[0]
    x0 = x
    traj = [] if trajectory else None
    calls = steps_run = 0
    cached = seen = None
    for i in range(steps):
        if _exit_now(x, fixed, loop.mask_id, i, check_every):
            break
        time = loop.inputs[i]
        if not loop.cache or cached is None:
            out = _tensor(denoiser(x, time.expand(batch)), "denoiser")
            calls += 1
            if loop.cache:
                _check_batch(out, batch)
                cached, seen = out, x
        else:
            idx = (x != seen).reshape(batch, -1).any(1).nonzero().squeeze(1)
            n = idx.shape[0]
            if n == batch:
                cached = _tensor(denoiser(x, time.expand(batch)), "denoiser")
                _check_batch(cached, batch)
                calls += 1
            elif n > 0:
                part = _tensor(denoiser(x.index_select(0, idx), time.expand(n)), "denoiser")
                _check_batch(part, n)
                calls += 1
                cached = cached.index_copy(0, idx, part)
            seen = x
            out = cached
        xn = _tensor(loop.update(out, x, i), "update")
        _check_next(xn, x, "update")
        if fixed is not None:
            xn = torch.where(fixed, x0, xn)
        x = xn
        steps_run = i + 1
        if callback is not None:
            callback(i, x)
        if traj is not None:
            traj.append(x.clone())
    if loop.final is not None:
        x = _final_step(denoiser, x, x0, loop, fixed)
        calls += 1
        if traj is not None:
            traj.append(x.clone())
    return LoopResult(x_t=x, steps_run=steps_run, denoiser_calls=calls, trajectory=traj)


def _cpp_loop(ext, denoiser, x, loop, fixed, callback, trajectory, check_every) -> LoopResult:
    """The C++ engine (``fastdiff._C.run_loop``); a ScriptModule is passed as its C++ module."""
    scripted = isinstance(denoiser, torch.jit.ScriptModule)
    x, steps_run, calls, traj = ext.run_loop(
        denoiser._c if scripted else denoiser,
        scripted,
        x,
        loop.inputs,
        loop.update,
        fixed,
        loop.mask_id,
        loop.cache,
        loop.final,
        loop.final_input,
        callback,
        trajectory,
        check_every,
    )
    return LoopResult(x_t=x, steps_run=steps_run, denoiser_calls=calls, trajectory=traj)


@torch.no_grad()
def _graph_loop(denoiser, x, loop, fixed, callback, trajectory, check_every) -> LoopResult:
    """Step 0 eagerly (the warm-up, on a side stream), then one CUDA-graph replay per step."""
    steps = loop.inputs.shape[0]
    batch = x.shape[0]
    x0 = x
    state = x.clone()
    step = torch.zeros((), dtype=torch.int64, device=x.device)
    traj = [] if trajectory else None

    def one_step() -> None:
        time = loop.inputs.index_select(0, step.reshape(1)).expand(batch)
        out = denoiser(state, time)
        xn = loop.update_graphed(out, state, step)
        if fixed is not None:
            xn = torch.where(fixed, x0, xn)
        state.copy_(xn)
        step.add_(1)

    graph = None
    steps_run = 0
    for i in range(steps):
        if _exit_now(state, fixed, loop.mask_id, i, check_every):
            break
        if i == 0:  # eager on a side stream: the warm-up a capture needs
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                one_step()
            torch.cuda.current_stream(x.device).wait_stream(side)
        else:
            if graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    one_step()
            graph.replay()
        steps_run = i + 1
        if callback is not None:
            callback(i, state.clone())
        if traj is not None:
            traj.append(state.clone())
    x = state
    if loop.final is not None:
        x = _final_step(denoiser, x, x0, loop, fixed)
        if traj is not None:
            traj.append(x.clone())
    calls = steps_run + (loop.final is not None)
    return LoopResult(x_t=x, steps_run=steps_run, denoiser_calls=calls, trajectory=traj)
