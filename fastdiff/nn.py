"""Training losses as ``torch.nn`` modules (the Liger-Kernel pattern): one call gives the loss
of a batch of token ids.

Each module owns the noise schedule, the time draw (antithetic by default), the forward
noising and the weighting of its objective, and calls the model on the noised tokens::

    loss_fn = fastdiff.nn.MaskedDiffusionLoss(vocab_size=V, mask_id=m, projection=model.head)
    loss = loss_fn(model.hidden, x0)          # x0 [B, L] token ids -> scalar
    loss.backward()

**The model.** ``model(x_t, sigma)`` with ``x_t [B, L]`` int64 and the noise level ``[B]``
(``sigma`` for ``"mdlm"`` / ``"sedd"``, the step ``t`` as a float for ``"d3pm"``, the 0-based
schedule index as a float for ``"gaussian"``: the time input :func:`fastdiff.sample` gives
the same denoiser). For ``"gaussian"`` ``x_t`` is the noised embedding ``[B, L, H]`` and the
model returns its prediction ``[B, L, H]``; for the others what it returns depends on the loss:

- with a ``projection`` (the output layer: an ``nn.Linear``-like module with ``.weight [V, D]``
  and optional ``.bias [V]``, or a ``[V, D]`` weight tensor): the last hidden states
  ``[B, L, D]``. The loss applies the projection itself, fused with the loss where fastdiff
  has a fused op (``"mdlm"``: :func:`fastdiff.linear_masked_diffusion_loss`; ``"sedd"``:
  :func:`fastdiff.linear_score_entropy`), so the ``[B, L, V]`` logits are never formed;
  ``"d3pm"`` has no fused op and forms them with ``F.linear``;
- without one: the logits ``[B, L, V]`` (the unfused path).

The projection is not registered as a submodule: it stays the model's (its optimizer, its
``state_dict``, its device); a module passed as ``projection`` is read at every call, so it
may be re-wrapped or moved. ``projection=`` given to ``forward`` overrides the constructor's.

**One call.** ``forward(model, x0, *, t=None, seed=None, generator=None, fixed=None,
ignore=None, projection=None, model_kwargs=None, return_output=False)``:

- ``t``: the times ``[B]`` (one per sequence); drawn when ``None`` (continuous:
  :func:`fastdiff.schedules.sample_times` in ``[sampling_eps, 1]``; discrete: uniform steps);
- ``seed`` / ``generator``: the noising randomness (:mod:`fastdiff.random`); the time draw
  uses ``generator`` (or torch's default generator) first, then the noising draws its seed
  from it when ``seed`` is ``None``;
- ``fixed``: bool ``[B, L]`` (or ``[B]``): positions never noised (a prompt) and not scored;
- ``ignore``: bool ``[B, L]`` (or ``[B]``): positions not scored (padding);
- ``model_kwargs``: extra keyword arguments of every model call (an attention mask,
  ``hidden_only=True``, ...);
- ``reduction`` (constructor): ``"mean"`` (default) over the scored positions, ``"sum"``, or
  ``"none"`` (the per-position loss ``[B, L]``; not on the fused paths);
- ``return_output=True`` returns a :class:`LossOutput` (the loss and the batch's ``t``,
  ``x_t``, noise level and weight) instead of the loss alone.

Modules: :class:`MaskedDiffusionLoss` (``"mdlm"``), :class:`ScoreEntropyLoss` (``"sedd"``),
:class:`D3PMLoss` (``"d3pm"``), :class:`GaussianEmbeddingLoss` (``"gaussian"``);
:func:`from_objective` builds one by objective name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiff import checks
from fastdiff.d3pm import d3pm_hybrid_loss
from fastdiff.gaussian import GaussianNoised, add_noise_gaussian, gaussian_loss
from fastdiff.losses import (
    _reduce,
    linear_masked_diffusion_loss,
    linear_score_entropy,
    masked_diffusion_loss,
    scale_by_sigma,
    score_entropy,
)
from fastdiff.noising import add_noise, add_noise_dense
from fastdiff.samplers.gaussian import PREDICTION_TYPES
from fastdiff.schedules import GaussianSchedule, Geometric, LogLinear, NoiseSchedule, sample_times
from fastdiff.transitions import TransitionSchedule

__all__ = [
    "OBJECTIVES",
    "D3PMLoss",
    "GaussianEmbeddingLoss",
    "LossOutput",
    "MaskedDiffusionLoss",
    "ScoreEntropyLoss",
    "from_objective",
]

OBJECTIVES = ("mdlm", "sedd", "d3pm", "gaussian")

Model = Callable[..., Tensor]
"""``model(x_t, noise_level, **model_kwargs) -> [B, L, D]`` hidden states or ``[B, L, V]``."""
Projection = nn.Module | Tensor
"""An output layer with ``.weight [V, D]`` (and optional ``.bias [V]``) or a weight tensor."""

_LN2 = math.log(2.0)  # expm1(ln 2) = 1: the noise level at which score entropy's r is 1


@dataclasses.dataclass
class LossOutput:
    """What a loss module returns with ``return_output=True``."""

    loss: Tensor
    """The reduced loss (a scalar; ``[B, L]`` with ``reduction="none"``)."""
    t: Tensor
    """The times ``[B]``: continuous in ``[0, 1]`` (mdlm, sedd) or the int64 steps (d3pm: ``1..T``;
    gaussian: the 0-based index ``0..T-1``)."""
    x_t: Tensor
    """The noised input of the model: tokens ``[B, L]`` (a state ``[B, L, H]`` for gaussian)."""
    noise_level: Tensor
    """The model's second argument ``[B]``: ``sigma`` (mdlm, sedd) or ``t`` as a float."""
    weight: Tensor | None
    """The per-sequence loss weight ``[B]`` (``None`` where the objective has none)."""


