"""The table's rows: one :class:`System` per language model, each with its model, training
loss, held-out likelihood number and unconditional sampler.

=================  =========================================================================
row                model, loss, likelihood number, sampler
=================  =========================================================================
``ar``             :class:`~fastdiff.table.models.CausalLM`, next-byte cross entropy; the
                   exact NLL of each window (:func:`~fastdiff.table.models.ar_nll`, teacher
                   forcing from a BOS token); ancestral sampling, one forward pass of the
                   whole prefix per byte (no key / value cache).
``mdlm``           :class:`~fastdiff.demo.model.Denoiser` (V = 257, mask 256),
                   :class:`fastdiff.nn.MaskedDiffusionLoss` fused with the head (log-linear
                   schedule); :func:`fastdiff.likelihood.perplexity_bound` (``"mdlm"``);
                   ``fastdiff.sample(method="mdlm")``.
``sedd-absorb``    the same model, :class:`fastdiff.nn.ScoreEntropyLoss` on the absorbing
                   graph (``scale_by_sigma``, log-linear schedule), fused;
                   ``perplexity_bound(objective="sedd", graph="absorb")``;
                   ``method="sedd_analytic"``.
``sedd-uniform``   V = 256 (no mask token), score entropy on the uniform graph with the
                   geometric schedule ``sigma in [1e-4, 20]``; the same bound and sampler on
                   ``graph="uniform"``.
``d3pm``           the Denoiser called as ``model(x_t, t)`` (``t`` in ``1..T`` as a float),
                   :class:`fastdiff.nn.D3PMLoss` (hybrid, ``lambda = 0.01``) on absorbing
                   matrices ``Q_t = (1 - b_t) I + b_t 1 e_m^T`` with ``b_t = 1 / (T - t + 1)``
                   (D3PM's absorbing schedule: a token is still clean at step ``t`` with
                   probability ``1 - t/T``, everything is masked at ``T``), ``T =
                   d3pm_steps`` (128: the discrete-time bound is a sum of ``T`` terms, so a
                   small ``T`` keeps its estimate cheap; the bound loosens as ``T`` shrinks);
                   :func:`fastdiff.likelihood.d3pm_perplexity_bound` with ``num_t`` stratified
                   steps; ``method="d3pm"``.
``gaussian``       :class:`~fastdiff.table.models.EmbeddingDenoiser` over a learned
                   ``nn.Embedding(256, H)``, :class:`fastdiff.nn.GaussianEmbeddingLoss`
                   (``prediction_type="sample"``, Diffusion-LM's ``sqrt`` schedule with
                   ``T = gaussian_steps``, tied rounding decoder);
                   :func:`fastdiff.likelihood_gaussian.gaussian_perplexity_bound` summing
                   all ``T`` steps (``num_t=None``: the first few steps' KL terms hold most
                   of the bound, so a stratified draw of steps leaves a standard error of
                   several nats per byte; hence the small ``T``); ``method="ddpm"``
                   (``variance_type="fixed_small"``, the bound's reverse variance) on
                   ``[B, L, H]`` rounded to bytes by the decoder's argmax.
=================  =========================================================================

Every number is in nats per token = nats per byte. The diffusion rows' numbers are upper
bounds on the NLL (Monte Carlo estimates with a standard error from independent repeats);
the AR row's is exact (standard error 0: no Monte Carlo).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastdiff
import fastdiff.nn as fnn
from fastdiff.demo import objectives
from fastdiff.demo.corpus import MASK_ID, VOCAB_SIZE
from fastdiff.demo.model import Denoiser, ModelConfig
from fastdiff.likelihood import LikelihoodBound, perplexity_bound
from fastdiff.schedules import GaussianSchedule
from fastdiff.table.models import CausalLM, EmbeddingDenoiser, ar_nll
from fastdiff.transitions import TransitionSchedule

BYTES = 256
EVAL_BATCH = 32
HYBRID_LAMBDA = 0.01


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a row needs to know to build its model and run its evaluation: model sizes,
    sequence length, the discrete / Gaussian step counts, embedding width, times per
    likelihood estimate and sampler steps."""

    seq_len: int
    dim: int
    depth: int
    heads: int
    d3pm_steps: int
    gaussian_steps: int
    gaussian_width: int
    num_t: int
    sample_steps: int


