"""Real GPU compiles without a GPU: record every Triton launch the public ops make, compile each
one for NVIDIA targets, and read its resources from the cubin.

Recording (:func:`record`): with ``TRITON_INTERPRET`` unset, a stand-in Triton driver reports
a CUDA target (``GPUTarget("cuda", 90, 32)``) and ``triton.knobs.runtime.jit_cache_hook``
receives each launch *after Triton's own binder* has bound its arguments: the signature, the
divisibility / equal-to-1 specialization of every pointer and integer, the constexprs and the
launch options (num_warps, num_stages, fp fusion) exactly as a real launch on a CUDA device
would compile them. The hook records them and returns ``True``, so nothing is compiled or run
then. Autotuned kernels record every config (a real launch benchmarks them all). The ops are
driven on CPU tensors that are never touched (``torch.empty``; value checks off), so shapes of
16384 x 50258 cost nothing; a CUDA allocation is 256-byte aligned, a CPU one at least 64-byte,
so pointer specializations agree.

Compiling (:func:`compile_launch`): ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
cc, 32))`` for sm_80 and sm_90 with the ``ptxas`` shipped in the triton wheel; registers, stack
(spills) and shared memory come from ``cuobjdump -res-usage`` on the cubin, spill instructions
(``STL`` / ``LDL``) from its SASS. Occupancy is the resident warps per SM those registers and
that shared memory allow.

Command line (what ``tests/test_gpu_compile.py`` runs; needs no GPU)::

    python -m fastdiff.bench.gpu_compile --json out.json --jobs 2 [--scenarios NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TARGETS = (80, 90)

# Kernels on the training and sampling hot paths: a register spill in any of them fails the
# check. The rest (the embedding-norm prologue of rounding) run once per call on small data.
HOT_KERNELS = frozenset(
    {
        "_absorb_kernel",
        "_uniform_kernel",
        "_mdlm_kernel",
        "_csm_absorb_kernel",
        "_csm_uniform_kernel",
        "_corrupt_kernel",
        "_dense_race_kernel",
        "_categorical_kernel",
        "_update_kernel",
        "_candidates_kernel",
        "_q_sample_kernel",
        "_loss_kernel",
        "_loss_grad_kernel",
        "_step_kernel",
        "_round_kernel",
    }
)

# Per-SM limits of the targets (CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability"): registers, resident warps, usable shared memory per SM, register
# allocation granularity (per warp).
SM_LIMITS = {
    80: {"registers": 65536, "warps": 64, "shared": 167936, "reg_unit": 256},
    90: {"registers": 65536, "warps": 64, "shared": 232448, "reg_unit": 256},
}


@dataclass
class Launch:
    """One recorded launch specialization (what Triton would compile for a CUDA device)."""

    module: str
    kernel: str
    scenario: str
    signature: dict[str, str]
    constants: list[tuple[list[int], Any]]
    attrs: list[tuple[list[int], Any]]
    options: dict[str, Any]
    key: str = ""
    scenarios: list[str] = field(default_factory=list)

    def constexprs(self) -> dict[str, Any]:
        """The constexpr arguments by name (for tables)."""
        names = list(self.signature)
        return {names[path[0]]: value for path, value in self.constants if len(path) == 1}


@dataclass
class Compiled:
    """What one compile of a launch for one target gave."""

    key: str
    kernel: str
    target: int
    ok: bool
    error: str = ""
    registers: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    spill_instructions: int = 0
    num_warps: int = 0
    occupancy: float = 0.0
    fp64_instructions: int = 0  # float64 arithmetic instructions in the PTX
    seconds: float = 0.0
    cubin: str = ""


# --------------------------------------------------------------------------------------------
# recording


class _CudaStandIn:
    """The part of a Triton driver that ``JITFunction.run`` asks before it compiles."""

    def __init__(self, capability: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


_OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg")


def _launch_from_hook(kwargs: dict[str, Any], scenario: str) -> Launch:
    info, comp = kwargs["fn"], kwargs["compile"]
    data = json.loads(comp["specialization_data"])
    options = {k: data["options"][k] for k in _OPTION_KEYS if data["options"].get(k) is not None}
    launch = Launch(
        module=info.module,
        kernel=info.name,
        scenario=scenario,
        signature=dict(comp["signature"]),
        constants=[(list(k), v) for k, v in zip(data["constant_keys"], data["constant_vals"])],
        attrs=[(list(k), v) for k, v in zip(data["attrs_keys"], data["attrs_vals"])],
        options=options,
        scenarios=[scenario],
    )
    body = json.dumps(
        [
            launch.module,
            launch.kernel,
            launch.signature,
            launch.constants,
            launch.attrs,
            launch.options,
        ],
        sort_keys=True,
        default=str,
    )
    launch.key = hashlib.sha256(body.encode()).hexdigest()[:16]
    return launch


@contextlib.contextmanager
def _recording(sink: list[dict[str, Any]]) -> Iterator[None]:
    """Route Triton launches to ``sink`` instead of compiling or running them."""
    from triton import knobs
    from triton.runtime import autotuner
    from triton.runtime.driver import driver

    import fastdiff
    from fastdiff import backend

    def hook(**kwargs: Any) -> bool:
        sink.append(kwargs)
        return True  # handled: JITFunction.run returns without compiling or launching

    def every_config(self, *args: Any, **kwargs: Any) -> None:
        # A real first launch benchmarks every config left after pruning: each is compiled,
        # so record each.
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
        for config in configs:
            self.fn.run(*args, **{**kwargs, **config.all_kwargs()})
        self.nargs = None

    saved = (knobs.runtime.jit_cache_hook, autotuner.Autotuner.run, backend._kernel_runs_on)
    active = driver._active  # None until a real driver was asked for: restored as it was
    driver.set_active(_CudaStandIn(90))
    knobs.runtime.jit_cache_hook = hook
    autotuner.Autotuner.run = every_config
    backend._kernel_runs_on = lambda device: True
    try:
        with fastdiff.use_backend("triton"), fastdiff.value_checks(False):
            yield
    finally:
        knobs.runtime.jit_cache_hook, autotuner.Autotuner.run, backend._kernel_runs_on = saved
        driver.set_active(active)


def record(scenarios: dict[str, Callable[[], None]] | None = None) -> list[Launch]:
    """Run the launch scenarios (:mod:`fastdiff.bench.launch_scenarios`) and return the distinct
    launch specializations they make, in first-seen order, each with the scenarios that made it.

    Must run in a process where ``TRITON_INTERPRET`` was unset before ``triton`` was imported.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("recording real launches needs TRITON_INTERPRET unset")
    if scenarios is None:
        from fastdiff.bench.launch_scenarios import SCENARIOS

        scenarios = SCENARIOS
    launches: dict[str, Launch] = {}
    for name, run in scenarios.items():
        sink: list[dict[str, Any]] = []
        with _recording(sink):
            run()
        if not sink:
            raise RuntimeError(f"scenario {name} launched no Triton kernel")
        for kwargs in sink:
            launch = _launch_from_hook(kwargs, name)
            if launch.key in launches:
                if name not in launches[launch.key].scenarios:
                    launches[launch.key].scenarios.append(name)
            else:
                launches[launch.key] = launch
    return list(launches.values())


