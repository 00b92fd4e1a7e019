"""The ``fastdiff`` console script: ``fastdiff bench ...`` (one subcommand so far; each
subcommand adds its parser in :func:`build_parser`)."""

from __future__ import annotations

import argparse

from fastdiff.bench import command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdiff", description="fastdiff: fused kernels for text diffusion models."
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="time every op against its reference and baselines", **command.PARSER_TEXT
    )
    command.add_arguments(bench)
    bench.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastdiff`` console script; returns the exit status."""
    return command.execute(build_parser(), argv, ["fastdiff"])
