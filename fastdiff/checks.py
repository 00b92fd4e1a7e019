"""Argument checks run by every public op before any backend sees its inputs.

Shape, dtype and device checks are free. Value checks (token ids in range, no NaN, sigma >= 0)
read the data and, on a GPU, synchronize with the host; they are on by default and can be
turned off for speed with ``FASTDIFF_CHECK_VALUES=0``, :func:`set_value_checks` or the
:func:`value_checks` context manager.

Conventions shared by the ops:

- token tensors (``x_t``, ``x0``) are int64 (int32 accepted) of any shape ``[*B]``;
- score / logit tensors are floating ``[*B, V]``;
- per-position scalars (``sigma``, ``dsigma``, ``weight``, ...) are a Python number or a tensor
  whose shape is a prefix of ``B`` (``[]``, ``[batch]``, ``[batch, length]`` for
  ``B = [batch, length]``); :func:`per_position` expands them to ``B``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_value_checks = os.environ.get("FASTDIFF_CHECK_VALUES", "1") not in ("0", "false", "False")


def set_value_checks(enabled: bool) -> None:
    """Turn the data-reading checks (id ranges, NaN, sign) on or off for the process."""
    global _value_checks
    _value_checks = bool(enabled)


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks`; restores the previous setting."""
    before = _value_checks
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(before)


def value_checks_enabled() -> bool:
    """Whether data-reading checks run (see module docstring). They are skipped while
    ``torch.compile`` traces and while a CUDA graph is being captured, where reading a
    tensor's values would break the graph or the capture."""
    if not _value_checks or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


