"""Calls of the public ops, at the shapes of the GPU compile check, that between them make every
Triton launch the package can make: each op in each mode (graph, update rule, filter, guidance,
fixed positions, noise given or drawn, gradient or not) and each dtype.

Shapes (realistic training / sampling sizes): ``N = 16384`` rows (token positions),
``V = 50258`` (GPT-2's 50257 tokens + a mask: not a multiple of 16, the hard case for
vectorized loads) and ``V = 32768`` (a power of two), ``H = 768`` for the embedding-space ops.
The dense-matrix D3PM ops use ``V = 4096`` (a ``[V, V]`` transition matrix of GPT-2's
vocabulary would not fit on a GPU). Tensors are ``torch.empty`` on the CPU: the recorder
(:mod:`fastdiff.bench.gpu_compile`) never runs a kernel, so their contents are never read.

Each scenario is a function of no arguments; :data:`SCENARIOS` maps its name to it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

import fastdiff

N = 16384
V = 50258
V_POW2 = 32768
V_DENSE = 4096
H = 768
SEQ = 1024  # sequence length of the [batch, length] ops (N = 16 x 1024)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

SCENARIOS: dict[str, Callable[[], None]] = {}


def _scenario(name: str, run: Callable[[], None]) -> None:
    SCENARIOS[name] = run


def _tag(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tokens(n: int = N, vocab: int = V) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)


def _scores(dtype: torch.dtype, vocab: int = V, grad: bool = False) -> torch.Tensor:
    return torch.empty(N, vocab, dtype=dtype).requires_grad_(grad)


def _per_row() -> torch.Tensor:
    return torch.full((N,), 0.5)


def _fixed() -> torch.Tensor:
    return torch.zeros(N, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# training: the losses (forward with the gradient written in the same pass, and forward only)


def _losses(dtype: torch.dtype, vocab: int) -> Callable[[], None]:
    # Weighted with the gradient written in the forward pass (training), and unweighted
    # forward-only (evaluation): both values of both flags.
    def run() -> None:
        mask = vocab - 1
        for grad, weight in ((True, _per_row()), (False, None)):
            for graph in ("absorb", "uniform"):
                for loss in (fastdiff.score_entropy, fastdiff.concrete_score_matching):
                    loss(
                        _scores(dtype, vocab, grad),
                        _tokens(),
                        _tokens(),
                        sigma=_per_row(),
                        graph=graph,
                        mask_id=mask,
                        weight=weight,
                        reduction="none",
                    )
            fastdiff.masked_diffusion_loss(
                _scores(dtype, vocab, grad),
                _tokens(),
                _tokens(),
                mask_id=mask,
                weight=weight,
                reduction="none",
            )

    return run


def _linear_losses(dtype: torch.dtype) -> Callable[[], None]:
    # The fused projection + loss runs the loss kernels on chunks of logits it forms itself;
    # a few rows give the same launches (one row per program) without a large CPU matmul.
    def run() -> None:
        rows, mask = 64, V - 1
        hidden = torch.zeros(rows, H, dtype=dtype, requires_grad=True)
        projection = torch.zeros(V, H, dtype=dtype, requires_grad=True)
        x_t = torch.full((rows,), mask, dtype=torch.int64)
        x0 = torch.zeros(rows, dtype=torch.int64)
        sigma = torch.full((rows,), 0.5)
        for graph in ("absorb", "uniform"):
            fastdiff.linear_score_entropy(
                hidden,
                projection,
                x_t,
                x0,
                sigma=sigma,
                graph=graph,
                mask_id=mask,
                weight=sigma,
                reduction="sum",
            )
        fastdiff.linear_masked_diffusion_loss(
            hidden, projection, x_t, x0, mask_id=mask, weight=sigma, reduction="sum"
        )

    return run


def _vocabularies(dtype: torch.dtype) -> tuple[int, ...]:
    # The aligned vocabulary changes only the load specialization: one dtype suffices.
    return (V, V_POW2) if dtype == torch.bfloat16 else (V,)


for _dtype in DTYPES:
    for _vocab in _vocabularies(_dtype):
        _scenario(f"losses-{_tag(_dtype)}-V{_vocab}", _losses(_dtype, _vocab))
    _scenario(f"linear-losses-{_tag(_dtype)}", _linear_losses(_dtype))


# --------------------------------------------------------------------------------------------
# noising


def _noising(dtype: torch.dtype) -> None:
    for graph in ("absorb", "uniform"):
        for fixed in (None, _fixed()):
            fastdiff.add_noise(
                _tokens(),
                sigma=_per_row(),
                graph=graph,
                vocab_size=V,
                mask_id=V - 1,
                fixed=fixed,
                seed=1,
            )
    shared = torch.empty(V_DENSE, V_DENSE, dtype=dtype)
    batched = torch.empty(16, V_DENSE, V_DENSE // 16, dtype=dtype)[:, :, :1].expand(
        16, V_DENSE, V_DENSE
    )  # one matrix per sequence, stored without 16 x V^2 memory
    x0 = torch.zeros(16, SEQ, dtype=torch.int64)
    for fixed in (None, torch.zeros(16, SEQ, dtype=torch.bool)):
        fastdiff.add_noise_dense(x0, shared, fixed=fixed, seed=1)
        fastdiff.add_noise_dense(x0, batched, fixed=fixed, seed=1)


for _dtype in DTYPES:
    _scenario(f"noising-{_tag(_dtype)}", lambda d=_dtype: _noising(d))


# --------------------------------------------------------------------------------------------
# sampling


def _categorical(dtype: torch.dtype, vocab: int) -> None:
    # bf16 at V = 50258: every combination of the modes (logits or probabilities, greedy or
    # sampled, each filter on or off, the probability returned or not): register allocation,
    # and so spilling, depends on the combination. Other dtypes and V: each mode once.
    if dtype == torch.bfloat16 and vocab == V:
        w = _scores(dtype, vocab)
        for log, temperature, top_k, top_p, min_p, prob in itertools.product(
            (True, False), (0.0, 0.7), (None, 50), (None, 0.9), (None, 0.05), (False, True)
        ):
            given = {"logits": w} if log else {"probs": w}
            fastdiff.sample_categorical(
                **given,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                return_prob=prob,
                seed=1,
            )
        return
    all_filters = {"top_k": 50, "top_p": 0.9, "min_p": 0.05, "return_prob": True}
    logits = _scores(dtype, vocab)
    for options in (
        {"temperature": 0.0},
        {"temperature": 0.7},
        {"return_prob": True},
        {"top_k": 50},
        {"top_p": 0.9},
        {"min_p": 0.05},
        all_filters,
    ):
        fastdiff.sample_categorical(logits=logits, seed=1, **options)
    for options in ({}, all_filters):
        fastdiff.sample_categorical(_scores(dtype, vocab), seed=1, **options)


def _updates(dtype: torch.dtype, vocab: int) -> None:
    # Every update rule of both graphs without fixed positions, and with them for one rule per
    # kernel mode; every confidence measure greedy and sampled.
    mask = vocab - 1
    x = torch.full((N,), mask, dtype=torch.int64)
    s = _scores(dtype, vocab)
    for graph in ("absorb", "uniform"):
        fixed = _fixed() if graph == "uniform" else None
        fastdiff.sedd_euler_step(
            s, x, dsigma=1.0, dt=0.01, graph=graph, mask_id=mask, fixed=fixed, seed=1
        )
        fastdiff.sedd_analytic_step(
            s, x, sigma=1.0, sigma_next=0.9, graph=graph, mask_id=mask, fixed=fixed, seed=1
        )
        fastdiff.sedd_denoise_step(s, x, sigma=0.01, graph=graph, mask_id=mask, fixed=fixed, seed=1)
    for fixed in (None, _fixed()):
        fastdiff.mdlm_step(s, x, sigma=1.0, sigma_next=0.9, mask_id=mask, fixed=fixed, seed=1)
    batch = s.view(N // SEQ, SEQ, vocab)
    for confidence in ("prob", "margin", "entropy"):
        for temperature in (0.0, 1.0):
            fixed = torch.zeros(N // SEQ, SEQ, dtype=torch.bool) if temperature else None
            fastdiff.unmask_candidates(
                batch,
                x.view(N // SEQ, SEQ),
                mask_id=mask,
                temperature=temperature,
                confidence=confidence,
                fixed=fixed,
                seed=1,
            )


def _d3pm(dtype: torch.dtype) -> None:
    # The posterior is formed on the host by matmuls ([rows, V] x [V, V]): a few rows give the
    # same launch (one row per program) without a large CPU matmul.
    rows = 64
    q = torch.empty(V_DENSE, V_DENSE, dtype=dtype)
    x = torch.zeros(rows, dtype=torch.int64)
    logits = torch.empty(rows, V_DENSE, dtype=dtype)
    for fixed in (None, torch.zeros(rows, dtype=torch.bool)):
        fastdiff.d3pm_step(logits, x, q_step=q, qbar_next=q, fixed=fixed, seed=1)


for _dtype in DTYPES:
    for _vocab in _vocabularies(_dtype):
        _scenario(
            f"categorical-{_tag(_dtype)}-V{_vocab}", lambda d=_dtype, v=_vocab: _categorical(d, v)
        )
        _scenario(f"updates-{_tag(_dtype)}-V{_vocab}", lambda d=_dtype, v=_vocab: _updates(d, v))
    _scenario(f"d3pm-{_tag(_dtype)}", lambda d=_dtype: _d3pm(d))


# --------------------------------------------------------------------------------------------
# Gaussian (embedding space)


def _gaussian(dtype: torch.dtype) -> None:
    ids = torch.zeros(N, dtype=torch.int64)
    table = torch.empty(V, H, dtype=dtype, requires_grad=True)
    x0 = torch.empty(N, H, dtype=dtype)
    abar = _per_row()
    given = torch.empty(N, H, dtype=dtype)
    for noise, fixed in ((None, None), (given, _fixed())):
        fastdiff.add_noise_gaussian(
            ids, alpha_bar=abar, embedding=table, noise=noise, fixed=fixed, seed=1
        )
    for noise, fixed in ((None, _fixed()), (given, None)):
        fastdiff.add_noise_gaussian(x0, alpha_bar=abar, noise=noise, fixed=fixed, seed=1)
    pred = torch.empty(N, H, dtype=dtype, requires_grad=True)
    for weight in (None, abar):
        loss = fastdiff.gaussian_loss(
            pred, torch.empty(N, H, dtype=dtype), weight=weight, reduction="none"
        )
        loss.sum().backward()
        fastdiff.gaussian_loss(
            pred.detach(), torch.empty(N, H, dtype=dtype), weight=weight, reduction="none"
        )
    out, x_t = torch.empty(N, H, dtype=dtype), torch.empty(N, H, dtype=dtype)
    uncond = torch.empty(N, H, dtype=dtype)
    # A covering set of the step flags: every value of each (prediction, variance / eta,
    # guidance, noise drawn or given, fixed rows), and each DDIM / DDPM mode with drawn noise.
    for prediction, variance, eta, guided, noise, fixed in (
        ("epsilon", "fixed_large", 0.0, False, None, None),
        ("sample", "fixed_small", 1.0, True, None, _fixed()),
        ("epsilon", "fixed_small", 1.0, False, torch.empty(N, H, dtype=dtype), _fixed()),
        ("sample", "fixed_large", 0.0, True, torch.empty(N, H, dtype=dtype), None),
    ):
        guide = {"model_output_uncond": uncond, "guidance_scale": 2.0} if guided else {}
        fastdiff.ddpm_step(
            out,
            x_t,
            alpha_bar=abar,
            alpha_bar_next=abar,
            prediction_type=prediction,
            variance_type=variance,
            noise=noise,
            fixed=fixed,
            seed=1,
            **guide,
        )
        fastdiff.ddim_step(
            out,
            x_t,
            alpha_bar=abar,
            alpha_bar_next=abar,
            eta=eta,
            prediction_type=prediction,
            noise=noise,
            fixed=fixed,
            seed=1,
            **guide,
        )
    fastdiff.round_to_embedding(torch.empty(N, H, dtype=dtype), torch.empty(V, H, dtype=dtype))


for _dtype in DTYPES:
    _scenario(f"gaussian-{_tag(_dtype)}", lambda d=_dtype: _gaussian(d))
