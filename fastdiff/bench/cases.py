"""The benchmark cases: one per op, each with its inputs, its providers and a minimum-traffic
model, shared by ``fastdiff bench`` and the pytest-benchmark files of ``benchmarks/``.

Providers of every case:

- ``fastdiff``: the public op under the chosen backend (``auto`` by default: the Triton kernel
  on CUDA where one is registered, the native kernel on the CPU where the extension has one,
  the reference otherwise; results record which one ran);
- ``native``: the public op under ``fastdiff.use_backend("native")``: the C++ CPU kernel of
  ``fastdiff._C`` (skipped, with the reason, where the extension is missing, the op has no
  native kernel or the inputs are not on the CPU);
- ``reference``: the public op under ``fastdiff.use_backend("reference")`` (eager PyTorch);
- ``compile``: ``torch.compile`` of the op's flattened reference function
  (:mod:`fastdiff.reference`), called on the same inputs;
- a baseline in the style of the public code (:mod:`fastdiff.bench.baselines`), named after
  it: ``sedd``, ``mdlm``, ``d3pm``, ``llada`` or ``diffusionlm``.

Inputs mimic the middle of training / sampling: the mask is the last column (the SEDD-style
baselines need it) and exactly ``N // 2`` rows are masked. ``fwd+bwd`` cases differentiate
``sum(loss)`` with respect to the model output(s), which are non-leaf tensors (MDLM edits its
model output in place; the ``mdlm`` baseline adds ``-1e6`` to column ``m`` of the shared logits
on every call, a column that no other provider reads).

Minimum-traffic models (``Case.bytes``): every input read once, every output written once,
nothing else. ``e`` is the element size of the benchmarked dtype, ``Nm = N // 2`` the masked
rows (the only rows an absorbing / masked op must read), tokens are int64 (8 B), per-row
noise levels and weights float32 (4 B), random numbers are generated, not read:

================================  ==========================================================
score_entropy_absorb (fwd+bwd)    ``Nm V e`` scores read + ``N V e`` gradient written
                                  + ``28 N`` (x_t, x0, sigma, loss, grad_output)
score_entropy_uniform (fwd+bwd)   ``2 N V e + 28 N`` (every row is read)
masked_diffusion_loss (fwd+bwd)   ``Nm V e + N V e + 28 N`` (weight instead of sigma)
concrete_score_matching_*         as score_entropy_absorb / score_entropy_uniform
linear_* (fwd+bwd)                ``2 (N + V) H e + 20 N``: hidden and projection read, their
                                  gradients written; flops ``6 Nm V H`` (projection of the
                                  masked rows, and the two gradient matmuls)
add_noise_absorb                  ``20 N`` (x0, sigma read, x_t written)
add_noise_dense                   ``N V e + 16 N`` (the row ``Qbar[x0]`` of each token)
sample_categorical                ``N V e + 8 N``
sedd_analytic_absorb              ``Nm V e + 24 N`` (x, sigma, sigma_next read, x written)
sedd_euler_absorb                 ``Nm V e + 20 N`` (x, dsigma read, x written)
sedd_denoise_absorb               ``Nm V e + 20 N`` (x, sigma read, x written)
sedd_analytic_uniform             ``N V e + 24 N`` (every row is read)
d3pm_step                         ``N V e + 2 V^2 e + 16 N`` (x0 logits, the two matrices)
mdlm_step                         ``Nm V e + 24 N``
confidence_unmask_step            ``Nm V e + 16 N``
add_noise_gaussian (token input)  ``4 N H e + 12 N``: ids, abar and the rows ``E[x0]`` read;
                                  x_t, noise, x0 written
ddpm_step, ddim_step              ``3 N H e + 8 N`` (model output, x_t read; x' written)
gaussian_loss (fwd+bwd)           ``3 N H e + 12 N``: prediction and target read, the
                                  gradient written; weight, loss and grad_output
round_to_embedding                ``(2 N H + V H) e + 8 N``; flops ``2 N V H``
================================  ==========================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import fastdiff
from fastdiff.bench import baselines
from fastdiff.bench.shapes import (
    DENSE,
    EMBED,
    GATHER,
    LINEAR,
    SCORES,
    STATE,
    Shape,
    ShapeTable,
)
from fastdiff.losses import concrete_score_matching
from fastdiff.reference import d3pm as ref_d3pm
from fastdiff.reference import gaussian as ref_gaussian
from fastdiff.reference import losses as ref_losses
from fastdiff.reference import noising as ref_noising
from fastdiff.reference import sampling as ref_sampling
from fastdiff.reference import updates as ref_updates
from fastdiff.unmasking import select_commits

Inputs = dict[str, Any]

FAMILIES = ("training", "noising", "sampling", "gaussian")
BASELINE_STYLES = ("sedd", "mdlm", "d3pm", "llada", "diffusionlm")
CORE_PROVIDERS = ("reference", "fastdiff", "native", "compile")

TOKEN = 8  # int64 token id
SCALAR = 4  # float32 per-row noise level / weight
EPS = 1e-3  # log-linear schedule
DT = 1.0 / 128  # sampling step size
SEQ_LEN = 256  # sequence length of the confidence-unmasking inputs ([N // L, L, V])
UNMASK_K = 4  # tokens committed per sequence and step


def masked_rows(n: int) -> int:
    """Rows with ``x_t = m`` in every case's inputs (exactly half, rounded down)."""
    return n // 2