_INT_DTYPES = (torch.int64, torch.int32)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tokens(name: str, x: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
    """An integer token tensor (of ``shape`` when given), returned as int64."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must hold integer token ids (int64 or int32), got {x.dtype}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x.long()


def floating(name: str, x: torch.Tensor, *, min_dim: int = 0) -> torch.Tensor:
    """A floating tensor (fp16, bf16, fp32 or fp64) with at least ``min_dim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    """The common device of the given tensors (``None`` entries skipped); never ``meta``
    (meta tensors hold no values to compute with)."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    unique = set(devices.values())
    if len(unique) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on the same device: {listing}")
    device = unique.pop()
    if device.type == "meta":
        names = ", ".join(devices)
        raise ValueError(
            f"{names} are on the meta device, which holds no values: pass real tensors "
            "(CPU or CUDA)"
        )
    return device


OFFSET_LIMIT = 2**63


def offset(value: int) -> int:
    """A Philox stream offset: an int in ``[0, 2^63)``, what a torch int64 argument (the
    kernels' custom ops take one) holds; it fills the two 32-bit counter words."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"offset must be an int, got {type(value).__name__}")
    if not 0 <= value < OFFSET_LIMIT:
        raise ValueError(f"offset must lie in [0, 2^63), got {value}")
    return value


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def tempered(name: str, x: torch.Tensor, temperature: float, *, is_log: bool) -> None:
    """``x / temperature`` (log-weights, or the logs of weights) stays finite in float32, the
    precision the kernels scale fp16 / bf16 / fp32 inputs in: a clear error instead of an
    overflow on one backend.

    ``temperature`` is a checked :func:`temperature` (0 = argmax, nothing is scaled)."""
    if temperature == 0.0 or x.dtype == torch.float64:
        return  # float64 inputs run the float64 reference on every backend
    if temperature < 1.0 / FLOAT32_MAX:
        raise ValueError(
            f"temperature must be 0 (argmax) or >= {1.0 / FLOAT32_MAX:.3g} (1 / temperature "
            f"must be finite in float32), got {temperature!r}"
        )
    if not value_checks_enabled() or not x.numel():
        return
    if is_log:
        big = x.masked_fill(~torch.isfinite(x), 0).abs().amax()
    else:
        positive = x[x > 0]
        big = positive.double().log().abs().amax() if positive.numel() else x.new_zeros(())
    if float(big) / temperature >= FLOAT32_MAX / 2:
        raise ValueError(
            f"temperature {temperature!r} is too small for {name}: |log-weight| up to "
            f"{float(big):.3g} divided by it overflows float32; use temperature=0 for argmax"
        )


def token_range(name: str, x: torch.Tensor, vocab_size: int) -> None:
    """Every id of ``x`` lies in ``[0, vocab_size)``."""
    if value_checks_enabled() and x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside [0, {vocab_size})")


def mask_id(mask_id: int | None, vocab_size: int, *, required: bool = True) -> int | None:
    """A mask token id in ``[0, vocab_size)`` (any column; never assumed to be the last)."""
    if mask_id is None:
        if required:
            raise ValueError("mask_id is required for this graph / op")
        return None
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
    return mask_id


def vocab_size(vocab_size: int, *, minimum: int = 1) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be >= {minimum}, got {vocab_size}")
    return vocab_size


def graph(graph: str) -> str:
    if graph not in ("absorb", "uniform"):
        raise ValueError(f"graph must be 'absorb' or 'uniform', got {graph!r}")
    return graph


def reduction(reduction: str) -> str:
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return reduction


def finite(name: str, x: torch.Tensor, *, allow_neg_inf: bool = False) -> None:
    """No NaN (and no inf, except ``-inf`` when ``allow_neg_inf``) in ``x``.

    One reduction pass: ``max`` propagates NaN, so ``max < inf`` fails on NaN and on ``+inf``.
    """
    if not value_checks_enabled() or not x.numel():
        return
    if allow_neg_inf:
        bad = not bool(x.amax() < math.inf)
        what = "NaN or +inf"
    else:
        lo, hi = torch.aminmax(x)
        bad = not (bool(hi < math.inf) and bool(lo > -math.inf))
        what = "NaN or inf"
    if bad:
        raise ValueError(f"{name} contains {what}")


def _drop_trailing_ones(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``shape`` without the trailing size-1 dimensions that broadcast against a batch of
    ``ndim`` dimensions (``[B, 1]`` against ``[B, L]`` is ``[B]``)."""
    if len(shape) > ndim:
        return shape
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def per_position(
    name: str,
    value: float | torch.Tensor,
    batch_shape: torch.Size,
    *,
    device: torch.device,
    dtype: torch.dtype,
    nonnegative: bool = False,
    positive: bool = False,
    finite: bool = False,
) -> torch.Tensor:
    """Expand a per-position scalar to ``batch_shape``.

    ``value`` is a number or a tensor whose shape is a prefix of ``batch_shape`` (trailing
    size-1 dimensions allowed: SEDD's ``[batch, 1]`` for ``[batch, length]``). It is checked
    for NaN (and sign and finiteness when asked) and returned as a ``dtype`` tensor on ``device``.
    """
    if isinstance(value, torch.Tensor):
        if value.device != device and value.numel() != 1:
            raise ValueError(f"{name} is on {value.device} but the inputs are on {device}")
        t = value.to(device=device, dtype=dtype)
        shape = _drop_trailing_ones(tuple(t.shape), len(batch_shape))
        k = len(shape)
        if shape != tuple(batch_shape[:k]):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; it must be a prefix of {tuple(batch_shape)} "
                "(a number, per sequence or per position), optionally followed by size-1 "
                "dimensions (SEDD's [batch, 1])"
            )
        if tuple(t.shape) != tuple(batch_shape):  # (already the full shape: nothing to do)
            t = t.reshape(shape)
            t = t.reshape(t.shape + (1,) * (len(batch_shape) - k)).expand(batch_shape)
        check = value
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
        t = torch.full(batch_shape, float(value), device=device, dtype=dtype)
        check = torch.tensor(float(value))
    if value_checks_enabled() or not isinstance(value, torch.Tensor):
        if bool(torch.isnan(check).any()):
            raise ValueError(f"{name} contains NaN")
        if finite and bool(torch.isinf(check).any()):
            raise ValueError(f"{name} must be finite (got inf)")
        if positive and bool((check <= 0).any()):
            raise ValueError(f"{name} must be > 0")
        if nonnegative and bool((check < 0).any()):
            raise ValueError(f"{name} must be >= 0 (got a negative value)")
    return t


def bool_mask(name: str, m: torch.Tensor | None, batch_shape: torch.Size) -> torch.Tensor | None:
    """An optional boolean position mask of shape ``batch_shape`` (or a prefix of it)."""
    if m is None:
        return None
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor")
    k = m.dim()
    if tuple(m.shape) != tuple(batch_shape[:k]):
        raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {tuple(batch_shape)}")
    return m.reshape(m.shape + (1,) * (len(batch_shape) - k)).expand(batch_shape)


def scores(name: str, s: torch.Tensor, x: torch.Tensor) -> int:
    """A ``[*B, V]`` floating tensor matching tokens ``x`` of shape ``[*B]``; returns ``V``."""
    floating(name, s, min_dim=1)
    if s.shape[:-1] != x.shape:
        raise ValueError(
            f"{name} has shape {tuple(s.shape)}; expected {(*tuple(x.shape), 'V')} to match the "
            f"tokens of shape {tuple(x.shape)}"
        )
    if s.shape[-1] < 1:
        raise ValueError(f"{name} has an empty vocabulary dimension")
    return s.shape[-1]


def temperature(value: float) -> float:
    """A finite temperature >= 0 (0 means argmax)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(value).__name__}")
    if not 0.0 <= value < math.inf:
        raise ValueError(f"temperature must be finite and >= 0, got {value!r}")
    return float(value)
