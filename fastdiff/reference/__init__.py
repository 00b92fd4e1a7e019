"""The pure-PyTorch reference implementation of every op ("CPU reference mode").

Modules take flattened, validated tensors (the public API in :mod:`fastdiff` does the checks
and reshaping) and implement docs/ops.md literally, in float64 where accuracy needs it. They are the
oracle every kernel is tested against; a Triton kernel registered for an op has the same
signature as the reference function it replaces.
"""
