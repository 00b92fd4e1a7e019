"""Hugging Face transformers models as fastdiff denoisers (the optional extra
``pip install fastdiff[hf]``; transformers is imported when an adapter is built).

:class:`HFDenoiser` wraps a transformers model with a language-model head (``*ForMaskedLM``,
``*ForCausalLM``, ...) in fastdiff's denoiser signature::

    denoiser = HFDenoiser(model)
    logits = denoiser(x_t, sigma)              # [B, L] int64, [B] -> [B, L, V]
    hidden = denoiser.hidden(x_t, sigma)       # [B, L, D]: the input of the output layer
    denoiser.projection                        # the output layer (weight [V, D], bias [V])

so that one model serves both :func:`fastdiff.sample` (``denoiser``) and the fused losses of
:mod:`fastdiff.nn`::

    loss_fn = MaskedDiffusionLoss(vocab_size=V, mask_id=m, projection=denoiser.projection)
    loss = loss_fn(denoiser.hidden, x0)        # the [B, L, V] logits are never formed

**Hidden states.** The hidden states are what the model feeds its output embeddings
(``model.get_output_embeddings()``), after any head transform: for BERT's MLM head the
``dense -> GELU -> LayerNorm`` transform runs, and the projection is the decoder (weight
tied to the input embeddings, bias ``cls.predictions.bias``). They are obtained by running the
whole model with the output layer passed through (returning its input) for that call, so every
architecture whose logits are exactly ``output_layer(h)`` works; models that rescale or
soft-cap their logits after the output layer (``final_logit_softcapping``, ``logit_scale``,
``logits_scaling`` in the config) are refused by :meth:`HFDenoiser.hidden`.

**Attention.** Masked / absorbing diffusion needs a bidirectional encoder (BERT, RoBERTa,
ModernBERT, ...): a causal decoder sees only the left context. ``attention_mask`` (``[B, L]``,
1 = attend) is passed per call (a padded batch); for a sampling run bind it with
``functools.partial(denoiser, attention_mask=mask)``.

**Time conditioning.** Models without a time input ignore ``sigma`` (MDLM and LLaDA train
such models). ``time_embedding=`` adds a learned ``[B, D]`` embedding of the noise level to
the input embeddings (``inputs_embeds = E[x_t] + time_embedding(sigma)[:, None]``);
:class:`TimeEmbedding` is one that starts at zero (the model starts unconditioned).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor, nn

from fastdiff import checks

__all__ = ["HFDenoiser", "TimeEmbedding", "require_transformers"]

_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def require_transformers() -> ModuleType:
    """Import and return :mod:`transformers`; a clear ``ImportError`` when it is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "fastdiff.hf needs the Hugging Face transformers package: "
            "pip install 'fastdiff[hf]' (or pip install transformers)"
        ) from exc
    return transformers


class TimeEmbedding(nn.Module):
    """``sigma [B] -> [B, dim]``: sinusoidal features of ``log sigma`` (``features`` of them,
    frequencies ``exp(linspace(0, log 100))``) through ``Linear -> SiLU -> Linear``; the last
    layer starts at zero, so the embedding starts as 0."""

    def __init__(self, dim: int, *, features: int = 64) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("features", features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if features % 2:
            raise ValueError(f"features must be even (cosine and sine pairs), got {features}")
        half = features // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), half)))
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, sigma: Tensor) -> Tensor:
        """The embedding ``[B, dim]`` of the noise levels ``sigma [B]`` (clamped at 1e-8)."""
        checks.floating("sigma", sigma)
        if sigma.dim() != 1:
            raise ValueError(f"sigma must have shape [B], got {tuple(sigma.shape)}")
        arg = torch.log(sigma.float().clamp(min=1e-8))[:, None] * self.freqs[None] / 4.0
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))


def _identity(hidden: Tensor) -> Tensor:
    return hidden


@contextlib.contextmanager
def _pass_through(layer: nn.Module) -> Iterator[None]:
    """While open, ``layer(h)`` returns ``h`` (an instance ``forward``, removed on exit)."""
    saved = layer.__dict__.get("forward")
    layer.forward = _identity
    try:
        yield
    finally:
        if saved is None:
            del layer.forward
        else:
            layer.forward = saved


