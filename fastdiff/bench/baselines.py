"""Eager baselines in the style of the public implementations, for fastdiff's benchmarks and
tests only.

These functions are written here (not copied) in the style of the public research code, so
that fastdiff's reference and kernels can be timed against what users run today:

- SEDD (Lou, Meng, Ermon 2024; github louaaron/Score-Entropy-Discrete-Diffusion):
  ``graph_lib.py`` (``Absorbing`` / ``Uniform`` ``score_entropy``, ``staggered_score``,
  ``transp_transition``, ``transp_rate`` / ``reverse_rate`` / ``sample_rate``),
  ``sampling.py`` (``EulerPredictor``, ``AnalyticPredictor``) and
  ``catsample.sample_categorical``;
- MDLM (Sahoo et al. 2024; github kuleshov-group/mdlm, ``diffusion.py``):
  ``_subs_parameterization``, the continuous-time loss of ``_forward_pass_diffusion`` and the
  ``_ddpm_update`` / ``_ddpm_caching_update`` step with ``_sample_categorical``;
- D3PM (Austin et al. 2021; google-research/d3pm ``diffusion_categorical.py`` and its PyTorch
  ports): ``q_sample`` with a dense cumulative matrix and clipped float32 Gumbel noise;
- LLaDA (Nie et al. 2025; github ML-GSAI/LLaDA ``generate.py``): one inner-loop step of
  ``generate`` with low-confidence remasking, op for op as LLaDA runs it today (softmax in the
  logits' dtype, a per-sequence ``topk`` loop);
- Diffusion-LM (Li et al. 2022; github XiangLi1999/Diffusion-LM, on improved-diffusion's
  ``gaussian_diffusion.py``): ``q_sample`` after the embedding lookup, the ``mse`` term of
  ``training_losses``, ``p_sample`` and ``ddim_sample`` through ``p_mean_variance``, and the
  ``get_efficient_knn`` rounding.

They deliberately keep the public code's eager sequence of ops: the same full ``[N, V]``
temporaries (boolean-index copies, ``F.one_hot`` int64 matrices, ``zeros_like`` scatters,
``logsumexp`` then subtract, a full ``[V, N]`` distance matrix), the same float32 Gumbel noise
``1e-10 - (torch.rand_like(p) + 1e-10).log()`` (whose tail is capped near 23, see
docs/ops.md#categorical-sampling), the same ``-1e6`` "negative infinity" of MDLM and the same
numerically unstable uniform ratio ``1 - V / (expm1(sigma) + V)`` of SEDD (0 in float32 for
small sigma; see docs/ops.md#score-entropy-uniform-graph). Where
SEDD assumes the mask token is the last column, so do these functions (``mask_id == V - 1``).

Inputs are flattened like fastdiff's ops: scores ``[N, V]``, tokens ``[N]`` (int64) and
per-row tensors ``[N]`` (``sigma``, ``dsigma``, ``abar``, ...); Gaussian states ``[N, H]``.
The SEDD sampling functions take the raw log-score (the model output) and apply ``exp`` as
SEDD's ``get_score_fn(sampling=True)`` does; the analytic step also relies on SEDD's
model-side convention that the log-score at the current token is 0 (the model scatters a 0
there), which fastdiff does not need.

Never used by the library: ``import fastdiff`` does not import this module; only the benchmark
harness :mod:`fastdiff.bench` and the tests do.
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


def sedd_denoise_step_absorb(
    log_score: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, mask_id: int | None = None
) -> torch.Tensor:
    """SEDD ``Denoiser.update_fn`` for the absorbing graph: the analytic probabilities with
    ``dsigma = sigma``, the mask column dropped (``probs[..., :-1]``), float32-Gumbel sample."""
    if mask_id is not None:
        _require_mask_last(mask_id, log_score.shape[-1])
    score = log_score.exp()
    probs = _staggered_score_absorb(score, sigma) * _transp_transition_absorb(
        x, sigma, score.shape[-1]
    )
    return sedd_sample_categorical(probs[..., :-1])


def _staggered_score_uniform(score: torch.Tensor, dsigma: torch.Tensor) -> torch.Tensor:
    dim = score.shape[-1]
    epow = (-dsigma).exp()[..., None]
    return ((epow - 1) / (dim * epow)) * score.sum(dim=-1, keepdim=True) + score / epow


def _transp_transition_uniform(i: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
    trans = torch.ones(*i.shape, dim, device=i.device) * (1 - (-sigma[..., None]).exp()) / dim
    trans = trans.scatter(-1, i[..., None], torch.zeros_like(trans))
    return trans.scatter(-1, i[..., None], 1 - trans.sum(dim=-1, keepdim=True))


def sedd_analytic_probs_uniform(
    log_score: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """The unnormalized probabilities of SEDD's ``AnalyticPredictor`` on the uniform graph:
    ``Uniform.staggered_score`` times ``Uniform.transp_transition`` (not clamped at 0)."""
    score = log_score.exp()  # get_score_fn(sampling=True)
    dsigma = sigma - sigma_next
    return _staggered_score_uniform(score, dsigma) * _transp_transition_uniform(
        x, dsigma, score.shape[-1]
    )


def sedd_analytic_step_uniform(
    log_score: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """SEDD ``AnalyticPredictor.update_fn`` for the uniform graph. Expects
    ``log_score[i, x_i] = 0`` (SEDD's model scatters it)."""
    return sedd_sample_categorical(sedd_analytic_probs_uniform(log_score, x, sigma, sigma_next))


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


# --------------------------------------------------------------------------------------------
# projection then loss (what SEDD / MDLM models do: the full [N, V] logits exist)
# --------------------------------------------------------------------------------------------


def sedd_linear_score_entropy_absorb(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
) -> torch.Tensor:
    """SEDD's output layer then its loss: ``[N, V]`` log-scores ``hidden W^T``, then
    :func:`sedd_score_entropy_absorb`, summed over rows."""
    log_score = F.linear(hidden, projection)
    return sedd_score_entropy_absorb(log_score, x_t, x0, sigma, mask_id).sum()


def mdlm_linear_loss(
    hidden: torch.Tensor,
    projection: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    mask_id: int,
) -> torch.Tensor:
    """MDLM's output layer then its loss: ``[N, V]`` logits ``hidden W^T`` (a fresh model
    output, edited in place by SUBS), then :func:`mdlm_loss`, summed over rows."""
    logits = F.linear(hidden, projection)
    return mdlm_loss(logits, x_t, x0, sigma, dsigma, mask_id, inplace=True).sum()


# --------------------------------------------------------------------------------------------
# D3PM and LLaDA
# --------------------------------------------------------------------------------------------

# D3PM's ``self.eps`` added to probabilities before the log.
D3PM_EPS = 1e-6


def d3pm_corrupt_dense(x0: torch.Tensor, qbar: torch.Tensor) -> torch.Tensor:
    """D3PM ``q_sample`` with one cumulative matrix ``qbar [V, V]``: gather the rows
    ``Qbar[x0]``, ``log(p + 1e-6)``, float32 Gumbel noise from uniforms clipped at the smallest
    normal number, argmax."""
    logits = torch.log(qbar[x0] + D3PM_EPS)
    noise = torch.clip(torch.rand_like(logits), min=torch.finfo(logits.dtype).tiny, max=1.0)
    gumbel_noise = -torch.log(-torch.log(noise))
    return torch.argmax(logits + gumbel_noise, dim=-1)


def llada_unmask_step(
    logits: torch.Tensor,
    x: torch.Tensor,
    mask_id: int,
    num_transfer: torch.Tensor,
    block_end: int | None = None,
) -> torch.Tensor:
    """One inner-loop step of LLaDA's ``generate`` for ``remasking="low_confidence"`` at
    temperature 0 (its default), op for op as in ``generate.py`` since commit 8e01df8
    (2025-10; the softmax runs in the logits' dtype since f51cb17, 2025-06: before it, in
    float64). ``logits [B, L, V]`` (the model output, any float dtype), ``x [B, L]``,
    ``num_transfer [B]`` (int64: this step's column of LLaDA's ``num_transfer_tokens``);
    positions from ``block_end`` on are outside the current semi-autoregressive block
    (default ``L``: one block, an empty slice that LLaDA assigns all the same).

    The sequence: the mask of ``x``; ``add_gumbel_noise`` at temperature 0 returns the logits
    themselves (no op); ``argmax`` proposals over every column, the mask included; ``softmax``
    of the logits in their dtype and ``gather`` of the proposal's probability; ``-inf`` past
    the block; keep ``x`` off the mask; confidence ``-inf`` off the mask; a boolean
    ``zeros_like``; per sequence a ``topk`` of ``num_transfer[j]`` and an index write; the
    boolean-indexed copy into ``x``. The one addition: ``x`` is cloned first (LLaDA writes it
    in place), so the benchmark's shared inputs stay intact; returns the new tokens."""
    mask_index = x == mask_id
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits, dim=-1)
    x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    x0_p[:, x.shape[1] if block_end is None else block_end :] = -torch.inf
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -torch.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=num_transfer[j])
        transfer_index[j, select_index] = True
    x = x.clone()
    x[transfer_index] = x0[transfer_index]
    return x


