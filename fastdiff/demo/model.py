"""The demo's compact transformer denoiser: tokens ``x_t [B, L]`` and noise ``sigma [B]`` to
logits ``[B, L, V]``.

Layout (DiT-style, as in SEDD): token embeddings; ``depth`` pre-norm blocks of bidirectional
multi-head attention (:func:`torch.nn.functional.scaled_dot_product_attention`, rotary position
embeddings on queries and keys) and a GELU MLP; the noise level enters through adaptive layer
norm: a sinusoidal embedding of ``log sigma`` goes through a small MLP to ``c [B, D]``, and each
block turns ``c`` into a shift, scale and gate for each of its two branches
(``h + gate * branch(norm(h) * (1 + scale) + shift)``).
The modulation layers and the output head start at zero, so the untrained model predicts the
uniform distribution over the vocabulary and every block starts as the identity.

:meth:`Denoiser.hidden` returns the last hidden states ``[B, L, D]``; the head is
``logits = hidden W^T + b`` (``W = head.weight [V, D]``), which the fused losses
(:func:`fastdiff.linear_masked_diffusion_loss`, :func:`fastdiff.linear_score_entropy`) apply
without materializing the logits.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of a :class:`Denoiser`: vocabulary ``V``, maximum length, width ``D``, blocks,
    attention heads (``D / heads`` an even integer, for the rotary embedding) and MLP
    expansion."""

    vocab_size: int = 257
    max_len: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f.name} must be an int >= 1, got {v!r}")
        if self.dim % (2 * self.heads):
            raise ValueError(
                f"dim ({self.dim}) must be a multiple of 2 * heads ({2 * self.heads}): the head "
                "width must be even for the rotary embedding"
            )


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotary position embedding tables ``cos, sin [length, head_dim / 2]``: position ``p``
    turns the pair of channels ``(i, i + head_dim / 2)`` by the angle ``p base^(-2i/head_dim)``."""
    freqs = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float32) * 2.0 / head_dim)
    angle = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cos(angle), torch.sin(angle)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply the rotary embedding to ``x [B, heads, L, head_dim]``."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (1 + scale) + shift`` with ``shift, scale [B, D]`` broadcast over positions."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


class NoiseEmbedding(nn.Module):
    """``sigma [B] -> c [B, D]``: sinusoidal features of ``log sigma``, then a two-layer MLP."""

    def __init__(self, dim: int, features: int = 64) -> None:
        super().__init__()
        half = features // 2
        # frequencies spanning log-sigma ranges from about 1e-3 to 1e2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), half)))
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: Tensor) -> Tensor:
        arg = torch.log(sigma.float().clamp(min=1e-8))[:, None] * self.freqs[None] / 4.0
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))


class Block(nn.Module):
    """One pre-norm transformer block with adaLN-zero conditioning."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim),
        )
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, c: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(h), shift1, scale1)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + gate1[:, None] * self.proj(att)
        return h + gate2[:, None] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class Denoiser(nn.Module):
    """Transformer denoiser ``(x_t [B, L] int64, sigma [B]) -> logits [B, L, V]`` (``L <=
    max_len``). For SEDD objectives the logits are the raw output that
    :func:`fastdiff.scale_by_sigma` turns into log-scores (absorbing graph) or the log-scores
    themselves (uniform graph)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.tok = nn.Embedding(config.vocab_size, d)
        cos, sin = rotary_tables(config.max_len, d // config.heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.noise = NoiseEmbedding(d)
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada = nn.Linear(d, 2 * d)
        self.head = nn.Linear(d, config.vocab_size)
        for layer in (self.ada, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def hidden(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Last hidden states ``[B, L, D]`` (before the output head)."""
        if x.dim() != 2 or x.shape[1] > self.config.max_len:
            raise ValueError(
                f"x must have shape [B, L] with L <= {self.config.max_len}, got {tuple(x.shape)}"
            )
        if sigma.shape != x.shape[:1]:
            raise ValueError(f"sigma must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
        c = self.noise(sigma)
        n = x.shape[1]
        h = self.tok(x)
        for block in self.blocks:
            h = block(h, c, self.cos[:n], self.sin[:n])
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
        return _modulate(self.norm(h), shift, scale)

    def forward(self, x: Tensor, sigma: Tensor, *, hidden_only: bool = False) -> Tensor:
        """Logits ``[B, L, V]``, or with ``hidden_only`` the hidden states ``[B, L, D]`` (for the
        fused projection + loss; going through ``forward`` keeps DDP's hooks in the loop)."""
        h = self.hidden(x, sigma)
        return h if hidden_only else self.head(h)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
