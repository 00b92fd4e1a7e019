"""The demo's training objectives, computed by the loss modules of :mod:`fastdiff.nn`. The
continuous-time ones (:class:`Objective`) are each a Monte-Carlo estimate of the negative ELBO
in nats per token, on the model's hidden states and output head (fused: the ``[B, L, V]``
logits of a training batch are never formed); the discrete-time ones (:class:`DiscreteTime`,
below) are D3PM's and Diffusion-LM's training losses.

- ``mdlm`` (MDLM / LLaDA, :class:`fastdiff.nn.MaskedDiffusionLoss`): absorbing noising,
  log-linear schedule, masked-diffusion cross entropy with the continuous-time weight
  ``dsigma / expm1(sigma) = 1/t``. Vocabulary: 256 bytes + the mask token.
- ``sedd`` on the absorbing graph (:class:`fastdiff.nn.ScoreEntropyLoss`): the same noising;
  log-scores ``scale_by_sigma(logits, sigma)``; score entropy weighted by ``dsigma``.
- ``sedd`` on the uniform graph: uniform noising over the 256 bytes (no mask token), geometric
  schedule ``sigma in [1e-4, 20]``; the logits are the log-scores; score entropy weighted by
  ``dsigma``.

Per step: ``t = sample_times(B, antithetic=True)`` (one time per sequence, drawn from the
step's generator), ``sigma, dsigma = schedule(t)``, ``x_t = add_noise(x0, sigma=sigma)``,
loss = the objective's weighted loss averaged over all ``B x L`` positions (positions left
clean contribute 0). The bound: :func:`fastdiff.likelihood.perplexity_bound`, the
continuous-time ELBO at ``num_t = 8`` antithetic times per sequence, two repeats.

The discrete-time objectives (:class:`DiscreteTime`) are the rows of the same name of
:mod:`fastdiff.table.systems`, with ``T = --timesteps`` steps. Their training loss (the
demo's held-out value) is a per-step surrogate, not an estimate of the NELBO; the bound is:

- ``d3pm`` (:class:`fastdiff.nn.D3PMLoss`): absorbing transition matrices
  ``Q_t = (1 - b_t) I + b_t 1 e_m^T``, ``b_t = 1 / (T - t + 1)``, the step ``t in 1..T`` drawn
  uniformly per sequence, the model reading ``(x_t [B, L], t [B])``; loss per position: the
  hybrid ``L_vb(t) + 0.01 CE`` (``L_vb(t)`` the KL of the true and predicted posteriors,
  ``-log p(x0 | x_1)`` at ``t = 1``: one term of the ``T``-term ELBO, not ``T`` times it).
  Vocabulary: 257.
  Bound: :func:`fastdiff.likelihood.d3pm_perplexity_bound` with ``num_t = 8`` stratified steps
  of the ``T``-term sum. Sampler: ``fastdiff.sample(method="d3pm")``.
- ``gaussian`` (Diffusion-LM, :class:`fastdiff.nn.GaussianEmbeddingLoss`,
  ``prediction_type="sample"``, ``sqrt`` schedule): bytes embedded by a learned
  ``nn.Embedding(256, H)`` (``H = 16``), ``x_t = sqrt(abar_t) E[x0] + sqrt(1 - abar_t) eps``
  ``[B, L, H]``, the model (:class:`~fastdiff.table.models.EmbeddingDenoiser`) predicts
  ``E[x0]``; loss per position ``||out - E[x0]||^2 + abar_T ||E[x0]||^2 - log p(x0 | E[x0])``
  (the tied rounding decoder ``p = softmax(E[x0] E^T)``; squares summed over ``H``). Bound:
  :func:`fastdiff.likelihood_gaussian.gaussian_perplexity_bound` summing all ``T`` steps.
  Sampler: ``method="ddpm"`` (``fixed_small``), each vector rounded to the byte
  ``argmax_v E_v . x``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor, nn

import fastdiff
import fastdiff.nn as fnn
from fastdiff.demo.corpus import MASK_ID, VOCAB_SIZE
from fastdiff.demo.model import Denoiser, ModelConfig
from fastdiff.likelihood import perplexity_bound
from fastdiff.schedules import NoiseSchedule, sample_times

if TYPE_CHECKING:  # fastdiff.table.systems imports this module
    from fastdiff.table.systems import D3PM, Gaussian, Sizes

OBJECTIVES = ("mdlm", "sedd", "d3pm", "gaussian")
DISCRETE_TIME = ("d3pm", "gaussian")
"""The objectives of :class:`DiscreteTime`: ``T`` steps (``--timesteps``), no ``--graph``."""
GRAPHS = ("absorb", "uniform")
TIMESTEPS = {"d3pm": 128, "gaussian": 200}
"""Default ``T`` (the table's): the D3PM bound samples ``num_t`` of its ``T`` terms, the
Gaussian one sums all ``T``."""
EMBEDDING_WIDTH = 16
"""``H`` of the gaussian objective's byte embedding."""
BOUND_NUM_T = 8
"""Times (mdlm, sedd) or stratified steps (d3pm) per sequence in the perplexity bound."""
Denoise = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective: its name (``"mdlm"`` / ``"sedd"``), graph, the matching sampler
    of :func:`fastdiff.samplers.sample` and the loss module that computes it."""

    name: str
    graph: str
    sampler: str
    loss_fn: fnn.MaskedDiffusionLoss | fnn.ScoreEntropyLoss

    @property
    def label(self) -> str:
        """``"mdlm"``, ``"sedd/absorb"`` or ``"sedd/uniform"``."""
        return label_of(self.name, self.graph)

    @property
    def settings(self) -> dict:
        """The objective's settings beyond name and graph (none: they are fixed)."""
        return {}

    @property
    def bound_method(self) -> str:
        """Which bound :meth:`bound` computes, in words."""
        return (
            f"continuous-time ELBO (fastdiff.likelihood.perplexity_bound, {self.name}), "
            f"{BOUND_NUM_T} antithetic times per sequence, 2 repeats"
        )

    @property
    def vocab_size(self) -> int:
        return self.loss_fn.vocab_size

    @property
    def mask_id(self) -> int | None:
        """The mask token (``None`` on the uniform graph)."""
        return self.loss_fn.mask_id

    @property
    def schedule(self) -> NoiseSchedule:
        return self.loss_fn.schedule

    def loss(self, model: nn.Module, x0: Tensor, t: Tensor, seed: int) -> Tensor:
        """Mean over the ``B x L`` positions of the weighted per-position loss (nats / token)
        at the times ``t [B]`` with the noising ``seed``.

        ``model(x, sigma, hidden_only=True)`` must return hidden states ``[B, L, D]`` (called
        through the module, so a ``DistributedDataParallel`` wrapper sees the call); the output
        head is read from ``head_of(model)``.
        """
        return self.loss_fn(
            model,
            x0,
            t=t,
            seed=seed,
            projection=head_of(model),
            model_kwargs={"hidden_only": True},
        )

    def step_loss(
        self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int
    ) -> Tensor:
        """:meth:`loss` of ``x0 [B, L]`` at ``t = sample_times(B, antithetic=True)`` drawn from
        ``generator`` (CPU)."""
        t = sample_times(x0.shape[0], antithetic=True, generator=generator).to(x0.device)
        return self.loss(model, x0, t, seed)

    def build(self, config: ModelConfig) -> Denoiser:
        """A freshly initialized :class:`~fastdiff.demo.model.Denoiser` (the caller seeds)."""
        return Denoiser(config)

    @torch.no_grad()
    def bound(self, model: nn.Module, windows: Tensor, *, seed: int) -> dict:
        """:func:`fastdiff.likelihood.perplexity_bound` of the model on ``windows [n, L]``
        (batches of 64): an upper bound on the held-out negative log-likelihood (nats and bits
        per token, perplexity, standard error), as a dict."""
        device = next(model.parameters()).device
        batches = [windows[i : i + 64].to(device) for i in range(0, windows.shape[0], 64)]
        return perplexity_bound(
            self.denoiser(model),
            batches,
            objective=self.name,
            graph=self.graph,
            schedule=self.schedule,
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            num_t=BOUND_NUM_T,
            seed=seed,
        ).to_dict()

    def denoiser(self, model: nn.Module) -> Denoise:
        """``(x_t [B, L], sigma [B]) -> [B, L, V]``: logits (``mdlm``) or log-scores (SEDD),
        the model output that :func:`fastdiff.samplers.sample` expects."""
        if getattr(self.loss_fn, "scale_by_sigma", False):
            return lambda x, sigma: fastdiff.scale_by_sigma(model(x, sigma), sigma=sigma)
        return lambda x, sigma: model(x, sigma)


@dataclasses.dataclass(frozen=True)
class DiscreteTime:
    """A discrete-time objective, ``"d3pm"`` or ``"gaussian"``: the row of that name of
    :mod:`fastdiff.table.systems` (``system``) behind the interface of :class:`Objective`
    (module docstring). No graph (``graph`` is ``None``)."""

    name: str
    system: D3PM | Gaussian
    graph: None = None

    @property
    def label(self) -> str:
        return self.name

    @property
    def sampler(self) -> str:
        """The :func:`fastdiff.sample` method: ``"d3pm"`` or ``"ddpm"``."""
        return "d3pm" if self.name == "d3pm" else "ddpm"

    @property
    def vocab_size(self) -> int:
        """257 (bytes + the mask token) for d3pm, the 256 embedded bytes for gaussian."""
        return VOCAB_SIZE if self.name == "d3pm" else 256

    @property
    def settings(self) -> dict:
        """``timesteps`` (``T``) and the fixed choices of the objective, as the checkpoint
        stores them."""
        sizes = self.system.sizes
        if self.name == "d3pm":
            return {
                "timesteps": sizes.d3pm_steps,
                "hybrid_lambda": self.system.loss_fn.hybrid_lambda,
            }
        return {
            "timesteps": sizes.gaussian_steps,
            "embedding_width": sizes.gaussian_width,
            "schedule": "sqrt",
            "prediction_type": "sample",
        }

    @property
    def bound_method(self) -> str:
        """Which bound :meth:`bound` computes, in words."""
        t = self.settings["timesteps"]
        if self.name == "d3pm":
            return (
                f"discrete-time D3PM ELBO (fastdiff.likelihood.d3pm_perplexity_bound), T = {t}, "
                f"{self.system.sizes.num_t} stratified steps per sequence, 2 repeats"
            )
        return (
            "discrete-time Gaussian-embedding ELBO (fastdiff.likelihood_gaussian."
            f"gaussian_perplexity_bound), all T = {t} steps with the decoder and prior terms, "
            "2 repeats"
        )

    def step_loss(
        self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int
    ) -> Tensor:
        """The system's training loss of ``x0 [B, L]`` (a scalar, nats / token): steps drawn
        from ``generator``, noise keyed by ``seed``; ``model`` may be DDP-wrapped."""
        return self.system.loss(model, x0, generator, seed)

    def build(self, config: ModelConfig) -> Denoiser:
        """The system's freshly initialized model (the caller seeds); ``config`` must be the
        system's (:func:`get` builds the system from the run's sizes)."""
        model = self.system.build()
        if model.config != config:
            raise ValueError(f"the {self.name} model has {model.config}, not {config}")
        return model

    @torch.no_grad()
    def bound(self, model: nn.Module, windows: Tensor, *, seed: int) -> dict:
        """The system's perplexity bound of the model on ``windows [n, L]`` (see
        :attr:`bound_method`), as a dict."""
        from fastdiff.table.systems import batches_of

        device = next(model.parameters()).device
        return self.system.bound(model, batches_of(windows, device), seed).to_dict()


AnyObjective = Union[Objective, DiscreteTime]


def label_of(name: str, graph: str | None) -> str:
    """``"sedd/<graph>"`` for SEDD, else the objective's name."""
    return f"{name}/{graph}" if name == "sedd" else name


def resolve_graph(name: str, graph: str | None) -> str | None:
    """The graph of the objective ``name`` given ``--graph`` (``None``: not given): absorbing
    by default, ``None`` for the discrete-time objectives; a one-line ``ValueError`` for an
    unknown name or graph, or a graph the objective does not have."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")
    if name in DISCRETE_TIME:
        if graph is not None:
            raise ValueError(f"--graph is an option of --objective sedd, not of {name}")
        return None
    graph = graph or "absorb"
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    if name == "mdlm" and graph != "absorb":
        raise ValueError("the mdlm objective is masked (absorbing) diffusion: --graph absorb")
    return graph


def get(name: str, graph: str | None = None, sizes: Sizes | None = None) -> AnyObjective:
    """The objective ``name`` (one of :data:`OBJECTIVES`) on ``graph`` (one of :data:`GRAPHS`;
    ``"mdlm"`` is absorbing; :func:`resolve_graph`). The discrete-time ones need ``sizes``
    (model sizes, ``T`` as ``d3pm_steps`` / ``gaussian_steps``, sampler steps)."""
    graph = resolve_graph(name, graph)
    if name in DISCRETE_TIME:
        if sizes is None:
            raise ValueError(f"the {name} objective needs the run's sizes")
        from fastdiff.table.systems import D3PM, Gaussian

        return DiscreteTime(name, D3PM(sizes) if name == "d3pm" else Gaussian(sizes))
    if name == "mdlm":
        return Objective(
            name, graph, "mdlm", fnn.MaskedDiffusionLoss(vocab_size=VOCAB_SIZE, mask_id=MASK_ID)
        )
    if graph == "absorb":
        loss_fn = fnn.ScoreEntropyLoss(vocab_size=VOCAB_SIZE, graph=graph, mask_id=MASK_ID)
    else:
        loss_fn = fnn.ScoreEntropyLoss(vocab_size=256, graph=graph)
    return Objective(name, graph, "sedd_analytic", loss_fn)


def head_of(model: nn.Module) -> nn.Linear:
    """The output head of a :class:`~fastdiff.demo.model.Denoiser`, DDP-wrapped or not."""
    return getattr(model, "module", model).head


@torch.no_grad()
def heldout_loss(
    model: nn.Module, objective: AnyObjective, windows: Tensor, *, draws: int, seed: int, batch: int
) -> float:
    """Held-out negative-ELBO estimate in nats per token: the objective's training loss
    (:meth:`Objective.step_loss`) on ``windows [n, L]``, ``draws`` times per window, with
    fixed times and noise (same ``seed``, same value for the same model)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for d in range(draws):
        for i in range(0, windows.shape[0], batch):
            x0 = windows[i : i + batch].to(device)
            loss = objective.step_loss(model, x0, gen, seed=seed + 7919 * d + i)
            total += float(loss) * x0.shape[0]
            count += x0.shape[0]
    return total / count
