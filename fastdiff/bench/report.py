"""Results out: the printed table, the JSON file, the PNG plot and the ratio table of
``--compare``.

JSON schema (``schema_version`` 1), one file per run::

    {
      "schema_version": 1,
      "fastdiff": "0.1.0", "torch": "2.13.0", "triton": "3.9.0" | null, "python": "3.11.9",
      "device": {"type": "cuda" | "cpu", "name": str,
                 "threads": int,                      # torch's default CPU thread count
                 "memory_bytes": int | null},
      "date": "2025-01-31T12:00:00+00:00",            # UTC, ISO 8601
      "command": [str, ...],                          # the command line
      "settings": {"quick": bool, "tier": str, "backend": "auto" | "triton",
                   "value_checks": bool, "ops": [str], "providers": [str], "dtypes": [str],
                   "threads": [int]},                 # the CPU thread counts timed
      "peak": {"copy_gbps": float, "matmul_tflops": {dtype: float}},  # at the most threads
      "results": [
        {"op": str, "what": "fwd" | "fwd+bwd", "sweep": "v" | "h",
         "shape": {"n": int, "v": int | null, "h": int | null},
         "dtype": str,
         "provider": str,                             # fastdiff, native, reference, compile,
                                                      # sedd, mdlm, d3pm, llada, diffusionlm
         "threads": int,                              # torch CPU threads while timed
         "backend": str | null,                       # triton, native, reference, inductor,
                                                      # eager
         "bytes": int, "flops": int,                  # minimum-traffic model (cases.py)
         "median_ms": float | null, "reps": int | null,
         "gbps": float | null,                        # bytes / median time / 1e9
         "tflops": float | null,                      # flops / median time / 1e12 (flops > 0)
         "pct_of_peak": float | null,                 # roofline time / median time, percent
         "speedup_vs_eager": float | null,            # reference ms / this ms ("x ref")
         "speedup_vs_baseline": float | null,         # public-style baseline ms / this ms
                                                      # ("x base"); both at the same threads
         "peak_mem_bytes": int | null,                # CUDA only: extra bytes at the peak
         "skipped_reason": str | null},               # why no time (the figures are null)
        ...
      ]
    }
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

import fastdiff
from fastdiff.bench.cases import CASES
from fastdiff.bench.peak import Peak
from fastdiff.bench.runner import Result

SCHEMA_VERSION = 1
OP_WIDTH = max(len(case.name) for case in CASES)  # the op column of the tables


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return triton.__version__


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device: torch.device) -> dict[str, object]:
    """Type, name, torch's CPU thread count and (CUDA) memory of ``device``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory = props.name, props.total_memory
    else:
        name, memory = _cpu_name(), None
    return {
        "type": device.type,
        "name": name,
        "threads": torch.get_num_threads(),
        "memory_bytes": memory,
    }


def document(
    results: list[Result],
    peak: Peak,
    device: torch.device,
    settings: dict[str, object],
    command: list[str],
) -> dict[str, object]:
    """The JSON document of one run (module docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "fastdiff": fastdiff.__version__,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "device": device_info(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings,
        "peak": peak.as_dict(),
        "results": [r.as_dict() for r in results],
    }


def file_stem(doc: dict) -> str:
    """``<device>[-quick]-<UTC date>``, e.g. ``cpu-quick-20250131-120000`` or
    ``nvidia-h100-80gb-hbm3-20250131-120000``."""
    device = doc["device"]
    name = "cpu" if device["type"] == "cpu" else re.sub(r"[^a-z0-9]+", "-", device["name"].lower())
    quick = "-quick" if doc["settings"]["quick"] else ""
    date = datetime.fromisoformat(doc["date"]).strftime("%Y%m%d-%H%M%S")
    return f"{name.strip('-')}{quick}-{date}"


def write_json(doc: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load(path: str | os.PathLike) -> dict:
    """A result file written by :func:`write_json` (checks the schema version)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {doc.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return doc


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------


def _fig(x: float | None) -> str:
    """Three significant figures: ``0.0513``, ``1.23``, ``16.3``, ``2048``, ``5.13e-04``."""
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) < 0.01:
        return f"{x:.2e}"
    return f"{x:.{2 - math.floor(math.log10(abs(x)))}f}"


