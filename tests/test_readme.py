"""The README's usage examples run as written."""

from __future__ import annotations

import pathlib
import re

import torch

import fastdiff
from fastdiff import backend

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(monkeypatch):
    monkeypatch.setattr(backend, "_global_choice", None)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert fastdiff.get_backend() == "reference"  # the backend snippet took effect
    x = namespace["x"]
    assert x.shape == (8, 128) and x.dtype == torch.int64
    assert namespace["loss"].ndim == 0 and namespace["log_score"].grad is not None


def test_readme_main_job_installs_what_fastdiff_bench_imports():
    """The main-job command must install the extra that brings the bench's progress bar and
    plot; a bare ``pip install -e .`` left them out once."""
    text = README.read_text()
    main_job = text.split("**Run the main job**", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    assert 'pip install -e ".[bench]"' in main_job and "fastdiff bench --quick" in main_job
    pyproject = (README.parent / "pyproject.toml").read_text()
    bench_extra = re.search(r"^bench = \[(.*)\]$", pyproject, flags=re.M)
    assert bench_extra and '"tqdm"' in bench_extra[1] and '"matplotlib"' in bench_extra[1]
