"""Build script.

All metadata lives in ``pyproject.toml``. This file adds the C++ extension ``fastdiff._C``
(``csrc/``: the sampler step loop and the native CPU kernels of ``csrc/native``, built with
``torch.utils.cpp_extension``: pybind11, ninja when installed). It needs the torch the package
will run with, so install without build isolation::

    pip install torch          # first: the build compiles against it
    pip install --no-build-isolation -e ".[test]"

Without torch or a C++ compiler (or with ``FASTDIFF_BUILD_EXTENSION=0``) the pure-Python package
is installed and sampling runs the Python step loop; ``fastdiff`` says so once. A failing
compile is reported and skipped the same way, unless ``FASTDIFF_REQUIRE_EXTENSION=1`` (CI),
which makes it an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

SOURCES = ["csrc/step_loop.cpp", *sorted(glob.glob("csrc/native/*.cpp"))]
# -ffp-contract=off: no fused multiply-add, so the
# native kernels round each operation as the PyTorch reference does; -fno-trapping-math /
# -fno-math-errno let GCC vectorize their loops (neither changes a result).
COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
REQUIRED = os.environ.get("FASTDIFF_REQUIRE_EXTENSION") == "1"


def _skip(reason: str) -> dict:
    message = f"fastdiff: not building the C++ extension fastdiff._C ({reason}); "
    if REQUIRED:
        raise SystemExit(message + "FASTDIFF_REQUIRE_EXTENSION=1 makes this an error")
    print(message + "installing the pure-Python package (Python step loop).", file=sys.stderr)
    return {}


def _extension() -> dict:
    if os.environ.get("FASTDIFF_BUILD_EXTENSION", "1") == "0":
        return _skip("FASTDIFF_BUILD_EXTENSION=0")
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return _skip(
            "torch is not importable here: install torch first, then install fastdiff with "
            "`pip install --no-build-isolation ...`"
        )
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return _skip(f"no C++ compiler ({compiler!r} not found)")
    # -fopenmp: at::parallel_for is an inline OpenMP loop in torch's headers, so without it the
    # native kernels run on one thread; the libgomp.so.1 it links is the one torch has already
    # loaded (same soname), so torch.set_num_threads applies.
    import torch

    openmp = (
        ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform == "linux" else []
    )
    ext = cpp_extension.CppExtension(
        "fastdiff._C",
        SOURCES,
        extra_compile_args=[*COMPILE_ARGS, *openmp],
        extra_link_args=openmp,
        depends=sorted(glob.glob("csrc/native/*.h") + glob.glob("csrc/native/*.inc")),
    )

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's builder; a failed compile installs the pure-Python package unless required."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as error:
                if REQUIRED:
                    raise
                _skip(f"the compile failed: {error}")

    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**_extension())
