"""Time per sampling step of each step-loop engine against the denoiser's own forward time.

The model is the demo's transformer denoiser (:class:`fastdiff.demo.model.Denoiser`; by default
a small transformer: width 384, 8 blocks, 6 heads, byte vocabulary 257, length 1024), sampled
with ``fastdiff.sample(..., method="mdlm")`` (the demo's ``mdlm`` objective) at batch 1 and 64.
Its zero-initialized layers (adaLN modulation, output head) get small random weights, so that the
logits, and hence the tokens, depend on the input (the untrained model predicts the uniform
distribution); the work per call is the same either way.

Measured, all under ``torch.inference_mode()`` and ``fastdiff.value_checks(False)`` (no host
sync from the ops' value checks; the CUDA-graph engine needs sync-free steps anyway):

- per engine (``loop="python"``, ``"cpp"``, ``"cuda_graph"``), the time of a whole
  ``sample()`` call of ``steps`` and of ``short_steps`` steps (median of ``repeats`` interleaved
  runs). ``per_step_ms = (T(steps) - T(short_steps)) / (steps - short_steps)`` is the marginal
  cost of one step: the fixed costs of a call (scheduler set-up, start state, and for
  ``cuda_graph`` the eager warm-up step and the graph capture, redone on every call) cancel.
  ``per_step_amortized_ms = T(steps) / steps`` keeps them. MDLM stops early once nothing is
  masked (one check per step); with the log-linear schedule a position is still masked before
  the last step with probability ``1 / steps``, so at length 1024 the run goes to the end. The
  steps actually run are read from an untimed run with the same seed (``steps_run``) and the
  times are divided by those;
- the denoiser's forward alone on the same shapes, eager and replayed from a CUDA graph (one
  forward captured with static inputs after a warm-up on a side stream), per call;
- whether ``cpp`` and ``cuda_graph`` gave the same tokens as ``python`` for the same seed.

The issue's target: with graph replay, the time per step is within 10% of the denoiser's own
graph-replayed forward at batch 1 (``graph_step_over_graphed_forward <= 1.10``).

Usage: ``python -m benchmarks.step_loop_gpu --out DIR [--device cuda|cpu] [--tiny]`` writes
``step-loop-gpu-<device>-<timestamp>.json`` and prints a table. On a CPU the ``cuda_graph``
engine and the graphed forward are skipped (``null``, with the reason under ``skipped``);
``--tiny`` runs a tiny model and shape in seconds (a smoke run, no timing claim).
``--precision tf32|bf16`` (TF32 matmuls, bf16 autocast; default fp32 as in the demo),
``--batches``, ``--steps``, ``--short-steps`` and ``--repeats`` override the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import fastdiff
from fastdiff import _extension
from fastdiff.demo import objectives
from fastdiff.demo.model import Denoiser, ModelConfig

ENGINES = ("python", "cpp", "cuda_graph")
PRECISIONS = ("fp32", "tf32", "bf16")
TARGET = 1.10
"""Issue 7's target: graph-replayed step time <= 1.10 x graph-replayed forward at batch 1."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """What one run measures: the model, the sequence length, the batches, the two step counts
    whose difference gives the marginal time per step, and the repeats."""

    config: ModelConfig
    length: int
    batches: tuple[int, ...]
    steps: int
    short_steps: int
    repeats: int
    forward_calls: int
    """Forward calls per forward timing (the recorded time is per call)."""


FULL = Setup(
    config=ModelConfig(vocab_size=257, max_len=1024, dim=384, depth=8, heads=6),
    length=1024,
    batches=(1, 64),
    steps=128,
    short_steps=32,
    repeats=5,
    forward_calls=10,
)
TINY = Setup(
    config=ModelConfig(vocab_size=257, max_len=32, dim=32, depth=1, heads=2),
    length=32,
    batches=(1, 4),
    steps=16,
    short_steps=2,
    repeats=5,
    forward_calls=3,
)


def build_model(config: ModelConfig, device: torch.device, seed: int = 0) -> Denoiser:
    """The demo's denoiser in eval mode on ``device``, with random (instead of zero) weights in
    the layers that start at zero, so that its predictions depend on the input."""
    torch.manual_seed(seed)
    model = Denoiser(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not bool(module.weight.any()):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.normal_(module.bias, std=0.02)
    return model.to(device).eval()


def make_denoiser(model: nn.Module, precision: str, device: torch.device) -> Callable:
    """``(x, sigma) -> logits`` as the ``mdlm`` objective passes it to the sampler; with
    ``bf16`` the forward runs under autocast (no weight cache: safe inside a graph capture)."""
    denoise = objectives.get("mdlm").denoiser(model)
    if precision != "bf16":
        return denoise

    def autocast_denoise(x: Tensor, sigma: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            return denoise(x, sigma)

    return autocast_denoise


def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one ``fn()``: CUDA events around it (after a synchronize) on a GPU,
    ``perf_counter`` on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _sample_fn(
    denoise: Callable, batch: int, length: int, steps: int, engine: str, device: torch.device
) -> Callable[..., object]:
    """``run(trajectory=False)``: one seeded ``fastdiff.sample`` call of ``steps`` MDLM steps
    with ``engine`` (the same start state and randomness every call)."""
    objective = objectives.get("mdlm")

    def run(trajectory: bool = False):
        return fastdiff.sample(
            denoise,
            (batch, length),
            method="mdlm",
            steps=steps,
            vocab_size=objective.vocab_size,
            mask_id=objective.mask_id,
            schedule=objective.schedule,
            seed=0,
            loop=engine,
            device=device,
            return_trajectory=trajectory,
        )

    return run


def time_engines(
    denoise: Callable, batch: int, setup: Setup, engines: list[str], device: torch.device
) -> tuple[dict[str, dict], dict[str, bool]]:
    """Per engine: steps run, call times (median and samples) at both step counts, the
    marginal and amortized time per step; and whether each engine's tokens equal python's."""
    counts = {"long": setup.steps, "short": setup.short_steps}
    runs = {
        (e, k): _sample_fn(denoise, batch, setup.length, s, e, device)
        for e in engines
        for k, s in counts.items()
    }
    steps_run: dict[tuple[str, str], int] = {}
    tokens: dict[str, Tensor] = {}
    for (engine, kind), fn in runs.items():  # untimed: warm-up, steps run, tokens
        out = fn(trajectory=True)
        steps_run[engine, kind] = out.steps_run
        if kind == "long":
            tokens[engine] = out.tokens
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(setup.repeats):  # interleaved: drifts of a shared machine hit all alike
        for key, fn in runs.items():
            samples[key].append(elapsed_ms(fn, device))
    results = {}
    for engine in engines:
        median = {k: statistics.median(samples[engine, k]) for k in counts}
        ran = {k: steps_run[engine, k] for k in counts}
        extra = ran["long"] - ran["short"]
        results[engine] = {
            "steps_run": ran,
            "call_ms": median,
            "call_ms_samples": {k: samples[engine, k] for k in counts},
            "per_step_ms": (median["long"] - median["short"]) / extra if extra > 0 else None,
            "per_step_amortized_ms": median["long"] / max(ran["long"], 1),
        }
    same = {e: bool(torch.equal(tokens[e], tokens["python"])) for e in engines if e != "python"}
    return results, same


def time_forward(
    denoise: Callable, batch: int, setup: Setup, device: torch.device, graphed: bool
) -> dict:
    """Median milliseconds per forward call of the denoiser at ``[batch, length]``, eager or
    replayed from a CUDA graph (static inputs, warm-up on a side stream, then one capture)."""
    gen = torch.Generator().manual_seed(1)
    vocab = setup.config.vocab_size
    x = torch.randint(0, vocab, (batch, setup.length), generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.5, vocab - 1, x).to(device)
    sigma = torch.rand(batch, generator=gen).add(0.1).to(device)
    graph = None
    if graphed:
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                denoise(x, sigma)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = denoise(x, sigma)  # noqa: F841  (the replays write into it)

    def calls() -> None:
        for _ in range(setup.forward_calls):
            if graph is not None:
                graph.replay()
            else:
                denoise(x, sigma)

    calls()
    times = [elapsed_ms(calls, device) / setup.forward_calls for _ in range(setup.repeats)]
    return {"median_ms": statistics.median(times), "samples_ms": times}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measure_batch(
    denoise: Callable, batch: int, setup: Setup, device: torch.device, skipped: dict[str, str]
) -> dict:
    """Engines and forwards at one batch size, with the ratios step / forward."""
    engines = [e for e in ENGINES if e not in skipped]
    timed, same = time_engines(denoise, batch, setup, engines, device)
    forward = {"eager": time_forward(denoise, batch, setup, device, graphed=False)}
    forward["graphed"] = (
        None if "graphed_forward" in skipped else time_forward(denoise, batch, setup, device, True)
    )
    fwd = {k: v["median_ms"] if v else None for k, v in forward.items()}
    step = {e: timed[e]["per_step_ms"] if e in timed else None for e in ENGINES}
    graph_ratio = _ratio(step["cuda_graph"], fwd["graphed"])
    return {
        "batch": batch,
        "shape": [batch, setup.length],
        "engines": {e: timed.get(e) for e in ENGINES},
        "forward": forward,
        "tokens_identical_to_python": {e: same.get(e) for e in ENGINES if e != "python"},
        "ratios": {
            "step_over_eager_forward": {e: _ratio(step[e], fwd["eager"]) for e in ENGINES},
            "step_over_graphed_forward": {e: _ratio(step[e], fwd["graphed"]) for e in ENGINES},
            "graph_step_over_graphed_forward": graph_ratio,
            "graph_step_overhead_pct": None if graph_ratio is None else (graph_ratio - 1) * 100,
            "eager_forward_over_graphed_forward": _ratio(fwd["eager"], fwd["graphed"]),
        },
        "within_target": None if graph_ratio is None else graph_ratio <= TARGET,
    }


def _skips(device: torch.device) -> dict[str, str]:
    skipped = {}
    if _extension.load() is None:
        skipped["cpp"] = f"fastdiff._C not loaded: {_extension.missing_reason()}"
    if device.type != "cuda":
        skipped["cuda_graph"] = "CUDA graphs need a CUDA device"
        skipped["graphed_forward"] = "CUDA graphs need a CUDA device"
    return skipped


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def run(setup: Setup, device: torch.device, precision: str = "fp32") -> dict:
    """Every measurement of ``setup`` on ``device``: the JSON document."""
    if device.type != "cuda" and precision == "tf32":
        precision = "fp32"  # TF32 is a CUDA matmul mode
    skipped = _skips(device)
    model = build_model(setup.config, device)
    denoise = make_denoiser(model, precision, device)
    before = torch.get_float32_matmul_precision()
    if precision == "tf32":
        torch.set_float32_matmul_precision("high")
    try:
        with torch.inference_mode(), fastdiff.value_checks(False):
            rows = [measure_batch(denoise, b, setup, device, skipped) for b in setup.batches]
    finally:
        torch.set_float32_matmul_precision(before)
    config = dataclasses.asdict(setup)
    config["batches"] = list(setup.batches)
    return {
        "benchmark": "step_loop_gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "fastdiff": fastdiff.__version__,
        "extension_loaded": _extension.load() is not None,
        "extension_reason": _extension.missing_reason(),
        "backend": fastdiff.get_backend(),
        "cpu_threads": torch.get_num_threads(),
        "precision": precision,
        "inference_mode": True,
        "value_checks": False,
        "method": "mdlm",
        "model": {**config.pop("config"), "parameters": model.num_parameters()},
        "setup": config,
        "target": f"cuda_graph step <= {TARGET} x graph-replayed forward at batch 1",
        "skipped": skipped,
        "results": rows,
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(doc: dict) -> str:
    """A short text table of ``doc`` (from :func:`run`)."""
    setup = doc["setup"]
    lines = [
        f"step loop on {doc['device']}: mdlm, length {setup['length']}, steps "
        f"{setup['steps']} - {setup['short_steps']}, {doc['precision']}, "
        f"model dim {doc['model']['dim']} depth {doc['model']['depth']}",
        f"{'batch':>5}  {'what':<16} {'ms/step':>9} {'amortized':>9} {'/fwd eager':>10} "
        f"{'/fwd graph':>10} {'steps run':>9}  same tokens",
    ]
    for row in doc["results"]:
        ratios = row["ratios"]
        for engine, r in row["engines"].items():
            if r is None:
                lines.append(f"{row['batch']:>5}  {engine:<16} skipped: {doc['skipped'][engine]}")
                continue
            same = row["tokens_identical_to_python"].get(engine)
            lines.append(
                f"{row['batch']:>5}  {engine:<16} {_fmt(r['per_step_ms']):>9} "
                f"{_fmt(r['per_step_amortized_ms']):>9} "
                f"{_fmt(ratios['step_over_eager_forward'][engine], '.2f'):>10} "
                f"{_fmt(ratios['step_over_graphed_forward'][engine], '.2f'):>10} "
                f"{r['steps_run']['long']:>4}/{r['steps_run']['short']:<4}  "
                f"{'(ref)' if same is None else same}"
            )
        for kind, f in row["forward"].items():
            what = f"forward {kind}"
            if f is None:
                lines.append(
                    f"{row['batch']:>5}  {what:<16} skipped: {doc['skipped'][kind + '_forward']}"
                )
            else:
                lines.append(f"{row['batch']:>5}  {what:<16} {_fmt(f['median_ms']):>9}")
        if row["within_target"] is not None:
            pct = ratios["graph_step_overhead_pct"]
            lines.append(
                f"{'':>5}  graph step within {pct:+.1f}% of the graphed forward "
                f"(target <= {(TARGET - 1) * 100:.0f}% at batch 1: "
                f"{'met' if row['within_target'] else 'missed'})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str | os.PathLike] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON file")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny model and shape (seconds)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--short-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    setup = TINY if args.tiny else FULL
    overrides = {
        "batches": None if args.batches is None else tuple(args.batches),
        "steps": args.steps,
        "short_steps": args.short_steps,
        "repeats": args.repeats,
    }
    setup = dataclasses.replace(setup, **{k: v for k, v in overrides.items() if v is not None})
    if not 1 <= setup.short_steps < setup.steps or setup.repeats < 1 or min(setup.batches) < 1:
        parser.error("need 1 <= --short-steps < --steps, --repeats >= 1 and batches >= 1")
    doc = run(setup, torch.device(name), args.precision)
    print(table(doc))
    now = datetime.datetime.now(datetime.timezone.utc)
    slug = re.sub(r"[^a-z0-9]+", "-", doc["device"].lower()).strip("-")
    path = args.out / f"step-loop-gpu-{slug}-{now:%Y%m%d-%H%M%S}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
