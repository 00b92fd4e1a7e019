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
:mod:`~fastdiff.kernels.updates`), the confidence-unmasking proposal (``unmask_candidates``,
:mod:`~fastdiff.kernels.confidence`) and the Gaussian (embedding-space) ops (``q_sample``,
``gaussian_loss``, :mod:`~fastdiff.kernels.gaussian`; ``ddpm_step``, ``ddim_step``,
:mod:`~fastdiff.kernels.gaussian_steps`; ``round_to_embedding``,
:mod:`~fastdiff.kernels.gaussian_round`) and concrete score matching
(``concrete_score_matching_absorb``, ``concrete_score_matching_uniform``: kernels in
:mod:`~fastdiff.kernels.concrete_score`, registered with the other losses in
:mod:`~fastdiff.kernels.fused_loss`).
"""

import sys

if __name__ == "kernels":
    # Imported as a top-level ``kernels`` because a checkout's root is on sys.path (a REPL or
    # ``python -c`` started there): that name belongs to the Hugging Face ``kernels``
    # distribution that transformers imports. Step aside for it (or fail as if this folder
    # were not there).
    from fastdiff._shadowed import import_shadowed

    sys.modules[__name__] = import_shadowed(__name__, __file__)
else:
    from fastdiff.kernels import (  # noqa: F401  (importing registers the kernels)
        categorical,
        concrete_score,
        confidence,
        fused_linear,
        fused_loss,
        gaussian,
        gaussian_round,
        gaussian_steps,
        noising,
        updates,
    )
