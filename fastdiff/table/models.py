"""The table's model variants, built from the demo's transformer pieces
(:mod:`fastdiff.demo.model`: rotary tables, adaLN-zero blocks, the noise embedding) so every
row has the same width, depth, heads and MLP.

- :class:`~fastdiff.demo.model.Denoiser` itself (MDLM, SEDD, D3PM): tokens ``x_t [B, L]`` and
  the noise level ``[B]`` (``sigma``; D3PM: the step ``t`` in ``1..T`` as a float) to logits
  ``[B, L, V]``.
- :class:`CausalLM` (AR): the same blocks with a causal attention mask; the time conditioning
  is replaced by a learned constant vector ``c [D]``.
- :class:`EmbeddingDenoiser` (Gaussian, Diffusion-LM / PLAID style): a state
  ``x_t [B, L, H]`` in the space of a learned ``nn.Embedding(V, H)`` enters through a linear
  projection ``H -> D`` (instead of the token embedding) and the output head ``D -> H``
  predicts the clean embedding ``x0`` (``prediction_type="sample"``); its time input is the
  0-based schedule index ``j``, embedded as the demo embeds ``sigma = j + 1``.

Every output head starts at zero (uniform logits; a zero ``x0`` prediction) and every block
starts as the identity, as in the demo.

**The AR likelihood** (:func:`ar_nll`). A window ``x_1..x_L`` is scored on its own, as the
diffusion rows score it: the model reads ``[BOS, x_1, ..., x_{L-1}]`` (``BOS = V``, an input
token that is never predicted) and ``-log p(x) = -sum_i log p(x_i | BOS, x_{<i})`` with
``p(. | ...)`` a softmax over the ``V`` output tokens. These conditionals define a
distribution over the ``V^L`` windows (``sum_x p(x) = 1`` exactly), so the AR number is an
exact negative log-likelihood of the window, comparable with the diffusion rows' bounds on
the same windows (no context before the window for any row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiff.demo.model import (
    Block,
    Denoiser,
    ModelConfig,
    _modulate,
    _rotate,
    rotary_tables,
)

__all__ = ["CausalBlock", "CausalLM", "EmbeddingDenoiser", "ar_nll"]


class CausalBlock(Block):
    """:class:`~fastdiff.demo.model.Block` with causal attention (position ``i`` attends to
    positions ``<= i``); the same parameters and conditioning."""

    def forward(self, h: Tensor, c: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(h), shift1, scale1)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + gate1[:, None] * self.proj(att.transpose(1, 2).reshape(b, n, d))
        return h + gate2[:, None] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class CausalLM(nn.Module):
    """Autoregressive transformer ``tokens [B, L] -> logits [B, L, V]`` where ``logits[:, i]``
    is the distribution of token ``i`` given the inputs ``<= i`` (module docstring). The input
    vocabulary is ``V + 1`` (``bos_id = V``); ``config.vocab_size`` is ``V``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.bos_id = config.vocab_size
        self.tok = nn.Embedding(config.vocab_size + 1, d)
        cos, sin = rotary_tables(config.max_len, d // config.heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.cond = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(
            CausalBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada = nn.Linear(d, 2 * d)
        self.head = nn.Linear(d, config.vocab_size)
        for layer in (self.ada, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``[B, L, V]`` of the input tokens ``[B, L]`` (``BOS`` first, then data)."""
        if inputs.dim() != 2 or inputs.shape[1] > self.config.max_len:
            raise ValueError(
                f"inputs must have shape [B, L] with L <= {self.config.max_len}, got "
                f"{tuple(inputs.shape)}"
            )
        n = inputs.shape[1]
        c = self.cond.expand(inputs.shape[0], -1)
        h = self.tok(inputs)
        for block in self.blocks:
            h = block(h, c, self.cos[:n], self.sin[:n])
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
        return self.head(_modulate(self.norm(h), shift, scale))

    def shifted(self, x0: Tensor) -> Tensor:
        """The inputs that predict ``x0 [B, L]``: ``[BOS, x0[:, :-1]]``."""
        bos = x0.new_full((x0.shape[0], 1), self.bos_id)
        return torch.cat([bos, x0[:, :-1]], dim=1)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def ar_nll(model: CausalLM, x0: Tensor) -> Tensor:
    """Exact negative log-likelihood of each window, in nats: float64 ``[B]``,
    ``-sum_i log p(x0_i | BOS, x0_{<i})`` (teacher forcing; module docstring)."""
    if x0.dim() != 2 or x0.dtype != torch.int64:
        raise ValueError(f"x0 must be int64 token ids [B, L], got {x0.dtype} {tuple(x0.shape)}")
    logits = model(model.shifted(x0)).double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    return -logp.sum(-1)


class EmbeddingDenoiser(Denoiser):
    """``(x_t [B, L, H], j [B]) -> x0 prediction [B, L, H]`` over the learned embedding
    ``self.embedding = nn.Embedding(V, H)`` (module docstring); ``config.vocab_size`` is ``V``
    (the embedded tokens; there is no mask token)."""

    def __init__(self, config: ModelConfig, width: int) -> None:
        super().__init__(config)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        self.width = width
        self.embedding = nn.Embedding(config.vocab_size, width)
        self.tok = nn.Linear(width, config.dim)  # the input projection replaces the embedding
        self.head = nn.Linear(config.dim, width)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Last hidden states ``[B, L, D]`` of the state ``x [B, L, H]`` at the 0-based step
        ``sigma [B]`` (embedded as ``sigma + 1``)."""
        if x.dim() != 3 or x.shape[1] > self.config.max_len or x.shape[2] != self.width:
            raise ValueError(
                f"x must have shape [B, L, {self.width}] with L <= {self.config.max_len}, got "
                f"{tuple(x.shape)}"
            )
        if sigma.shape != x.shape[:1]:
            raise ValueError(f"the step must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
        c = self.noise(sigma.float() + 1.0)
        n = x.shape[1]
        h = self.tok(x.to(self.tok.weight.dtype))
        for block in self.blocks:
            h = block(h, c, self.cos[:n], self.sin[:n])
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
        return _modulate(self.norm(h), shift, scale)
