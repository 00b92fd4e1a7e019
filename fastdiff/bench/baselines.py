"""SEDD- and MDLM-style eager baselines, for fastdiff's benchmarks and tests only.

These functions are written here (not copied) in the style of the public research code, so
that fastdiff's reference and kernels can be timed against what users run today:

- SEDD (Lou, Meng, Ermon 2024; github louaaron/Score-Entropy-Discrete-Diffusion):
  ``graph_lib.py`` (``Absorbing`` / ``Uniform`` ``score_entropy``, ``staggered_score``,
  ``transp_transition``, ``transp_rate`` / ``reverse_rate`` / ``sample_rate``),
  ``sampling.py`` (``EulerPredictor``, ``AnalyticPredictor``) and
  ``catsample.sample_categorical``;
- MDLM (Sahoo et al. 2024; github kuleshov-group/mdlm, ``diffusion.py``):
  ``_subs_parameterization``, the continuous-time loss of ``_forward_pass_diffusion`` and the
  ``_ddpm_update`` / ``_ddpm_caching_update`` step with ``_sample_categorical``.

They deliberately keep the public code's eager sequence of ops: the same full ``[N, V]``
temporaries (boolean-index copies, ``F.one_hot`` int64 matrices, ``zeros_like`` scatters,
``logsumexp`` then subtract), the same float32 Gumbel noise
``1e-10 - (torch.rand_like(p) + 1e-10).log()`` (whose tail is capped near 23, see ops.md 5),
the same ``-1e6`` "negative infinity" of MDLM and the same numerically unstable uniform ratio
``1 - V / (expm1(sigma) + V)`` of SEDD (0 in float32 for small sigma; see ops.md 3a). Where
SEDD assumes the mask token is the last column, so do these functions (``mask_id == V - 1``).

Inputs are flattened like fastdiff's ops: scores ``[N, V]``, tokens ``[N]`` (int64) and
per-row tensors ``[N]`` (``sigma``, ``dsigma``, ...). The SEDD sampling functions take the raw
log-score (the model output) and apply ``exp`` as SEDD's ``get_score_fn(sampling=True)`` does;
the analytic step also relies on SEDD's model-side convention that the log-score at the
current token is 0 (the model scatters a 0 there), which fastdiff does not need.

Never used by the library: ``fastdiff`` must not import this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# MDLM's "negative infinity" (diffusion.py: ``self.neg_infinity = -1000000.0``).
MDLM_NEG_INFINITY = -1000000.0


def _require_mask_last(mask_id: int, dim: int) -> None:
    if mask_id != dim - 1:
        raise ValueError(
            f"the SEDD-style baseline assumes the mask token is the last column ({dim - 1}), "
            f"got mask_id={mask_id}"
        )


def _esigm1(sigma: torch.Tensor) -> torch.Tensor:
    # SEDD: expm1 for small sigma, exp - 1 for the rest.
    return torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)


# --------------------------------------------------------------------------------------------
# categorical sampling and forward noising
# --------------------------------------------------------------------------------------------


def sedd_sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """SEDD / MDLM ``sample_categorical``: ``argmax p / E`` with float32-uniform Gumbel noise.

    ``E = 1e-10 - log(U + 1e-10)`` with ``U = torch.rand_like(p)`` in the dtype of ``probs``
    (float32 in practice), so ``E >= ~6e-8``: the exponential race loses its tail.
    """
    gumbel_norm = 1e-10 - (torch.rand_like(probs) + 1e-10).log()
    return (probs / gumbel_norm).argmax(dim=-1)


def sedd_corrupt_absorb(x0: torch.Tensor, sigma: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SEDD ``Absorbing.sample_transition`` (and MDLM ``q_xt``): mask with prob ``1 - e^-sigma``."""
    move_chance = 1 - (-sigma).exp()
    move_indices = torch.rand(*x0.shape, device=x0.device) < move_chance
    return torch.where(move_indices, mask_id, x0)


# --------------------------------------------------------------------------------------------
# SEDD score entropy
# --------------------------------------------------------------------------------------------


