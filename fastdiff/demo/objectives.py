"""The demo's three training objectives, each a Monte-Carlo estimate of the negative ELBO in
nats per token, built from fastdiff's ops.

- ``masked`` (MDLM / LLaDA): absorbing noising, log-linear schedule, masked-diffusion cross
  entropy with the continuous-time weight ``dsigma / expm1(sigma) = 1/t``, computed by the fused
  projection + loss :func:`fastdiff.linear_masked_diffusion_loss` (the ``[B, L, V]`` logits are
  never formed). Vocabulary: 256 bytes + the mask token.
- ``absorb`` (SEDD absorbing): the same noising; log-scores ``scale_by_sigma(logits, sigma)``;
  score entropy weighted by ``dsigma`` (:func:`fastdiff.score_entropy`).
- ``uniform`` (SEDD uniform): uniform noising over the 256 bytes (no mask token), geometric
  schedule ``sigma in [1e-4, 20]``; the logits are the log-scores; score entropy weighted by
  ``dsigma`` through the fused :func:`fastdiff.linear_score_entropy`.

Per step: ``t = sample_times(B, antithetic=True)`` (one time per sequence), ``sigma, dsigma =
schedule(t)``, ``x_t = corrupt(x0, sigma)``, loss = the objective's weighted loss averaged over
all ``B x L`` positions (positions left clean contribute 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor, nn

import fastdiff
from fastdiff.demo.corpus import MASK_ID, VOCAB_SIZE
from fastdiff.likelihood import perplexity_bound
from fastdiff.schedules import Geometric, LogLinear, NoiseSchedule, sample_times

OBJECTIVES = ("masked", "absorb", "uniform")
Denoise = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective: its graph, vocabulary, mask id (``None`` for the uniform graph),
    schedule and the matching sampler of :func:`fastdiff.samplers.sample`."""

    name: str
    graph: str
    vocab_size: int
    mask_id: int | None
    schedule: NoiseSchedule
    sampler: str

    def corrupt(self, x0: Tensor, sigma: Tensor, seed: int) -> Tensor:
        """``x_t ~ q(x_t | x0)`` for ``x0 [B, L]``, ``sigma [B]``."""
        return fastdiff.add_noise(
            x0,
            sigma=sigma,
            graph=self.graph,
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            seed=seed,
        )

    def loss(self, model: nn.Module, x0: Tensor, t: Tensor, seed: int) -> Tensor:
        """Mean over the ``B x L`` positions of the weighted per-position loss (nats / token).

        ``model(x, sigma, hidden_only=True)`` must return hidden states ``[B, L, D]`` and
        ``model(x, sigma)`` logits; the output head is read from ``head_of(model)``.
        """
        sigma, dsigma = self.schedule(t)
        x_t = self.corrupt(x0, sigma, seed)
        head = head_of(model)
        if self.name == "masked":
            hidden = model(x_t, sigma, hidden_only=True)
            return fastdiff.linear_masked_diffusion_loss(
                hidden,
                head.weight,
                x_t,
                x0,
                mask_id=self.mask_id,
                bias=head.bias,
                weight=self.schedule.loss_weight(t),
                reduction="mean",
            )
        if self.name == "uniform":
            hidden = model(x_t, sigma, hidden_only=True)
            return fastdiff.linear_score_entropy(
                hidden, head.weight, x_t, x0, sigma=sigma, bias=head.bias, graph="uniform",
                weight=dsigma, reduction="mean",
            )  # fmt: skip
        log_score = fastdiff.scale_by_sigma(model(x_t, sigma), sigma=sigma)
        return fastdiff.score_entropy(
            log_score, x_t, x0, sigma=sigma, graph="absorb", mask_id=self.mask_id, weight=dsigma,
            reduction="mean",
        )  # fmt: skip

    def denoiser(self, model: nn.Module) -> Denoise:
        """``(x_t [B, L], sigma [B]) -> [B, L, V]``: logits (``masked``) or log-scores (SEDD),
        the model output that :func:`fastdiff.samplers.sample` expects."""
        if self.name == "absorb":
            return lambda x, sigma: fastdiff.scale_by_sigma(model(x, sigma), sigma=sigma)
        return lambda x, sigma: model(x, sigma)


def get(name: str) -> Objective:
    """The objective called ``name`` (one of :data:`OBJECTIVES`)."""
    if name == "masked":
        return Objective(name, "absorb", VOCAB_SIZE, MASK_ID, LogLinear(), "mdlm")
    if name == "absorb":
        return Objective(name, "absorb", VOCAB_SIZE, MASK_ID, LogLinear(), "sedd_analytic")
    if name == "uniform":
        return Objective(name, "uniform", 256, None, Geometric(1e-4, 20.0), "sedd_analytic")
    raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")


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
        objective="mdlm" if objective.name == "masked" else "sedd",
        graph=objective.graph,
        schedule=objective.schedule,
        vocab_size=objective.vocab_size,
        mask_id=objective.mask_id,
        num_t=num_t,
        seed=seed,
    )
    return bound.to_dict()
