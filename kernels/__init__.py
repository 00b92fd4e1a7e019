"""Fused Triton kernels, installed as ``fastdiff.kernels``.

Importing this package registers each kernel with :func:`fastdiff.backend.register_kernel`
under the op name of the reference function it replaces (same signature). It is imported
lazily by :mod:`fastdiff.backend`, only when Triton is importable. No kernel is registered
yet: every op runs its reference until the kernel issues land.
"""