def _mem(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _shape(shape: dict[str, int | None]) -> str:
    return "x".join(str(shape[k]) for k in ("n", "v", "h") if shape.get(k))


_COLUMNS = (  # header, width, alignment
    ("op", OP_WIDTH, "<"),
    ("shape", 16, "<"),
    ("dtype", 8, "<"),
    ("provider", 11, "<"),
    ("threads", 7, ">"),
    ("backend", 9, "<"),
    ("median ms", 10, ">"),
    ("GB/s", 9, ">"),
    ("% peak", 7, ">"),
    ("x ref", 7, ">"),
    ("x base", 7, ">"),
    ("peak mem", 10, ">"),
)


def _line(cells: list[str]) -> str:
    return " ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, _COLUMNS)).rstrip()


def header(doc: dict) -> str:
    """Two lines: versions, device, the thread counts timed and the measured peak."""
    dev, peak, settings = doc["device"], doc["peak"], doc["settings"]
    mm = ", ".join(f"{k} {v:.2f}" for k, v in peak["matmul_tflops"].items())
    timed = ", ".join(str(t) for t in settings["threads"])
    return (
        f"fastdiff {doc['fastdiff']}, torch {doc['torch']}, triton {doc['triton']}; "
        f"{dev['type']}: {dev['name']} ({dev['threads']} threads; timed with {timed}); "
        f"{doc['date']}\n"
        f"measured peak: copy {peak['copy_gbps']:.1f} GB/s; matmul TFLOP/s: {mm}; "
        f"value checks {'on' if settings['value_checks'] else 'off'}"
    )


def table(doc: dict) -> str:
    """One row per result: op, shape, dtype, provider, threads, backend, median ms, GB/s, % of
    peak, speedup over the reference provider ("x ref") and over the public-style baseline
    ("x base") at the same thread count, peak memory. Skipped rows point to their reason,
    listed once below the table."""
    lines = [_line([c[0] for c in _COLUMNS])]
    lines.append("-" * len(lines[0]))
    reasons: dict[str, int] = {}
    for r in doc["results"]:
        head = [r["op"], _shape(r["shape"]), r["dtype"], r["provider"], str(r["threads"])]
        if r["skipped_reason"]:
            note = reasons.setdefault(r["skipped_reason"], len(reasons) + 1)
            lines.append(_line([*head, f"skipped [{note}]"]))
            continue
        lines.append(
            _line(
                [
                    *head,
                    r["backend"],
                    _fig(r["median_ms"]),
                    _fig(r["gbps"]),
                    _fig(r["pct_of_peak"]),
                    _fig(r["speedup_vs_eager"]),
                    _fig(r["speedup_vs_baseline"]),
                    _mem(r["peak_mem_bytes"]),
                ]
            )
        )
    lines.extend(f"[{note}] skipped: {reason}" for reason, note in reasons.items())
    return "\n".join(lines)


def _timed_rows(doc: dict) -> list[dict]:
    """The timed rows of ``doc``; rows of files written before rows recorded their thread
    count get the run's (``device.threads``, then the count in use)."""
    return [
        {"threads": doc["device"]["threads"], **r} if r.get("threads") is None else r
        for r in doc["results"]
        if r["median_ms"]
    ]


def _key(r: dict) -> tuple:
    return (r["op"], _shape(r["shape"]), r["dtype"], r["provider"], r["threads"])


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Ratio table of two result files: rows present (and timed) in both, ``A ms / B ms``
    (> 1: B is faster)."""
    rows_b = {_key(r): r for r in _timed_rows(b)}
    lines = [
        f"A = {name_a}: {a['device']['name']}, {a['date']}, copy {a['peak']['copy_gbps']:.1f} GB/s",
        f"B = {name_b}: {b['device']['name']}, {b['date']}, copy {b['peak']['copy_gbps']:.1f} GB/s",
        "ratio = A ms / B ms (> 1: B faster)",
        "",
        f"{'op':<{OP_WIDTH}} {'shape':<16} {'dtype':<8} {'provider':<11} {'threads':>7} "
        f"{'A ms':>10} {'B ms':>10} {'ratio':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    matched = 0
    rows_a = _timed_rows(a)
    for r in rows_a:
        other = rows_b.get(_key(r))
        if other is None:
            continue
        matched += 1
        ratio = r["median_ms"] / other["median_ms"]
        lines.append(
            f"{r['op']:<{OP_WIDTH}} {_shape(r['shape']):<16} {r['dtype']:<8} "
            f"{r['provider']:<11} {r['threads']:>7} {r['median_ms']:>10.3f} "
            f"{other['median_ms']:>10.3f} {ratio:>7.2f}"
        )
    lines.append(
        f"\n{matched} rows in both; {len(rows_a) - matched} of A and "
        f"{len(rows_b) - matched} of B unmatched"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------

_COLORS = {
    "fastdiff": "tab:blue",
    "native": "tab:purple",
    "reference": "tab:orange",
    "compile": "tab:green",
}
_BASELINE_COLOR = "tab:red"
_STYLES = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}


def plot(doc: dict, path: Path) -> Path:
    """GB/s against the swept size (``V``, or ``H`` for the Gaussian state ops) per provider
    (and dtype, and thread count, where the run has several): one panel per op at its largest
    ``N``, the measured copy peak dashed; square markers for more than the fewest threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in doc["results"] if r["gbps"]]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    ncols = max(1, min(4, len(ops)))
    nrows = max(1, math.ceil(len(ops) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    several_dtypes = len({r["dtype"] for r in rows}) > 1
    fewest = min((r["threads"] for r in rows), default=1)
    several_threads = len({r["threads"] for r in rows}) > 1
    for ax, op in zip(axes.flat, ops):
        op_rows = [r for r in rows if r["op"] == op]
        sweep = op_rows[0]["sweep"]
        n = max(r["shape"]["n"] for r in op_rows)
        lines: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
        for r in op_rows:
            if r["shape"]["n"] == n:
                lines.setdefault((r["provider"], r["dtype"], r["threads"]), []).append(
                    (r["shape"][sweep], r["gbps"])
                )
        for (provider, dtype, threads), points in lines.items():
            xs, ys = zip(*sorted(points))
            label = provider + (f" {dtype}" if several_dtypes else "")
            label += f" {threads}t" if several_threads else ""
            ax.plot(
                xs,
                ys,
                _STYLES.get(dtype, "-"),
                marker="o" if threads == fewest else "s",
                ms=4,
                label=label,
                color=_COLORS.get(provider, _BASELINE_COLOR),
            )
        ax.axhline(doc["peak"]["copy_gbps"], ls=":", lw=1, color="gray", label="copy peak")
        xs = sorted({x for points in lines.values() for x, _ in points})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{op} ({op_rows[0]['what']}), N={n}", fontsize=9)
        ax.set_xlabel(sweep.upper(), fontsize=8)
        ax.set_ylabel("GB/s (minimum bytes)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_visible(False)
    dev = doc["device"]
    fig.suptitle(
        f"fastdiff {doc['fastdiff']} on {dev['type']}: {dev['name']} ({doc['date']})", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
