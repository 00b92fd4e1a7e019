"""Loader of the C++ extension ``fastdiff._C`` (built by ``setup.py``): the step loop and the
native CPU kernels (``torch.ops.fastdiff_native``, see :mod:`fastdiff.native`).

``load()`` imports it once and remembers why it is missing when it is (not built: torch or a
compiler was missing at install time, or the package was installed with build isolation; or
built against another torch). ``fastdiff`` works without it: CPU ops then run the PyTorch
reference and ``run_loop(engine="auto")`` the Python step loop, with one warning per process
(:func:`warn_missing_once`).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

INSTALL_HINT = (
    "build it with `pip install --no-build-isolation -e .` (torch installed first, a C++ "
    "compiler on the PATH)"
)

_module: ModuleType | None = None
_reason: str | None = None
_loaded = False
_warned = False


def load() -> ModuleType | None:
    """``fastdiff._C``, or None when it cannot be imported (see :func:`missing_reason`)."""
    global _module, _reason, _loaded
    if not _loaded:
        _loaded = True
        try:
            _module = importlib.import_module("fastdiff._C")
        except ImportError as error:
            _reason = f"{type(error).__name__}: {error}"
    return _module


def missing_reason() -> str | None:
    """Why ``fastdiff._C`` did not load, or None when it did."""
    load()
    return _reason


def warn_missing_once() -> None:
    """Warn (once per process) that the PyTorch reference and the Python step loop replace the
    missing extension."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"fastdiff._C is not available ({missing_reason()}): CPU ops run the PyTorch "
            f"reference (slower) and sampling uses the Python step loop. To "
            f"{INSTALL_HINT.replace('build it', 'build the native CPU kernels')}.",
            RuntimeWarning,
            stacklevel=4,
        )
