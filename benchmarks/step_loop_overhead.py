"""Host overhead per step of the sampler step loop: C++ engine against Python engine.

A trivial denoiser (returns a precomputed logits tensor) and a trivial update (returns x) make
the step's real work nearly zero, so what remains is the loop machinery: the time input of the
step, the early-exit test (``mask_id``), the fixed positions, the calls into the denoiser and
the update. Three timings of ``steps`` steps, each the best of ``repeats`` interleaved runs
(the median is recorded too; the machine may be shared):

- ``direct``: the same denoiser + update calls made back to back in a bare Python ``for`` loop
  (time inputs precomputed), i.e. the work without the loop machinery;
- ``python`` / ``cpp``: :func:`fastdiff.samplers.loop.run_loop` with that engine.

``overhead = (engine time - direct time) / steps``, reported with the raw per-step times; the
issue's target is ``cpp overhead <= python overhead / 5``. Scenarios: ``plain`` (no mask id, no
fixed positions) and ``full`` (early-exit test every step and a fixed prefix).

Usage: ``python -m benchmarks.step_loop_overhead --out benchmarks/results`` writes
``cpu-step-loop-<date>.json`` (or ``cuda-...``) with the machine, versions and results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import fastdiff
from fastdiff import _extension
from fastdiff.samplers.loop import StepLoop, run_loop

SCENARIOS = ("plain", "full")


def _setup(scenario: str, steps: int, batch: int, length: int, vocab: int, device):
    mask_id = vocab - 1
    x = torch.full((batch, length), mask_id, dtype=torch.int64, device=device)
    logits = torch.zeros(batch, length, vocab, device=device)
    fixed = None
    if scenario == "full":
        fixed = torch.zeros(batch, length, dtype=torch.bool, device=device)
        fixed[:, : length // 8] = True
        x[:, : length // 8] = 0
    loop = StepLoop(
        inputs=torch.linspace(1.0, 0.0, steps, device=device),
        update=lambda out, x, i: x,
        fixed=fixed,
        mask_id=mask_id if scenario == "full" else None,
    )
    return x, loop, (lambda x, t: logits)


def _direct(denoiser, x, update, times: list[torch.Tensor]) -> None:
    for i, t in enumerate(times):
        x = update(denoiser(x, t), x, i)


def make_case(
    scenario: str,
    runner: str,
    *,
    steps: int = 1000,
    batch: int = 1,
    length: int = 128,
    vocab: int = 64,
    device: str = "cpu",
):
    """A no-argument callable running ``steps`` steps of ``scenario`` with ``runner``
    (``"direct"``, ``"python"`` or ``"cpp"``)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    x, loop, denoiser = _setup(scenario, steps, batch, length, vocab, torch.device(device))
    if runner == "direct":
        times = [t.expand(batch) for t in loop.inputs]  # made before the clock starts
        return lambda: _direct(denoiser, x, loop.update, times)
    return lambda: run_loop(denoiser, x, loop, engine=runner)


def _seconds(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    scenario: str = "full",
    *,
    steps: int = 1000,
    batch: int = 1,
    length: int = 128,
    vocab: int = 64,
    repeats: int = 15,
    device: str = "cpu",
) -> dict:
    """Per-step times (microseconds) of ``direct``, ``python`` and ``cpp`` (when the extension
    is built), the overheads and their ratio for one scenario."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    engines = ["python"] + (["cpp"] if _extension.load() is not None else [])
    shape = dict(steps=steps, batch=batch, length=length, vocab=vocab, device=device)
    cases = {runner: make_case(scenario, runner, **shape) for runner in ["direct", *engines]}
    samples: dict[str, list[float]] = {runner: [] for runner in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so that drifts of a shared machine hit all alike
        for runner, fn in cases.items():
            samples[runner].append(_seconds(fn) / steps * 1e6)
    per_step = {runner: min(v) for runner, v in samples.items()}
    overhead = {e: per_step[e] - per_step["direct"] for e in engines}
    out = {
        "scenario": scenario,
        "steps": steps,
        "shape": [batch, length, vocab],
        "repeats": repeats,
        "per_step_us": per_step,
        "per_step_median_us": {runner: statistics.median(v) for runner, v in samples.items()},
        "overhead_us": overhead,
    }
    if "cpp" in overhead:
        out["cpp_over_python_overhead"] = overhead["cpp"] / overhead["python"]
        out["cpp_over_python_per_step"] = per_step["cpp"] / per_step["python"]
    return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastdiff": fastdiff.__version__,
        "extension": _extension.missing_reason() or "fastdiff._C loaded",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON result")
    args = parser.parse_args(argv)
    results = [
        measure(s, steps=args.steps, repeats=args.repeats, device=args.device) for s in SCENARIOS
    ]
    for r in results:
        print(json.dumps(r))
    if args.out is not None:
        now = datetime.datetime.now(datetime.timezone.utc)
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
        path = args.out / f"{kind}-step-loop-{now:%Y%m%d-%H%M%S}.json"
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"date": now.isoformat(timespec="seconds"), "machine": machine()}
        path.write_text(json.dumps({**doc, "results": results}, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
