"""Pre-LayerNorm transformer blocks shared by the generative models.

Attention uses one fused, bias-free QKV projection and a biased output projection (DiffGRM's layout).
A decoder block's cross-attention has its own weights, as in the DiffGRM release (and T5/TIGER); with
``shared_attention`` it reuses the self-attention's (this project's first layout, kept as a measured option).
The memory's keys and values are projected once per user (``Attention.memory_kv``) and shared by every group
of decoder slots of that user: the training views, or the beams and steps of decoding.

Histories are short and padded to a fixed length (Amazon Beauty: 8.4 real items of 50 on average), so the
encoder runs packed: its per-token work (projections, FFN, norms) sees only the ``T`` real tokens
``[T, D]``, and only attention scatters them into the padded ``[B, L]`` layout given by a boolean mask.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention; ``head_dim`` defaults to ``d_model / n_heads`` (T5 and TIGER set it apart)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            assert d_model % n_heads == 0, f"d_model {d_model} is not divisible by n_heads {n_heads}"
            head_dim = d_model // n_heads
        self.n_heads, self.d_attn = n_heads, n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * self.d_attn, bias=False)
        self.proj = nn.Linear(self.d_attn, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D/H]
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def memory_kv(self, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values for cross-attention, ``[B, H, S, D/H]`` each, of the packed ``memory`` ``[T, D]``
        laid out by ``mask`` ``[B, S]``; padding keys and values are 0."""
        k, v = unpack(F.linear(memory, self.qkv.weight[self.d_attn:]), mask).split(self.d_attn, dim=-1)
        return self._heads(k), self._heads(v)

    def packed_self_attention(self, x: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Self-attention of the packed tokens ``x`` ``[T, D]`` laid out by ``mask`` ``[B, L]``: bidirectional, or
        ``causal`` (each token reads itself and the tokens before it)."""
        q, k, v = (self._heads(part) for part in unpack(self.qkv(x), mask).split(self.d_attn, dim=-1))
        attn_mask = mask[:, None, None, :]
        if causal:
            attn_mask = attn_mask & torch.ones(mask.shape[1], mask.shape[1], dtype=torch.bool, device=mask.device).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(out.transpose(1, 2)[mask].flatten(1)))

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                key_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Self-attention over ``x`` ``[B, T, D]``, or cross-attention from ``x`` to ``memory_kv``.

        ``key_mask`` ``[B, S]`` is True where a key may be attended to.
        """
        if memory_kv is None:
            q, k, v = (self._heads(part) for part in self.qkv(x).split(self.d_attn, dim=-1))
        else:
            q, (k, v) = self._heads(F.linear(x, self.qkv.weight[: self.d_attn])), memory_kv
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(out.transpose(1, 2).flatten(2)))


def unpack(packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Packed rows ``[T, ...]`` -> padded ``[B, L, ...]`` with zeros where ``mask`` ``[B, L]`` is False."""
    padded = packed.new_zeros(*mask.shape, *packed.shape[1:])
    padded[mask] = packed
    return padded


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_inner: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_inner), nn.GELU(), nn.Linear(d_inner, d_model), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Bidirectional self-attention block over packed sequences: ``x`` ``[T, D]`` laid out by ``mask`` ``[B, L]``."""

    def __init__(self, d_model: int, n_heads: int, d_inner: int, dropout: float, head_dim: int | None = None):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout, head_dim)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_inner, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn.packed_self_attention(self.ln_attn(x), mask, causal)
        return x + self.ffn(self.ln_ffn(x))


class DecoderBlock(nn.Module):
    """Self-attention within each group of decoder slots (bidirectional, or causal), cross-attention of all
    of a user's groups to that user's memory, FFN. ``x`` is ``[B, G, n, D]``: G groups of n slots per user."""

    def __init__(self, d_model: int, n_heads: int, d_inner: int, dropout: float, head_dim: int | None = None,
                 shared_attention: bool = False):
        super().__init__()
        self.ln_self = nn.LayerNorm(d_model)
        self.ln_cross = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout, head_dim)
        self.cross_attn = None if shared_attention else Attention(d_model, n_heads, dropout, head_dim)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_inner, dropout)

    @property
    def memory_attention(self) -> Attention:
        """The attention that reads the memory: its own, or the self-attention's with ``shared_attention``."""
        return self.attn if self.cross_attn is None else self.cross_attn

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
                causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_self(x).flatten(0, 1), causal=causal).view_as(x)
        cross = self.memory_attention(self.ln_cross(x).flatten(1, 2), memory_kv=memory_kv, key_mask=memory_mask)
        x = x + cross.view_as(x)
        return x + self.ffn(self.ln_ffn(x))