class System:
    """One row of the table (module docstring). Subclasses set ``name``, ``label`` and
    ``exact`` and implement the four methods."""

    name: str = ""
    label: str = ""
    exact: bool = False
    """True when :meth:`nll` is the exact NLL (AR), False for an upper bound."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes

    def config(self, vocab_size: int) -> ModelConfig:
        s = self.sizes
        return ModelConfig(vocab_size, s.seq_len, s.dim, s.depth, s.heads)

    def build(self) -> nn.Module:
        """A freshly initialized model (the caller seeds torch's generator)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int) -> Tensor:
        """The training loss (a scalar) of the byte windows ``x0 [B, L]``; the loss draws its
        times from ``generator`` and its noise with ``seed``."""
        raise NotImplementedError

    def bound(self, model: nn.Module, batches: list[Tensor], seed: int) -> LikelihoodBound:
        """The upper bound on the NLL of the held-out windows ``batches`` (the diffusion
        rows)."""
        raise NotImplementedError

    def nll(self, model: nn.Module, batches: list[Tensor], seed: int) -> tuple[float, float]:
        """``(nats per byte, its standard error)`` of the held-out windows ``batches``: the
        exact NLL (AR overrides this) or the :meth:`bound` (the others)."""
        bound = self.bound(model, batches, seed)
        return bound.nats_per_token, bound.stderr_nats_per_token

    def sample(self, model: nn.Module, n: int, seed: int) -> Tensor:
        """``n`` unconditional windows ``[n, L]`` (int64; bytes, or the mask token where a
        sampler left one)."""
        raise NotImplementedError


class AR(System):
    name, label, exact = "ar", "AR (causal transformer)", True

    def build(self) -> CausalLM:
        return CausalLM(self.config(BYTES))

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int) -> Tensor:
        return ar_nll(model, x0).mean() / x0.shape[1]

    @torch.no_grad()
    def nll(self, model: nn.Module, batches: list[Tensor], seed: int) -> tuple[float, float]:
        total = sum(float(ar_nll(model, x0).sum()) for x0 in batches)
        return total / sum(x0.numel() for x0 in batches), 0.0

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, seed: int) -> Tensor:
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        seq = torch.full((n, 1), model.bos_id, dtype=torch.long, device=device)
        for _ in range(self.sizes.seq_len):
            probs = torch.softmax(model(seq)[:, -1].double(), dim=-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)], dim=1)
        return seq[:, 1:]


class _Continuous(System):
    """MDLM and SEDD through the demo's objectives (:mod:`fastdiff.demo.objectives`)."""

    objective = ""
    graph = "absorb"

    def __init__(self, sizes: Sizes) -> None:
        super().__init__(sizes)
        self.obj = objectives.get(self.objective, self.graph)

    def build(self) -> Denoiser:
        return Denoiser(self.config(self.obj.vocab_size))

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int) -> Tensor:
        return self.obj.loss_fn(
            model,
            x0,
            generator=generator,
            seed=seed,
            projection=model.head,
            model_kwargs={"hidden_only": True},
        )

    def bound(self, model: nn.Module, batches: list[Tensor], seed: int) -> LikelihoodBound:
        return perplexity_bound(
            self.obj.denoiser(model),
            batches,
            objective=self.obj.name,
            graph=self.obj.graph,
            schedule=self.obj.schedule,
            vocab_size=self.obj.vocab_size,
            mask_id=self.obj.mask_id,
            num_t=self.sizes.num_t,
            repeats=2,
            seed=seed,
        )

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, seed: int) -> Tensor:
        return fastdiff.sample(
            self.obj.denoiser(model),
            (n, self.sizes.seq_len),
            method=self.obj.sampler,
            steps=self.sizes.sample_steps,
            vocab_size=self.obj.vocab_size,
            mask_id=self.obj.mask_id,
            graph=self.obj.graph,
            schedule=self.obj.schedule,
            seed=seed,
            device=next(model.parameters()).device,
        )


class MDLM(_Continuous):
    name, label, objective = "mdlm", "MDLM (masked diffusion)", "mdlm"


class SEDDAbsorb(_Continuous):
    name, label, objective, graph = "sedd-absorb", "SEDD absorbing", "sedd", "absorb"


class SEDDUniform(_Continuous):
    name, label, objective, graph = "sedd-uniform", "SEDD uniform", "sedd", "uniform"


def absorbing_transitions(num_steps: int) -> TransitionSchedule:
    """D3PM's absorbing schedule over the 257-token vocabulary (module docstring)."""
    betas = [1.0 / (num_steps - t + 1) for t in range(1, num_steps + 1)]
    return TransitionSchedule.from_betas(betas, "absorbing", VOCAB_SIZE, mask_id=MASK_ID)


