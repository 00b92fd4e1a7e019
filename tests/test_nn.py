"""The loss modules of :mod:`fastdiff.nn`: each one equals its loss computed by hand from the ops
with the same times and noise, the fused path (hidden states + projection) equals the unfused
one (logits) in value and gradient, gradients reach the model and the projection, and bad input
raises before the model runs.

Float32 tolerance: both paths run the same float32 arithmetic up to the order of the
projection's sums, so values and gradients agree to ``rtol = 1e-5``; hand-computed losses run
the very same ops and must be bit-identical.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdiff
import fastdiff.nn as fnn
from fastdiff import backend
from fastdiff.schedules import GaussianSchedule, Geometric, LogLinear, sample_times
from fastdiff.transitions import TransitionSchedule

V, D, B, L = 11, 8, 4, 6
MASK = 7  # any id works; not the last one
T = torch.tensor([0.05, 0.3, 0.6, 0.97])


class TinyModel(nn.Module):
    """``(x_t [B, L], level [B]) -> hidden [B, L, D]`` (``hidden_only``) or logits ``[B, L, V]``:
    token embedding, a time-dependent scale and a mix over positions, then the head."""

    def __init__(self, vocab: int = V, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)

    def forward(self, x_t: torch.Tensor, level: torch.Tensor, *, hidden_only: bool = False):
        h = self.emb(x_t) * (1.0 + 0.1 * torch.log1p(level.float()))[:, None, None]
        h = torch.tanh(h + self.mix(h.mean(1, keepdim=True)))
        return h if hidden_only else self.head(h)

    def hidden(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self(x_t, level, hidden_only=True)


def _x0(vocab: int = V, exclude: int | None = MASK, seed: int = 1) -> torch.Tensor:
    x0 = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))
    if exclude is not None:
        x0 = torch.where(x0 == exclude, (exclude + 1) % vocab, x0)
    return x0


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _transitions(kind: str) -> TransitionSchedule:
    mask = MASK if kind == "absorbing" else None
    return TransitionSchedule.from_betas(torch.linspace(0.05, 0.4, 6), kind, V, mask_id=mask)


# --------------------------------------------------------------------------------------------
# each module = its loss by hand from the ops
# --------------------------------------------------------------------------------------------


def test_mdlm_equals_the_ops_by_hand():
    model, x0 = TinyModel(), _x0()
    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, schedule=LogLinear(1e-3))
    out = loss_fn(model, x0, t=T, seed=5, return_output=True)
    sigma = LogLinear(1e-3).sigma(T)
    x_t = fastdiff.add_noise(x0, sigma=sigma, graph="absorb", vocab_size=V, mask_id=MASK, seed=5)
    expect = fastdiff.masked_diffusion_loss(
        model(x_t, sigma), x_t, x0, mask_id=MASK, weight=1.0 / T
    )
    assert torch.equal(out.x_t, x_t) and torch.equal(out.noise_level, sigma)
    assert torch.equal(out.t, T) and torch.equal(out.weight, 1.0 / T)
    assert torch.equal(out.loss, expect)
    assert 0 < int((x_t == MASK).sum()) < x_t.numel()  # both kinds of rows present


def test_drawn_times_and_noise_follow_the_generator():
    """Without ``t`` / ``seed``: the times are ``sample_times(B, antithetic=True)`` from the
    generator (float64 rounded to float32), then the noising seed is drawn from it."""
    model, x0 = TinyModel(), _x0()
    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, sampling_eps=0.01)
    out = loss_fn(model, x0, generator=torch.Generator().manual_seed(3), return_output=True)
    gen = torch.Generator().manual_seed(3)
    t = sample_times(B, eps=0.01, antithetic=True, generator=gen, dtype=torch.float64).float()
    sigma = LogLinear().sigma(t)
    x_t = fastdiff.add_noise(
        x0, sigma=sigma, graph="absorb", vocab_size=V, mask_id=MASK, generator=gen
    )
    assert torch.equal(out.t, t) and torch.equal(out.x_t, x_t)
    # antithetic: the sorted times are evenly spaced by (1 - eps) / B
    gaps = torch.diff(torch.sort(out.t.double()).values)
    torch.testing.assert_close(gaps, torch.full((B - 1,), 0.99 / B, dtype=torch.float64))
    iid = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, antithetic=False)
    t_iid = iid(model, x0, generator=torch.Generator().manual_seed(3), return_output=True).t
    u = torch.rand(B, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(t_iid, (0.999 * u + 1e-3).float())


def test_mdlm_weight_is_one_over_t():
    """A model predicting uniformly over the ``V - 1`` clean tokens loses ``log(V - 1)`` at
    every masked position; the log-linear weight makes it ``log(V - 1) / t`` exactly."""
    x0 = _x0()

    def uniform(x_t, sigma):
        return torch.zeros(*x_t.shape, V)

    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, reduction="none")
    out = loss_fn(uniform, x0, t=T, seed=2, return_output=True)
    masked = out.x_t == MASK
    expect = torch.where(masked, math.log(V - 1) / T[:, None], torch.zeros(()))
    torch.testing.assert_close(out.loss, expect, rtol=1e-6, atol=0)
    mean = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)(uniform, x0, t=T, seed=2)
    torch.testing.assert_close(mean, expect.mean(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_sedd_equals_the_ops_by_hand(graph):
    mask = MASK if graph == "absorb" else None
    schedule = LogLinear() if graph == "absorb" else Geometric(1e-4, 20.0)
    model, x0 = TinyModel(), _x0(exclude=mask)
    out = fnn.ScoreEntropyLoss(vocab_size=V, graph=graph, mask_id=mask)(
        model, x0, t=T, seed=9, return_output=True
    )
    sigma, dsigma = schedule(T)
    x_t = fastdiff.add_noise(x0, sigma=sigma, graph=graph, vocab_size=V, mask_id=mask, seed=9)
    log_score = model(x_t, sigma)
    if graph == "absorb":  # SEDD's default parameterization there
        log_score = fastdiff.scale_by_sigma(log_score, sigma=sigma)
    expect = fastdiff.score_entropy(
        log_score, x_t, x0, sigma=sigma, graph=graph, mask_id=mask, weight=dsigma
    )
    assert torch.equal(out.x_t, x_t) and torch.equal(out.weight, dsigma)
    assert torch.equal(out.loss, expect)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_d3pm_equals_the_ops_by_hand(kind):
    ts = _transitions(kind)
    model, x0 = TinyModel(), _x0()
    t = torch.tensor([1, 3, 4, 6])
    out = fnn.D3PMLoss(transitions=ts, hybrid_lambda=0.1)(
        model, x0, t=t, seed=4, return_output=True
    )
    x_t = fastdiff.add_noise_dense(x0, ts.cumulative(t), seed=4)
    expect = fastdiff.d3pm_hybrid_loss(
        model(x_t, t.float()),
        x_t,
        x0,
        q_step=ts.step(t),
        qbar_next=ts.qbar_prev(t),
        t_is_one=t == 1,
        hybrid_lambda=0.1,
    )
    assert torch.equal(out.x_t, x_t) and torch.equal(out.noise_level, t.float())
    assert torch.equal(out.loss, expect)
    # drawn steps cover 1..T, stratified over the batch (antithetic): one per quarter of [1, 6]
    drawn = fnn.D3PMLoss(transitions=ts)(model, x0, generator=torch.Generator().manual_seed(0),
                             return_output=True).t  # fmt: skip
    assert drawn.dtype == torch.int64 and int(drawn.min()) >= 1 and int(drawn.max()) <= 6
    u = sample_times(B, eps=0.0, antithetic=True, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)  # fmt: skip
    assert torch.equal(drawn, (u * 6).floor().long() + 1)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_gaussian_equals_the_ops_by_hand(prediction_type):
    emb = nn.Embedding(V, D)
    schedule = GaussianSchedule.sqrt(50)
    x0 = _x0(exclude=None)
    model = nn.Linear(D, D)

    def denoiser(x_t, level):
        return model(x_t) * (1.0 + level[:, None, None] / 50)

    t = torch.tensor([0, 7, 30, 49])
    loss_fn = fnn.GaussianEmbeddingLoss(
        embedding=emb, schedule=schedule, prediction_type=prediction_type, rounding_weight=0.5
    )
    out = loss_fn(denoiser, x0, t=t, seed=6, return_output=True)
    alpha_bar = schedule.alphas_cumprod[t]
    noised = fastdiff.add_noise_gaussian(x0, alpha_bar=alpha_bar, embedding=emb.weight, seed=6)
    pred = denoiser(noised.x_t, t.float())
    a = alpha_bar.float()[:, None, None]
    target = {
        "sample": noised.x0,
        "epsilon": noised.noise,
        "v_prediction": a.sqrt() * noised.noise - (1 - a).sqrt() * noised.x0,
    }[prediction_type]
    mse = fastdiff.gaussian_loss(pred, target, reduction="none")
    prior = float(schedule.alphas_cumprod[-1]) * noised.x0.square().sum(-1)
    nll = F.cross_entropy(F.linear(noised.x0, emb.weight).flatten(0, 1), x0.flatten(),
                          reduction="none").reshape(B, L)  # fmt: skip
    expect = (mse + prior + 0.5 * nll).mean()
    assert torch.equal(out.x_t, noised.x_t) and torch.equal(out.weight, alpha_bar)
    torch.testing.assert_close(out.loss, expect, rtol=1e-6, atol=0)
    out.loss.backward()
    assert float(emb.weight.grad.abs().sum()) > 0 and float(model.weight.grad.abs().sum()) > 0
    # a separate decoder: its weight and bias receive the rounding gradient
    decoder = nn.Linear(D, V)
    fnn.GaussianEmbeddingLoss(embedding=emb, schedule=schedule, projection=decoder)(
        denoiser, x0, t=t, seed=6
    ).backward()
    assert float(decoder.weight.grad.abs().sum()) > 0 and float(decoder.bias.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# fused == unfused, gradients
# --------------------------------------------------------------------------------------------


CASES = [
    ("mdlm", {"vocab_size": V, "mask_id": MASK}),
    ("sedd", {"vocab_size": V, "mask_id": MASK, "graph": "absorb"}),
    ("sedd", {"vocab_size": V, "mask_id": MASK, "graph": "absorb", "scale_by_sigma": False}),
    ("sedd", {"vocab_size": V, "graph": "uniform"}),
    ("d3pm", {"transitions": _transitions("uniform")}),
]


@pytest.mark.parametrize(("objective", "kwargs"), CASES)
def test_fused_equals_unfused_in_value_and_gradient(objective, kwargs):
    """Same times and noise; the fused path gets ``model.hidden`` and ``projection=model.head``
    (the absorbing SEDD case through the identity of :class:`fastdiff.nn.ScoreEntropyLoss`)."""
    graph = kwargs.get("graph")
    x0 = _x0(exclude=None if graph == "uniform" else MASK)
    t = torch.tensor([1, 2, 5, 6]) if objective == "d3pm" else T
    values, grads = [], []
    for fused in (False, True):
        model = TinyModel()
        extra = {"projection": model.head} if fused else {}
        loss_fn = fnn.from_objective(objective, **kwargs, **extra)
        loss = loss_fn(model.hidden if fused else model, x0, t=t, seed=11)
        loss.backward()
        values.append(loss.detach())
        grads.append(_grads(model))
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() == {n for n, _ in TinyModel().named_parameters()}
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)
        assert torch.isfinite(grads[0][name]).all() and float(grads[0][name].abs().sum()) > 0


def test_fused_absorbing_sedd_through_the_triton_kernel():
    """The shifted-bias identity also holds through the fused Triton kernel (on CPU tensors
    under Triton's interpreter without a GPU) against the unfused reference."""
    if not backend.triton_available():
        pytest.skip("triton is not importable")
    model, x0 = TinyModel(), _x0()
    unfused = fnn.ScoreEntropyLoss(vocab_size=V, mask_id=MASK)(model, x0, t=T, seed=3)
    with backend.use_backend("triton"):
        fused = fnn.ScoreEntropyLoss(vocab_size=V, mask_id=MASK, projection=model.head)(
            model.hidden, x0, t=T, seed=3
        )
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)


