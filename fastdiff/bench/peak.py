"""The device's measured limits, taken in the same run as the ops they bound.

- Copy bandwidth: ``dst.copy_(src)`` of one large buffer (1 GiB on CUDA, 256 MiB on the CPU;
  a quarter of that in quick mode), counted as ``2 * size`` bytes (read + write), in GB/s
  (10^9 bytes per second). This is what a memory-bound op can at best reach.
- Matmul rate: an ``n x n`` by ``n x n`` product per benchmarked dtype (``n`` = 8192 on CUDA,
  1024 on the CPU; half in quick mode), ``2 n^3`` flops, in TFLOP/s. float32 is measured with
  TF32 allowed on CUDA (what Triton's ``tl.dot`` uses by default), so it is the hardware limit
  of an fp32 projection, not the rate of torch's default full-precision fp32 matmul.

An op's roofline time is ``max(bytes / copy rate, flops / matmul rate)``; its percentage of
peak is that time over the measured time (:func:`fastdiff.bench.runner.pct_of_peak`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastdiff.bench.shapes import dtype_name
from fastdiff.bench.timing import FULL_CPU, QUICK_CPU, time_call


@dataclass(frozen=True)
class Peak:
    copy_gbps: float
    matmul_tflops: dict[str, float]  # by dtype name

    def as_dict(self) -> dict[str, object]:
        return {"copy_gbps": self.copy_gbps, "matmul_tflops": dict(self.matmul_tflops)}


@contextlib.contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def copy_gbps(device: torch.device, quick: bool) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes = 2 x buffer size)."""
    size = (1 << 30 if device.type == "cuda" else 256 << 20) // (4 if quick else 1)
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, QUICK_CPU if quick else FULL_CPU)
    return 2 * size / (timing.median_ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Square matmul rate in TFLOP/s for ``dtype`` (TF32 allowed for float32 on CUDA)."""
    n = (8192 if device.type == "cuda" else 1024) // (2 if quick else 1)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with _tf32(device):
        timing = time_call(lambda: a @ b, device, QUICK_CPU if quick else FULL_CPU)
    return 2 * n**3 / (timing.median_ms * 1e-3) / 1e12


def measure(device: torch.device, dtypes: list[torch.dtype], quick: bool) -> Peak:
    """Copy bandwidth and the matmul rate of every dtype in ``dtypes``."""
    return Peak(
        copy_gbps=copy_gbps(device, quick),
        matmul_tflops={dtype_name(d): matmul_tflops(device, d, quick) for d in dtypes},
    )
