"""Fused Triton kernels, installed as ``fastdiff.kernels``.

Importing this package registers each kernel with :func:`fastdiff.backend.register_kernel`
under the op name of the reference function it replaces (same signature). It is imported
lazily by :mod:`fastdiff.backend`, only when Triton is importable. Ops without a kernel here
run their reference on every device.

Modules: the training losses (``score_entropy_absorb``, ``score_entropy_uniform``,
``masked_diffusion_loss``, :mod:`~fastdiff.kernels.fused_loss`), the fused projection + loss
(``linear_score_entropy``, ``linear_masked_diffusion_loss``, :mod:`~fastdiff.kernels.fused_linear`),
the noising of discrete tokens (``corrupt``, ``corrupt_dense``, :mod:`~fastdiff.kernels.noising`),
categorical sampling (``sample_categorical``, :mod:`~fastdiff.kernels.categorical`), the reverse
updates (``sedd_euler``, ``sedd_analytic``, ``sedd_denoise``, ``mdlm_ancestral``, ``d3pm_step``,
:mod:`~fastdiff.kernels.updates`) and the confidence-unmasking proposal (``unmask_candidates``,
:mod:`~fastdiff.kernels.confidence`).
"""

from fastdiff.kernels import (  # noqa: F401  (importing registers the kernels)
    categorical,
    confidence,
    fused_linear,
    fused_loss,
    noising,
    updates,
)
