"""Running the cases: binding a provider to input sets, timing it, and the derived figures
(GB/s, TFLOP/s, percentage of the measured peak, speedups)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

import fastdiff
from fastdiff import _extension, backend
from fastdiff.bench.cases import Case, Inputs
from fastdiff.bench.peak import Peak
from fastdiff.bench.shapes import Shape, dtype_name
from fastdiff.bench.timing import (
    FULL_CPU,
    QUICK_CPU,
    CpuBudget,
    cycle,
    input_sets_needed,
    peak_memory,
    tensor_bytes,
    time_call,
)

COMPILE_SKIP_QUICK = "not in --quick mode (compiling takes 10-30 s per op and shape)"


class Skip(Exception):
    """A provider that cannot run here; the message is recorded as ``skipped_reason``."""


@dataclass
class Bound:
    """A provider of a case bound to its input sets: ``call()`` runs it once (rotating sets)."""

    backend: str  # what ran: triton, native, reference, inductor (compile), eager (baseline)
    call: Callable[[], object]


def make_input_sets(
    case: Case, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> list[Inputs]:
    """One input set, or on CUDA as many as needed to exceed L2 (seeds ``seed``, ``seed+1``...)."""
    first = case.make_inputs(shape, dtype, device, seed)
    count = input_sets_needed(tensor_bytes(first.values()), device)
    return [first] + [case.make_inputs(shape, dtype, device, seed + i) for i in range(1, count)]


def _with_backend(name: str, fn: Callable[[Inputs], object]) -> Callable[[Inputs], object]:
    def run(inputs: Inputs) -> object:
        with fastdiff.use_backend(name):
            return fn(inputs)

    return run


def _bind_inputs(case: Case, fn: Callable[[Inputs], object], inputs: Inputs):
    """A zero-argument call: ``fn(inputs)``, or for ``fwd+bwd`` cases the gradients of
    ``sum(fn(inputs))`` with respect to the model outputs named in ``case.grad``."""
    if not case.grad:
        return lambda: fn(inputs)
    wrt = [inputs[name] for name in case.grad]

    def fwd_bwd() -> object:
        return torch.autograd.grad(fn(inputs).sum(), wrt)

    return fwd_bwd


def resolved_backend(case: Case, device: torch.device, choice: str) -> str:
    """``"triton"``, ``"native"`` or ``"reference"``: what the public op runs under backend
    ``choice``; :class:`Skip` (with :func:`fastdiff.backend.resolve`'s reason) where ``choice``
    cannot run it (no kernel for the op, the extension missing, the wrong device)."""
    try:
        with fastdiff.use_backend(choice):
            impl = backend.resolve(case.kernel, case.reference, device)
    except (RuntimeError, NotImplementedError) as err:
        raise Skip(str(err)) from err
    if impl is case.reference:
        return "reference"
    return "native" if impl is backend.native_kernel(case.kernel) else "triton"


def native_skip(case: Case, device: torch.device) -> str | None:
    """Why the ``native`` provider cannot run ``case`` on ``device`` (one wording per cause, so
    that the table lists each once), or None when it can."""
    if device.type != "cpu":
        return f"native kernels run on CPU tensors, not {device.type}"
    if not backend.native_available():
        return f"fastdiff._C is not available ({_extension.missing_reason()})"
    if case.kernel not in backend.registered_natives():
        return f"no native kernel for the op (native: {', '.join(backend.registered_natives())})"
    return None


def _compiled(case: Case) -> Callable[[Inputs], object]:
    torch._dynamo.reset()  # a fresh cache: no recompile limit carried over between shapes
    compiled = torch.compile(case.reference)
    return lambda inputs: compiled(*case.reference_args(inputs))


def bind(
    case: Case,
    provider: str,
    input_sets: list[Inputs],
    device: torch.device,
    *,
    backend_choice: str = "auto",
    compile_skip: str | None = None,
) -> Bound:
    """Bind ``provider`` of ``case`` to ``input_sets``; raises :class:`Skip` when it cannot run
    (``compile_skip`` given, torch.compile failing, the Triton or native kernel unavailable)."""
    if provider == "reference":
        fn, ran = _with_backend("reference", case.public), "reference"
    elif provider == "fastdiff":
        ran = resolved_backend(case, device, backend_choice)
        fn = _with_backend(backend_choice, case.public)
    elif provider == "native":
        reason = native_skip(case, device)
        if reason:
            raise Skip(reason)
        fn, ran = _with_backend("native", case.public), "native"
    elif provider == "compile":
        if compile_skip:
            raise Skip(compile_skip)
        fn, ran = _compiled(case), "inductor"
    elif case.baseline is not None and provider == case.baseline.style:
        fn, ran = case.baseline.fn, "eager"
    else:
        raise ValueError(f"{case.name} has no provider {provider!r}; it has {case.providers}")
    call = cycle([_bind_inputs(case, fn, inputs) for inputs in input_sets])
    if provider == "compile":
        try:
            call()  # compile now, outside the timed calls
        except Exception as err:
            raise Skip(f"torch.compile failed: {_summary(err)}") from err
    return Bound(ran, call)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One (op, shape, dtype, provider, threads) measurement; the JSON row of :mod:`.report`."""

    op: str
    what: str
    sweep: str
    shape: Shape
    dtype: str
    provider: str
    bytes: int
    flops: int
    threads: int  # torch CPU threads while timed
    backend: str | None = None
    median_ms: float | None = None
    reps: int | None = None
    gbps: float | None = None
    tflops: float | None = None
    pct_of_peak: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_baseline: float | None = None
    peak_mem_bytes: int | None = None
    skipped_reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v.as_dict() if k == "shape" else v for k, v in self.__dict__.items()}


