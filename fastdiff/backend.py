"""Backend selection: the one place that decides whether an op runs a Triton kernel, a native
C++ CPU kernel or the PyTorch reference.

Backends:

- ``"reference"``: the pure-PyTorch implementation of ``fastdiff.reference`` (any device,
  any floating dtype, float64 included): the oracle every kernel is tested against.
- ``"triton"``: a fused Triton kernel registered for the op with :func:`register_kernel`.
- ``"native"``: a fused C++ CPU kernel of the extension ``fastdiff._C`` (``csrc/native``,
  ``torch.ops.fastdiff_native``), registered for the op with :func:`register_native`
  (:mod:`fastdiff.native`); CPU tensors only.
- ``"auto"`` (default): on a CUDA device the Triton kernel (when Triton imports and the op has
  one); on the CPU the native kernel (when the extension is built and the op has one); the
  reference otherwise. A CPU op that falls back to the reference because the extension is
  missing warns once per process ("CPU reference mode").

The choice comes from, in order of precedence: the innermost :func:`use_backend` context,
:func:`set_backend`, the ``FASTDIFF_BACKEND`` environment variable, ``"auto"``.

Kernel modules register themselves op by op::

    @register_kernel("score_entropy")
    def score_entropy_triton(log_score, x_t, x0, sigma, ...): ...

Public functions call :func:`resolve` with the op name and the device of their inputs and
then call the implementation it returns with the reference's signature.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator

import torch

BACKENDS = ("auto", "triton", "native", "reference")
ENV_VAR = "FASTDIFF_BACKEND"

_kernels: dict[str, Callable] = {}
_natives: dict[str, Callable] = {}
_global_choice: str | None = None
_local = threading.local()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown fastdiff backend {name!r}; expected one of {BACKENDS}")
    return name.lower()


def set_backend(name: str) -> None:
    """Select the backend for the whole process: ``"auto"``, ``"triton"``, ``"native"`` or
    ``"reference"``."""
    global _global_choice
    _global_choice = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager selecting a backend for the calls made inside it (thread-local)."""
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(_check_name(name))
    try:
        yield
    finally:
        stack.pop()


def get_backend() -> str:
    """The backend name in force here: context, then :func:`set_backend`, then the env var."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    if _global_choice is not None:
        return _global_choice
    return _env_choice(os.environ.get(ENV_VAR, "auto") or "auto")


@functools.lru_cache(maxsize=8)
def _env_choice(raw: str) -> str:
    # the checked name of an environment value (cached: get_backend runs on every op call)
    return _check_name(raw)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton imports. Under ``TRITON_INTERPRET=1`` kernels also run on CPU tensors."""
    try:
        importlib.import_module("triton")
    except Exception:
        return False
    return True


_loaded: list[bool] = []


def _kernels_loaded() -> bool:
    """Import ``fastdiff.kernels`` (registering every kernel) once, if Triton imports."""
    if not _loaded:
        _loaded.append(triton_available())
        if _loaded[0]:
            importlib.import_module("fastdiff.kernels")
    return _loaded[0]


# What torch.compiler.assume_constant_result sets, without importing torch._dynamo here (that
# would make `import fastdiff` slow): torch.compile then evaluates the loader once as a
# constant instead of tracing the import machinery when the first call is a compiled one.
_kernels_loaded._dynamo_marked_constant = True  # type: ignore[attr-defined]


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then accept CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def register_kernel(op: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the Triton implementation of ``op``."""

    def decorator(fn: Callable) -> Callable:
        _kernels[op] = fn
        return fn

    return decorator


def register_native(op: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the native C++ CPU implementation of ``op``."""

    def decorator(fn: Callable) -> Callable:
        _natives[op] = fn
        return fn

    return decorator


_native_state: list[bool] = []


def native_available() -> bool:
    """True when the extension ``fastdiff._C`` loads; imports :mod:`fastdiff.native` (which
    registers every native kernel) the first time."""
    if not _native_state:
        from fastdiff import _extension

        _native_state.append(_extension.load() is not None)
        if _native_state[0]:
            importlib.import_module("fastdiff.native")
    return _native_state[0]


native_available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def registered_natives() -> tuple[str, ...]:
    """Names of the ops that have a native CPU implementation (empty without the extension)."""
    native_available()
    return tuple(sorted(_natives))


def native_kernel(op: str) -> Callable | None:
    """The native CPU implementation registered for ``op``, or None (no kernel or no
    extension): what :func:`resolve` returns for ``op`` when it picks the native backend."""
    native_available()
    return _natives.get(op)


def draw_function(name: str, reference: Callable, device: torch.device) -> Callable:
    """The implementation of a stream draw of :mod:`fastdiff.random` (``"uniform"``,
    ``"normal"``) for callers outside the ops (samplers, likelihood bounds): the native one on
    the CPU unless the reference backend is in force or the extension is missing, else
    ``reference`` (the Triton kernels draw inside their ops, so CUDA tensors take the
    reference)."""
    if device.type == "cpu" and get_backend() != "reference" and native_available():
        return _natives.get(name, reference)
    return reference


def registered_kernels() -> tuple[str, ...]:
    """Names of the ops that have a Triton implementation registered."""
    _kernels_loaded()
    return tuple(sorted(_kernels))


def _kernel_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def _native(op: str, reference: Callable, device: torch.device, choice: str) -> Callable:
    if choice == "native":
        if device.type != "cpu":
            raise RuntimeError(
                f"backend 'native' requested for {op} on {device}: native kernels run on CPU "
                "tensors"
            )
        if not native_available():
            from fastdiff import _extension

            raise RuntimeError(
                f"backend 'native' requested for {op} but fastdiff._C is not available "
                f"({_extension.missing_reason()}); {_extension.INSTALL_HINT}"
            )
        if op not in _natives:
            raise NotImplementedError(f"backend 'native' requested but {op} has no native kernel")
        return _natives[op]
    if native_available():
        return _natives.get(op, reference)
    from fastdiff import _extension

    _extension.warn_missing_once()
    return reference


def resolve(op: str, reference: Callable, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for tensors on ``device``.

    ``reference`` is the op's reference function; it is returned unless the backend in force
    (see module docstring) picks a Triton or native kernel. Asking for ``"triton"`` or
    ``"native"`` where that kernel cannot run raises instead of silently falling back.
    """
    choice = get_backend()
    if choice == "reference":
        return reference
    if choice == "native" or (choice == "auto" and device.type == "cpu"):
        return _native(op, reference, device, choice)
    have_triton = _kernels_loaded()
    kernel = _kernels.get(op)
    if choice == "auto":
        if kernel is not None and device.type == "cuda":
            return kernel
        return reference
    # choice == "triton"
    if not have_triton:
        raise RuntimeError(f"backend 'triton' requested for {op} but Triton is not importable")
    if kernel is None:
        raise NotImplementedError(f"backend 'triton' requested but {op} has no Triton kernel yet")
    if not _kernel_runs_on(device):
        raise RuntimeError(
            f"backend 'triton' requested for {op} on {device}: Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 for CPU tensors)"
        )
    return kernel