class HFDenoiser(nn.Module):
    """A transformers language model as a fastdiff denoiser (module docstring).

    Args:
        model: a ``transformers.PreTrainedModel`` with output embeddings (a language-model
            head whose module has ``.weight [V, D]``) that takes ``input_ids`` /
            ``inputs_embeds`` and ``attention_mask`` and returns ``.logits``.
        time_embedding: optional module ``sigma [B] -> [B, D]`` added to the input embeddings
            (e.g. :class:`TimeEmbedding`); registered as a submodule (trained with the model).
    """

    def __init__(self, model: nn.Module, *, time_embedding: nn.Module | None = None) -> None:
        transformers = require_transformers()
        if not isinstance(model, transformers.PreTrainedModel):
            raise TypeError(
                f"model must be a transformers.PreTrainedModel, got {type(model).__name__}"
            )
        head = model.get_output_embeddings()
        if not isinstance(getattr(head, "weight", None), Tensor) or head.weight.dim() != 2:
            raise ValueError(
                f"{type(model).__name__} has no output embeddings with a [V, D] weight: use a "
                "model with a language-model head (e.g. BertForMaskedLM)"
            )
        if time_embedding is not None and not isinstance(time_embedding, nn.Module):
            raise TypeError(
                f"time_embedding must be an nn.Module, got {type(time_embedding).__name__}"
            )
        super().__init__()
        self.model = model
        self.time_embedding = time_embedding

    @property
    def projection(self) -> nn.Module:
        """The output layer (``.weight [V, D]``, ``.bias [V]`` or ``None``): the projection of
        the fused losses."""
        return self.model.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        """``V``, the number of output columns."""
        return self.projection.weight.shape[0]

    def _inputs(
        self, x_t: Tensor, sigma: Tensor, attention_mask: Tensor | None
    ) -> dict[str, Tensor | None]:
        x_t = checks.tokens("x_t", x_t)
        if x_t.dim() != 2:
            raise ValueError(f"x_t must have shape [B, L], got {tuple(x_t.shape)}")
        checks.floating("sigma", sigma)
        if sigma.shape != x_t.shape[:1]:
            raise ValueError(
                f"sigma must have shape [B] = [{x_t.shape[0]}], got {tuple(sigma.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != x_t.shape:
            raise ValueError(
                f"attention_mask must have the shape of x_t {tuple(x_t.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        if self.time_embedding is None:
            return {"input_ids": x_t, "attention_mask": attention_mask}
        embeds = self.model.get_input_embeddings()(x_t)
        embeds = embeds + self.time_embedding(sigma).to(embeds.dtype)[:, None, :]
        return {"inputs_embeds": embeds, "attention_mask": attention_mask}

    def forward(
        self,
        x_t: Tensor,
        sigma: Tensor,
        *,
        attention_mask: Tensor | None = None,
        hidden_only: bool = False,
    ) -> Tensor:
        """Logits ``[B, L, V]`` of ``x_t [B, L]`` at noise levels ``sigma [B]``, or with
        ``hidden_only`` the hidden states ``[B, L, D]`` that the output layer would project
        (calling the module, rather than :meth:`hidden` on a wrapped one, keeps the hooks of a
        ``DistributedDataParallel`` wrapper in the loop)."""
        inputs = self._inputs(x_t, sigma, attention_mask)
        if not hidden_only:
            return self.model(**inputs, return_dict=True).logits
        config = getattr(self.model, "config", None)
        for name in _LOGIT_POSTPROCESSING:
            value = getattr(config, name, None)
            if value is not None and value != 1:
                raise ValueError(
                    f"{type(self.model).__name__} post-processes its logits ({name}={value!r}): "
                    "its logits are not output_layer(hidden), so the fused losses cannot be used"
                )
        head = self.projection
        with _pass_through(head):
            hidden = self.model(**inputs, return_dict=True).logits
        width = head.weight.shape[1]
        if hidden.shape != (*x_t.shape, width):
            raise ValueError(
                f"{type(self.model).__name__} returned shape {tuple(hidden.shape)} with its output "
                f"layer passed through; expected the hidden states {(*tuple(x_t.shape), width)}"
            )
        return hidden

    def hidden(self, x_t: Tensor, sigma: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """The hidden states ``[B, L, D]``: ``self(x_t, sigma, hidden_only=True)``."""
        return self(x_t, sigma, attention_mask=attention_mask, hidden_only=True)