# --------------------------------------------------------------------------------------------
# compiling


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """``REG``, ``STACK``, ``LOCAL`` and ``SHARED`` of a cubin's kernel (``cuobjdump``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    usage = {}
    for name in ("REG", "STACK", "LOCAL", "SHARED"):
        match = re.search(rf"\b{name}:(\d+)", text)
        usage[name] = int(match.group(1)) if match else 0
    return usage


def sass(cubin: bytes) -> str:
    """The SASS of a cubin (``cuobjdump -sass``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout


# float64 arithmetic in the PTX (add / sub / mul / fma / div / sqrt / min / max on .f64)
_FP64_PTX = re.compile(
    r"^\s*(?:@%p\d+\s+)?(?:add|sub|mul|fma|div|sqrt|min|max)(?:\.\w+)*\.f64\b", re.M
)


def occupancy(registers: int, shared: int, num_warps: int, capability: int) -> float:
    """Fraction of an SM's warp slots filled by resident programs of this kernel."""
    lim = SM_LIMITS[capability]
    per_warp = -(-max(registers, 1) * 32 // lim["reg_unit"]) * lim["reg_unit"]
    by_regs = lim["registers"] // (per_warp * num_warps)
    by_warps = lim["warps"] // num_warps
    by_shared = lim["shared"] // shared if shared else by_warps
    programs = min(by_regs, by_warps, by_shared)
    return programs * num_warps / lim["warps"]


def _jit_function(launch: Launch):
    kernel = getattr(importlib.import_module(launch.module), launch.kernel)
    while not hasattr(kernel, "arg_names") or hasattr(kernel, "configs"):  # autotuner, heuristics
        kernel = kernel.fn
    return kernel


def compile_launch(launch: Launch, capability: int, cubin_dir: str | None = None) -> Compiled:
    """Compile one launch for ``sm_<capability>`` and read its resources (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    result = Compiled(launch.key, launch.kernel, capability, ok=False)
    try:
        fn = _jit_function(launch)
        constants = {tuple(k): v for k, v in launch.constants}
        attrs = {tuple(k): v for k, v in launch.attrs}
        source = ASTSource(fn, launch.signature, constants, attrs)
        compiled = triton.compile(
            source, target=GPUTarget("cuda", capability, 32), options=dict(launch.options)
        )
        cubin = compiled.asm["cubin"]
        usage = resource_usage(cubin)
        result.ok = True
        result.registers = usage["REG"]
        result.stack = usage["STACK"]
        result.local = usage["LOCAL"]
        result.shared = max(usage["SHARED"], int(compiled.metadata.shared))
        if result.stack or result.local:  # only then can there be spill code: count it
            opcodes = re.findall(
                r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass(cubin)
            )
            result.spill_instructions = sum(op.startswith(("STL", "LDL")) for op in opcodes)
        result.fp64_instructions = len(_FP64_PTX.findall(compiled.asm["ptx"]))
        result.num_warps = int(compiled.metadata.num_warps)
        result.occupancy = occupancy(result.registers, result.shared, result.num_warps, capability)
        if cubin_dir:
            path = Path(cubin_dir) / f"{launch.kernel}-{launch.key}-sm{capability}.cubin"
            path.write_bytes(cubin)
            result.cubin = str(path)
    except Exception as error:  # a compile failure is a result, reported with its message
        root = error
        while root.__cause__ is not None:  # a nested jit function's error is the cause
            root = root.__cause__
        lines = [line for line in str(root).strip().splitlines() if line.strip()]
        result.error = f"{type(root).__name__}: " + " | ".join(lines[-8:])[:2000]
    result.seconds = time.perf_counter() - start
    return result


def _compile_job(job: tuple[dict[str, Any], int, str | None]) -> Compiled:
    payload, capability, cubin_dir = job
    return compile_launch(Launch(**payload), capability, cubin_dir)


def compile_all(
    launches: list[Launch],
    targets: tuple[int, ...] = TARGETS,
    jobs: int = 2,
    cubin_dir: str | None = None,
) -> list[Compiled]:
    """Compile every launch for every target, ``jobs`` processes in parallel (spawned, with
    ``TRITON_INTERPRET`` unset); identical launches were merged by :func:`record`."""
    work = [(asdict(launch), cc, cubin_dir) for launch in launches for cc in targets]
    if jobs <= 1:
        return [_compile_job(job) for job in work]
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(_compile_job, work, chunksize=1))


def problems(launches: list[Launch], results: list[Compiled]) -> list[str]:
    """One line per compile failure and per spill in a hot kernel."""
    by_key = {launch.key: launch for launch in launches}
    lines = []
    for r in results:
        launch = by_key[r.key]
        where = f"{r.kernel} sm_{r.target} {launch.constexprs()} ({launch.scenarios[0]})"
        if not r.ok:
            lines.append(f"compile error: {where}: {r.error}")
        elif r.kernel in HOT_KERNELS and (r.stack or r.local or r.spill_instructions):
            lines.append(
                f"spills: {where}: {r.registers} registers, stack {r.stack} B, "
                f"{r.spill_instructions} spill instructions"
            )
    return lines


def table(launches: list[Launch], results: list[Compiled]) -> str:
    """A text table: one line per launch and target."""
    by_key = {launch.key: launch for launch in launches}
    head = f"{'kernel':22} {'sm':>3} {'regs':>4} {'spill':>5} {'smem':>6} {'warps':>5} "
    head += f"{'occ':>5} {'fp64':>4}  constexprs / scenario"
    out = [head]
    for r in sorted(results, key=lambda r: (r.kernel, r.key, r.target)):
        launch = by_key[r.key]
        modes = " ".join(f"{k}={v}" for k, v in launch.constexprs().items())
        if not r.ok:
            out.append(f"{r.kernel:22} {r.target:>3} FAILED  {modes}  [{launch.scenario}]")
            continue
        out.append(
            f"{r.kernel:22} {r.target:>3} {r.registers:>4} {r.stack:>5} {r.shared:>6} "
            f"{r.num_warps:>5} {r.occupancy:>5.2f} {r.fp64_instructions:>4}  {modes}  "
            f"[{launch.scenario}]"
        )
    return "\n".join(out)


def run(
    scenario_names: list[str] | None = None,
    jobs: int = 2,
    targets: tuple[int, ...] = TARGETS,
    cubin_dir: str | None = None,
    kernels: list[str] | None = None,
) -> dict[str, Any]:
    """Record, compile and summarize; the JSON document of the command line."""
    from fastdiff.bench.launch_scenarios import SCENARIOS

    if scenario_names:
        unknown = sorted(set(scenario_names) - set(SCENARIOS))
        if unknown:
            raise SystemExit(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    chosen = {k: v for k, v in SCENARIOS.items() if not scenario_names or k in scenario_names}
    start = time.perf_counter()
    launches = [l for l in record(chosen) if not kernels or l.kernel in kernels]
    recorded = time.perf_counter()
    results = compile_all(launches, targets, jobs, cubin_dir)
    import triton

    return {
        "triton": triton.__version__,
        "targets": list(targets),
        "record_seconds": recorded - start,
        "compile_seconds": time.perf_counter() - recorded,
        "launches": [asdict(launch) for launch in launches],
        "results": [asdict(r) for r in results],
        "problems": problems(launches, results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write launches and compile results here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scenarios", nargs="+", metavar="NAME")
    parser.add_argument("--kernels", nargs="+", metavar="NAME", help="compile only these")
    parser.add_argument("--targets", nargs="+", type=int, default=list(TARGETS))
    parser.add_argument("--cubins", metavar="DIR", help="keep each cubin in DIR")
    parser.add_argument("--quiet", action="store_true", help="no table, only problems")
    args = parser.parse_args(argv)
    if args.cubins:
        Path(args.cubins).mkdir(parents=True, exist_ok=True)
    doc = run(args.scenarios, args.jobs, tuple(args.targets), args.cubins, args.kernels)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    launches = [Launch(**d) for d in doc["launches"]]
    results = [Compiled(**d) for d in doc["results"]]
    if not args.quiet:
        print(table(launches, results))
    print(
        f"{len(launches)} launch specializations x {len(args.targets)} targets compiled in "
        f"{doc['compile_seconds']:.0f} s (recorded in {doc['record_seconds']:.0f} s), "
        f"triton {doc['triton']}; {len(doc['problems'])} problems"
    )
    for line in doc["problems"]:
        print(line)
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run with TRITON_INTERPRET unset: the interpreter cannot compile for a GPU")
    sys.exit(main())
