"""Building blocks of the Mixture-of-Transformers: expert routing, the MoT decoder layer, and the
embedders for timesteps and 2-D positions.

Every per-layer weight exists twice, once for the understanding expert (plain name) and once for
the generation expert (`_moe_gen` suffix), exactly as in BAGEL's checkpoints. A boolean
`is_gen` mask over the packed sequence decides which copy each token goes through; attention is
one shared SDPA over the whole sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config
from transformers.activations import ACT2FN
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, apply_rotary_pos_emb


@dataclass
class ExpertIndex:
    """Positions of understanding and generation tokens in a packed sequence."""

    und: torch.Tensor  # [N_und] long
    gen: torch.Tensor  # [N_gen] long
    length: int

    @classmethod
    def from_mask(cls, is_gen: torch.Tensor) -> ExpertIndex:
        return cls(
            und=(~is_gen).nonzero(as_tuple=True)[0],
            gen=is_gen.nonzero(as_tuple=True)[0],
            length=is_gen.shape[0],
        )


def routed(
    x: torch.Tensor, index: ExpertIndex, f_und: Callable[[torch.Tensor], torch.Tensor],
    f_gen: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply `f_und` to understanding rows and `f_gen` to generation rows of `x` ([L, ...])."""
    # Flow steps are all generation tokens and text decoding all understanding tokens: one expert,
    # no gather/scatter (the per-call overhead dominates at small scale).
    if index.gen.numel() == 0:
        return f_und(x)
    if index.und.numel() == 0:
        return f_gen(x)
    y_und = f_und(x.index_select(0, index.und))
    y_gen = f_gen(x.index_select(0, index.gen))
    out = y_und.new_empty((index.length, *y_und.shape[1:]))
    out.index_copy_(0, index.und, y_und)
    out.index_copy_(0, index.gen, y_gen)
    return out


class LayerCache:
    """Keys and values (after RoPE) of earlier tokens for one layer: [1, n_kv, L_past, head_dim]
    packed, or [B, n_kv, P, head_dim] per sample (padded to the longest; see `MoTAttention`)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key = key
        self.value = value


class MoTAttention(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        h, q_dim, kv_dim = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        # Qwen2: q/k/v with bias, o_proj without.
        self.q_proj = nn.Linear(h, q_dim, bias=True)
        self.k_proj = nn.Linear(h, kv_dim, bias=True)
        self.v_proj = nn.Linear(h, kv_dim, bias=True)
        self.o_proj = nn.Linear(q_dim, h, bias=False)
        self.q_proj_moe_gen = nn.Linear(h, q_dim, bias=True)
        self.k_proj_moe_gen = nn.Linear(h, kv_dim, bias=True)
        self.v_proj_moe_gen = nn.Linear(h, kv_dim, bias=True)
        self.o_proj_moe_gen = nn.Linear(q_dim, h, bias=False)
        if getattr(config, "qk_norm", True):
            self.q_norm = Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.q_norm_moe_gen = Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm_moe_gen = Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = self.q_norm_moe_gen = self.k_norm_moe_gen = nn.Identity()

    def forward(
        self,
        x: torch.Tensor,  # [L, H], already normed per expert
        index: ExpertIndex,
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [1, L, head_dim]
        attn_mask: torch.Tensor,  # [L, L_past + L] or [B, L // B, P + L // B] bool, True = may attend
        past: LayerCache | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """A 2-D mask attends over the packed sequence. A 3-D mask says the L queries are B samples
        of L // B tokens each, in order, and `past` holds each sample's own keys (padded to P):
        attention then runs per sample, [n, P + n] each, instead of [L, L_past + L] with most of
        it masked off (a batch of flow steps: B times less attention work)."""
        L = x.shape[0]
        q = routed(x, index, self.q_proj, self.q_proj_moe_gen).view(L, self.num_heads, self.head_dim)
        k = routed(x, index, self.k_proj, self.k_proj_moe_gen).view(L, self.num_kv_heads, self.head_dim)
        v = routed(x, index, self.v_proj, self.v_proj_moe_gen).view(L, self.num_kv_heads, self.head_dim)
        q = routed(q, index, self.q_norm, self.q_norm_moe_gen)
        k = routed(k, index, self.k_norm, self.k_norm_moe_gen)

        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, L, head_dim]
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        current = LayerCache(k, v)
        if attn_mask.dim() == 3:  # per sample: [1, heads, L, hd] -> [B, heads, n, hd]
            B = attn_mask.shape[0]
            q, k, v = (t[0].view(t.shape[1], B, L // B, self.head_dim).transpose(0, 1) for t in (q, k, v))
            mask = attn_mask[:, None]
        else:
            mask = attn_mask[None, None]
        if past is not None:
            k = torch.cat([past.key, k], dim=2)
            v = torch.cat([past.value, v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        out = out.transpose(1, 2).reshape(L, self.num_heads * self.head_dim)  # samples back in order
        return routed(out, index, self.o_proj, self.o_proj_moe_gen), current


class MoTDecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.self_attn = MoTAttention(config)
        self.mlp = Qwen2MLP(config)
        self.mlp_moe_gen = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        index: ExpertIndex,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor,
        past: LayerCache | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        x = routed(hidden, index, self.input_layernorm, self.input_layernorm_moe_gen)
        attn, cache = self.self_attn(x, index, rope, attn_mask, past)
        hidden = hidden + attn
        x = routed(hidden, index, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        hidden = hidden + routed(x, index, self.mlp, self.mlp_moe_gen)
        return hidden, cache


class TimestepEmbedder(nn.Module):
    """DiT's sinusoidal timestep embedding of t in [0, 1] -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [N] -> [N, H]
        emb = self.sinusoid(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table, [grid_size**2, embed_dim], row-major (row * side + col)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb_h = one_d(embed_dim // 2, grid[0])
    emb_w = one_d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1).astype(np.float32)


class PositionEmbedding2D(nn.Module):
    """Fixed 2-D sin-cos table indexed by flattened position id (row * max_side + col)."""

    def __init__(self, max_side: int, hidden_size: int):
        super().__init__()
        self.max_side = max_side
        table = torch.from_numpy(sincos_2d(hidden_size, max_side))
        # A frozen Parameter, not a buffer: BAGEL's checkpoints store it as `pos_embed`.
        self.pos_embed = nn.Parameter(table, requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]

    def grid_ids(self, rows: int, cols: int) -> torch.Tensor:
        if rows > self.max_side or cols > self.max_side:
            raise ValueError(f"grid {rows}x{cols} exceeds the position table side {self.max_side}")
        r = torch.arange(rows)[:, None] * self.max_side
        return (r + torch.arange(cols)[None, :]).reshape(-1)


class MLPConnector(nn.Module):
    """ViT features -> LLM width: fc1, GELU-tanh, fc2 (BAGEL's `connector`)."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