def no_flops(shape: Shape) -> int:
    """The flop model of the memory-bound ops: no matmul."""
    return 0


@dataclass(frozen=True)
class Baseline:
    style: str  # provider name: sedd, mdlm, d3pm, llada, diffusionlm
    fn: Callable[[Inputs], Any]


@dataclass(frozen=True)
class Case:
    """One benchmarked op. ``make`` builds an input set, ``public`` calls the public fastdiff
    op, ``reference(*reference_args(inputs))`` is the flattened reference (what ``compile``
    compiles), ``traffic(shape, element_size)`` and ``compute(shape)`` the byte and flop
    models (module docstring)."""

    name: str
    family: str
    what: str  # "fwd" or "fwd+bwd"
    shapes: ShapeTable
    kernel: str  # op name the public function resolves through fastdiff.backend
    make: Callable[[Shape, torch.dtype, torch.device, torch.Generator], Inputs]
    public: Callable[[Inputs], Any]
    reference: Callable[..., Any]
    reference_args: Callable[[Inputs], tuple]
    traffic: Callable[[Shape, int], int]
    compute: Callable[[Shape], int] = no_flops
    baseline: Baseline | None = None
    grad: tuple[str, ...] = ()  # inputs differentiated in fwd+bwd cases
    sweep: str = "v"  # the shape field plotted on the x axis
    dtypes: tuple[torch.dtype, ...] | None = None  # None: every floating dtype

    @property
    def providers(self) -> tuple[str, ...]:
        return CORE_PROVIDERS + ((self.baseline.style,) if self.baseline else ())

    def supports(self, dtype: torch.dtype) -> bool:
        return self.dtypes is None or dtype in self.dtypes

    def make_inputs(
        self, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int
    ) -> Inputs:
        """One input set; the tensors named in ``grad`` become non-leaf model outputs."""
        gen = torch.Generator(device=device).manual_seed(seed)
        inputs = self.make(shape, dtype, device, gen)
        for name in self.grad:
            inputs[name] = inputs[name].detach().requires_grad_(True) * 1
        return inputs

    def bytes(self, shape: Shape, dtype: torch.dtype) -> int:
        """Minimum bytes moved (module docstring)."""
        return self.traffic(shape, torch.empty((), dtype=dtype).element_size())

    def flops(self, shape: Shape) -> int:
        """Matmul flops (0 for the memory-bound ops)."""
        return self.compute(shape)


# --------------------------------------------------------------------------------------------
# input builders
# --------------------------------------------------------------------------------------------


