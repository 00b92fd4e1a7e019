"""The ``fastdiff`` console script: ``fastdiff bench ...``, ``fastdiff demo ...`` and
``fastdiff table ...`` (each subcommand adds its parser in :func:`build_parser`, and reports its
errors under its own name: :func:`fastdiff.cli_support.execute`)."""

from __future__ import annotations

import argparse

from fastdiff.bench import command
from fastdiff.cli_support import execute
from fastdiff.demo import command as demo
from fastdiff.table import command as table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdiff", description="fastdiff: fused kernels for text diffusion models."
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="time every op against its reference and baselines", **command.PARSER_TEXT
    )
    command.add_arguments(bench)
    bench.set_defaults(handler=command.run, command_parser=bench)
    demo_parser = sub.add_parser(
        "demo",
        help="train and sample a small diffusion language model (minutes on a CPU)",
        **demo.PARSER_TEXT,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.run, command_parser=demo_parser)
    table.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastdiff`` console script; returns the exit status."""
    return execute(build_parser(), argv, ["fastdiff"])
