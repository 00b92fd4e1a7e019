"""The demo's byte-level corpus: the Python standard library's own source by default.

Text becomes tokens ``0..255`` (its UTF-8 bytes); the demo's vocabulary adds one mask token,
``MASK_ID = 256`` (``V = 257``). The default corpus is the ``.py`` files under the running
interpreter's ``sysconfig.get_paths()["stdlib"]`` (test suites, ``site-packages``, IDLE and
the near-identical codec tables of ``encodings`` left out), read in sorted path order until
``DEFAULT_BYTES`` are collected: no download, and the same bytes for every run of the same
interpreter. ``--corpus`` replaces it with the user's files (directories are read
recursively, in sorted order).

The split is fixed and by whole files: every ``HELDOUT_EVERY``-th file (the last of each
group) is held out, so held-out text is spread over the whole corpus and a held-out file is
never seen, in part or whole, in training. A corpus of fewer files is split by
``CHUNK``-byte chunks of its byte stream instead (the last chunk of each group of
``HELDOUT_EVERY``).

A user's file that is not text (not valid UTF-8, or holding NUL bytes) is still read, byte for
byte (the model is byte-level), and listed in :attr:`Corpus.not_text` so that the command warns
once; an empty corpus (no files, or only empty ones) is a ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

VOCAB_SIZE = 257
MASK_ID = 256
DEFAULT_BYTES = 4 << 20
CHUNK = 1 << 14
HELDOUT_EVERY = 20
_SKIP_PARTS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "lib2to3",
    "__pycache__",
    "encodings",
}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token streams ``train`` and ``heldout`` (uint8 ``[n]``), where they came from, and the
    files read that are not text (module docstring)."""

    train: Tensor
    heldout: Tensor
    source: str
    files: int
    not_text: tuple[Path, ...] = ()

    def summary(self) -> dict[str, object]:
        """Sizes and origin, for the JSON summary."""
        return {
            "source": self.source,
            "files": self.files,
            "train_bytes": int(self.train.numel()),
            "heldout_bytes": int(self.heldout.numel()),
        }


def stdlib_files() -> list[Path]:
    """The default corpus files: the standard library's ``.py`` files in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix())
    return [p for p in files if not _SKIP_PARTS.intersection(p.relative_to(root).parts[:-1])]


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"--corpus {p}: no such file or directory")
    return out


def is_text(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 without NUL bytes."""
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read(files: list[Path], limit: int | None) -> tuple[list[bytes], list[Path]]:
    """The non-empty files' bytes (each ending in a newline), in order, until ``limit`` bytes
    are collected (the last file cut at the limit); and those of the files read that are not
    text (:func:`is_text`, judged on the whole file)."""
    parts: list[bytes] = []
    not_text: list[Path] = []
    total = 0
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        if not is_text(data):
            not_text.append(f)
        data = data if data.endswith(b"\n") else data + b"\n"
        if limit is not None and total + len(data) >= limit:
            parts.append(data[: limit - total])
            break
        parts.append(data)
        total += len(data)
    return parts, not_text


def _tokens(data: bytes) -> Tensor:
    """Bytes as uint8 tokens ``[n]`` (a copy: the tensor owns its memory)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def split(stream: bytes, min_len: int) -> tuple[Tensor, Tensor]:
    """Cut ``stream`` into the fixed train / held-out token streams (module docstring).

    A stream with fewer than ``HELDOUT_EVERY`` chunks holds out its last ``1/HELDOUT_EVERY``.
    Both parts must hold at least ``min_len`` tokens (one training window).
    """
    tokens = _tokens(stream)
    n = tokens.numel()
    if n // CHUNK >= HELDOUT_EVERY:
        chunk_id = torch.arange(n) // CHUNK
        held = chunk_id % HELDOUT_EVERY == HELDOUT_EVERY - 1
        train, heldout = tokens[~held], tokens[held]
    else:
        cut = n - n // HELDOUT_EVERY
        train, heldout = tokens[:cut], tokens[cut:]
    if min(train.numel(), heldout.numel()) < min_len:
        raise ValueError(
            f"the corpus has {n} bytes: too small for windows of {min_len} tokens "
            f"(needs about {HELDOUT_EVERY * min_len} bytes)"
        )
    return train.clone(), heldout.clone()


def split_files(parts: list[bytes], min_len: int) -> tuple[Tensor, Tensor]:
    """The fixed train / held-out token streams of a list of files (module docstring): whole
    files held out when there are at least ``HELDOUT_EVERY`` of them, else :func:`split`."""
    if len(parts) < HELDOUT_EVERY:
        return split(b"".join(parts), min_len)
    held = [i % HELDOUT_EVERY == HELDOUT_EVERY - 1 for i in range(len(parts))]
    train = b"".join(p for p, h in zip(parts, held) if not h)
    heldout = b"".join(p for p, h in zip(parts, held) if h)
    if min(len(train), len(heldout)) < min_len:
        raise ValueError(
            f"the corpus has {len(train) + len(heldout)} bytes: too small for windows of "
            f"{min_len} tokens"
        )
    return _tokens(train), _tokens(heldout)


def load(paths: list[Path] | None, min_len: int, limit: int | None = DEFAULT_BYTES) -> Corpus:
    """The corpus of ``paths`` (files or directories), or the standard library's source when
    ``paths`` is empty; at most ``limit`` bytes (``None``: no limit). A ``ValueError`` naming
    ``--corpus`` when the user's paths hold no text at all or too little."""
    if paths:
        files = _expand(paths)
        source = ", ".join(str(p) for p in paths)
    else:
        files = stdlib_files()
        source = f"Python standard library ({sysconfig.get_paths()['stdlib']})"
    parts, not_text = _read(files, limit)
    if paths and not parts:
        what = "only empty files" if files else "no files"
        raise ValueError(f"--corpus {source}: {what}, nothing to train on")
    try:
        train, heldout = split_files(parts, min_len)
    except ValueError as err:
        option = f"--corpus {source}" if paths else f"--corpus-bytes {limit}"
        raise ValueError(f"{option}: {err}") from None
    return Corpus(train, heldout, source, len(parts), tuple(not_text))


def shard(stream: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s contiguous ``1/world`` of a token stream (per-process data shards)."""
    size = stream.numel() // world
    return stream[rank * size : (rank + 1) * size]


def random_windows(stream: Tensor, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """``batch`` windows of ``length`` tokens at uniform random offsets: int64
    ``[batch, length]``."""
    if stream.numel() < length:
        raise ValueError(f"a stream of {stream.numel()} tokens has no window of {length}")
    start = torch.randint(0, stream.numel() - length + 1, (batch,), generator=generator)
    return stream[start[:, None] + torch.arange(length)].long()


def fixed_windows(stream: Tensor, count: int, length: int) -> Tensor:
    """``count`` windows evenly spread over ``stream`` (the held-out evaluation set):
    int64 ``[count, length]``, the same on every run."""
    if stream.numel() < length:
        raise ValueError(f"a stream of {stream.numel()} tokens has no window of {length}")
    start = torch.linspace(0, stream.numel() - length, count).long()
    return stream[start[:, None] + torch.arange(length)].long()


def decode(tokens: Tensor) -> str:
    """Bytes to text (invalid UTF-8 and the mask token shown as U+FFFD)."""
    data = bytes(int(t) if 0 <= int(t) < 256 else 0xFF for t in tokens.reshape(-1).tolist())
    return data.decode("utf-8", errors="replace")