# --------------------------------------------------------------------------------------------
# Diffusion-LM (improved-diffusion's Gaussian diffusion)
# --------------------------------------------------------------------------------------------


def _extract(coef: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # improved-diffusion ``_extract_into_tensor``: a per-row coefficient broadcast to the state
    res = coef.float()
    while res.dim() < len(shape):
        res = res[..., None]
    return res.expand(shape)


def diffusionlm_q_sample(
    input_ids: torch.Tensor,
    embedding: torch.Tensor,
    abar: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diffusion-LM's training input: ``x_start = E[ids]`` (``model.get_embeds``), then
    improved-diffusion ``q_sample`` with ``noise = randn_like(x_start)``. Returns
    ``(x_t, noise, x_start)``."""
    x_start = F.embedding(input_ids, embedding)
    if noise is None:
        noise = torch.randn_like(x_start)
    shape = x_start.shape
    x_t = _extract(abar.sqrt(), shape) * x_start + _extract((1.0 - abar).sqrt(), shape) * noise
    return x_t, noise, x_start


def diffusionlm_mse(model_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """improved-diffusion ``training_losses`` ``mse`` term: ``mean_flat((target -
    model_output) ** 2)``, the mean over features (fastdiff's :func:`fastdiff.gaussian_loss`
    sums them: ``H`` times this), per row ``[N]``, in the input dtype."""
    return ((target - model_output) ** 2).mean(dim=-1)


def _p_mean_variance(
    eps: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, abar_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """improved-diffusion ``p_mean_variance`` (eps prediction, ``FIXED_LARGE`` variance, no
    clipping): ``(model_mean, model_log_variance, pred_xstart)``."""
    shape = x_t.shape
    alpha = abar / abar_prev
    beta = 1.0 - alpha
    pred_xstart = (
        _extract(torch.sqrt(1.0 / abar), shape) * x_t
        - _extract(torch.sqrt(1.0 / abar - 1.0), shape) * eps
    )
    coef1 = beta * abar_prev.sqrt() / (1.0 - abar)
    coef2 = (1.0 - abar_prev) * alpha.sqrt() / (1.0 - abar)
    model_mean = _extract(coef1, shape) * pred_xstart + _extract(coef2, shape) * x_t
    model_log_variance = _extract(torch.log(beta), shape)
    return model_mean, model_log_variance, pred_xstart


def diffusionlm_ddpm_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """improved-diffusion ``p_sample``: ``mean + [not last step] exp(log_var / 2) noise`` with
    ``noise = randn_like(x_t)`` and variance ``beta_t``."""
    model_mean, model_log_variance, _ = _p_mean_variance(eps, x_t, abar, abar_prev)
    if noise is None:
        noise = torch.randn_like(x_t)
    nonzero_mask = _extract((abar_prev < 1.0).float(), x_t.shape)
    return model_mean + nonzero_mask * torch.exp(0.5 * model_log_variance) * noise


def diffusionlm_ddim_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """improved-diffusion ``ddim_sample``: ``pred_xstart`` from ``p_mean_variance`` (whose
    posterior mean is computed and unused, as there), ``eps`` recomputed from it, then
    ``sqrt(abar') x0 + sqrt(1 - abar' - sig^2) eps + sig noise``."""
    shape = x_t.shape
    _, _, pred_xstart = _p_mean_variance(eps, x_t, abar, abar_prev)
    eps = (_extract(torch.sqrt(1.0 / abar), shape) * x_t - pred_xstart) / _extract(
        torch.sqrt(1.0 / abar - 1.0), shape
    )
    sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar)) * torch.sqrt(1.0 - abar / abar_prev)
    if noise is None:
        noise = torch.randn_like(x_t)
    mean_pred = (
        pred_xstart * _extract(abar_prev.sqrt(), shape)
        + _extract(torch.sqrt(1.0 - abar_prev - sigma**2), shape) * eps
    )
    nonzero_mask = _extract((abar_prev < 1.0).float(), shape)
    return mean_pred + nonzero_mask * _extract(sigma, shape) * noise


def diffusionlm_round(
    x: torch.Tensor, embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-LM's rounding (``denoised_fn_round`` with ``get_efficient_knn``): the full
    ``[V, N]`` squared-distance matrix ``|E|^2 + |x|^2 - 2 E x^T``, clamped at 0, ``topk(-d)``
    over ``V``, then the embedding lookup. Returns ``(tokens [N], E[tokens] [N, H])``."""
    emb_norm = (embedding**2).sum(-1).view(-1, 1)
    arr_norm = (x**2).sum(-1).view(-1, 1)
    dist = emb_norm + arr_norm.transpose(0, 1) - 2.0 * torch.mm(embedding, x.t())
    dist = torch.clamp(dist, 0.0, torch.inf)
    tokens = torch.topk(-dist, k=1, dim=0).indices[0]
    return tokens, F.embedding(tokens, embedding)


def d3pm_step(
    x0_logits: torch.Tensor, x_t: torch.Tensor, q_step: torch.Tensor, qbar_prev: torch.Tensor
) -> torch.Tensor:
    """D3PM ``p_sample`` (``x_start`` logits parameterization, one matrix pair): the posterior
    logits ``log(Q_t[:, x_t]^T + 1e-6) + log(softmax(x0_logits) Qbar_{t-1} + 1e-6)`` and the
    clipped float32 Gumbel argmax of :func:`d3pm_corrupt_dense`."""
    fact1 = q_step.t()[x_t]
    fact2 = torch.softmax(x0_logits, dim=-1) @ qbar_prev
    logits = torch.log(fact1 + D3PM_EPS) + torch.log(fact2 + D3PM_EPS)
    noise = torch.clip(torch.rand_like(logits), min=torch.finfo(logits.dtype).tiny, max=1.0)
    return torch.argmax(logits - torch.log(-torch.log(noise)), dim=-1)
