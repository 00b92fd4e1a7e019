"""What the command-line entry points share (``fastdiff bench``, ``fastdiff demo`` and their
``python -m`` forms): the parser text taken from a module docstring, running the parsed command
with every error reported as one line, the ``--device`` and ``--out`` checks done before any
work, and files written whole or not at all.

Errors: a bad setting (``ValueError``) exits with status 2, a failure outside the arguments
(:class:`Failure`, ``OSError``: an unreadable or unwritable file, a diverged run) with status 1,
Ctrl-C with status 130; each prints one line ``PROG: error: MESSAGE`` on stderr (Ctrl-C after
saving: ``PROG: MESSAGE``, :class:`Interrupted`), ``PROG`` being the subcommand's own name
(``fastdiff demo``), and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT)


class Failure(Exception):
    """A command that cannot do its work for a reason outside its arguments (exit status 1)."""


class Interrupted(Exception):
    """A command stopped by Ctrl-C after saving its work; the message says how to go on
    (exit status 130, printed as ``PROG: MESSAGE``)."""


def parser_text(doc: str) -> dict:
    """``ArgumentParser`` keywords from a module docstring: its first paragraph is the
    description, the rest the epilog (kept as written)."""
    description, epilog = doc.split("\n\n", 1)
    return {
        "description": description,
        "epilog": epilog,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (whitespace runs, newlines included, as one space)."""
    return " ".join(str(err).split())


def execute(parser: argparse.ArgumentParser, argv: list[str] | None, prefix: list[str]) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and call the chosen ``handler``; ``prefix`` +
    ``argv`` is recorded as ``args.command_line``. Errors end the process as the module
    docstring says, named by ``args.command_parser`` (a subcommand's parser) where the parser
    set one, else by ``parser``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = [*prefix, *argv]
    command = getattr(args, "command_parser", parser)
    try:
        return args.handler(args)
    except Interrupted as err:
        command.exit(INTERRUPTED, f"{command.prog}: {one_line(err)}\n")
    except ValueError as err:
        command.exit(2, f"{command.prog}: error: {one_line(err)}\n")
    except (Failure, OSError) as err:
        command.exit(1, f"{command.prog}: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        command.exit(INTERRUPTED, f"{command.prog}: error: interrupted\n")


def parse_device(text: str) -> torch.device:
    """The torch device ``--device`` names, if this machine has it; else a ``ValueError``."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {text}: CUDA is not available here")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {text}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"--device {text}: not available here ({one_line(err)})") from None
    return device


def check_writable(folder: Path, option: str = "--out") -> None:
    """Fail (:class:`Failure`) unless ``folder`` is, or could be created as, a directory this
    process may write: checked before any work, nothing created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Failure(f"{option} {folder}: cannot write there ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Failure(f"{option} {folder}: cannot write there ({existing} is read-only to you)")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; renamed over ``path`` when the
    block ends without an error (readers see the old file or the new one, never a part), else
    removed. Each call has its own name, so concurrent writers do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
