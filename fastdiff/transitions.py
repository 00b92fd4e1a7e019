"""D3PM transition matrices (docs/ops.md#transition-matrices; Austin et al. 2021).

A one-step matrix ``Q_t`` ``[V, V]`` is row-stochastic: ``Q_t[i, j] = q(x_t = j | x_{t-1} = i)``.
The cumulative matrix ``Qbar_t = Q_1 Q_2 ... Q_t`` gives ``q(x_t = j | x0 = i) = Qbar_t[i, j]``.
Every builder returns float64 (products of many steps lose accuracy in float32); move or cast
the result where it is used.

Builders (``beta`` in ``[0, 1]`` is the step's noise level):

- :func:`uniform_transition`: ``Q = (1 - beta) I + (beta / V) 1 1^T`` (stationary: uniform);
- :func:`absorbing_transition`: every token stays with ``1 - beta`` and moves to ``mask_id``
  (any column) with ``beta``; the mask row is absorbing (stationary: all mass on the mask);
- :func:`banded_transition`: D3PM's "uniform with band": ``beta / V`` for ``0 < |i - j| <=
  bandwidth``, 0 further away, the diagonal takes the rest of the row (rows near the edges have
  fewer neighbours and keep more mass). Symmetric and doubly stochastic; ``bandwidth >= V - 1``
  is :func:`uniform_transition`;
- :func:`discretized_gaussian_transition`: D3PM appendix A.2.1, for ``i != j``
  ``Q[i, j] = exp(-4 (i - j)^2 / ((V - 1)^2 beta)) / sum_{n = -(V-1)}^{V-1} exp(-4 n^2 /
  ((V - 1)^2 beta))`` and ``Q[i, i] = 1 - sum_{l != i} Q[i, l]``. Symmetric and doubly
  stochastic; ``beta = 0`` gives the identity (the limit).

:func:`cumulative_transitions` multiplies a stack of steps; :class:`TransitionSchedule` holds
both tables for a whole beta schedule (``t`` runs from 1 to ``T``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastdiff import checks

__all__ = [
    "KINDS",
    "TransitionSchedule",
    "absorbing_transition",
    "banded_transition",
    "cumulative_transitions",
    "discretized_gaussian_transition",
    "transition_matrix",
    "uniform_transition",
]

F64 = torch.float64
KINDS = ("uniform", "absorbing", "banded", "gaussian")

Device = torch.device | str | None


def _beta(beta: float | torch.Tensor) -> float:
    """A noise level in ``[0, 1]`` as a python float (a 0-d / one-element tensor is accepted)."""
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1 or beta.dtype.is_complex:
            raise ValueError(
                f"beta must be a single real number, got a tensor of shape {tuple(beta.shape)}"
            )
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number in [0, 1], got {type(beta).__name__}")
    beta = float(beta)
    if not (0.0 <= beta <= 1.0):  # also rejects NaN
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return beta


def _vocab(vocab_size: int) -> int:
    return checks.vocab_size(vocab_size, minimum=2)


def uniform_transition(vocab_size: int, beta: float, *, device: Device = None) -> torch.Tensor:
    """``Q = (1 - beta) I + (beta / V) 1 1^T`` (float64 ``[V, V]``)."""
    v = _vocab(vocab_size)
    b = _beta(beta)
    q = torch.full((v, v), b / v, dtype=F64, device=device)
    q.diagonal().add_(1.0 - b)
    return q


def absorbing_transition(
    vocab_size: int, beta: float, mask_id: int, *, device: Device = None
) -> torch.Tensor:
    """``Q = (1 - beta) I + beta 1 e_m^T``: stay with ``1 - beta``, move to ``mask_id`` with
    ``beta``; row ``mask_id`` is ``e_m`` (absorbing). ``mask_id`` may be any column."""
    v = _vocab(vocab_size)
    b = _beta(beta)
    m = checks.mask_id(mask_id, v)
    q = torch.eye(v, dtype=F64, device=device) * (1.0 - b)
    q[:, m] += b
    q[m, m] = 1.0  # exactly, whatever the rounding of (1 - b) + b
    return q


def _distance(v: int, device: Device) -> torch.Tensor:
    idx = torch.arange(v, device=device)
    return (idx[:, None] - idx[None, :]).abs()


def _fill_diagonal(q: torch.Tensor) -> torch.Tensor:
    """Set the diagonal to ``1 - (sum of the off-diagonal entries of the row)``."""
    q.diagonal().zero_()
    q.diagonal().copy_(1.0 - q.sum(-1))
    return q


def banded_transition(
    vocab_size: int, beta: float, bandwidth: int, *, device: Device = None
) -> torch.Tensor:
    """D3PM "uniform with band": ``Q[i, j] = beta / V`` for ``0 < |i - j| <= bandwidth``,
    0 beyond, ``Q[i, i] = 1 - sum_{l != i} Q[i, l]`` (the edge rows keep the mass of their
    missing neighbours on the diagonal). Symmetric and doubly stochastic."""
    v = _vocab(vocab_size)
    b = _beta(beta)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int):
        raise TypeError(f"bandwidth must be an int, got {type(bandwidth).__name__}")
    if bandwidth < 1:
        raise ValueError(f"bandwidth must be >= 1, got {bandwidth}")
    dist = _distance(v, device)
    q = (dist <= bandwidth).to(F64) * (b / v)
    return _fill_diagonal(q)


def discretized_gaussian_transition(
    vocab_size: int, beta: float, *, device: Device = None
) -> torch.Tensor:
    """D3PM discretized Gaussian (appendix A.2.1): for ``i != j``
    ``Q[i, j] = softmax_n(-4 n^2 / ((V - 1)^2 beta))`` at ``n = i - j``, the softmax taken over
    ``n`` in ``[-(V - 1), V - 1]``; ``Q[i, i] = 1 - sum_{l != i} Q[i, l]``.
    ``beta = 0`` gives the identity."""
    v = _vocab(vocab_size)
    b = _beta(beta)
    if b == 0.0:
        return torch.eye(v, dtype=F64, device=device)
    n = torch.arange(-(v - 1), v, dtype=F64, device=device)
    weights = torch.softmax(-4.0 * n * n / ((v - 1) ** 2 * b), dim=0)  # index v - 1 + n
    q = weights[v - 1 + _distance(v, device)]
    return _fill_diagonal(q)


def transition_matrix(
    kind: str,
    vocab_size: int,
    beta: float,
    *,
    mask_id: int | None = None,
    bandwidth: int | None = None,
    device: Device = None,
) -> torch.Tensor:
    """The one-step matrix of ``kind`` (one of :data:`KINDS`) at noise level ``beta``."""
    if kind == "uniform":
        return uniform_transition(vocab_size, beta, device=device)
    if kind == "absorbing":
        if mask_id is None:
            raise ValueError("kind 'absorbing' needs mask_id")
        return absorbing_transition(vocab_size, beta, mask_id, device=device)
    if kind == "banded":
        if bandwidth is None:
            raise ValueError("kind 'banded' needs bandwidth")
        return banded_transition(vocab_size, beta, bandwidth, device=device)
    if kind == "gaussian":
        return discretized_gaussian_transition(vocab_size, beta, device=device)
    raise ValueError(f"unknown transition kind {kind!r}; expected one of {KINDS}")


def _check_stack(name: str, q: torch.Tensor, atol: float = 1e-5) -> None:
    """``q`` is a non-empty float ``[T, V, V]`` stack of row-stochastic matrices."""
    checks.floating(name, q)
    if q.dim() != 3 or q.shape[-1] != q.shape[-2] or q.shape[0] < 1:
        raise ValueError(f"{name} must have shape [T, V, V] with T >= 1, got {tuple(q.shape)}")
    if not bool(torch.isfinite(q).all()):
        raise ValueError(f"{name} contains NaN or inf")
    if bool((q < 0).any()):
        raise ValueError(f"{name} has negative entries")
    err = float((q.sum(-1, dtype=F64) - 1.0).abs().max()) if q.numel() else 0.0
    if err > atol:
        raise ValueError(f"{name} rows must sum to 1 (max deviation {err:.3g})")


def _as_stack(matrices: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(matrices, torch.Tensor):
        return matrices
    mats = list(matrices)
    if not mats:
        raise ValueError("matrices must hold at least one transition matrix")
    for i, m in enumerate(mats):
        checks.floating(f"matrices[{i}]", m)
    if len({tuple(m.shape) for m in mats}) != 1:
        raise ValueError("all matrices must have the same shape [V, V]")
    return torch.stack([m.to(F64) for m in mats])


def cumulative_transitions(matrices: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``Qbar_t = Q_1 Q_2 ... Q_t`` for ``t = 1..T`` (float64 ``[T, V, V]``).

    ``matrices`` is a ``[T, V, V]`` tensor or a sequence of ``[V, V]`` tensors, row-stochastic.
    Products are formed in float64 in order (``Qbar_t = Qbar_{t-1} Q_t``).
    """
    q = _as_stack(matrices)
    _check_stack("matrices", q)
    q = q.to(F64)
    out = torch.empty_like(q)
    acc = q[0]
    out[0] = acc
    for t in range(1, q.shape[0]):
        acc = acc @ q[t]
        out[t] = acc
    return out