def _loglinear(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = -torch.log1p(-(1 - EPS) * t)
    dsigma = (1 - EPS) / (1 - (1 - EPS) * t)
    return sigma.float(), dsigma.float()


def _tokens(shape: Shape, device: torch.device, gen: torch.Generator) -> Inputs:
    """Clean tokens (never the mask), ``x_t`` with exactly ``N // 2`` rows masked, per-row
    log-linear ``sigma`` / ``dsigma`` and the continuous-time weight ``dsigma / expm1(sigma)``."""
    n, v, m = shape.n, shape.v, shape.mask_id
    x0 = torch.randint(0, v - 1, (n,), generator=gen, device=device)
    rows = torch.randperm(n, generator=gen, device=device)[: masked_rows(n)]
    x_t = x0.index_fill(0, rows, m)
    t = 0.05 + 0.9 * torch.rand(n, generator=gen, device=device, dtype=torch.float64)
    sigma, dsigma = _loglinear(t)
    weight = dsigma / torch.expm1(sigma)
    return {
        "mask_id": m,
        "vocab": v,
        "x0": x0,
        "x_t": x_t,
        "sigma": sigma,
        "dsigma": dsigma,
        "weight": weight,
    }


def _normal(
    size: tuple[int, ...],
    dtype: torch.dtype,
    gen: torch.Generator,
    device: torch.device,
    std: float = 1.0,
    shift: float = 0.0,
) -> torch.Tensor:
    return (std * torch.randn(size, generator=gen, device=device) + shift).to(dtype)


def _log_scores(shape: Shape, dtype: torch.dtype, gen: torch.Generator, device: torch.device):
    """Log-scores near the true absorbing ratios, 0 in the mask column (SEDD's model puts 0 at
    the current token)."""
    s = _normal((shape.n, shape.v), torch.float32, gen, device, 0.5, -math.log(shape.v))
    s[:, shape.mask_id] = 0.0
    return s.to(dtype)


def _score_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _tokens(shape, device, gen)
    d["log_score"] = _log_scores(shape, dtype, gen, device)
    return d


def _logit_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _tokens(shape, device, gen)
    d["logits"] = _normal((shape.n, shape.v), dtype, gen, device, 2.0)
    return d


def _uniform_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    """Geometric schedule (1e-4, 20); a moved token is uniform on ``[0, V)``."""
    d = _score_inputs(shape, dtype, device, gen)
    n, v = shape.n, shape.v
    t = 0.3 + 0.65 * torch.rand(n, generator=gen, device=device, dtype=torch.float64)
    sigma = 1e-4 ** (1 - t) * 20.0**t
    moved = torch.rand(n, generator=gen, device=device, dtype=torch.float64) < -torch.expm1(-sigma)
    noise = torch.randint(0, v, (n,), generator=gen, device=device)
    d["x_t"] = torch.where(moved, noise, d["x0"])
    d["sigma"] = sigma.float()
    return d


def _linear_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _tokens(shape, device, gen)
    d["hidden"] = _normal((shape.n, shape.h), dtype, gen, device)
    d["projection"] = _normal((shape.v, shape.h), dtype, gen, device, shape.h**-0.5)
    return d


def _step_inputs(
    shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator, logits: bool
) -> Inputs:
    """One sampling step from ``t = 0.5`` to ``t - DT``, in float32 and (for the flattened
    references) float64."""
    d = (_logit_inputs if logits else _score_inputs)(shape, dtype, device, gen)
    t = torch.full((shape.n,), 0.5, dtype=torch.float64, device=device)
    (sig_now, dsig_now), (sig_next, _) = _loglinear(t), _loglinear(t - DT)
    d.update(
        sig_now=sig_now,
        dsig_now=dsig_now,
        sig_next=sig_next,
        delta64=sig_now.double() - sig_next.double(),
        rate64=dsig_now.double() * DT,
        sig_now64=sig_now.double(),
        sig_next64=sig_next.double(),
    )
    return d


def _dense_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _tokens(shape, device, gen)
    logits = _normal((shape.v, shape.v), torch.float64, gen, device, 2.0)
    d["transition"] = torch.softmax(logits, -1).to(dtype)
    return d


def _posterior_inputs(
    shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> Inputs:
    """``x0`` logits, ``x_t`` and the pair ``Q_t``, ``Qbar_{t-1}`` of a D3PM reverse step."""
    d = _logit_inputs(shape, dtype, device, gen)
    for name in ("q_step", "qbar_prev"):
        logits = _normal((shape.v, shape.v), torch.float64, gen, device, 2.0)
        d[name] = torch.softmax(logits, -1).to(dtype)
    return d


def _unmask_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _logit_inputs(shape, dtype, device, gen)
    seq = SEQ_LEN if shape.n % SEQ_LEN == 0 else shape.n
    d["logits"] = d["logits"].reshape(-1, seq, shape.v)
    d["x_t"] = d["x_t"].reshape(-1, seq)
    d["num_transfer"] = torch.full((shape.n // seq,), UNMASK_K, dtype=torch.long, device=device)
    return d


def _abar(n: int, device: torch.device, gen: torch.Generator) -> Inputs:
    abar = 0.05 + 0.85 * torch.rand(n, generator=gen, device=device, dtype=torch.float64)
    abar_prev = abar + 0.1 * (1 - abar)
    return {
        "abar": abar.float(),
        "abar_prev": abar_prev.float(),
        "abar64": abar,
        "abar_prev64": abar_prev,
        "eta64": torch.zeros_like(abar),
    }


def _gather_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _abar(shape.n, device, gen)
    d["ids"] = torch.randint(0, shape.v, (shape.n,), generator=gen, device=device)
    d["embedding"] = _normal((shape.v, shape.h), dtype, gen, device)
    return d


def _state_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    d = _abar(shape.n, device, gen)
    d["eps"] = _normal((shape.n, shape.h), dtype, gen, device)
    d["x_t"] = _normal((shape.n, shape.h), dtype, gen, device)
    return d


def _gaussian_loss_inputs(
    shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator
):
    return {
        "pred": _normal((shape.n, shape.h), dtype, gen, device),
        "target": _normal((shape.n, shape.h), dtype, gen, device),
        "weight": torch.rand(shape.n, generator=gen, device=device),
    }


def _round_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    return {
        "x": _normal((shape.n, shape.h), dtype, gen, device),
        "embedding": _normal((shape.v, shape.h), dtype, gen, device),
    }


# --------------------------------------------------------------------------------------------
# byte and flop models (module docstring)
# --------------------------------------------------------------------------------------------


def _absorb_loss_bytes(s: Shape, e: int) -> int:
    return masked_rows(s.n) * s.v * e + s.n * s.v * e + s.n * (2 * TOKEN + 3 * SCALAR)


def _uniform_loss_bytes(s: Shape, e: int) -> int:
    return 2 * s.n * s.v * e + s.n * (2 * TOKEN + 3 * SCALAR)


def _linear_bytes(s: Shape, e: int) -> int:
    return 2 * (s.n + s.v) * s.h * e + s.n * (2 * TOKEN + SCALAR)


def _linear_flops(s: Shape) -> int:
    return 6 * masked_rows(s.n) * s.v * s.h


def _masked_step_bytes(scalars: int, tokens: int = 2) -> Callable[[Shape, int], int]:
    def traffic(s: Shape, e: int) -> int:
        return masked_rows(s.n) * s.v * e + s.n * (tokens * TOKEN + scalars * SCALAR)

    return traffic


def _state_step_bytes(s: Shape, e: int) -> int:
    return 3 * s.n * s.h * e + 2 * s.n * SCALAR


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------


def _unmask_reference(logits: torch.Tensor, x: torch.Tensor, mask_id: int, k: int):
    """The flattened reference of :func:`fastdiff.confidence_unmask_step` (argmax, ``prob``)."""
    batch, seq, vocab = logits.shape
    xhat, conf = ref_updates.unmask_candidates(
        logits.reshape(-1, vocab), x.reshape(-1), None, 0, 0, mask_id, 0.0, "prob"
    )
    commit = select_commits(conf.reshape(batch, seq), k=k)
    return torch.where(commit, xhat.reshape(batch, seq), x)


def _eager_csm_absorb(
    score: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """Concrete score matching written in the eager style of SEDD's graph code (boolean-indexed
    masked rows, mask last; SEDD ships no CSM loss): ``1/2 sum_{j != m} (S_j - r [j = x0])^2``."""
    rel = x_t == mask_id
    ratio = 1 / torch.expm1(sigma.expand_as(x_t)[rel])
    s = score[rel][:, :-1].exp()
    target = torch.zeros_like(s).scatter(-1, x0[rel][:, None], ratio[:, None].to(s.dtype))
    loss = torch.zeros(*x_t.shape, device=x_t.device, dtype=score.dtype)
    loss[rel] = 0.5 * (s - target).square().sum(-1)
    return loss


def _eager_csm_uniform(
    score: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Uniform-graph concrete score matching in the same eager style (every row)."""
    dim = score.shape[-1]
    esigm1 = torch.expm1(sigma)
    ratio = esigm1 / (esigm1 + dim)
    same = x_t == x0
    s = score.exp().scatter(-1, x_t[:, None], 0.0)
    target = torch.where(same, ratio, torch.ones_like(ratio))[:, None].expand_as(s)
    at_x0 = torch.where(same, ratio, 1 / ratio)[:, None].to(s.dtype)
    target = target.to(s.dtype).scatter(-1, x0[:, None], at_x0).scatter(-1, x_t[:, None], 0.0)
    return 0.5 / dim * (s - target).square().sum(-1)


CASES: tuple[Case, ...] = (
    # ---------------------------------------------------------------- training
    Case(
        "score_entropy_absorb", "training", "fwd+bwd", SCORES, "score_entropy_absorb",
        make=_score_inputs,
        public=lambda d: fastdiff.score_entropy(
            d["log_score"], d["x_t"], d["x0"], sigma=d["sigma"], graph="absorb",
            mask_id=d["mask_id"], reduction="none"),
        reference=ref_losses.score_entropy_absorb,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["x0"], d["sigma"], d["mask_id"]),
        traffic=_absorb_loss_bytes,
        baseline=Baseline("sedd", lambda d: baselines.sedd_score_entropy_absorb(
            d["log_score"], d["x_t"], d["x0"], d["sigma"], d["mask_id"])),
        grad=("log_score",),
    ),
    Case(
        "score_entropy_uniform", "training", "fwd+bwd", SCORES, "score_entropy_uniform",
        make=_uniform_inputs,
        public=lambda d: fastdiff.score_entropy(
            d["log_score"], d["x_t"], d["x0"], sigma=d["sigma"], graph="uniform", reduction="none"),
        reference=ref_losses.score_entropy_uniform,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["x0"], d["sigma"]),
        traffic=_uniform_loss_bytes,
        baseline=Baseline("sedd", lambda d: baselines.sedd_score_entropy_uniform(
            d["log_score"], d["x_t"], d["x0"], d["sigma"])),
        grad=("log_score",),
    ),
    Case(
        "masked_diffusion_loss", "training", "fwd+bwd", SCORES, "masked_diffusion_loss",
        make=_logit_inputs,
        public=lambda d: fastdiff.masked_diffusion_loss(
            d["logits"], d["x_t"], d["x0"], mask_id=d["mask_id"], weight=d["weight"],
            reduction="none"),
        reference=ref_losses.masked_diffusion_loss,
        reference_args=lambda d: (d["logits"], d["x_t"], d["x0"], d["mask_id"], d["weight"]),
        traffic=_absorb_loss_bytes,
        baseline=Baseline("mdlm", lambda d: baselines.mdlm_loss(
            d["logits"], d["x_t"], d["x0"], d["sigma"], d["dsigma"], d["mask_id"],
            inplace=True)),
        grad=("logits",),
    ),
    Case(
        "linear_score_entropy", "training", "fwd+bwd", LINEAR, "linear_score_entropy",
        make=_linear_inputs,
        public=lambda d: fastdiff.linear_score_entropy(
            d["hidden"], d["projection"], d["x_t"], d["x0"], sigma=d["sigma"], graph="absorb",
            mask_id=d["mask_id"], reduction="sum"),
        reference=ref_losses.linear_score_entropy,
        reference_args=lambda d: (d["hidden"], d["projection"], None, d["x_t"], d["x0"],
                                  d["sigma"], None, "absorb", d["mask_id"], None),
        traffic=_linear_bytes,
        compute=_linear_flops,
        baseline=Baseline("sedd", lambda d: baselines.sedd_linear_score_entropy_absorb(
            d["hidden"], d["projection"], d["x_t"], d["x0"], d["sigma"], d["mask_id"])),
        grad=("hidden", "projection"),
    ),
    Case(
        "linear_masked_diffusion_loss", "training", "fwd+bwd", LINEAR,
        "linear_masked_diffusion_loss",
        make=_linear_inputs,
        public=lambda d: fastdiff.linear_masked_diffusion_loss(
            d["hidden"], d["projection"], d["x_t"], d["x0"], mask_id=d["mask_id"],
            weight=d["weight"], reduction="sum"),
        reference=ref_losses.linear_masked_diffusion_loss,
        reference_args=lambda d: (d["hidden"], d["projection"], None, d["x_t"], d["x0"],
                                  d["mask_id"], d["weight"], None),
        traffic=_linear_bytes,
        compute=_linear_flops,
        baseline=Baseline("mdlm", lambda d: baselines.mdlm_linear_loss(
            d["hidden"], d["projection"], d["x_t"], d["x0"], d["sigma"], d["dsigma"],
            d["mask_id"])),
        grad=("hidden", "projection"),
    ),
    Case(
        "concrete_score_matching_absorb", "training", "fwd+bwd", SCORES,
        "concrete_score_matching_absorb",
        make=_score_inputs,
        public=lambda d: concrete_score_matching(
            d["log_score"], d["x_t"], d["x0"], sigma=d["sigma"], graph="absorb",
            mask_id=d["mask_id"], reduction="none"),
        reference=ref_losses.concrete_score_matching_absorb,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["x0"], d["sigma"], d["mask_id"]),
        traffic=_absorb_loss_bytes,
        baseline=Baseline("sedd", lambda d: _eager_csm_absorb(
            d["log_score"], d["x_t"], d["x0"], d["sigma"], d["mask_id"])),
        grad=("log_score",),
    ),
    Case(
        "concrete_score_matching_uniform", "training", "fwd+bwd", SCORES,
        "concrete_score_matching_uniform",
        make=_uniform_inputs,
        public=lambda d: concrete_score_matching(
            d["log_score"], d["x_t"], d["x0"], sigma=d["sigma"], graph="uniform", reduction="none"),
        reference=ref_losses.concrete_score_matching_uniform,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["x0"], d["sigma"]),
        traffic=_uniform_loss_bytes,
        baseline=Baseline("sedd", lambda d: _eager_csm_uniform(
            d["log_score"], d["x_t"], d["x0"], d["sigma"])),
        grad=("log_score",),
    ),
    # ---------------------------------------------------------------- noising
    Case(
        "add_noise_absorb", "noising", "fwd", SCORES, "corrupt",
        make=lambda shape, dtype, device, gen: _tokens(shape, device, gen),
        public=lambda d: fastdiff.add_noise(
            d["x0"], sigma=d["sigma"], graph="absorb", vocab_size=d["vocab"], mask_id=d["mask_id"],
            seed=0),
        reference=ref_noising.corrupt,
        reference_args=lambda d: (d["x0"], d["sigma"], None, 0, 0, "absorb", d["vocab"],
                                  d["mask_id"]),
        traffic=lambda s, e: s.n * (2 * TOKEN + SCALAR),
        baseline=Baseline("sedd", lambda d: baselines.sedd_corrupt_absorb(
            d["x0"], d["sigma"], d["mask_id"])),
        dtypes=(torch.float32,),
    ),
    Case(
        "add_noise_dense", "noising", "fwd", DENSE, "corrupt_dense",
        make=_dense_inputs,
        public=lambda d: fastdiff.add_noise_dense(d["x0"], d["transition"], seed=0),
        reference=ref_noising.corrupt_dense,
        reference_args=lambda d: (d["x0"], d["transition"], None, None, 0, 0),
        traffic=lambda s, e: s.n * s.v * e + 2 * s.n * TOKEN,
        baseline=Baseline("d3pm", lambda d: baselines.d3pm_corrupt_dense(
            d["x0"], d["transition"])),
        dtypes=(torch.float32, torch.float64),
    ),
    # ---------------------------------------------------------------- sampling
    Case(
        "sample_categorical", "sampling", "fwd", SCORES, "sample_categorical",
        make=lambda shape, dtype, device, gen: {
            "probs": _log_scores(shape, torch.float32, gen, device).exp().to(dtype)},
        public=lambda d: fastdiff.sample_categorical(d["probs"], seed=0),
        reference=ref_sampling.sample_categorical,
        reference_args=lambda d: (d["probs"], False, 0, 0, 1.0, None, None, None, False),
        traffic=lambda s, e: s.n * s.v * e + s.n * TOKEN,
        baseline=Baseline("sedd", lambda d: baselines.sedd_sample_categorical(d["probs"])),
    ),
    Case(
        "sedd_analytic_absorb", "sampling", "fwd", SCORES, "sedd_analytic",
        make=lambda shape, dtype, device, gen: _step_inputs(shape, dtype, device, gen, False),
        public=lambda d: fastdiff.sedd_analytic_step(
            d["log_score"], d["x_t"], sigma=d["sig_now"], sigma_next=d["sig_next"],
            graph="absorb", mask_id=d["mask_id"], seed=0),
        reference=ref_updates.sedd_analytic,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["delta64"], None, 0, 0, "absorb",
                                  d["mask_id"]),
        traffic=_masked_step_bytes(scalars=2),
        baseline=Baseline("sedd", lambda d: baselines.sedd_analytic_step_absorb(
            d["log_score"], d["x_t"], d["sig_now"], d["sig_next"])),
    ),
    Case(
        "sedd_euler_absorb", "sampling", "fwd", SCORES, "sedd_euler",
        make=lambda shape, dtype, device, gen: _step_inputs(shape, dtype, device, gen, False),
        public=lambda d: fastdiff.sedd_euler_step(
            d["log_score"], d["x_t"], dsigma=d["dsig_now"], dt=DT, graph="absorb",
            mask_id=d["mask_id"], seed=0),
        reference=ref_updates.sedd_euler,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["rate64"], None, 0, 0, "absorb",
                                  d["mask_id"]),
        traffic=_masked_step_bytes(scalars=1),
        baseline=Baseline("sedd", lambda d: baselines.sedd_euler_step_absorb(
            d["log_score"], d["x_t"], d["sig_now"], d["dsig_now"], DT)),
    ),
    Case(
        "sedd_denoise_absorb", "sampling", "fwd", SCORES, "sedd_denoise",
        make=lambda shape, dtype, device, gen: _step_inputs(shape, dtype, device, gen, False),
        public=lambda d: fastdiff.sedd_denoise_step(
            d["log_score"], d["x_t"], sigma=d["sig_now"], graph="absorb", mask_id=d["mask_id"],
            seed=0),
        reference=ref_updates.sedd_denoise,
        reference_args=lambda d: (d["log_score"], d["x_t"], d["sig_now64"], None, 0, 0,
                                  "absorb", d["mask_id"]),
        traffic=_masked_step_bytes(scalars=1),
        baseline=Baseline("sedd", lambda d: baselines.sedd_denoise_step_absorb(
            d["log_score"], d["x_t"], d["sig_now"])),
    ),
    Case(
        "sedd_analytic_uniform", "sampling", "fwd", SCORES, "sedd_analytic",
        make=lambda shape, dtype, device, gen: _step_inputs(shape, dtype, device, gen, False),
        public=lambda d: fastdiff.sedd_analytic_step(
            d["log_score"], d["x0"], sigma=d["sig_now"], sigma_next=d["sig_next"],
            graph="uniform", seed=0),
        reference=ref_updates.sedd_analytic,
        reference_args=lambda d: (d["log_score"], d["x0"], d["delta64"], None, 0, 0, "uniform",
                                  None),
        traffic=lambda s, e: s.n * s.v * e + s.n * (2 * TOKEN + 2 * SCALAR),
        baseline=Baseline("sedd", lambda d: baselines.sedd_analytic_step_uniform(
            d["log_score"], d["x0"], d["sig_now"], d["sig_next"])),
    ),
    Case(
        "mdlm_step", "sampling", "fwd", SCORES, "mdlm_ancestral",
        make=lambda shape, dtype, device, gen: _step_inputs(shape, dtype, device, gen, True),
        public=lambda d: fastdiff.mdlm_step(
            d["logits"], d["x_t"], sigma=d["sig_now"], sigma_next=d["sig_next"],
            mask_id=d["mask_id"], seed=0),
        reference=ref_updates.mdlm_ancestral,
        reference_args=lambda d: (d["logits"], d["x_t"], d["sig_now64"], d["sig_next64"], None,
                                  0, 0, d["mask_id"]),
        traffic=_masked_step_bytes(scalars=2),
        baseline=Baseline("mdlm", lambda d: baselines.mdlm_step(
            d["logits"], d["x_t"], d["sig_now"], d["sig_next"], d["mask_id"], inplace=True)),
    ),
    Case(
        "confidence_unmask_step", "sampling", "fwd", SCORES, "unmask_candidates",
        make=_unmask_inputs,
        public=lambda d: fastdiff.confidence_unmask_step(
            d["logits"], d["x_t"], mask_id=d["mask_id"], k=UNMASK_K),
        reference=_unmask_reference,
        reference_args=lambda d: (d["logits"], d["x_t"], d["mask_id"], UNMASK_K),
        traffic=_masked_step_bytes(scalars=0),
        baseline=Baseline("llada", lambda d: baselines.llada_unmask_step(
            d["logits"], d["x_t"], d["mask_id"], d["num_transfer"])),
    ),
    Case(
        "d3pm_step", "sampling", "fwd", DENSE, "d3pm_step",
        make=_posterior_inputs,
        public=lambda d: fastdiff.d3pm_step(
            d["logits"], d["x_t"], q_step=d["q_step"], qbar_next=d["qbar_prev"], seed=0),
        reference=ref_d3pm.d3pm_step,
        reference_args=lambda d: (d["logits"], d["x_t"], d["q_step"], d["qbar_prev"], None, 0,
                                  0),
        traffic=lambda s, e: (s.n * s.v + 2 * s.v * s.v) * e + 2 * s.n * TOKEN,
        baseline=Baseline("d3pm", lambda d: baselines.d3pm_step(
            d["logits"], d["x_t"], d["q_step"], d["qbar_prev"])),
        dtypes=(torch.float32,),
    ),
    # ---------------------------------------------------------------- gaussian
    Case(
        "add_noise_gaussian", "gaussian", "fwd", GATHER, "q_sample",
        make=_gather_inputs,
        public=lambda d: fastdiff.add_noise_gaussian(
            d["ids"], alpha_bar=d["abar"], embedding=d["embedding"], seed=0),
        reference=ref_gaussian.q_sample,
        reference_args=lambda d: (d["ids"], d["abar64"], None, d["embedding"], None, 0, 0),
        traffic=lambda s, e: 4 * s.n * s.h * e + s.n * (TOKEN + SCALAR),
        baseline=Baseline("diffusionlm", lambda d: baselines.diffusionlm_q_sample(
            d["ids"], d["embedding"], d["abar"])),
        sweep="h",
    ),
    Case(
        "ddpm_step", "gaussian", "fwd", STATE, "ddpm_step",
        make=_state_inputs,
        public=lambda d: fastdiff.ddpm_step(
            d["eps"], d["x_t"], alpha_bar=d["abar"], alpha_bar_next=d["abar_prev"],
            variance_type="fixed_large", seed=0),
        reference=ref_gaussian.ddpm_step,
        reference_args=lambda d: (d["eps"], d["x_t"], d["abar64"], d["abar_prev64"], "eps",
                                  "beta", None, None, None, None, 0, 0),
        traffic=_state_step_bytes,
        baseline=Baseline("diffusionlm", lambda d: baselines.diffusionlm_ddpm_step(
            d["eps"], d["x_t"], d["abar"], d["abar_prev"])),
        sweep="h",
    ),
    Case(
        "ddim_step", "gaussian", "fwd", STATE, "ddim_step",
        make=_state_inputs,
        public=lambda d: fastdiff.ddim_step(
            d["eps"], d["x_t"], alpha_bar=d["abar"], alpha_bar_next=d["abar_prev"], eta=0.0,
            seed=0),
        reference=ref_gaussian.ddim_step,
        reference_args=lambda d: (d["eps"], d["x_t"], d["abar64"], d["abar_prev64"], d["eta64"],
                                  "eps", None, None, None, None, 0, 0),
        traffic=_state_step_bytes,
        baseline=Baseline("diffusionlm", lambda d: baselines.diffusionlm_ddim_step(
            d["eps"], d["x_t"], d["abar"], d["abar_prev"], 0.0)),
        sweep="h",
    ),
    Case(
        "gaussian_loss", "gaussian", "fwd+bwd", STATE, "gaussian_loss",
        make=_gaussian_loss_inputs,
        public=lambda d: fastdiff.gaussian_loss(
            d["pred"], d["target"], weight=d["weight"], reduction="none"),
        reference=ref_gaussian.gaussian_loss,
        reference_args=lambda d: (d["pred"], d["target"], d["weight"]),
        traffic=lambda s, e: 3 * s.n * s.h * e + 3 * s.n * SCALAR,
        baseline=Baseline("diffusionlm", lambda d: baselines.diffusionlm_mse(
            d["pred"], d["target"])),
        grad=("pred",),
        sweep="h",
    ),
    Case(
        "round_to_embedding", "gaussian", "fwd", EMBED, "round_to_embedding",
        make=_round_inputs,
        public=lambda d: fastdiff.round_to_embedding(d["x"], d["embedding"]),
        reference=ref_gaussian.round_to_embedding,
        reference_args=lambda d: (d["x"], d["embedding"]),
        traffic=lambda s, e: (2 * s.n * s.h + s.v * s.h) * e + s.n * TOKEN,
        compute=lambda s: 2 * s.n * s.v * s.h,
        baseline=Baseline("diffusionlm", lambda d: baselines.diffusionlm_round(
            d["x"], d["embedding"])),
    ),
)  # fmt: skip

BY_NAME: dict[str, Case] = {case.name: case for case in CASES}


def select(names: list[str] | None) -> list[Case]:
    """The cases named by op names and / or families (all of them for ``None`` / ``[]``),
    in registry order."""
    if not names:
        return list(CASES)
    unknown = [n for n in names if n not in BY_NAME and n not in FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown op or family {', '.join(unknown)}; families: {', '.join(FAMILIES)}; "
            f"ops: {', '.join(BY_NAME)}"
        )
    wanted = set(names)
    return [c for c in CASES if c.name in wanted or c.family in wanted]
