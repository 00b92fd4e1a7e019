"""Timing: medians of many calls, with the device's own clock.

- CUDA: :func:`triton.testing.do_bench` (CUDA events around every call, a warm-up, the L2
  cache flushed before each call, ``torch.cuda.synchronize`` before reading the events) with
  ``return_mode="all"``; the median of those times is reported. On top of the flush, input sets
  smaller than :data:`L2_ROTATION_BYTES` are rotated: several copies are made and successive
  calls cycle through them, so no call finds its inputs in L2.
- CPU: ``time.perf_counter`` around each call after one warm-up call, at least ``min_reps``
  calls and more until ``budget_s`` seconds are spent (at most ``max_reps``); the median.
  Inputs are not rotated (the CPU tiers are small and the figure is a throughput of the op as
  called in a loop).

Peak memory is ``torch.cuda.max_memory_allocated`` during one extra call minus the memory
allocated before it (the op's temporaries and outputs); ``None`` on the CPU, where PyTorch
keeps no such counter.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

#: Inputs smaller than this are rotated between calls on CUDA (more than any GPU's L2).
L2_ROTATION_BYTES = 50 * 10**6
#: Upper bound on the number of rotated input sets.
MAX_INPUT_SETS = 32


@dataclass(frozen=True)
class CpuBudget:
    """How long the CPU loop runs: at least ``min_reps`` calls, then more while the total stays
    under ``budget_s`` seconds, at most ``max_reps``."""

    min_reps: int
    budget_s: float
    max_reps: int


QUICK_CPU = CpuBudget(min_reps=3, budget_s=0.1, max_reps=50)
FULL_CPU = CpuBudget(min_reps=5, budget_s=1.0, max_reps=200)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    reps: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(values: Iterable[object]) -> int:
    """Bytes held by the tensors among ``values`` (each storage counted once)."""
    seen: dict[int, int] = {}
    for value in values:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def input_sets_needed(set_bytes: int, device: torch.device) -> int:
    """How many input sets to rotate so that together they exceed the L2 cache (CUDA only)."""
    if device.type != "cuda" or set_bytes >= L2_ROTATION_BYTES:
        return 1
    return min(MAX_INPUT_SETS, math.ceil(L2_ROTATION_BYTES / max(set_bytes, 1)))


def cycle(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that calls ``calls[0]``, ``calls[1]``, ... in turn (input rotation)."""
    if len(calls) == 1:
        return calls[0]
    order = itertools.cycle(calls)
    return lambda: next(order)()


def time_call(fn: Callable[[], object], device: torch.device, budget: CpuBudget) -> Timing:
    """Median time of ``fn()`` in ms (module docstring); ``budget`` applies to the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        times = do_bench(fn, warmup=25, rep=100, return_mode="all")
        return Timing(statistics.median(times), len(times))
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < budget.min_reps or (
        len(times) < budget.max_reps and time.perf_counter() - start < budget.budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(1e3 * statistics.median(times), len(times))


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra bytes allocated at the peak of one call of ``fn`` (CUDA), ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)
