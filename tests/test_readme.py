"""The README's usage examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

import fastdiff
from fastdiff import backend

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_its_examples():
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs_on_its_own(monkeypatch, index):
    """Each block runs in a fresh namespace, as a reader pasting it alone would run it (their
    own asserts check the results)."""
    monkeypatch.setattr(backend, "_global_choice", None)
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"{README}:block{index}", "exec"), namespace)
    if "set_backend" in BLOCKS[index]:
        assert fastdiff.get_backend() == "reference"  # the backend snippet took effect
    if "score_entropy(" in BLOCKS[index]:
        assert namespace["loss"].ndim == 0 and namespace["model_output"].grad is not None
        assert namespace["hidden"].grad is not None


def _command(heading: str) -> str:
    text = README.read_text()
    return text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```")[0].strip()


def test_readme_main_job_installs_what_fastdiff_demo_imports():
    """The main-job command must install the extra that brings the demo's progress bar and
    plot (a bare ``pip install -e .`` left them out once) and build against the installed
    torch (no build isolation: an isolated build cannot see it)."""
    main_job = _command("**Run the main job**")
    assert '--no-build-isolation -e ".[bench]"' in main_job and main_job.endswith("fastdiff demo")
    pyproject = (README.parent / "pyproject.toml").read_text()
    bench_extra = re.search(r"^bench = \[(.*)\]$", pyproject, flags=re.M)
    assert bench_extra and '"tqdm"' in bench_extra[1] and '"matplotlib"' in bench_extra[1]


def test_ci_runs_exactly_the_readme_test_command():
    # CI runs it as one line, then repeats the kernel tests with the other tested triton
    ci = [line.strip() for line in (README.parent / ".ci" / "run").read_text().splitlines()]
    assert _command("**Run the tests**") in ci
