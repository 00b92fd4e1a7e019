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