class D3PM(System):
    name, label = "d3pm", "D3PM absorbing"

    def __init__(self, sizes: Sizes) -> None:
        super().__init__(sizes)
        self.transitions = absorbing_transitions(sizes.d3pm_steps)
        self.loss_fn = fnn.D3PMLoss(transitions=self.transitions, hybrid_lambda=HYBRID_LAMBDA)

    def build(self) -> Denoiser:
        return Denoiser(self.config(VOCAB_SIZE))

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int) -> Tensor:
        return self.loss_fn(
            model,
            x0,
            generator=generator,
            seed=seed,
            projection=objectives.head_of(model),
            model_kwargs={"hidden_only": True},
        )

    def bound(self, model: nn.Module, batches: list[Tensor], seed: int) -> LikelihoodBound:
        """:func:`fastdiff.likelihood.d3pm_perplexity_bound` of ``batches`` (each ``[B, L]``):
        ``num_t`` stratified steps of the ``T``-term discrete-time sum, two repeats."""
        from fastdiff.likelihood import d3pm_perplexity_bound

        device = next(model.parameters()).device
        return d3pm_perplexity_bound(
            model,
            batches,
            transitions=self.transitions.to(device),
            num_t=self.sizes.num_t,
            repeats=2,
            seed=seed,
        )

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        n: int,
        seed: int,
        *,
        given: Tensor | None = None,
        fixed: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Unconditional, or with ``given [n, L]`` (bytes) and ``fixed [n, L]`` (bool) the
        ``fixed`` positions kept and the rest generated from the mask token."""
        device = next(model.parameters()).device
        init = None if given is None else torch.where(fixed, given, MASK_ID)
        return fastdiff.sample(
            model,
            (n, self.sizes.seq_len),
            method="d3pm",
            steps=min(self.sizes.sample_steps, self.sizes.d3pm_steps),
            vocab_size=VOCAB_SIZE,
            mask_id=MASK_ID,
            schedule=self.transitions.to(device),
            init=init,
            fixed=fixed,
            seed=seed,
            progress=progress,
            device=device,
        )


class Gaussian(System):
    name, label = "gaussian", "Gaussian embedding (Diffusion-LM)"

    def __init__(self, sizes: Sizes) -> None:
        super().__init__(sizes)
        self.schedule = GaussianSchedule.sqrt(sizes.gaussian_steps)

    def build(self) -> EmbeddingDenoiser:
        return EmbeddingDenoiser(self.config(BYTES), self.sizes.gaussian_width)

    def _loss_fn(self, model: nn.Module) -> fnn.GaussianEmbeddingLoss:
        """The loss on the embedding of ``model`` (an :class:`EmbeddingDenoiser`, DDP-wrapped
        or not: the wrapper is what the loss calls)."""
        embedding = getattr(model, "module", model).embedding
        return fnn.GaussianEmbeddingLoss(
            embedding=embedding, schedule=self.schedule, prediction_type="sample"
        )

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator, seed: int) -> Tensor:
        return self._loss_fn(model)(model, x0, generator=generator, seed=seed)

    def bound(self, model: nn.Module, batches: list[Tensor], seed: int) -> LikelihoodBound:
        """:func:`fastdiff.likelihood_gaussian.gaussian_perplexity_bound` of ``batches`` (each
        ``[B, L]``): all ``T`` steps of the discrete-time sum, decoder and prior terms
        included, two repeats."""
        from fastdiff.likelihood_gaussian import gaussian_perplexity_bound

        return gaussian_perplexity_bound(
            model,
            batches,
            embedding=model.embedding,
            schedule=self.schedule,
            prediction_type="sample",
            num_t=None,
            repeats=2,
            seed=seed,
        )

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        n: int,
        seed: int,
        *,
        given: Tensor | None = None,
        fixed: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Unconditional bytes ``[n, L]``: DDPM on ``[n, L, H]``, each vector rounded to the
        byte ``argmax_v E_v . x`` of the tied decoder. With ``given [n, L]`` (bytes) and
        ``fixed [n, L]`` (bool): the embeddings ``E[given]`` are kept clean at the ``fixed``
        positions throughout, the others generated, and the ``fixed`` bytes returned as
        given."""
        device = next(model.parameters()).device
        init = None if given is None else model.embedding(given).detach()
        state = fastdiff.sample(
            model,
            (n, self.sizes.seq_len, self.sizes.gaussian_width),
            method="ddpm",
            steps=self.sizes.sample_steps,
            schedule=self.schedule,
            prediction_type="sample",
            variance_type="fixed_small",
            init=init,
            fixed=fixed,
            seed=seed,
            progress=progress,
            device=device,
        )
        tokens = F.linear(state.float(), model.embedding.weight).argmax(-1)
        return tokens if given is None else torch.where(fixed, given, tokens)


SYSTEMS: dict[str, Callable[[Sizes], System]] = {
    cls.name: cls for cls in (AR, MDLM, SEDDAbsorb, SEDDUniform, D3PM, Gaussian)
}
ROWS = tuple(SYSTEMS)
"""The row names, in table order."""


def batches_of(windows: Tensor, device: torch.device) -> list[Tensor]:
    """The held-out windows ``[n, L]`` in batches of :data:`EVAL_BATCH` on ``device``."""
    return [windows[i : i + EVAL_BATCH].to(device) for i in range(0, len(windows), EVAL_BATCH)]


def bits(nats: float) -> float:
    """Nats to bits."""
    return nats / math.log(2.0)