# --------------------------------------------------------------------------------------------
# shared argument handling
# --------------------------------------------------------------------------------------------


def _check_flag(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_nonnegative(name: str, value: float, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0.0) or (upper is not None and value >= upper):
        bound = f"[0, {upper})" if upper is not None else ">= 0 and finite"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def _check_projection_arg(projection: Projection | None) -> Projection | None:
    if projection is None or isinstance(projection, Tensor):
        return projection
    weight = getattr(projection, "weight", None)
    if isinstance(projection, nn.Module) and isinstance(weight, Tensor):
        return projection
    raise TypeError(
        "projection must be a module with a .weight [V, D] (e.g. nn.Linear, a model's output "
        f"embeddings) or a [V, D] weight tensor, got {type(projection).__name__}"
    )


def _weight_and_bias(projection: Projection, vocab_size: int) -> tuple[Tensor, Tensor | None]:
    """``(W [V, D], b [V] | None)`` of a projection, ``V`` checked against ``vocab_size``."""
    if isinstance(projection, Tensor):
        weight, bias = projection, None
    else:
        weight, bias = projection.weight, getattr(projection, "bias", None)
    if weight.dim() != 2 or weight.shape[0] != vocab_size:
        raise ValueError(
            f"projection weight must have shape [vocab_size = {vocab_size}, D], got "
            f"{tuple(weight.shape)}"
        )
    return weight, bias


class _DiffusionLoss(nn.Module):
    """Arguments and steps shared by the loss modules."""

    objective: str = ""

    def __init__(
        self,
        vocab_size: int,
        *,
        projection: Projection | None,
        reduction: str,
        antithetic: bool,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = checks.vocab_size(vocab_size, minimum=2)
        self.reduction = checks.reduction(reduction)
        self.antithetic = _check_flag("antithetic", antithetic)
        if chunk_rows is not None and (
            isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
        ):
            raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
        self.chunk_rows = chunk_rows
        # a tuple: nn.Module does not register it (the projection stays the model's)
        self._projection = (_check_projection_arg(projection),)

    def extra_repr(self) -> str:
        fused = self._projection[0] is not None
        return f"vocab_size={self.vocab_size}, reduction={self.reduction!r}, fused={fused}"

    # -- steps ----------------------------------------------------------------------------------

    def _tokens(self, x0: Tensor) -> Tensor:
        x0 = checks.tokens("x0", x0)
        if x0.dim() != 2:
            raise ValueError(f"x0 must be token ids of shape [B, L], got {tuple(x0.shape)}")
        checks.token_range("x0", x0, self.vocab_size)
        return x0

    def _masks(
        self, x0: Tensor, fixed: Tensor | None, ignore: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(fixed, scored-out)``: both ``[B, L]``; fixed positions are not scored either."""
        fixed = checks.bool_mask("fixed", fixed, x0.shape)
        ignore = checks.bool_mask("ignore", ignore, x0.shape)
        checks.same_device(x0=x0, fixed=fixed, ignore=ignore)
        if fixed is None:
            return None, ignore
        return fixed, fixed if ignore is None else fixed | ignore

    def _uniform(
        self, n: int, generator: torch.Generator | None, device: torch.device, eps: float
    ) -> Tensor:
        """``n`` float64 draws in ``[eps, 1]`` (antithetic when asked) on ``device``."""
        draw_device = generator.device if generator is not None else device
        u = sample_times(
            n,
            eps=eps,
            antithetic=self.antithetic,
            generator=generator,
            device=draw_device,
            dtype=torch.float64,
        )
        return u.to(device)

    def _resolve_projection(
        self, projection: Projection | None
    ) -> tuple[Tensor, Tensor | None] | None:
        """``(W, b)`` of the call's projection, else the constructor's; ``None``: unfused."""
        proj = _check_projection_arg(projection) if projection is not None else self._projection[0]
        if proj is None:
            return None
        return _weight_and_bias(proj, self.vocab_size)

    def _call(
        self,
        model: Model,
        x_t: Tensor,
        level: Tensor,
        model_kwargs: dict[str, Any] | None,
        head: tuple[Tensor, Tensor | None] | None,
    ) -> Tensor:
        """The model's output, checked: hidden states ``[B, L, D]`` with a projection (``D`` the
        projection's width), else logits ``[B, L, V]``."""
        out = model(x_t, level, **(model_kwargs or {}))
        if not isinstance(out, Tensor):
            raise TypeError(f"the model returned {type(out).__name__}; expected a tensor")
        if head is not None:
            width = head[0].shape[1]
            if out.shape != (*x_t.shape, width):
                raise ValueError(
                    f"the model returned shape {tuple(out.shape)}; with a projection it must "
                    f"return the hidden states [B, L, D] = {(*tuple(x_t.shape), width)} (the "
                    "input of the projection), not logits"
                )
            return out
        if out.shape != (*x_t.shape, self.vocab_size):
            raise ValueError(
                f"the model returned shape {tuple(out.shape)}; without a projection it must "
                f"return logits [B, L, V] = {(*tuple(x_t.shape), self.vocab_size)}"
            )
        return out

    @staticmethod
    def _cast(head: tuple[Tensor, Tensor | None], hidden: Tensor) -> tuple[Tensor, Tensor | None]:
        weight, bias = head
        return weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)

    @staticmethod
    def _model_kwargs(model_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
        return model_kwargs


# --------------------------------------------------------------------------------------------
# continuous time: masked diffusion and score entropy
# --------------------------------------------------------------------------------------------


class _ContinuousLoss(_DiffusionLoss):
    """A loss over continuous times ``t in [sampling_eps, 1]`` of a :class:`NoiseSchedule`."""

    def __init__(
        self,
        vocab_size: int,
        *,
        graph: str,
        mask_id: int | None,
        schedule: NoiseSchedule,
        sampling_eps: float,
        projection: Projection | None,
        reduction: str,
        antithetic: bool,
        chunk_rows: int | None,
    ) -> None:
        super().__init__(
            vocab_size,
            projection=projection,
            reduction=reduction,
            antithetic=antithetic,
            chunk_rows=chunk_rows,
        )
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                "schedule must be a fastdiff.schedules.NoiseSchedule (LogLinear, Geometric, "
                f"LinearAlpha, CosineAlpha), got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.sampling_eps = _check_nonnegative("sampling_eps", sampling_eps, upper=1.0)
        self.graph = checks.graph(graph)
        if self.graph == "uniform" and mask_id is not None:
            raise ValueError("the uniform graph has no mask token: leave mask_id None")
        self.mask_id = checks.mask_id(mask_id, self.vocab_size, required=self.graph == "absorb")

    def _times(
        self, t: Tensor | None, n: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        if t is None:
            return self._uniform(n, generator, device, self.sampling_eps).float()
        checks.floating("t", t)
        if t.shape != (n,):
            raise ValueError(f"t must have shape [B] = [{n}], got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"t is on {t.device} but x0 on {device}")
        return t

    def _noised(
        self,
        x0: Tensor,
        t: Tensor | None,
        seed: int | Tensor | None,
        generator: torch.Generator | None,
        fixed: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(t, sigma, dsigma, x_t)`` of a batch."""
        if (
            self.mask_id is not None
            and checks.value_checks_enabled()
            and bool((x0 == self.mask_id).any())
        ):
            raise ValueError(f"x0 contains the mask token {self.mask_id}")
        t = self._times(t, x0.shape[0], generator, x0.device)
        sigma, dsigma = self.schedule(t)
        x_t = add_noise(
            x0,
            sigma=sigma,
            graph=self.graph,
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            fixed=fixed,
            generator=generator,
            seed=seed,
        )
        return t, sigma, dsigma, x_t


class MaskedDiffusionLoss(_ContinuousLoss):
    """Masked diffusion (MDLM, LLaDA): the continuous-time negative ELBO of the absorbing
    process with the SUBS parameterization, ``objective = "mdlm"``.

    Per batch: ``t`` ``[B]`` (one time per sequence), ``sigma = schedule.sigma(t)``, ``x_t =
    add_noise(x0, sigma, graph="absorb")``, ``out = model(x_t, sigma)`` and, per position,
    ``loss = -w(t) log p_theta(x0 | x_t)`` where ``x_t = mask_id`` (0 elsewhere), with
    ``p_theta = softmax(logits with column mask_id at -inf)`` and the ELBO weight
    ``w(t) = schedule.loss_weight(t) = dsigma / expm1(sigma)`` (``1/t`` for
    :class:`~fastdiff.schedules.LogLinear` and :class:`~fastdiff.schedules.LinearAlpha`:
    LLaDA's ``1 / p_mask``). Reduced over the scored positions (the mean: nats per token).

    Args:
        vocab_size: ``V`` (the mask token included); mask_id: the mask token, any id in
            ``[0, V)`` (``x0`` must not contain it).
        schedule: a :class:`~fastdiff.schedules.NoiseSchedule` (default ``LogLinear()``).
        sampling_eps: times are drawn in ``[sampling_eps, 1]`` (default ``1e-3``).
        projection: the output layer for the fused path (module docstring); ``None``: the
            model returns logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (unfused only).
        antithetic: stratified times ``(u + i/B) mod 1`` (MDLM's low-discrepancy draw).
        chunk_rows: rows per chunk of the fused kernel (default: its own choice).
    """

    objective = "mdlm"

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        schedule: NoiseSchedule | None = None,
        sampling_eps: float = 1e-3,
        projection: Projection | None = None,
        reduction: str = "mean",
        antithetic: bool = True,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__(
            vocab_size,
            graph="absorb",
            mask_id=mask_id,
            schedule=LogLinear() if schedule is None else schedule,
            sampling_eps=sampling_eps,
            projection=projection,
            reduction=reduction,
            antithetic=antithetic,
            chunk_rows=chunk_rows,
        )

    def forward(
        self,
        model: Model,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        seed: int | Tensor | None = None,
        generator: torch.Generator | None = None,
        fixed: Tensor | None = None,
        ignore: Tensor | None = None,
        projection: Projection | None = None,
        model_kwargs: dict[str, Any] | None = None,
        return_output: bool = False,
    ) -> Tensor | LossOutput:
        """The loss of the token ids ``x0 [B, L]`` (arguments: module docstring)."""
        x0 = self._tokens(x0)
        fixed, scored_out = self._masks(x0, fixed, ignore)
        head = self._resolve_projection(projection)
        model_kwargs = self._model_kwargs(model_kwargs)
        t, sigma, _, x_t = self._noised(x0, t, seed, generator, fixed)
        weight = self.schedule.loss_weight(t)
        out = self._call(model, x_t, sigma, model_kwargs, head)
        if head is None:
            loss = masked_diffusion_loss(
                out,
                x_t,
                x0,
                mask_id=self.mask_id,
                weight=weight,
                ignore=scored_out,
                reduction=self.reduction,
            )
        else:
            w, b = self._cast(head, out)
            loss = linear_masked_diffusion_loss(
                out,
                w,
                x_t,
                x0,
                mask_id=self.mask_id,
                bias=b,
                weight=weight,
                ignore=scored_out,
                reduction=self.reduction,
                chunk_rows=self.chunk_rows,
            )
        if return_output:
            return LossOutput(loss, t, x_t, sigma, weight)
        return loss


class ScoreEntropyLoss(_ContinuousLoss):
    """SEDD's denoising score entropy on the absorbing or uniform graph, ``objective = "sedd"``.

    Per batch: ``t``, ``sigma, dsigma = schedule(t)``, ``x_t = add_noise(x0, sigma, graph)``,
    ``out = model(x_t, sigma)`` and, per position, ``dsigma(t) * score_entropy(s, x_t, x0,
    sigma)`` with the log-scores ``s = scale_by_sigma(out, sigma)`` (absorbing graph with
    ``scale_by_sigma=True``, SEDD's default there) or ``s = out``.

    The fused absorbing path with ``scale_by_sigma`` uses the identity (exact in real
    arithmetic; ``r = 1/expm1(sigma)``, ``l' = logits - log(V - 1)``)::

        score_entropy(l - log expm1(sigma) - log(V - 1), sigma) = r * score_entropy(l', ln 2)

    (``expm1(ln 2) = 1``), so :func:`fastdiff.linear_score_entropy` runs with the bias shifted
    by ``-log(V - 1)``, ``sigma = ln 2`` and the weight ``dsigma r = schedule.loss_weight(t)``:
    the shift per row never needs the logits.

    Args:
        vocab_size: ``V``; graph: ``"absorb"`` (needs ``mask_id``) or ``"uniform"``.
        schedule: default ``LogLinear()`` (absorb) or ``Geometric(1e-4, 20)`` (uniform).
        scale_by_sigma: default True on the absorbing graph; not available on the uniform one.
        Others as in :class:`MaskedDiffusionLoss`.
    """

    objective = "sedd"

    def __init__(
        self,
        *,
        vocab_size: int,
        graph: str = "absorb",
        mask_id: int | None = None,
        schedule: NoiseSchedule | None = None,
        scale_by_sigma: bool | None = None,
        sampling_eps: float = 1e-3,
        projection: Projection | None = None,
        reduction: str = "mean",
        antithetic: bool = True,
        chunk_rows: int | None = None,
    ) -> None:
        graph = checks.graph(graph)
        if schedule is None:
            schedule = LogLinear() if graph == "absorb" else Geometric(1e-4, 20.0)
        if scale_by_sigma is None:
            scale_by_sigma = graph == "absorb"
        if _check_flag("scale_by_sigma", scale_by_sigma) and graph != "absorb":
            raise ValueError("scale_by_sigma is SEDD's absorbing-graph parameterization only")
        super().__init__(
            vocab_size,
            graph=graph,
            mask_id=mask_id,
            schedule=schedule,
            sampling_eps=sampling_eps,
            projection=projection,
            reduction=reduction,
            antithetic=antithetic,
            chunk_rows=chunk_rows,
        )
        self.scale_by_sigma = scale_by_sigma

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, {super().extra_repr()}"

    def forward(
        self,
        model: Model,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        seed: int | Tensor | None = None,
        generator: torch.Generator | None = None,
        fixed: Tensor | None = None,
        ignore: Tensor | None = None,
        projection: Projection | None = None,
        model_kwargs: dict[str, Any] | None = None,
        return_output: bool = False,
    ) -> Tensor | LossOutput:
        """The loss of the token ids ``x0 [B, L]`` (arguments: module docstring)."""
        x0 = self._tokens(x0)
        fixed, scored_out = self._masks(x0, fixed, ignore)
        head = self._resolve_projection(projection)
        model_kwargs = self._model_kwargs(model_kwargs)
        t, sigma, dsigma, x_t = self._noised(x0, t, seed, generator, fixed)
        out = self._call(model, x_t, sigma, model_kwargs, head)
        options = {"graph": self.graph, "mask_id": self.mask_id, "ignore": scored_out}
        if head is None:
            log_score = scale_by_sigma(out, sigma=sigma) if self.scale_by_sigma else out
            loss = score_entropy(
                log_score, x_t, x0, sigma=sigma, weight=dsigma, reduction=self.reduction, **options
            )
        else:
            w, b = self._cast(head, out)
            level, weight = sigma, dsigma
            if self.scale_by_sigma:
                shift = math.log(self.vocab_size - 1)
                b = w.new_full((self.vocab_size,), -shift) if b is None else b - shift
                level, weight = _LN2, self.schedule.loss_weight(t)
            loss = linear_score_entropy(
                out,
                w,
                x_t,
                x0,
                sigma=level,
                bias=b,
                weight=weight,
                reduction=self.reduction,
                chunk_rows=self.chunk_rows,
                **options,
            )
        if return_output:
            return LossOutput(loss, t, x_t, sigma, dsigma)
        return loss


# --------------------------------------------------------------------------------------------
# discrete time: D3PM
# --------------------------------------------------------------------------------------------


class D3PMLoss(_DiffusionLoss):
    """D3PM's hybrid loss with dense transition matrices, ``objective = "d3pm"``.

    Per batch: a step ``t`` in ``1..T`` per sequence (uniform; antithetic: stratified over the
    batch), ``x_t ~ Cat(Qbar_t[x0, :])`` (:func:`fastdiff.add_noise_dense`), ``out =
    model(x_t, t)`` (``t`` as a float, as :func:`fastdiff.sample` with ``method="d3pm"`` calls
    it) and :func:`fastdiff.d3pm_hybrid_loss` per position: ``L_vb + hybrid_lambda * CE``
    (``L_vb`` the KL of the true and predicted posteriors, ``-log p(x0 | x_1)`` at ``t = 1``).

    Args:
        transitions: a :class:`~fastdiff.transitions.TransitionSchedule` (uniform, absorbing,
            ... matrices; ``V`` is its vocabulary size).
        hybrid_lambda: the weight of the auxiliary cross entropy (D3PM: 0.01 or 0.001).
        projection: an output layer; D3PM has no fused op, so the logits are formed with
            ``F.linear`` (the same model code as the fused losses).
        reduction, antithetic: as in :class:`MaskedDiffusionLoss`.
    """

    objective = "d3pm"

    def __init__(
        self,
        *,
        transitions: TransitionSchedule,
        hybrid_lambda: float = 0.01,
        projection: Projection | None = None,
        reduction: str = "mean",
        antithetic: bool = True,
    ) -> None:
        if not isinstance(transitions, TransitionSchedule):
            raise TypeError(
                "transitions must be a fastdiff.transitions.TransitionSchedule, got "
                f"{type(transitions).__name__}"
            )
        super().__init__(
            transitions.vocab_size,
            projection=projection,
            reduction=reduction,
            antithetic=antithetic,
        )
        self.transitions = transitions
        self.hybrid_lambda = _check_nonnegative("hybrid_lambda", hybrid_lambda)

    def _steps(
        self, t: Tensor | None, n: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        big_t = self.transitions.num_steps
        if t is None:
            u = self._uniform(n, generator, device, 0.0)
            return (u * big_t).floor().long().clamp(max=big_t - 1) + 1
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError("t must be an int64 tensor of steps [B]")
        if t.shape != (n,):
            raise ValueError(f"t must have shape [B] = [{n}], got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > big_t):
            raise ValueError(f"t must lie in [1, {big_t}]")
        return t.long().to(device)

    def forward(
        self,
        model: Model,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        seed: int | Tensor | None = None,
        generator: torch.Generator | None = None,
        fixed: Tensor | None = None,
        ignore: Tensor | None = None,
        projection: Projection | None = None,
        model_kwargs: dict[str, Any] | None = None,
        return_output: bool = False,
    ) -> Tensor | LossOutput:
        """The loss of the token ids ``x0 [B, L]`` (arguments: module docstring; ``t`` the
        int64 steps ``[B]`` in ``1..T``)."""
        x0 = self._tokens(x0)
        fixed, scored_out = self._masks(x0, fixed, ignore)
        head = self._resolve_projection(projection)
        model_kwargs = self._model_kwargs(model_kwargs)
        t = self._steps(t, x0.shape[0], generator, x0.device)
        if self.transitions.q_bar.device != x0.device:
            self.transitions = self.transitions.to(x0.device)
        tables = self.transitions
        x_t = add_noise_dense(x0, tables.cumulative(t), fixed=fixed, generator=generator, seed=seed)
        level = t.to(torch.get_default_dtype())
        out = self._call(model, x_t, level, model_kwargs, head)
        if head is not None:
            out = F.linear(out, *self._cast(head, out))
        loss = d3pm_hybrid_loss(
            out,
            x_t,
            x0,
            q_step=tables.step(t),
            qbar_next=tables.qbar_prev(t),
            t_is_one=t == 1,
            hybrid_lambda=self.hybrid_lambda,
            ignore=scored_out,
            reduction=self.reduction,
        )
        if return_output:
            return LossOutput(loss, t, x_t, level, None)
        return loss


# --------------------------------------------------------------------------------------------
# Gaussian embedding diffusion (Diffusion-LM)
# --------------------------------------------------------------------------------------------


class GaussianEmbeddingLoss(_DiffusionLoss):
    """Gaussian diffusion of learned token embeddings (Diffusion-LM), ``objective = "gaussian"``.

    Per batch: the clean state ``e0 = E[x0]`` ``[B, L, H]`` (``E = embedding.weight``), a
    0-based step ``j`` in ``0..T-1`` per sequence, ``alpha_bar = alphas_cumprod[j]``,
    ``x_t = sqrt(alpha_bar) e0 + sqrt(1 - alpha_bar) eps`` (:func:`fastdiff.add_noise_gaussian`,
    differentiable in ``E``), ``out = model(x_t, j)`` (``j`` as a float, as
    :func:`fastdiff.sample` with ``method="ddpm"`` / ``"ddim"`` calls it) and, per position::

        loss = ||out - target||^2 + alpha_bar_T ||e0||^2 - rounding_weight log p(x0 | e0)

    with ``target = e0`` (``prediction_type="sample"``), ``eps`` (``"epsilon"``) or
    ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) e0`` (``"v_prediction"``; diffusers' names,
    as the ``ddpm`` / ``ddim`` samplers take them), the squares summed over
    ``H`` (:func:`fastdiff.gaussian_loss`), the prior term ``||sqrt(alpha_bar_T) e0||^2`` (the
    mean of ``q(x_T | e0)``, which keeps the embeddings from growing) and the rounding cross
    entropy of the decoder ``p(x0 | e0) = softmax(e0 W^T + b)``, ``W, b`` the ``projection``
    (default: the embedding table itself, tied, no bias). The model returns ``[B, L, H]``.

    Args:
        embedding: an ``nn.Embedding`` (or a module with ``.weight [V, H]``) or a ``[V, H]``
            tensor: the learned embedding (not registered: the model owns it).
        schedule: a :class:`~fastdiff.schedules.GaussianSchedule` (default: Diffusion-LM's
            ``GaussianSchedule.sqrt(2000)``).
        prediction_type: ``"sample"`` (``x0``, Diffusion-LM), ``"epsilon"`` or
            ``"v_prediction"``.
        rounding_weight: the factor of the rounding cross entropy (>= 0).
        projection: the rounding decoder (default: tied to the embedding).
        reduction, antithetic: as in :class:`MaskedDiffusionLoss`.
    """

    objective = "gaussian"

    def __init__(
        self,
        *,
        embedding: Projection,
        schedule: GaussianSchedule | None = None,
        prediction_type: str = "sample",
        rounding_weight: float = 1.0,
        projection: Projection | None = None,
        reduction: str = "mean",
        antithetic: bool = True,
    ) -> None:
        table = _check_projection_arg(embedding)
        if table is None:
            raise TypeError("embedding must be an nn.Embedding or a [V, H] tensor, not None")
        weight = table if isinstance(table, Tensor) else table.weight
        checks.floating("embedding", weight, min_dim=2)
        if weight.dim() != 2:
            raise ValueError(f"embedding must have shape [V, H], got {tuple(weight.shape)}")
        super().__init__(
            weight.shape[0], projection=projection, reduction=reduction, antithetic=antithetic
        )
        self._embedding = (table,)
        schedule = GaussianSchedule.sqrt(2000) if schedule is None else schedule
        if not isinstance(schedule, GaussianSchedule):
            raise TypeError(
                "schedule must be a fastdiff.schedules.GaussianSchedule, got "
                f"{type(schedule).__name__}"
            )
        self.schedule = schedule
        self._alpha_bar_last = float(schedule.alphas_cumprod[-1])
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.prediction_type = prediction_type
        self.rounding_weight = _check_nonnegative("rounding_weight", rounding_weight)

    def _steps(
        self, t: Tensor | None, n: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        big_t = self.schedule.num_steps
        if t is None:
            u = self._uniform(n, generator, device, 0.0)
            return (u * big_t).floor().long().clamp(max=big_t - 1)
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError("t must be an int64 tensor of 0-based steps [B]")
        if t.shape != (n,):
            raise ValueError(f"t must have shape [B] = [{n}], got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= big_t):
            raise ValueError(f"t must lie in [0, {big_t})")
        return t.long().to(device)

    def forward(
        self,
        model: Model,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        seed: int | Tensor | None = None,
        generator: torch.Generator | None = None,
        fixed: Tensor | None = None,
        ignore: Tensor | None = None,
        projection: Projection | None = None,
        model_kwargs: dict[str, Any] | None = None,
        return_output: bool = False,
    ) -> Tensor | LossOutput:
        """The loss of the token ids ``x0 [B, L]`` (arguments: module docstring; ``t`` the
        int64 0-based steps ``[B]``; ``noise_level`` of the output is ``t`` as a float and
        ``weight`` the ``alpha_bar`` of the batch)."""
        x0 = self._tokens(x0)
        fixed, scored_out = self._masks(x0, fixed, ignore)
        decoder = self._resolve_projection(projection)
        model_kwargs = self._model_kwargs(model_kwargs)
        table = self._embedding[0]
        table = table if isinstance(table, Tensor) else table.weight
        if decoder is None:
            decoder = (table, None)
        t = self._steps(t, x0.shape[0], generator, x0.device)
        cumprod = self.schedule.alphas_cumprod.to(x0.device)
        alpha_bar = cumprod[t]
        noised = add_noise_gaussian(
            x0, alpha_bar=alpha_bar, embedding=table, fixed=fixed, generator=generator, seed=seed
        )
        level = t.to(torch.get_default_dtype())
        out = model(noised.x_t, level, **(model_kwargs or {}))
        if not isinstance(out, Tensor) or out.shape != noised.x_t.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the model returned {got}; expected the {self.prediction_type} prediction "
                f"{tuple(noised.x_t.shape)}"
            )
        target = _target(self.prediction_type, noised, alpha_bar)
        per_position = gaussian_loss(out, target, reduction="none")
        clean = noised.x0
        prior = clean.to(per_position.dtype).square().sum(-1)
        per_position = per_position + self._alpha_bar_last * prior
        if self.rounding_weight:
            logits = F.linear(clean, *self._cast(decoder, clean)).to(per_position.dtype)
            nll = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none")
            per_position = per_position + self.rounding_weight * nll.reshape(x0.shape)
        loss = _reduce(per_position, x0.shape, scored_out, self.reduction)
        if return_output:
            return LossOutput(loss, t, noised.x_t, level, alpha_bar)
        return loss


def _target(prediction_type: str, noised: GaussianNoised, alpha_bar: Tensor) -> Tensor:
    """The regression target ``[B, L, H]``: ``e0``, ``eps`` or ``v`` (``alpha_bar [B]``)."""
    if prediction_type == "sample":
        return noised.x0
    if prediction_type == "epsilon":
        return noised.noise
    a = alpha_bar.to(noised.x0.dtype)[:, None, None]
    return a.sqrt() * noised.noise - (1.0 - a).sqrt() * noised.x0


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------


def from_objective(objective: str, *, graph: str | None = None, **kwargs: Any) -> _DiffusionLoss:
    """The loss module of ``objective`` (one of :data:`OBJECTIVES`), built with ``kwargs``.

    ``"mdlm"`` -> :class:`MaskedDiffusionLoss` (``vocab_size``, ``mask_id``, ...); ``"sedd"``
    -> :class:`ScoreEntropyLoss` with ``graph`` (``"absorb"`` default, or ``"uniform"``);
    ``"d3pm"`` -> :class:`D3PMLoss` (``transitions``, ...); ``"gaussian"`` ->
    :class:`GaussianEmbeddingLoss` (``embedding``, ...). ``graph`` is for ``"sedd"`` only
    (``"absorb"`` is accepted for ``"mdlm"``, whose graph it is).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if objective == "sedd":
        return ScoreEntropyLoss(graph="absorb" if graph is None else graph, **kwargs)
    if graph is not None and not (objective == "mdlm" and graph == "absorb"):
        raise ValueError(f"graph={graph!r} is for objective 'sedd' (mdlm is absorbing)")
    if objective == "mdlm":
        return MaskedDiffusionLoss(**kwargs)
    if objective == "d3pm":
        return D3PMLoss(**kwargs)
    return GaussianEmbeddingLoss(**kwargs)
