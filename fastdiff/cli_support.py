"""What the command-line entry points share (``fastdiff bench``, ``fastdiff demo`` and their
``python -m`` forms): the parser text taken from a module docstring, and running the parsed
command with bad values reported as usage errors."""

from __future__ import annotations

import argparse
import sys


def parser_text(doc: str) -> dict:
    """``ArgumentParser`` keywords from a module docstring: its first paragraph is the
    description, the rest the epilog (kept as written)."""
    description, epilog = doc.split("\n\n", 1)
    return {
        "description": description,
        "epilog": epilog,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def execute(parser: argparse.ArgumentParser, argv: list[str] | None, prefix: list[str]) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and call the chosen ``handler``; ``prefix`` +
    ``argv`` is recorded as ``args.command_line``. A ``ValueError`` (an unknown op, shape,
    file or setting) ends as a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = [*prefix, *argv]
    try:
        return args.handler(args)
    except ValueError as err:
        parser.error(str(err))