def pct_of_peak(nbytes: int, flops: int, seconds: float, peak: Peak, dtype: str) -> float:
    """Roofline time ``max(bytes / copy rate, flops / matmul rate)`` over the measured time,
    in percent (the matmul term only where the op has flops and its dtype was measured)."""
    best = nbytes / (peak.copy_gbps * 1e9)
    if flops and dtype in peak.matmul_tflops:
        best = max(best, flops / (peak.matmul_tflops[dtype] * 1e12))
    return 100.0 * best / seconds


def derive(group: list[Result], peak: Peak, baseline: str | None) -> None:
    """Fill the figures of one (op, shape, dtype) group from the medians, in place."""
    ms = {r.provider: r.median_ms for r in group if r.median_ms}
    for r in group:
        if not r.median_ms:
            continue
        seconds = r.median_ms * 1e-3
        r.gbps = r.bytes / seconds / 1e9
        r.tflops = r.flops / seconds / 1e12 if r.flops else None
        r.pct_of_peak = pct_of_peak(r.bytes, r.flops, seconds, peak, r.dtype)
        if "reference" in ms:
            r.speedup_vs_eager = ms["reference"] / r.median_ms
        if baseline in ms:
            r.speedup_vs_baseline = ms[baseline] / r.median_ms


def _summary(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


@dataclass
class Plan:
    """The providers to time for one (case, shape, dtype)."""

    case: Case
    shape: Shape
    dtype: torch.dtype
    providers: list[str]


def select_providers(case: Case, wanted: set[str]) -> list[str]:
    """The providers of ``case`` among ``wanted`` (``"baseline"`` means its public-style one)."""
    style = case.baseline.style if case.baseline else None
    return [p for p in case.providers if p in wanted or (p == style and "baseline" in wanted)]


def plan(
    cases: list[Case],
    providers: set[str],
    dtypes: list[torch.dtype],
    tier: str,
    shapes: list[Shape] | None = None,
) -> list[Plan]:
    """Every (case, dtype, shape) to run: the case's shapes of ``tier``, or ``shapes`` made fit
    for each case (see :meth:`fastdiff.bench.shapes.ShapeTable.adapt`)."""
    plans = []
    for case in cases:
        chosen = select_providers(case, providers)
        if shapes:
            case_shapes = list(dict.fromkeys(case.shapes.adapt(s) for s in shapes))
        else:
            case_shapes = list(case.shapes.tier(tier))
        for dtype in dtypes:
            if chosen and case.supports(dtype):
                plans.extend(Plan(case, shape, dtype, chosen) for shape in case_shapes)
    return plans


def _new_result(p: Plan, provider: str) -> Result:
    case = p.case
    return Result(
        case.name,
        case.what,
        case.sweep,
        p.shape,
        dtype_name(p.dtype),
        provider,
        case.bytes(p.shape, p.dtype),
        case.flops(p.shape),
        torch.get_num_threads(),
    )


def _measure(
    p: Plan,
    provider: str,
    input_sets: list[Inputs],
    device: torch.device,
    budget: CpuBudget,
    backend_choice: str,
    compile_skip: str | None,
) -> Result:
    result = _new_result(p, provider)
    try:
        bound = bind(
            p.case,
            provider,
            input_sets,
            device,
            backend_choice=backend_choice,
            compile_skip=compile_skip,
        )
        result.backend = bound.backend
        timing = time_call(bound.call, device, budget)
        result.median_ms, result.reps = timing.median_ms, timing.reps
        result.peak_mem_bytes = peak_memory(bound.call, device)
    except Skip as err:
        result.skipped_reason = str(err)
    except torch.cuda.OutOfMemoryError:
        result.skipped_reason = "out of memory"
    except Exception as err:
        result.skipped_reason = _summary(err)
    return result


class Progress(Protocol):
    """What :func:`run` reports to (a ``tqdm`` bar): the measurement starting, then one step."""

    def set_postfix_str(self, s: str) -> object: ...

    def update(self) -> object: ...


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """fastdiff's data-reading argument checks on or off for the block."""
    old = fastdiff.checks.value_checks_enabled()
    fastdiff.set_value_checks(enabled)
    try:
        yield
    finally:
        fastdiff.set_value_checks(old)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's CPU thread count set to ``count`` for the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run(
    plans: list[Plan],
    device: torch.device,
    peak: Peak,
    *,
    quick: bool,
    threads: list[int] | None = None,
    backend_choice: str = "auto",
    checks: bool = False,
    progress: Progress | None = None,
) -> list[Result]:
    """Time every plan's providers at each torch CPU thread count of ``threads`` (default: the
    current one), reporting each measurement to ``progress``; speedups compare the providers
    of one plan at one thread count."""
    budget = QUICK_CPU if quick else FULL_CPU
    compile_skip = COMPILE_SKIP_QUICK if quick else None

    def measure(p: Plan, provider: str, input_sets: list[Inputs], reason: str | None) -> Result:
        if progress:
            label = f"{p.case.name} {p.shape} {dtype_name(p.dtype)}"
            progress.set_postfix_str(f"{label} {provider} {torch.get_num_threads()}t")
        if input_sets:
            result = _measure(p, provider, input_sets, device, budget, backend_choice, compile_skip)
        else:
            result = _new_result(p, provider)
            result.skipped_reason = reason
        if progress:
            progress.update()
        return result

    results: list[Result] = []
    with value_checks(checks):
        for p in plans:
            reason = None
            try:
                input_sets = make_input_sets(p.case, p.shape, p.dtype, device)
            except Exception as err:  # e.g. out of memory at a large shape
                input_sets, reason = [], f"inputs: {_summary(err)}"
            for count in threads or [torch.get_num_threads()]:
                with torch_threads(count):
                    group = [measure(p, prov, input_sets, reason) for prov in p.providers]
                derive(group, peak, p.case.baseline.style if p.case.baseline else None)
                results.extend(group)
            del input_sets
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results