def sedd_score_entropy_absorb(
    score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
) -> torch.Tensor:
    """SEDD ``Absorbing.score_entropy`` per row (``score`` is the log-score; mask last)."""
    dim = score.shape[-1]
    _require_mask_last(mask_id, dim)
    rel_ind = x_t == dim - 1
    esigm1 = _esigm1(sigma)

    ratio = 1 / esigm1.expand_as(x_t)[rel_ind]
    other_ind = x0[rel_ind]

    # negative term: two boolean-index copies of the masked rows, as in the public code
    neg_term = ratio * torch.gather(score[rel_ind], -1, other_ind[..., None]).squeeze(-1)
    # positive term
    pos_term = score[rel_ind][:, :-1].exp().sum(dim=-1)
    # constant term
    const = ratio * (ratio.log() - 1)

    entropy = torch.zeros(*x_t.shape, device=x_t.device, dtype=score.dtype)
    entropy[rel_ind] += pos_term - neg_term + const
    return entropy


def sedd_score_entropy_uniform(
    score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """SEDD ``Uniform.score_entropy`` per row, with its unstable ``1 - V / (e + V)`` ratio."""
    dim = score.shape[-1]
    esigm1 = _esigm1(sigma)
    ratio = 1 - dim / (esigm1 + dim)

    # negative term
    neg_term = score.mean(dim=-1) - torch.gather(score, -1, x_t[..., None]).squeeze(-1) / dim
    neg_term = torch.where(
        x_t == x0,
        ratio * neg_term,
        torch.gather(score, -1, x0[..., None]).squeeze(-1) / esigm1 + neg_term,
    )
    # positive term
    sexp = score.exp()
    pos_term = sexp.mean(dim=-1) - torch.gather(sexp, -1, x_t[..., None]).squeeze(-1) / dim
    # constant term
    const = torch.where(
        x_t == x0,
        (dim - 1) / dim * ratio * (ratio.log() - 1),
        ((-ratio.log() - 1) / ratio - (dim - 2)) / dim,
    )
    return pos_term - neg_term + const


# --------------------------------------------------------------------------------------------
# SEDD absorbing sampling steps
# --------------------------------------------------------------------------------------------


def _staggered_score_absorb(score: torch.Tensor, dsigma: torch.Tensor) -> torch.Tensor:
    score = score.clone()
    extra_const = (1 - dsigma.exp()) * score.sum(dim=-1)
    score *= dsigma.exp()[:, None]
    score[..., -1] += extra_const
    return score


def _transp_transition_absorb(i: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
    sigma = sigma[..., None]
    edge = (-sigma).exp() * F.one_hot(i, num_classes=dim)
    edge += torch.where(i == dim - 1, 1 - (-sigma).squeeze(-1).exp(), 0)[..., None]
    return edge


def _transp_rate_absorb(i: torch.Tensor, dim: int) -> torch.Tensor:
    edge = -F.one_hot(i, num_classes=dim)
    edge[i == dim - 1] += 1
    return edge


def _reverse_rate(i: torch.Tensor, score: torch.Tensor, transp_rate: torch.Tensor) -> torch.Tensor:
    normalized_rate = transp_rate * score
    normalized_rate.scatter_(-1, i[..., None], torch.zeros_like(normalized_rate))
    normalized_rate.scatter_(-1, i[..., None], -normalized_rate.sum(dim=-1, keepdim=True))
    return normalized_rate


def sedd_analytic_probs_absorb(
    log_score: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """The unnormalized probabilities of SEDD's ``AnalyticPredictor`` (absorbing, mask last)."""
    dim = log_score.shape[-1]
    score = log_score.exp()  # get_score_fn(sampling=True)
    dsigma = sigma - sigma_next
    stag_score = _staggered_score_absorb(score, dsigma)
    return stag_score * _transp_transition_absorb(x, dsigma, dim)


def sedd_analytic_step_absorb(
    log_score: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    mask_id: int | None = None,
) -> torch.Tensor:
    """SEDD ``AnalyticPredictor.update_fn`` for the absorbing graph: stagger, one-hot transposed
    transition, float32-Gumbel sample. Expects ``log_score[i, x_i] = 0`` (SEDD's model does it)."""
    if mask_id is not None:
        _require_mask_last(mask_id, log_score.shape[-1])
    return sedd_sample_categorical(sedd_analytic_probs_absorb(log_score, x, sigma, sigma_next))


def sedd_euler_probs_absorb(
    log_score: torch.Tensor, x: torch.Tensor, dsigma: torch.Tensor, dt: float | torch.Tensor
) -> torch.Tensor:
    """``one_hot(x) + dt dsigma reverse_rate(x, S)`` of SEDD's ``EulerPredictor`` (unclamped)."""
    dim = log_score.shape[-1]
    score = log_score.exp()  # get_score_fn(sampling=True)
    rev_rate = dt * dsigma[..., None] * _reverse_rate(x, score, _transp_rate_absorb(x, dim))
    return F.one_hot(x, num_classes=dim).to(rev_rate) + rev_rate


def sedd_euler_step_absorb(
    log_score: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    dt: float | torch.Tensor,
    mask_id: int | None = None,
) -> torch.Tensor:
    """SEDD ``EulerPredictor.update_fn`` for the absorbing graph (``sigma`` only feeds SEDD's
    model, unused here): reverse rate from one-hot transposed rates, then ``sample_rate``."""
    del sigma
    if mask_id is not None:
        _require_mask_last(mask_id, log_score.shape[-1])
    return sedd_sample_categorical(sedd_euler_probs_absorb(log_score, x, dsigma, dt))


# --------------------------------------------------------------------------------------------
# MDLM
# --------------------------------------------------------------------------------------------


def _subs_parameterization(logits: torch.Tensor, xt: torch.Tensor, mask_index: int):
    # log prob at the mask index = "-infinity" (in place on the model output, as MDLM does)
    logits[..., mask_index] += MDLM_NEG_INFINITY
    # normalize so that exp(logits) sums to 1
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    # unmasked rows: a point mass on the current token
    unmasked_indices = xt != mask_index
    logits[unmasked_indices] = MDLM_NEG_INFINITY
    logits[unmasked_indices, xt[unmasked_indices]] = 0
    return logits


def mdlm_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    mask_id: int,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """MDLM's continuous-time SUBS loss per row: ``-log p(x0) * dsigma / expm1(sigma)``.

    MDLM adds ``-1e6`` to the mask column of the model output in place. With
    ``inplace=False`` (default) ``logits`` is cloned first so the caller's tensor is untouched;
    benchmarks pass ``inplace=True`` with a non-leaf tensor, as MDLM's model output is.
    """
    if not inplace:
        logits = logits.clone()
    model_output = _subs_parameterization(logits, x_t, mask_id)
    log_p_theta = torch.gather(input=model_output, dim=-1, index=x0[:, None]).squeeze(-1)
    return -log_p_theta * (dsigma / torch.expm1(sigma))


def mdlm_step_probs(
    logits: torch.Tensor,
    x: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_s: torch.Tensor,
    mask_id: int,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """MDLM's ``q_xs`` (unnormalized): ``p_x0 (mc_t - mc_s)`` with ``q_xs[:, m] = mc_s``."""
    if not inplace:
        logits = logits.clone()
    move_chance_t = (1 - torch.exp(-sigma_t))[:, None]
    move_chance_s = (1 - torch.exp(-sigma_s))[:, None]
    log_p_x0 = _subs_parameterization(logits, x, mask_id)
    q_xs = log_p_x0.exp() * (move_chance_t - move_chance_s)
    q_xs[:, mask_id] = move_chance_s[:, 0]
    return q_xs


def mdlm_step(
    logits: torch.Tensor,
    x: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_s: torch.Tensor,
    mask_id: int,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """MDLM ``_ddpm_update``: SUBS, ``q_xs``, float32-Gumbel sample, copy unmasked tokens."""
    q_xs = mdlm_step_probs(logits, x, sigma_t, sigma_s, mask_id, inplace=inplace)
    _x = sedd_sample_categorical(q_xs)
    copy_flag = (x != mask_id).to(x.dtype)
    return copy_flag * x + (1 - copy_flag) * _x