def test_projection_forms_and_ownership():
    """A weight tensor, a module, or a per-call projection give the same loss; the loss module
    registers no parameters (the projection stays the model's); model_kwargs reach the model."""
    model, x0 = TinyModel(), _x0()
    head = model.head
    no_bias = nn.Linear(D, V, bias=False)
    no_bias.weight = head.weight
    a = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=no_bias)(
        model.hidden, x0, t=T, seed=1
    )
    b = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=head.weight)(
        model.hidden, x0, t=T, seed=1
    )
    assert torch.equal(a, b)
    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=head)
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    c = loss_fn(model, x0, t=T, seed=1, model_kwargs={"hidden_only": True})
    d = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)(
        model.hidden, x0, t=T, seed=1, projection=head
    )
    e = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)(model, x0, t=T, seed=1)
    assert torch.equal(c, d)
    torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_fixed_and_ignored_positions():
    """``fixed`` positions keep ``x0`` and are not scored; ``ignore`` positions are not scored;
    the mean runs over the scored positions only."""
    model, x0 = TinyModel(), _x0()
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :2] = True
    ignore = torch.zeros(B, L, dtype=torch.bool)
    ignore[:, -1] = True
    t = torch.full((B,), 0.9)
    per = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, reduction="none")(
        model, x0, t=t, seed=4, fixed=fixed, ignore=ignore, return_output=True
    )
    assert torch.equal(per.x_t[fixed], x0[fixed]) and bool((per.x_t[~fixed] == MASK).any())
    assert bool((per.loss[fixed | ignore] == 0).all()) and float(per.loss.detach().sum()) > 0
    mean = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)(
        model, x0, t=t, seed=4, fixed=fixed, ignore=ignore
    )
    torch.testing.assert_close(mean, per.loss.sum() / (B * (L - 3)), rtol=1e-6, atol=0)
    total = fnn.MaskedDiffusionLoss(
        vocab_size=V, mask_id=MASK, reduction="sum", projection=model.head
    )(model.hidden, x0, t=t, seed=4, fixed=fixed, ignore=ignore)
    torch.testing.assert_close(total, per.loss.sum(), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# construction and bad input
# --------------------------------------------------------------------------------------------


def test_from_objective_builds_each_module():
    assert type(fnn.from_objective("mdlm", vocab_size=V, mask_id=MASK)) is fnn.MaskedDiffusionLoss
    sedd = fnn.from_objective("sedd", graph="uniform", vocab_size=V)
    assert isinstance(sedd, fnn.ScoreEntropyLoss) and sedd.graph == "uniform"
    assert not sedd.scale_by_sigma and isinstance(sedd.schedule, Geometric)
    assert fnn.from_objective("sedd", vocab_size=V, mask_id=MASK).scale_by_sigma
    assert isinstance(fnn.from_objective("d3pm", transitions=_transitions("uniform")), fnn.D3PMLoss)
    gauss = fnn.from_objective("gaussian", embedding=nn.Embedding(V, D))
    assert isinstance(gauss, fnn.GaussianEmbeddingLoss) and gauss.objective == "gaussian"
    assert gauss.schedule.num_steps == 2000
    with pytest.raises(ValueError, match="unknown objective"):
        fnn.from_objective("masked", vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match="graph"):
        fnn.from_objective("mdlm", graph="uniform", vocab_size=V, mask_id=MASK)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="mask"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=V)  # mask id out of range
    with pytest.raises(ValueError, match="mask_id"):
        fnn.ScoreEntropyLoss(vocab_size=V, graph="uniform", mask_id=MASK)
    with pytest.raises(ValueError, match="scale_by_sigma"):
        fnn.ScoreEntropyLoss(vocab_size=V, graph="uniform", scale_by_sigma=True)
    with pytest.raises(ValueError, match="graph"):
        fnn.ScoreEntropyLoss(vocab_size=V, graph="dense", mask_id=MASK)
    with pytest.raises(ValueError, match="reduction"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, reduction="avg")
    with pytest.raises(TypeError, match="projection"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=nn.ReLU())
    with pytest.raises(TypeError, match="schedule"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, schedule=GaussianSchedule.linear(10))
    with pytest.raises(ValueError, match="sampling_eps"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, sampling_eps=1.0)
    with pytest.raises(TypeError, match="antithetic"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, antithetic=1)
    with pytest.raises(TypeError, match="transitions"):
        fnn.D3PMLoss(transitions=torch.eye(V))
    with pytest.raises(ValueError, match="hybrid_lambda"):
        fnn.D3PMLoss(transitions=_transitions("uniform"), hybrid_lambda=-1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        fnn.GaussianEmbeddingLoss(embedding=nn.Embedding(V, D), prediction_type="x0")
    with pytest.raises(TypeError, match="embedding"):
        fnn.GaussianEmbeddingLoss(embedding=None)


def test_bad_call_raises_before_the_model_runs():
    calls = []

    def model(x_t, sigma):
        calls.append(1)
        return torch.zeros(*x_t.shape, V)

    loss_fn = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)
    x0 = _x0()
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        loss_fn(model, x0[0])
    with pytest.raises(TypeError, match="integer"):
        loss_fn(model, x0.float())
    with pytest.raises(ValueError, match="mask token"):
        loss_fn(model, torch.full((B, L), MASK))
    with pytest.raises(ValueError, match="x0"):
        loss_fn(model, torch.full((B, L), V))  # out of the vocabulary
    with pytest.raises(ValueError, match="t must have shape"):
        loss_fn(model, x0, t=T[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss_fn(model, x0, t=T + 1.0)
    with pytest.raises(ValueError, match="fixed"):
        loss_fn(model, x0, fixed=torch.zeros(B, L + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="ignore"):
        loss_fn(model, x0, ignore=torch.zeros(B, L))
    with pytest.raises(ValueError, match="vocab_size"):
        loss_fn(model, x0, projection=nn.Linear(D, V + 1))
    with pytest.raises(TypeError, match="model_kwargs"):
        loss_fn(model, x0, model_kwargs=[1])
    d3pm = fnn.D3PMLoss(transitions=_transitions("uniform"))
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        d3pm(model, x0, t=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="int64"):
        d3pm(model, x0, t=T)
    gauss = fnn.GaussianEmbeddingLoss(
        embedding=nn.Embedding(V, D), schedule=GaussianSchedule.linear(10)
    )
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        gauss(model, x0, t=torch.tensor([0, 1, 2, 10]))
    assert calls == []


def test_wrong_model_output_is_named():
    """Logits where hidden states are expected (and the reverse) say which one was needed."""
    model, x0 = TinyModel(), _x0()
    fused = fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK, projection=model.head)
    with pytest.raises(ValueError, match="hidden states"):
        fused(model, x0, t=T)
    with pytest.raises(ValueError, match="logits"):
        fnn.MaskedDiffusionLoss(vocab_size=V, mask_id=MASK)(model.hidden, x0, t=T)
    with pytest.raises(ValueError, match="reduction"):  # the fused ops return a scalar
        fnn.MaskedDiffusionLoss(
            vocab_size=V, mask_id=MASK, projection=model.head, reduction="none"
        )(model.hidden, x0, t=T)
    gauss = fnn.GaussianEmbeddingLoss(
        embedding=nn.Embedding(V, D), schedule=GaussianSchedule.linear(10)
    )
    with pytest.raises(ValueError, match="prediction"):
        gauss(lambda x_t, level: x_t[..., :2], x0)
