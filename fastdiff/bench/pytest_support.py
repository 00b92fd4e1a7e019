"""The pytest-benchmark side of the harness: the parametrization and the body shared by
``benchmarks/bench_*.py`` (one file per op family, thin wrappers over :mod:`.cases`).

Each benchmark is one (op, shape, dtype, provider) of the family, on CUDA when available (GPU
shapes, bfloat16 and float32) and on the CPU otherwise (CPU shapes, float32). Every shape but
the smallest of the tier carries the ``bench_large`` marker, which ``benchmarks/conftest.py``
deselects when benchmarking is disabled (plain ``pytest``: each op and provider runs once, on
the smallest shape). On the CPU the ``torch.compile`` provider carries it too (10-30 s per
compile), so it runs only with ``--benchmark-enable``.

Smoke runs keep fastdiff's value checks on (so they also validate every case's inputs); timed
runs (``--benchmark-enable``) turn them off, as ``fastdiff bench`` does, and use
``benchmark.pedantic`` with a CUDA synchronization inside the timed call. ``extra_info``
carries the shape, provider, torch's CPU thread count, backend, the byte and flop models and
the resulting GB/s. For
CUDA-event timings, rotation of inputs and the roofline percentages, use ``fastdiff bench``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
import torch

from fastdiff import backend
from fastdiff.bench import cases, runner
from fastdiff.bench.cases import Case, Inputs
from fastdiff.bench.shapes import CPU_DTYPES, GPU_DTYPES, Shape, dtype_name
from fastdiff.bench.timing import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TIER = "gpu" if DEVICE.type == "cuda" else "cpu"
DTYPES = GPU_DTYPES if DEVICE.type == "cuda" else CPU_DTYPES


def _providers(case: Case) -> list[str]:
    """The case's providers, without ``native`` where it cannot apply: on a GPU, or for an op
    that has no native kernel (when the extension is missing the benchmark stays, and its skip
    says why)."""
    no_native = DEVICE.type != "cpu" or (
        backend.native_available() and case.kernel not in backend.registered_natives()
    )
    return [p for p in case.providers if not (p == "native" and no_native)]


def params(family: str) -> list:
    """``pytest.param(case, shape, dtype, provider)`` for every benchmark of ``family``."""
    out = []
    for case in cases.select([family]):
        smallest = case.shapes.smallest(TIER)
        for shape in case.shapes.tier(TIER):
            for dtype in filter(case.supports, DTYPES):
                for provider in _providers(case):
                    large = shape != smallest or (provider == "compile" and DEVICE.type == "cpu")
                    marks = (pytest.mark.bench_large,) if large else ()
                    ident = f"{case.name}-{shape.id}-{dtype_name(dtype)}-{provider}"
                    out.append(pytest.param(case, shape, dtype, provider, id=ident, marks=marks))
    return out


_inputs: dict[tuple[str, Shape, torch.dtype], list[Inputs]] = {}


def _input_sets(case: Case, shape: Shape, dtype: torch.dtype) -> list[Inputs]:
    # the providers of one (case, shape, dtype) run one after the other: keep the latest only
    key = (case.name, shape, dtype)
    if key not in _inputs:
        _inputs.clear()
        _inputs[key] = runner.make_input_sets(case, shape, dtype, DEVICE)
    return _inputs[key]


def _synced(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        out = fn()
        synchronize(DEVICE)
        return out

    return run


def run_benchmark(benchmark, case: Case, shape: Shape, dtype: torch.dtype, provider: str) -> None:
    """The body of every ``bench_*`` function (``benchmark`` is pytest-benchmark's fixture)."""
    try:
        bound = runner.bind(case, provider, _input_sets(case, shape, dtype), DEVICE)
    except runner.Skip as err:
        pytest.skip(str(err))
    nbytes = case.bytes(shape, dtype)
    benchmark.group = f"{case.name} {case.what} {shape.id} {dtype_name(dtype)}"
    benchmark.extra_info.update(
        op=case.name,
        shape=shape.as_dict(),
        dtype=dtype_name(dtype),
        provider=provider,
        threads=torch.get_num_threads(),
        backend=bound.backend,
        bytes=nbytes,
        flops=case.flops(shape),
    )
    fn = _synced(bound.call)
    if not benchmark.enabled:
        assert benchmark(fn) is not None  # smoke run: once, with fastdiff's value checks on
        return
    with runner.value_checks(False):  # timed as `fastdiff bench` times them
        start = time.perf_counter()
        fn()  # warm-up, and a first estimate of the time per call
        once = time.perf_counter() - start
        rounds = int(min(200, max(5, math.ceil(1.0 / max(once, 1e-6)))))
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
