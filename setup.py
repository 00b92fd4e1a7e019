"""Build script.

All metadata lives in ``pyproject.toml``. The C++ step-loop extension (``fastdiff._C``,
built from ``csrc/`` with ``torch.utils.cpp_extension``) is added here by the sampler
issue; until then this builds the pure-Python package only.
"""

from setuptools import setup

setup()
