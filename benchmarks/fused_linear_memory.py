"""Fused projection + loss against the unfused path (projection, then the loss kernel).

For each loss (absorbing score entropy, masked-diffusion cross entropy) and dtype, one
training step's loss and backward is run two ways on the same inputs:

- ``unfused``: ``logits = hidden @ W^T`` (the full ``[N, V]`` tensor), then the fused loss
  kernel on the logits (``fastdiff.score_entropy`` / ``masked_diffusion_loss``), backward;
- ``fused``: ``fastdiff.linear_score_entropy`` / ``linear_masked_diffusion_loss``.

It records the median time of forward + backward (CUDA events, after warm-up) and the extra
peak memory of one step above the memory held before it (inputs and parameters), and checks the
issue's target: fused peak memory <= 1/4 of the unfused one, at equal or better time. Results go
to a JSON file (device, versions, shapes, times, memory, ratios).

Usage on a GPU: ``python -m benchmarks.fused_linear_memory --out benchmarks/results``.
Without CUDA it runs a tiny shape through the Triton interpreter (a smoke run; no timing claim).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

import fastdiff

LOSSES = ("score_entropy", "masked_diffusion_loss")


def _inputs(n: int, vocab: int, hidden: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    mask_id = vocab - 1
    h = torch.randn(n, hidden, generator=gen).to(device, dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device, dtype)
    w.requires_grad_(True)
    x0 = torch.randint(0, vocab - 1, (n,), generator=gen).to(device)
    x_t = torch.where(torch.rand(n, generator=gen).to(device) < 0.5, mask_id, x0)
    sigma = (torch.rand(n, generator=gen) + 0.1).to(device)
    return h, w, x_t, x0, sigma, mask_id


def _step(loss: str, fused: bool, h, w, x_t, x0, sigma, mask_id) -> None:
    with fastdiff.use_backend("triton"):
        if loss == "score_entropy":
            if fused:
                out = fastdiff.linear_score_entropy(
                    h,
                    w,
                    x_t,
                    x0,
                    sigma=sigma,
                    graph="absorb",
                    mask_id=mask_id,
                    weight=sigma,
                    reduction="sum",
                )
            else:
                out = fastdiff.score_entropy(
                    h @ w.t(),
                    x_t,
                    x0,
                    sigma=sigma,
                    graph="absorb",
                    mask_id=mask_id,
                    weight=sigma,
                    reduction="sum",
                )
        elif fused:
            out = fastdiff.linear_masked_diffusion_loss(
                h, w, x_t, x0, mask_id=mask_id, reduction="sum"
            )
        else:
            out = fastdiff.masked_diffusion_loss(
                h @ w.t(), x_t, x0, mask_id=mask_id, reduction="sum"
            )
    out.backward()


def measure(loss: str, fused: bool, inputs, device: torch.device, repeats: int) -> dict:
    """Median ms of forward + backward and extra peak bytes of one step (CUDA only)."""
    h, w = inputs[:2]

    def run() -> None:
        h.grad = w.grad = None
        _step(loss, fused, *inputs)

    run()  # warm-up (compiles the kernels)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = None
    if device.type == "cuda":
        h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(loss, fused, *inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return {"median_ms": statistics.median(times), "peak_extra_bytes": peak}


def run(shape: tuple[int, int, int], dtypes: list[torch.dtype], repeats: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, vocab, hidden = shape
    rows = []
    for dtype in dtypes:
        inputs = _inputs(n, vocab, hidden, dtype, device)
        for loss in LOSSES:
            unfused = measure(loss, False, inputs, device, repeats)
            fused = measure(loss, True, inputs, device, repeats)
            row = {
                "loss": loss,
                "dtype": str(dtype).removeprefix("torch."),
                "unfused": unfused,
                "fused": fused,
                "time_ratio_unfused_over_fused": unfused["median_ms"] / fused["median_ms"],
            }
            if unfused["peak_extra_bytes"]:
                ratio = fused["peak_extra_bytes"] / unfused["peak_extra_bytes"]
                row["memory_ratio_fused_over_unfused"] = ratio
                row["target_met"] = ratio <= 0.25 and fused["median_ms"] <= unfused["median_ms"]
            rows.append(row)
    return {
        "benchmark": "fused_linear_memory",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "fastdiff": fastdiff.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {"n": n, "v": vocab, "h": hidden},
        "repeats": repeats,
        "results": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("N", "V", "H"))
    parser.add_argument("--dtype", nargs="*", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    default = (16384, 50258, 768) if torch.cuda.is_available() else (8, 40, 8)
    result = run(
        tuple(args.shape or default), [getattr(torch, d) for d in args.dtype], args.repeats
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = result["device"].split(" (")[0].replace(" ", "-").lower()
        (args.out / f"fused-linear-memory-{name}.json").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
