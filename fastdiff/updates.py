"""Public reverse (sampling) updates of discrete diffusion: SEDD Euler / analytic / final
denoise for both graphs, MDLM ancestral, and the proposal half of confidence unmasking.

Every update takes the model output ``[*B, V]`` for all positions and tokens ``x_t [*B]`` and
returns the new tokens (int64, ``[*B]``). Per-position scalars are numbers or tensors whose
shape is a prefix of ``B``. ``fixed`` (bool, prefix of ``B``) marks positions that never
change (prompt, infilling context, padding). Randomness: ``generator`` / ``seed`` / ``offset``
as in :func:`fastdiff.sample_categorical`; the same seed gives the same tokens on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdiff import backend, checks
from fastdiff import random as frandom
from fastdiff.reference import updates as ref


@dataclass
class _Step:
    scores: torch.Tensor  # [N, V]
    x: torch.Tensor  # [N]
    fixed: torch.Tensor | None  # [N]
    batch_shape: torch.Size
    device: torch.device
    vocab: int
    mask_id: int
    seed: int | torch.Tensor

    def scalar(self, name: str, value: float | torch.Tensor, **kw) -> torch.Tensor:
        t = checks.per_position(
            name, value, self.batch_shape, device=self.device, dtype=torch.float64, **kw
        )
        return t.reshape(-1)

    def done(self, out: torch.Tensor) -> torch.Tensor:
        return out.reshape(self.batch_shape)


def _prepare(
    name: str,
    scores: torch.Tensor,
    x: torch.Tensor,
    fixed: torch.Tensor | None,
    graph: str | None,
    mask_id: int | None,
    generator: torch.Generator | None,
    seed: int | torch.Tensor | None,
    offset: int,
) -> _Step:
    x = checks.tokens("x_t", x)
    vocab = checks.scores(name, scores, x)
    checks.vocab_size(vocab, minimum=2)
    fixed = checks.bool_mask("fixed", fixed, x.shape)
    device = checks.same_device(**{name: scores, "x_t": x, "fixed": fixed})
    m = checks.mask_id(mask_id, vocab, required=graph != "uniform")
    checks.token_range("x_t", x, vocab)
    checks.finite(name, scores, allow_neg_inf=True)
    checks.offset(offset)
    return _Step(
        scores=scores.reshape(-1, vocab),
        x=x.reshape(-1),
        fixed=None if fixed is None else fixed.reshape(-1),
        batch_shape=x.shape,
        device=device,
        vocab=vocab,
        mask_id=-1 if m is None else m,
        seed=frandom.resolve_seed(seed, generator, device),
    )


def _check_masked_rows_have_a_token(st: _Step) -> None:
    """Logits define ``softmax(logits, m excluded)``: a masked row whose non-mask logits are all
    ``-inf`` has no distribution (its draw would be NaN), so it is rejected."""
    if not checks.value_checks_enabled():
        return
    active = st.x == st.mask_id
    if st.fixed is not None:
        active &= ~st.fixed
    if not bool(active.any()):
        return
    # the maximum over the non-mask columns: one reduction pass over the two column views on
    # either side of the mask (no copy of the logits)
    m = st.mask_id
    sides = [st.scores[:, :m], st.scores[:, m + 1 :]]
    top = torch.stack([side.amax(-1) for side in sides if side.shape[-1]]).amax(0)
    if bool((active & torch.isneginf(top)).any()):
        raise ValueError(
            "model_output has a masked row whose non-mask logits are all -inf (no token possible)"
        )


def sedd_euler_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    dsigma: float | torch.Tensor,
    dt: float | torch.Tensor,
    graph: str,
    mask_id: int | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """SEDD Euler step (docs/ops.md#sedd-euler-step) with ``S = exp(model_output)`` (the log
    score; entry at ``x_t`` ignored).

    absorbing (masked rows): weight ``dt dsigma S_j`` for ``j != m``, stay weight
    ``max(0, 1 - dt dsigma sum_{j != m} S_j)``; uniform: ``dt dsigma S_j / V`` for ``j != x``
    and stay ``max(0, 1 - dt dsigma sum_{j != x} S_j / V)``.
    """
    graph = checks.graph(graph)
    st = _prepare("model_output", model_output, x_t, fixed, graph, mask_id, generator, seed, offset)
    rate = st.scalar("dsigma", dsigma, nonnegative=True, finite=True) * st.scalar(
        "dt", dt, nonnegative=True, finite=True
    )
    impl = backend.resolve("sedd_euler", ref.sedd_euler, st.device)
    return st.done(impl(st.scores, st.x, rate, st.fixed, st.seed, offset, graph, st.mask_id))


def sedd_analytic_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    graph: str,
    mask_id: int | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """SEDD analytic (Tweedie tau-leaping) step from ``sigma`` down to ``sigma_next``.

    With ``D = sigma - sigma_next``: absorbing (masked rows) ``p_j = expm1(D) S_j`` (j != m),
    ``p_m = max(0, 1 - expm1(D) sum_{j != m} S_j)`` — with the true score this is the exact
    posterior (unmask probability ``expm1(D) / expm1(sigma)``); uniform
    ``p = stag(S, D) * T(x, D)`` (docs/ops.md#sedd-analytic-step), negative entries clamped at 0.
    """
    graph = checks.graph(graph)
    st = _prepare("model_output", model_output, x_t, fixed, graph, mask_id, generator, seed, offset)
    hi = st.scalar("sigma", sigma, nonnegative=True)
    lo = st.scalar("sigma_next", sigma_next, nonnegative=True, finite=True)
    if checks.value_checks_enabled() and bool((lo > hi).any()):
        raise ValueError("sigma_next must be <= sigma (the reverse process lowers the noise)")
    impl = backend.resolve("sedd_analytic", ref.sedd_analytic, st.device)
    return st.done(impl(st.scores, st.x, hi - lo, st.fixed, st.seed, offset, graph, st.mask_id))


def sedd_denoise_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    graph: str,
    mask_id: int | None = None,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Final SEDD denoising step at ``sigma = sigma(t_min)``: absorbing masked rows draw from
    ``p_j ∝ S_j`` over ``j != m`` (the mask is dropped, so none stays masked); uniform rows
    draw from the analytic product with ``D = sigma``."""
    graph = checks.graph(graph)
    st = _prepare("model_output", model_output, x_t, fixed, graph, mask_id, generator, seed, offset)
    sig = st.scalar("sigma", sigma, nonnegative=True)
    if graph == "absorb":
        _check_masked_rows_have_a_token(st)
    impl = backend.resolve("sedd_denoise", ref.sedd_denoise, st.device)
    return st.done(impl(st.scores, st.x, sig, st.fixed, st.seed, offset, graph, st.mask_id))


def mdlm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    mask_id: int,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """MDLM ancestral (SUBS) step from noise level ``sigma`` (time ``t``) down to
    ``sigma_next`` (time ``s < t``) (docs/ops.md#mdlm-ancestral-step).

    Masked rows draw from ``q_j = p_j (mc_t - mc_s)`` (j != m), ``q_m = mc_s`` with
    ``p = softmax(model_output, m excluded)``, ``mc_t = 1 - e^-sigma`` and
    ``mc_s = 1 - e^-sigma_next``; unmasked rows are carried over. ``sigma_next = 0`` (the last
    step) unmasks every row.
    """
    st = _prepare("model_output", model_output, x_t, fixed, None, mask_id, generator, seed, offset)
    s_t = st.scalar("sigma", sigma, nonnegative=True)
    s_s = st.scalar("sigma_next", sigma_next, nonnegative=True)
    if checks.value_checks_enabled() and bool((s_s >= s_t).any()):
        raise ValueError("sigma_next must be < sigma (the reverse process lowers the noise)")
    _check_masked_rows_have_a_token(st)
    impl = backend.resolve("mdlm_ancestral", ref.mdlm_ancestral, st.device)
    return st.done(impl(st.scores, st.x, s_t, s_s, st.fixed, st.seed, offset, st.mask_id))


CONFIDENCES = ("prob", "margin", "entropy")


def unmask_candidates(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    *,
    mask_id: int,
    temperature: float = 0.0,
    confidence: str = "prob",
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals and confidences for confidence-based unmasking (docs/ops.md#unmask-candidates).

    For each masked, non-fixed position: ``p = softmax(model_output, m excluded)``; the proposal is
    ``argmax p`` (``temperature = 0``) or a Gumbel draw at that temperature; the confidence is
    ``p(xhat)``, the margin ``p1 - p2``, or the negative entropy ``sum p log p``.
    Returns ``(xhat [*B] int64, confidence [*B] float32)``; other positions get ``x_t`` and
    ``-inf``. Pass the confidence to :func:`fastdiff.unmasking.select_commits`.
    """
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    temperature = checks.temperature(temperature)
    checks.tempered("model_output", model_output, temperature, is_log=True)
    st = _prepare("model_output", model_output, x_t, fixed, None, mask_id, generator, seed, offset)
    _check_masked_rows_have_a_token(st)
    impl = backend.resolve("unmask_candidates", ref.unmask_candidates, st.device)
    xhat, conf = impl(
        st.scores, st.x, st.fixed, st.seed, offset, st.mask_id, float(temperature), confidence
    )
    return st.done(xhat), conf.reshape(st.batch_shape)
