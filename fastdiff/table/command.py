"""Train every row of a small results table -- AR, MDLM, SEDD absorbing, SEDD uniform, D3PM and
Gaussian embedding diffusion -- with the same model size, training bytes, held-out windows and
seed on the Python standard library's source (byte level), then print the table: held-out NLL
(AR, exact) or its upper bound (the diffusion rows) in nats and bits per byte, perplexity, the
bound's standard error, the untrained model's value, parameters, training and sampling bytes
per second, wall time, and one unconditional sample per row.

Examples:

    fastdiff table --quick                 # a first look: the whole table in < 3 min on 2 cores
    fastdiff table                         # ~3 min of training per row on a 2-core CPU
    fastdiff table --rows mdlm,sedd-absorb --steps 4000 --out runs/long
    fastdiff table --rows d3pm             # add a row to the table already in --out

Rows: ar, mdlm, sedd-absorb, sedd-uniform, d3pm, gaussian (fastdiff.table.systems says how
each is trained, evaluated and sampled). Default budget: 2000 steps x 32 windows x 64 bytes
(4.1 M training bytes) per row; width 96, depth 3, 3 heads (about 0.6 M parameters); 64
held-out windows; 8 times (or steps) per bound estimate, 2 repeats; 64 sampler steps; D3PM
T = 128; Gaussian T = 200 (its bound sums every step), embedding width 16. On a 2-core CPU
that is about 3 minutes of training per row, but D3PM's dense transition matrices make its
steps about 3x slower (about 25 minutes for the table). --quick: 400 steps x 16 x 64 bytes,
width 64, depth 2, D3PM T = 64, Gaussian T = 100 (about 1.5 minutes for the table). AR
sampling runs the whole prefix once per byte (no cache).

Writes under --out (default table_out/): settings.json, rows/ROW.json (a finished row, skipped
on a rerun), rows/ROW.pt (the row's checkpoint: an interrupted row resumes from it), and
table.json, table.md and table.png for every finished row in the folder. A run whose settings
differ from those of the rows already in --out is refused. Errors are one line on stderr:
exit status 2 for a bad setting, 1 for a failure. (``python -m fastdiff.table`` is the same
command.)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from fastdiff.cli_support import check_writable, execute, parse_device, parser_text
from fastdiff.table.run import QUICK, TableConfig, parse_rows, run_table
from fastdiff.table.systems import ROWS

DEFAULT_OUT = Path("table_out")
PARSER_TEXT = parser_text(__doc__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastdiff table``."""
    parser.add_argument(
        "--rows",
        action="append",
        metavar="ROWS",
        help=f"rows to run: a comma list, or the option repeated (default: all of "
        f"{','.join(ROWS)})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=f"training steps per row (default: {TableConfig.steps}; --quick: {QUICK.steps})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look: small model and budget, the whole table in under 3 minutes on a "
        "2-core CPU",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT}/); rows finished there are skipped",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every row (default: 0)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="your own text files or directories (default: the Python standard library's source)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw table.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_of(args: argparse.Namespace) -> TableConfig:
    """The :class:`~fastdiff.table.run.TableConfig` the options ask for."""
    base = QUICK if args.quick else TableConfig()
    changes: dict = {"seed": args.seed}
    if args.steps is not None:
        changes["steps"] = args.steps
    return dataclasses.replace(base, **changes)


def run(args: argparse.Namespace) -> int:
    """Run ``fastdiff table`` with parsed arguments."""
    rows = parse_rows(args.rows)
    config = config_of(args)
    device = parse_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_writable(args.out)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads or threads)
        run_table(
            config,
            rows=rows,
            out=args.out,
            corpus_paths=args.corpus,
            device=device,
            progress=not args.no_progress,
            plot=not args.no_plot,
        )
    finally:
        torch.set_num_threads(threads)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``table`` to the ``fastdiff`` console script's subcommands."""
    parser = subparsers.add_parser(
        "table",
        help="train AR, MDLM, SEDD, D3PM and Gaussian rows on one budget; print the table",
        **PARSER_TEXT,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run, command_parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m fastdiff.table [options]``."""
    parser = argparse.ArgumentParser(prog="python -m fastdiff.table", **PARSER_TEXT)
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return execute(parser, argv, ["python", "-m", "fastdiff.table"])
