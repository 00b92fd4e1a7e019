"""Fused Triton kernels, installed as ``fastdiff.kernels``.

Importing this package registers each kernel with :func:`fastdiff.backend.register_kernel`
under the op name of the reference function it replaces (same signature). It is imported
lazily by :mod:`fastdiff.backend`, only when Triton is importable. Ops without a kernel here
run their reference on every device.

Registered so far: the training losses (``score_entropy_absorb``, ``score_entropy_uniform``,
``masked_diffusion_loss``, in :mod:`fastdiff.kernels.fused_loss`) and the noising of discrete
tokens (``corrupt``, ``corrupt_dense``, in :mod:`fastdiff.kernels.noising`), and the fused
projection + loss (``linear_score_entropy``, ``linear_masked_diffusion_loss``, in
:mod:`fastdiff.kernels.fused_linear`).
"""

from fastdiff.kernels import fused_linear, fused_loss, noising, sampling  # noqa: F401
