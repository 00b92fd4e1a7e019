"""The demo's training objectives, each a Monte-Carlo estimate of the negative ELBO in nats per
token, computed by the loss modules of :mod:`fastdiff.nn` on the model's hidden states and
output head (fused: the ``[B, L, V]`` logits of a training batch are never formed).

- ``mdlm`` (MDLM / LLaDA, :class:`fastdiff.nn.MaskedDiffusionLoss`): absorbing noising,
  log-linear schedule, masked-diffusion cross entropy with the continuous-time weight
  ``dsigma / expm1(sigma) = 1/t``. Vocabulary: 256 bytes + the mask token.
- ``sedd`` on the absorbing graph (:class:`fastdiff.nn.ScoreEntropyLoss`): the same noising;
  log-scores ``scale_by_sigma(logits, sigma)``; score entropy weighted by ``dsigma``.
- ``sedd`` on the uniform graph: uniform noising over the 256 bytes (no mask token), geometric
  schedule ``sigma in [1e-4, 20]``; the logits are the log-scores; score entropy weighted by
  ``dsigma``.

Per step: ``t = sample_times(B, antithetic=True)`` (one time per sequence, drawn by the training
loop), ``sigma, dsigma = schedule(t)``, ``x_t = add_noise(x0, sigma=sigma)``, loss = the
objective's weighted loss averaged over all ``B x L`` positions (positions left clean
contribute 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

import fastdiff
import fastdiff.nn as fnn
from fastdiff.demo.corpus import MASK_ID, VOCAB_SIZE
from fastdiff.likelihood import perplexity_bound
from fastdiff.schedules import NoiseSchedule, sample_times

OBJECTIVES = ("mdlm", "sedd")
GRAPHS = ("absorb", "uniform")
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
        return self.name if self.name == "mdlm" else f"{self.name}/{self.graph}"

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

    def denoiser(self, model: nn.Module) -> Denoise:
        """``(x_t [B, L], sigma [B]) -> [B, L, V]``: logits (``mdlm``) or log-scores (SEDD),
        the model output that :func:`fastdiff.samplers.sample` expects."""
        if getattr(self.loss_fn, "scale_by_sigma", False):
            return lambda x, sigma: fastdiff.scale_by_sigma(model(x, sigma), sigma=sigma)
        return lambda x, sigma: model(x, sigma)


def get(name: str, graph: str = "absorb") -> Objective:
    """The objective ``name`` (one of :data:`OBJECTIVES`) on ``graph`` (one of :data:`GRAPHS`;
    ``"mdlm"`` is absorbing)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    if name == "mdlm":
        if graph != "absorb":
            raise ValueError("the mdlm objective is masked (absorbing) diffusion: --graph absorb")
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
    model: nn.Module, objective: Objective, windows: Tensor, *, draws: int, seed: int, batch: int
) -> float:
    """Held-out negative-ELBO estimate in nats per token: the objective's loss on ``windows``
    ``[n, L]`` at ``draws`` antithetic times per window, with fixed noise (same ``seed``, same
    value for the same model)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for d in range(draws):
        for i in range(0, windows.shape[0], batch):
            x0 = windows[i : i + batch].to(device)
            t = sample_times(x0.shape[0], antithetic=True, generator=gen).to(device)
            loss = objective.loss(model, x0, t, seed=seed + 7919 * d + i)
            total += float(loss) * x0.shape[0]
            count += x0.shape[0]
    return total / count


@torch.no_grad()
def likelihood_bound(
    model: nn.Module, objective: Objective, windows: Tensor, *, seed: int, num_t: int = 8
) -> dict:
    """:func:`fastdiff.likelihood.perplexity_bound` of the model on ``windows [n, L]``: an
    upper bound on the held-out negative log-likelihood (nats and bits per token,
    perplexity, standard error), as a dict."""
    device = next(model.parameters()).device
    batches = [windows[i : i + 64].to(device) for i in range(0, windows.shape[0], 64)]
    bound = perplexity_bound(
        objective.denoiser(model),
        batches,
        objective=objective.name,
        graph=objective.graph,
        schedule=objective.schedule,
        vocab_size=objective.vocab_size,
        mask_id=objective.mask_id,
        num_t=num_t,
        seed=seed,
    )
    return bound.to_dict()
