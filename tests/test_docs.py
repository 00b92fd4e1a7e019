"""Citations of the op specification (the format is docs/ops.md#citing-this-document).

Every file of the repository that mentions the specification must name it by its path
``docs/ops.md`` (Markdown files in ``docs/`` may link to the relative target ``ops.md``), cite a
section only by the GitHub anchor of one of its headings (``docs/ops.md#score-entropy``), and
never by an old section number or by a vague name of the document.
"""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "ops.md"
THIS_FILE = pathlib.Path(__file__).resolve()

# "ops.md" with an optional "#anchor"
MENTION = re.compile(r"ops\.md\b(?:#(?P<anchor>[A-Za-z0-9_-]+))?")
# a section number after a citation without anchor ("docs/ops.md 4e", "docs/ops.md, section 2")
OLD_NUMBER = re.compile(r"[\s,]*(?:sections?|§)?\s*\d")
# vague names of the document, and identifiers derived from its old name
VAGUE = re.compile(r"\bops? (?:brief|spec)\b|ops_md", re.IGNORECASE)
# in-document links
LOCAL_LINK = re.compile(r"\]\(#(?P<anchor>[^)\s]+)\)")

TEXT_SUFFIXES = {
    ".py",
    ".pyi",
    ".md",
    ".rst",
    ".txt",
    ".cpp",
    ".cc",
    ".h",
    ".hpp",
    ".cu",
    ".toml",
    ".cfg",
    ".ini",
    ".yml",
    ".yaml",
    ".sh",
    ".json",
}
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, characters other than letters,
    digits, spaces, ``-`` and ``_`` dropped, spaces replaced by ``-``."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def spec_headings(text: str) -> list[str]:
    """The headings (``#`` to ``######``) of a Markdown text, outside fenced code blocks."""
    headings, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6} +(.+?) *#*$", line)
        if match and not fenced:
            headings.append(match.group(1))
    return headings


def spec_anchors() -> set[str]:
    return {github_anchor(h) for h in spec_headings(SPEC.read_text(encoding="utf-8"))}


def repository_files() -> list[pathlib.Path]:
    """Tracked and untracked, not ignored, text files (every file when git is unavailable)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            p for p in ROOT.rglob("*") if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts[:-1])
        ]
    return sorted(p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file())


def citation_problems(path: pathlib.Path, text: str, anchors: set[str]) -> list[str]:
    """Every bad mention of the specification in ``text`` (the file at ``path``)."""
    rel = path.relative_to(ROOT).as_posix()
    in_docs = rel.startswith("docs/") and path.suffix == ".md"
    problems = []
    for match in MENTION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()]
        relative_link = in_docs and before.endswith("](")
        if not (before.endswith("docs/") or relative_link):
            problems.append(f"{rel}:{line}: cite the specification as docs/ops.md")
        anchor = match.group("anchor")
        if anchor is None:
            if OLD_NUMBER.match(text, match.end()):
                problems.append(f"{rel}:{line}: cite a section by its anchor, docs/ops.md#...")
        elif anchor not in anchors:
            problems.append(f"{rel}:{line}: docs/ops.md has no section #{anchor}")
    for match in VAGUE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        problems.append(f"{rel}:{line}: {match.group(0)!r}: cite docs/ops.md#<section>")
    return problems


def test_spec_headings_are_unique():
    headings = spec_headings(SPEC.read_text(encoding="utf-8"))
    anchors = [github_anchor(h) for h in headings]
    assert len(headings) > 40
    assert len(set(anchors)) == len(anchors), sorted(a for a in anchors if anchors.count(a) > 1)


def test_spec_local_links_resolve():
    anchors = spec_anchors()
    missing = [
        m.group("anchor")
        for m in LOCAL_LINK.finditer(SPEC.read_text(encoding="utf-8"))
        if m.group("anchor") not in anchors
    ]
    assert not missing, missing


def test_every_citation_names_the_path_and_an_existing_section():
    anchors = spec_anchors()
    problems, cited = [], 0
    for path in repository_files():
        if path == THIS_FILE:  # its examples below are bad citations on purpose
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        problems += citation_problems(path, text, anchors)
        cited += len(MENTION.findall(text))
    assert not problems, "\n".join(problems)
    assert cited > 50  # the ops, kernels and tests cite their sections


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        ("fastdiff/x.py", "see docs/ops.md#score-entropy", []),
        ("fastdiff/x.py", "see docs/ops.md", []),
        ("docs/architecture.md", "[spec](ops.md#score-entropy)", []),
        ("fastdiff/x.py", "see ops.md#score-entropy", ["as docs/ops.md"]),
        ("README.md", "[spec](ops.md)", ["as docs/ops.md"]),
        ("fastdiff/x.py", "see docs/ops.md#no-such-section", ["no section #no-such-section"]),
        ("fastdiff/x.py", "(docs/ops.md 4e)", ["by its anchor"]),
        ("fastdiff/x.py", "(docs/ops.md, section 2)", ["by its anchor"]),
        ("fastdiff/x.py", "the op brief says", ["'op brief'"]),
        ("fastdiff/x.py", "(ops spec, section 1)", ["'ops spec'"]),
        ("tests/t.py", "def test_probs_are_ops_md_4b():", ["'ops_md'"]),
    ],
)
def test_citation_checker_flags_bad_citations(rel, text, expected):
    problems = citation_problems(ROOT / rel, text, {"score-entropy"})
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_github_anchor():
    assert github_anchor("Score entropy, uniform graph") == "score-entropy-uniform-graph"
    assert github_anchor("Classifier-free guidance") == "classifier-free-guidance"
    assert github_anchor("D3PM hybrid loss") == "d3pm-hybrid-loss"
