"""Give way to an installed distribution whose top-level name a checkout folder shadows.

The repository keeps its Triton kernels in a top-level ``kernels/`` folder (installed as
``fastdiff.kernels``). When the checkout's root is on ``sys.path`` (a REPL, ``python -c`` or
``python -m`` started there), ``import kernels`` would find that folder instead of the Hugging
Face ``kernels`` package that transformers imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_shadowed(name: str, package_file: str) -> ModuleType:
    """Import the module ``name`` with the folder above ``package_file``'s package hidden.

    Called from the shadowing package's ``__init__`` while ``sys.modules[name]`` is that
    package; returns the other module (raises :class:`ModuleNotFoundError` when none is
    installed, as the import would without the folder).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(package_file)))
    shadow = sys.modules.pop(name)
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.abspath(p or os.getcwd()) != root]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        sys.modules[name] = shadow
        raise
    finally:
        sys.path[:] = saved
