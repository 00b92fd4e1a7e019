"""Time the ops against their reference, torch.compile and public-style baselines; print a
table, write JSON (schema: fastdiff.bench.report) and a PNG plot under --out (default:
./fastdiff_bench/ in the current directory; the paths written are printed).

Examples:

    fastdiff bench --quick                         # every op, small CPU shapes, < 1 minute
    fastdiff bench --ops sampling --threads 1 all  # the CPU at one thread and at all of them
    fastdiff bench --ops training --dtype bfloat16 # the loss family on the GPU
    fastdiff bench --ops score_entropy_absorb --shapes 16384x50258 --providers fastdiff sedd
    fastdiff bench --compare A.json B.json         # ratio table of two result files
    fastdiff bench --model                         # throughput MODEL of the hot kernels from
                                                   # their compiled SASS (no GPU needed)

Errors are one line on stderr: exit status 2 for a bad setting, 1 for an unreadable or
unwritable file. (``python -m fastdiff.bench`` is the same command.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastdiff.bench import cases, peak, report, runner
from fastdiff.bench.shapes import CPU_DTYPES, DTYPES, GPU_DTYPES, TIERS, dtype_name, parse_shape
from fastdiff.cli_support import check_writable, execute, parse_device, parser_text

PROVIDER_CHOICES = (*cases.CORE_PROVIDERS, "baseline", *cases.BASELINE_STYLES)
# On the CPU `fastdiff` (auto) runs the native kernel or the reference, both timed already.
DEFAULT_PROVIDERS = {
    "cpu": ["native", "reference", "compile", "baseline"],
    "cuda": ["fastdiff", "reference", "compile", "baseline"],
}
DEFAULT_OUT = Path("fastdiff_bench")  # in the current directory, not in a checkout's tree


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastdiff bench``."""
    parser.add_argument(
        "--ops",
        nargs="+",
        metavar="OP",
        help=f"op names or families ({', '.join(cases.FAMILIES)}); default: all (see --list)",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        metavar="P",
        choices=PROVIDER_CHOICES,
        help="fastdiff, native, reference, compile, baseline (= each op's public-style "
        f"baseline) or a baseline style ({', '.join(cases.BASELINE_STYLES)}); default: native "
        "reference compile baseline on the CPU, fastdiff reference compile baseline on CUDA",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        metavar="D",
        choices=list(DTYPES),
        help="float32, bfloat16, float16, float64; default: float32 on the CPU, "
        "bfloat16 and float32 on CUDA",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes, short timing loops, no torch.compile, one thread on the CPU "
        "(< 1 min on a 2-core CPU)",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="S",
        help=f"a tier ({', '.join(TIERS)}) or shapes NxV / NxVxH (H defaults per op; the "
        "Gaussian step ops ignore V); default: the device's tier",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "triton"),
        default="auto",
        help="backend of the fastdiff provider (default: auto)",
    )
    parser.add_argument(
        "--value-checks",
        action="store_true",
        help="keep fastdiff's data-reading argument checks on (default: off while timing)",
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        type=_thread_count,
        metavar="T",
        help="torch CPU thread counts, each timed in the same run: numbers or 'all' (torch's "
        f"default, {torch.get_num_threads()} here); default: 1 with --quick on the CPU, 1 all "
        "without, torch's default on CUDA",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory of the JSON and PNG files (default: ./{DEFAULT_OUT}/ in the current "
        "directory; the repository's committed results are under benchmarks/results/)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="print the ratio table of two result files and exit",
    )
    parser.add_argument("--list", action="store_true", help="list the ops and exit")
    parser.add_argument(
        "--model",
        action="store_true",
        help="instead of timing: compile each hot kernel for sm_90 and sm_80 (no GPU needed) "
        "and print the throughput MODEL of its SASS against the copy bandwidth; JSON and PNG "
        "under --out",
    )


def _thread_count(text: str) -> int:
    """One ``--threads`` value: a count >= 1, or ``all`` (torch's default thread count)."""
    if text == "all":
        return torch.get_num_threads()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a thread count or 'all': {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {count}")
    return count


def _threads(requested: list[int] | None, device: torch.device, quick: bool) -> list[int]:
    """The thread counts to time, in order, without repeats (``--threads`` or its default)."""
    if requested:
        return list(dict.fromkeys(requested))
    if device.type == "cuda":
        return [torch.get_num_threads()]
    return list(dict.fromkeys([1] if quick else [1, torch.get_num_threads()]))


def _list() -> str:
    width = report.OP_WIDTH
    lines = [f"{'op':<{width}} {'family':<9} {'pass':<8} providers"]
    for c in cases.CASES:
        lines.append(f"{c.name:<{width}} {c.family:<9} {c.what:<8} {' '.join(c.providers)}")
    return "\n".join(lines)


def _shapes(specs: list[str] | None, device: torch.device, quick: bool):
    """``(tier, explicit shapes or None)`` from ``--shapes``."""
    default = ("gpu" if device.type == "cuda" else "cpu") + ("-quick" if quick else "")
    if not specs:
        return default, None
    if len(specs) == 1 and specs[0] in TIERS:
        return specs[0], None
    return default, [parse_shape(s) for s in specs]


def _result_file(path: Path) -> dict:
    """A ``--compare`` result file, or a ``ValueError`` naming it."""
    try:
        return report.load(path)
    except OSError as err:
        raise ValueError(f"--compare {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--compare {path}: not a JSON result file ({err})") from None
    except AttributeError:  # JSON, but not an object
        raise ValueError(f"--compare {path}: not a fastdiff bench result file") from None


def run(args: argparse.Namespace) -> int:
    """Run ``fastdiff bench`` with parsed arguments; returns the exit status."""
    if args.compare:
        a, b = (_result_file(p) for p in args.compare)
        print(report.compare(a, b, str(args.compare[0]), str(args.compare[1])))
        return 0
    if args.list:
        print(_list())
        return 0
    check_writable(args.out)
    if args.model:
        from fastdiff.bench import throughput_model

        return throughput_model.main(args.out, plot_png=not args.no_plot)
    device = parse_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # CUDA events and do_bench use the current device
    return _bench(args, device)


def _bench(args: argparse.Namespace, device: torch.device) -> int:
    dtypes = (
        [DTYPES[d] for d in args.dtype]
        if args.dtype
        else list(GPU_DTYPES if device.type == "cuda" else CPU_DTYPES)
    )
    tier, shapes = _shapes(args.shapes, device, args.quick)
    selected = cases.select(args.ops)
    providers = args.providers or DEFAULT_PROVIDERS["cuda" if device.type == "cuda" else "cpu"]
    threads = _threads(args.threads, device, args.quick)
    plans = runner.plan(selected, set(providers), dtypes, tier, shapes)
    if not plans:
        print("nothing to run: no op has the chosen providers and dtypes", file=sys.stderr)
        return 2

    try:
        import matplotlib  # noqa: F401  (the plot, after the run: fail before it instead)
        from tqdm import tqdm
    except ImportError as err:
        print(
            f"fastdiff bench needs the 'bench' extra ({err.name} is missing): "
            "pip install 'fastdiff[bench]'",
            file=sys.stderr,
        )
        return 2

    bar = tqdm(
        total=len(threads) * sum(len(p.providers) for p in plans) + 1,
        desc="fastdiff bench",
        unit="run",
        file=sys.stderr,
        disable=args.no_progress,
        dynamic_ncols=True,
    )
    bar.set_postfix_str("peak: copy and matmul")
    with runner.torch_threads(max(threads)):  # the limit of the run's widest thread count
        measured = peak.measure(device, dtypes, args.quick)
    bar.update()
    results = runner.run(
        plans,
        device,
        measured,
        quick=args.quick,
        threads=threads,
        backend_choice=args.backend,
        checks=args.value_checks,
        progress=bar,
    )
    bar.close()
    settings = {
        "quick": args.quick,
        "tier": tier if shapes is None else "custom",
        "backend": args.backend,
        "value_checks": args.value_checks,
        "ops": [c.name for c in selected],
        "providers": list(providers),
        "dtypes": [dtype_name(d) for d in dtypes],
        "threads": threads,
    }
    doc = report.document(results, measured, device, settings, args.command_line)
    print(report.header(doc))
    print(report.table(doc))
    stem = report.file_stem(doc)
    print(f"\nJSON: {report.write_json(doc, args.out / f'{stem}.json')}")
    if not args.no_plot:
        print(f"PNG: {report.plot(doc, args.out / f'{stem}.png')}")
    return 0


PARSER_TEXT = parser_text(__doc__)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastdiff.bench [options]``."""
    parser = argparse.ArgumentParser(prog="python -m fastdiff.bench", **PARSER_TEXT)
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return execute(parser, argv, ["python", "-m", "fastdiff.bench"])