def _betas(betas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(betas, dtype=F64).detach().cpu()
    if b.dim() != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
    if not bool(((b >= 0) & (b <= 1)).all()):  # also rejects NaN
        raise ValueError("every beta must be in [0, 1]")
    return b


@dataclass(frozen=True)
class TransitionSchedule:
    """The D3PM tables of a ``T``-step schedule, float64.

    Attributes:
        q_steps: ``[T, V, V]``; ``q_steps[t - 1] = Q_t`` (``q(x_t | x_{t-1})``).
        q_bar: ``[T, V, V]``; ``q_bar[t - 1] = Qbar_t = Q_1 ... Q_t`` (``q(x_t | x0)``).

    Steps ``t`` run from 1 to ``T``. The methods take ``t`` as an int (giving ``[V, V]``) or an
    integer tensor ``[batch]`` (giving ``[batch, V, V]``, one matrix per sequence, the shape
    :func:`fastdiff.d3pm_step` and friends accept).
    """

    q_steps: torch.Tensor
    q_bar: torch.Tensor

    def __post_init__(self) -> None:
        _check_stack("q_steps", self.q_steps)
        _check_stack("q_bar", self.q_bar)
        if self.q_steps.shape != self.q_bar.shape:
            raise ValueError(
                f"q_steps {tuple(self.q_steps.shape)} and q_bar {tuple(self.q_bar.shape)} "
                "must have the same shape"
            )
        if self.q_steps.device != self.q_bar.device:
            raise ValueError("q_steps and q_bar must be on the same device")

    @classmethod
    def from_matrices(cls, q_steps: torch.Tensor | Sequence[torch.Tensor]) -> TransitionSchedule:
        """A schedule from its one-step matrices (the cumulative products are computed)."""
        q = _as_stack(q_steps)
        q_bar = cumulative_transitions(q)
        return cls(q_steps=q.to(F64), q_bar=q_bar)

    @classmethod
    def from_betas(
        cls,
        betas: Sequence[float] | torch.Tensor,
        kind: str,
        vocab_size: int,
        *,
        mask_id: int | None = None,
        bandwidth: int | None = None,
        device: Device = None,
    ) -> TransitionSchedule:
        """``Q_t = transition_matrix(kind, vocab_size, betas[t - 1])`` for ``t = 1..T``.

        ``kind`` is one of :data:`KINDS`; ``"absorbing"`` needs ``mask_id``, ``"banded"``
        needs ``bandwidth``.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown transition kind {kind!r}; expected one of {KINDS}")
        b = _betas(betas)
        mats = [
            transition_matrix(
                kind, vocab_size, float(beta), mask_id=mask_id, bandwidth=bandwidth, device=device
            )
            for beta in b.tolist()
        ]
        return cls.from_matrices(torch.stack(mats))

    @property
    def num_steps(self) -> int:
        return self.q_steps.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.q_steps.shape[-1]

    def to(self, *args, **kwargs) -> TransitionSchedule:
        """Both tables moved / cast with :meth:`torch.Tensor.to`."""
        return TransitionSchedule(self.q_steps.to(*args, **kwargs), self.q_bar.to(*args, **kwargs))

    def _index(self, t: int | torch.Tensor) -> int | torch.Tensor:
        if isinstance(t, torch.Tensor):
            if t.dtype not in (torch.int64, torch.int32) or t.dim() > 1:
                raise ValueError("t must be an int or an int32/int64 tensor of shape [] or [batch]")
            if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.num_steps):
                raise ValueError(f"t must lie in [1, {self.num_steps}]")
            return t.long().to(self.q_steps.device)
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
        if not 1 <= t <= self.num_steps:
            raise ValueError(f"t must lie in [1, {self.num_steps}], got {t}")
        return t

    def step(self, t: int | torch.Tensor) -> torch.Tensor:
        """``Q_t`` (``[V, V]``, or ``[batch, V, V]`` for a tensor ``t``)."""
        return self.q_steps[self._index(t) - 1]

    def cumulative(self, t: int | torch.Tensor) -> torch.Tensor:
        """``Qbar_t = Q_1 ... Q_t``: ``q(x_t | x0)``."""
        return self.q_bar[self._index(t) - 1]

    def qbar_prev(self, t: int | torch.Tensor) -> torch.Tensor:
        """``Qbar_{t-1}`` (the identity at ``t = 1``): ``q(x_{t-1} | x0)``."""
        i = self._index(t)
        eye = torch.eye(self.vocab_size, dtype=self.q_bar.dtype, device=self.q_bar.device)
        if isinstance(i, int):
            return eye if i == 1 else self.q_bar[i - 2]
        prev = self.q_bar[torch.clamp(i - 2, min=0)]
        first = (i == 1).reshape((*i.shape, 1, 1))
        return torch.where(first, eye, prev)
