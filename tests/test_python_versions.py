"""The package's declared Python floor is real: every module parses with that grammar."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _floor() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text)
    assert found, "pyproject.toml declares no requires-python floor"
    return int(found.group(1)), int(found.group(2))


def test_requires_python_agrees_with_the_torch_floor_and_the_code():
    """``requires-python`` is the floor of the oldest torch the package accepts (torch 2.13
    needs Python >= 3.10), and every source file parses with that version's grammar (no
    syntax from a later Python: ``except*``, PEP 695 generics, ...). Module-level ``X | Y``
    type aliases, evaluated at import, need 3.10: the floor allows them."""
    floor = _floor()
    assert floor == (3, 10)
    assert 'target-version = "py310"' in (ROOT / "pyproject.toml").read_text()
    files = [
        p
        for folder in ("fastdiff", "kernels", "tests", "benchmarks", "examples")
        for p in (ROOT / folder).rglob("*.py")
    ]
    assert len(files) > 50
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=floor)
