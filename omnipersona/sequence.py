"""Packed sequences: several samples of text, ViT and VAE-latent blocks in one flat sequence.

The builder records, per token, what it is (text id, ViT embedding, latent patch), which expert
it goes through, its RoPE position, and which block it belongs to; `build()` turns that into the
tensors the model consumes, including the attention mask:

- text blocks are causal; ViT, clean-latent and noised-latent blocks are bidirectional inside;
- every block sees all earlier blocks of its sample, except that a *noised* latent block is
  invisible to everything after it;
- samples packed together never see each other.

An image block (`<|vision_start|>` + tokens + `<|vision_end|>`) shares one RoPE position; the
next token takes the next position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum

import torch

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
SPECIAL_TOKENS = (IM_START, IM_END, VISION_START, VISION_END)


class BlockMode(IntEnum):
    CAUSAL = 0
    FULL = 1
    NOISE = 2


class LossKind(IntEnum):
    GENERATION = 0
    EDITING = 1


@dataclass
class SpecialIds:
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int


@dataclass
class PackedSequence:
    """Model inputs for a pack of samples; L = total tokens. Index tensors point into [0, L)."""

    length: int
    text_ids: torch.Tensor  # [N_text] model ids (concept tokens are >= vocab_size)
    text_index: torch.Tensor  # [N_text]
    vit_embeds: torch.Tensor  # [N_vit, H]
    vit_index: torch.Tensor  # [N_vit]
    latents: torch.Tensor  # [N_lat, D] x_t for noised blocks, x_0 for clean ones
    latent_t: torch.Tensor  # [N_lat] timestep (0 for clean conditioning latents)
    latent_pos: torch.Tensor  # [N_lat] flattened 2-D position ids
    latent_index: torch.Tensor  # [N_lat]
    is_gen: torch.Tensor  # [L] bool: True -> generation expert
    position_ids: torch.Tensor  # [L] RoPE positions
    attn_mask: torch.Tensor  # [L, L] bool, True = may attend
    sample_id: torch.Tensor  # [L]
    ce_index: torch.Tensor  # [N_ce] positions whose next-token logits are scored
    ce_labels: torch.Tensor  # [N_ce]
    mse_index: torch.Tensor  # [N_mse] noised latent positions
    mse_target: torch.Tensor  # [N_mse, D] velocity target (noise - x0)
    mse_kind: torch.Tensor  # [N_mse] LossKind
    next_position: list[int] = field(default_factory=list)  # per sample, the next free RoPE position

    def to(self, device: torch.device | str) -> PackedSequence:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if torch.is_tensor(v):
                moved[k] = v.to(device)
        return PackedSequence(**moved)


class SequenceBuilder:
    """Appends blocks sample by sample; `build()` returns one `PackedSequence`."""

    def __init__(self, special: SpecialIds, hidden_size: int, latent_dim: int, gen_token_ids: set[int]):
        self.special = special
        self.hidden_size = hidden_size
        self.latent_dim = latent_dim
        self.gen_token_ids = gen_token_ids
        self._tokens: list[tuple[str, int]] = []  # (kind, slot) per position; kind in text/vit/lat
        self._text_ids: list[int] = []
        self._vit: list[torch.Tensor] = []
        self._lat: list[torch.Tensor] = []
        self._lat_t: list[torch.Tensor] = []
        self._lat_pos: list[torch.Tensor] = []
        self._is_gen: list[bool] = []
        self._pos: list[int] = []
        self._block: list[int] = []
        self._block_mode: list[int] = []
        self._sample: list[int] = []
        self._ce_index: list[int] = []
        self._ce_labels: list[int] = []
        self._mse_index: list[int] = []
        self._mse_target: list[torch.Tensor] = []
        self._mse_kind: list[int] = []
        self._next_position: list[int] = []
        self._sample_count = 0

    # -- samples ----------------------------------------------------------------------------------
    def start_sample(self, first_position: int = 0) -> None:
        self._sample_count += 1
        self._next_position.append(first_position)

    @property
    def _sid(self) -> int:
        if not self._sample_count:
            raise RuntimeError("call start_sample() first")
        return self._sample_count - 1

    def _new_block(self, mode: BlockMode) -> int:
        self._block_mode.append(int(mode))
        return len(self._block_mode) - 1

    def _push_text(self, token_id: int, block: int, position: int) -> int:
        self._tokens.append(("text", len(self._text_ids)))
        self._text_ids.append(token_id)
        self._is_gen.append(token_id in self.gen_token_ids)
        self._pos.append(position)
        self._block.append(block)
        self._sample.append(self._sid)
        return len(self._tokens) - 1

    # -- blocks -----------------------------------------------------------------------------------
    def add_text(self, ids: list[int], loss: bool = False) -> None:
        """`<|im_start|>` ids `<|im_end|>` as one causal block. With `loss`, every token after
        `<|im_start|>` (the answer and its closing `<|im_end|>`) is a next-token CE target."""
        sid = self._sid
        block = self._new_block(BlockMode.CAUSAL)
        full = [self.special.im_start, *ids, self.special.im_end]
        positions = []
        for tid in full:
            positions.append(self._push_text(tid, block, self._next_position[sid]))
            self._next_position[sid] += 1
        if loss:
            self._ce_index.extend(positions[:-1])
            self._ce_labels.extend(full[1:])

    def add_continuation(self, ids: list[int]) -> None:
        """Tokens that continue the sample's open text block (incremental decoding): a causal
        block of their own, without markers, no loss."""
        sid = self._sid
        block = self._new_block(BlockMode.CAUSAL)
        for tid in ids:
            self._push_text(tid, block, self._next_position[sid])
            self._next_position[sid] += 1

    def add_open_text(self, ids: list[int]) -> None:
        """`<|im_start|>` ids, left open for the model to continue (the answer prompt)."""
        self.add_continuation([self.special.im_start, *ids])

    def add_vit(self, embeds: torch.Tensor) -> None:
        """A ViT block: embeddings [n, H] (connector output + 2-D position) between markers."""
        self._add_image_block(BlockMode.FULL, "vit", embeds)

    def add_latent(
        self,
        x: torch.Tensor,  # [n, D] latent patch tokens (x_t if noised, x0 if clean)
        position_ids: torch.Tensor,  # [n] flattened 2-D latent positions
        t: float = 0.0,
        target: torch.Tensor | None = None,  # [n, D] velocity target for noised blocks
        kind: LossKind = LossKind.GENERATION,
        noised: bool = False,
    ) -> list[int]:
        """A latent block; returns the sequence positions of its latent tokens."""
        mode = BlockMode.NOISE if noised else BlockMode.FULL
        self._lat_t.append(torch.full((x.shape[0],), float(t)))
        self._lat_pos.append(position_ids)
        index = self._add_image_block(mode, "lat", x)
        if target is not None:
            self._mse_index.extend(index)
            self._mse_target.append(target)
            self._mse_kind.extend([int(kind)] * len(index))
        return index

    def _add_image_block(self, mode: BlockMode, kind: str, rows: torch.Tensor) -> list[int]:
        sid = self._sid
        block = self._new_block(mode)
        position = self._next_position[sid]
        self._push_text(self.special.vision_start, block, position)
        store = self._vit if kind == "vit" else self._lat
        first = sum(r.shape[0] for r in store)
        store.append(rows)
        index = []
        for i in range(rows.shape[0]):
            self._tokens.append((kind, first + i))
            self._is_gen.append(kind == "lat")  # every VAE latent token -> generation expert
            self._pos.append(position)
            self._block.append(block)
            self._sample.append(sid)
            index.append(len(self._tokens) - 1)
        self._push_text(self.special.vision_end, block, position)
        self._next_position[sid] = position + 1
        return index

    # -- output -----------------------------------------------------------------------------------
    def build(self) -> PackedSequence:
        L = len(self._tokens)
        kinds = [k for k, _ in self._tokens]

        def where(kind: str) -> torch.Tensor:
            return torch.tensor([i for i, k in enumerate(kinds) if k == kind], dtype=torch.long)

        long = torch.long
        vit = torch.cat(self._vit) if self._vit else torch.zeros(0, self.hidden_size)
        lat = torch.cat(self._lat) if self._lat else torch.zeros(0, self.latent_dim)
        return PackedSequence(
            length=L,
            text_ids=torch.tensor(self._text_ids, dtype=long),
            text_index=where("text"),
            vit_embeds=vit,
            vit_index=where("vit"),
            latents=lat,
            latent_t=torch.cat(self._lat_t) if self._lat_t else torch.zeros(0),
            latent_pos=torch.cat(self._lat_pos).long() if self._lat_pos else torch.zeros(0, dtype=long),
            latent_index=where("lat"),
            is_gen=torch.tensor(self._is_gen, dtype=torch.bool),
            position_ids=torch.tensor(self._pos, dtype=long),
            attn_mask=packed_attention_mask(
                torch.tensor(self._sample, dtype=long),
                torch.tensor(self._block, dtype=long),
                torch.tensor(self._block_mode, dtype=long),
            ),
            sample_id=torch.tensor(self._sample, dtype=long),
            ce_index=torch.tensor(self._ce_index, dtype=long),
            ce_labels=torch.tensor(self._ce_labels, dtype=long),
            mse_index=torch.tensor(self._mse_index, dtype=long),
            mse_target=torch.cat(self._mse_target) if self._mse_target else torch.zeros(0, self.latent_dim),
            mse_kind=torch.tensor(self._mse_kind, dtype=long),
            next_position=list(self._next_position),
        )


def packed_attention_mask(sample: torch.Tensor, block: torch.Tensor, block_mode: torch.Tensor) -> torch.Tensor:
    """[L, L] bool mask from per-token sample and block ids (blocks numbered in sequence order)."""
    L = sample.shape[0]
    qi = torch.arange(L)[:, None]
    kj = torch.arange(L)[None, :]
    same_sample = sample[:, None] == sample[None, :]
    bq, bk = block[:, None], block[None, :]
    mode_q = block_mode[block][:, None]
    mode_k = block_mode[block][None, :]
    earlier_visible = (bk < bq) & (mode_k != BlockMode.NOISE)
    same_block = (bk == bq) & ((mode_q != BlockMode.CAUSAL) | (kj <= qi))
    return same_sample & (earlier_visible | same_block)
