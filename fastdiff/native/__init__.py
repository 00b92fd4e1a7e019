"""Native CPU kernels: fused C++ implementations of the random-driven ops (``csrc/native``).

The extension ``fastdiff._C`` registers them with ``TORCH_LIBRARY`` as
``torch.ops.fastdiff_native.*`` (schemas and CPU implementations in C++, fakes here so that
they trace under ``torch.compile``). Each module below wraps one op family with the
reference's signature and registers it with :func:`fastdiff.backend.register_native`;
:func:`fastdiff.backend.resolve` picks it for CPU tensors under the ``"auto"`` and ``"native"``
backends. The kernels draw from the same counter-based Philox stream as the reference and the
Triton kernels (``csrc/native/philox.h``, ``csrc/native/race.h``), in float64, so the same seed
gives the same tokens except where two keys tie within a few ulps, and Gaussian noise equal to
the reference's within a few float64 ulps (``csrc/native/lanes.h``).

Modules: :mod:`~fastdiff.native.sampling` (categorical draws), :mod:`~fastdiff.native.noising`
(``corrupt``, ``corrupt_dense``), :mod:`~fastdiff.native.updates` (SEDD Euler / analytic /
denoise, MDLM ancestral, the confidence proposal), :mod:`~fastdiff.native.d3pm` (the D3PM
step), :mod:`~fastdiff.native.gaussian` (``q_sample``, ``ddpm_step``, ``ddim_step``), and
:mod:`~fastdiff.native.random`, the transforms of :mod:`fastdiff.random` (``uniform`` and
``normal`` also serve :func:`fastdiff.backend.draw_function`).

Imported by :func:`fastdiff.backend.native_available` once ``fastdiff._C`` has loaded.
"""

from __future__ import annotations

from fastdiff.native import d3pm, gaussian, noising, random, sampling, updates  # noqa: F401
