"""The unified model: a BAGEL-style Mixture-of-Transformers over packed text, ViT and VAE tokens.

Module names mirror BAGEL's checkpoint keys (`language_model.model.layers.N.self_attn.q_proj`,
`..._moe_gen`, `vit_model.vision_model...`, `connector`, `vit_pos_embed`, `vae2llm`, `llm2vae`,
`time_embedder`, `latent_pos_embed`) so that loading published weights is a key-for-key copy.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.models.siglip.modeling_siglip import SiglipEncoder, SiglipVisionEmbeddings

from .config import OmniConfig
from .layers import (
    ExpertIndex,
    LayerCache,
    MLPConnector,
    MoTDecoderLayer,
    PositionEmbedding2D,
    TimestepEmbedder,
    routed,
)
from .sequence import PackedSequence

KVCache = list[LayerCache]


class MoTLanguageModel(nn.Module):
    """`language_model.model`: shared embeddings and RoPE, MoT layers, per-expert final norm."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        llm = config.llm_config()
        self.embed_tokens = nn.Embedding(llm.vocab_size, llm.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(llm) for _ in range(llm.num_hidden_layers))
        self.norm = Qwen2RMSNorm(llm.hidden_size, eps=llm.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(llm.hidden_size, eps=llm.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(llm)


class LanguageModel(nn.Module):
    def __init__(self, config: OmniConfig):
        super().__init__()
        llm = config.llm_config()
        self.model = MoTLanguageModel(config)
        self.lm_head = nn.Linear(llm.hidden_size, llm.vocab_size, bias=False)  # untied


class SiglipVisionTower(nn.Module):
    """`vit_model.vision_model`: stock `transformers` SigLIP parts (embeddings, encoder,
    post-layernorm) without the pooling head, under BAGEL's key names."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        vit_cfg = config.vit_config()
        vit_cfg._attn_implementation = "sdpa"
        self.vision_model = nn.Module()
        self.vision_model.embeddings = SiglipVisionEmbeddings(vit_cfg)
        self.vision_model.encoder = SiglipEncoder(vit_cfg)
        self.vision_model.post_layernorm = nn.LayerNorm(vit_cfg.hidden_size, eps=vit_cfg.layer_norm_eps)


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        vit_cfg = config.vit_config()
        self.vocab_size = config.llm["vocab_size"]
        self.language_model = LanguageModel(config)
        self.vit_model = SiglipVisionTower(config)
        self.connector = MLPConnector(vit_cfg.hidden_size, H, config.connector_act)
        self.vit_pos_embed = PositionEmbedding2D(config.vit_max_num_patch_per_side, H)
        self.vae2llm = nn.Linear(config.latent_token_dim, H)
        self.llm2vae = nn.Linear(H, config.latent_token_dim)
        self.time_embedder = TimestepEmbedder(H, config.timestep_embed_dim)
        self.latent_pos_embed = PositionEmbedding2D(config.max_latent_size, H)
        self.vae = AutoencoderKL(**config.vae)

    # -- frozen encoders ------------------------------------------------------------------------
    def vit_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] in [-1, 1] -> ViT tokens at LLM width [B, n, H] (connector +
        2-D position embedding added), as BAGEL feeds them to the LLM. Differentiable, so the toy
        backbone's pretraining can train the ViT; concept training calls it under no_grad."""
        vm = self.vit_model.vision_model
        p = self.config.vit_patch_size
        rows, cols = pixels.shape[-2] // p, pixels.shape[-1] // p
        w = vm.embeddings.patch_embedding.weight
        x = vm.embeddings.patch_embedding(pixels.to(w.device, w.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, n, vit_hidden]
        side = self.config.vit["image_size"] // p  # learned table is indexed row * side + col
        ids = (torch.arange(rows)[:, None] * side + torch.arange(cols)[None, :]).reshape(-1)
        x = x + vm.embeddings.position_embedding(ids.to(x.device))[None]
        x = vm.encoder(inputs_embeds=x).last_hidden_state
        x = vm.post_layernorm(x)
        x = self.connector(x)
        pos = self.vit_pos_embed.grid_ids(rows, cols).to(x.device)
        return x + self.vit_pos_embed(pos)[None].to(x.dtype)

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] in [-1, 1] -> normalised latents [B, C, h/f, w/f] (distribution mode,
        then z' = (z - shift) * scale as in BAGEL's FLUX VAE)."""
        z = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        return (z - self.config.vae["shift_factor"]) * self.config.vae["scaling_factor"]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.config.vae["scaling_factor"] + self.config.vae["shift_factor"]
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, (h/p)*(w/p), p*p*C] in BAGEL's (p, q, c) order."""
        B, C, h, w = latents.shape
        p = self.config.latent_patch_size
        x = latents.reshape(B, C, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (h // p) * (w // p), p * p * C)

    def unpatchify(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        B = tokens.shape[0]
        p, C = self.config.latent_patch_size, self.config.latent_channels
        x = tokens.reshape(B, rows, cols, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, rows * p, cols * p)

    def latent_position_ids(self, rows: int, cols: int) -> torch.Tensor:
        return self.latent_pos_embed.grid_ids(rows, cols)

    # -- the MoT --------------------------------------------------------------------------------
    def embed(self, seq: PackedSequence, concept_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [L, H]. Text ids >= vocab_size index `concept_rows` ([E, H])."""
        table = self.language_model.model.embed_tokens
        H = table.embedding_dim
        ids = seq.text_ids
        is_concept = ids >= self.vocab_size
        text = table(ids.clamp(max=self.vocab_size - 1))
        if is_concept.any():
            if concept_rows is None:
                raise ValueError("sequence holds concept tokens but no concept rows were given")
            extra = concept_rows[(ids - self.vocab_size).clamp(min=0)].to(text.dtype)
            text = torch.where(is_concept[:, None], extra, text)
        h = text.new_zeros(seq.length, H)
        h = h.index_copy(0, seq.text_index, text)
        if seq.vit_index.numel():
            h = h.index_copy(0, seq.vit_index, seq.vit_embeds.to(h.dtype))
        if seq.latent_index.numel():
            lat = (
                self.vae2llm(seq.latents.to(h.dtype))
                + self.time_embedder(seq.latent_t)
                + self.latent_pos_embed(seq.latent_pos).to(h.dtype)
            )
            h = h.index_copy(0, seq.latent_index, lat)
        return h

    def forward(
        self,
        seq: PackedSequence,
        concept_rows: torch.Tensor | None = None,
        past: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run the MoT. Returns final hidden states [L, H] (per-expert final norm applied) and
        this call's keys/values per layer. With `past`, `attn_mask` is [L, L_past + L]."""
        lm = self.language_model.model
        seq = seq.to(lm.embed_tokens.weight.device)  # builders make CPU tensors
        hidden = self.embed(seq, concept_rows)
        index = ExpertIndex.from_mask(seq.is_gen)
        rope = lm.rotary_emb(hidden, seq.position_ids[None])
        mask = seq.attn_mask if attn_mask is None else attn_mask.to(hidden.device)
        caches: KVCache = []
        for i, layer in enumerate(lm.layers):
            hidden, cache = layer(hidden, index, rope, mask, None if past is None else past[i])
            caches.append(cache)
        hidden = routed(hidden, index, lm.norm, lm.norm_moe_gen)
        return hidden, caches

    def logits(self, hidden: torch.Tensor, concept_head_rows: torch.Tensor | None = None) -> torch.Tensor:
        """[N, H] understanding-position states -> [N, vocab + E] logits; the E extra columns are
        the concept tokens' output rows, so answers can name a concept."""
        out = self.language_model.lm_head(hidden)
        if concept_head_rows is not None and concept_head_rows.numel():
            out = torch.cat([out, hidden @ concept_head_rows.to(hidden.dtype).T], dim=-1)
        return out

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] latent-position states -> predicted velocity [N, D]."""
        return self.llm2vae(hidden)


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every weight: no `.grad` buffers are ever allocated for the backbone."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
