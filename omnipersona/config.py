"""Model configuration: one definition of the BAGEL-style MoT, sized by presets.

`OmniConfig` keeps plain dicts for the three parts so that it serialises to JSON exactly as it
was given; the `transformers` / `diffusers` config objects are built from them on demand.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import Qwen2Config, SiglipVisionConfig


@dataclass
class OmniConfig:
    name: str
    # Qwen2 kwargs plus `qk_norm` (BAGEL's per-head RMS norm on q and k before RoPE).
    llm: dict[str, Any]
    # SiglipVisionConfig kwargs; `image_size // patch_size` is the learned position table's side.
    vit: dict[str, Any]
    # diffusers AutoencoderKL kwargs, including `scaling_factor` and `shift_factor`.
    vae: dict[str, Any]
    latent_patch_size: int = 2
    max_latent_size: int = 64  # side of the latent-patch position table
    vit_max_num_patch_per_side: int = 70  # side of the ViT 2-D sin-cos table
    connector_act: str = "gelu_pytorch_tanh"
    timestep_embed_dim: int = 256
    image_size: int = 512  # default render size in pixels
    # Rectified-flow timestep shift used for training (t = shift*s / (1 + (shift-1)*s)).
    train_timestep_shift: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    # --- derived -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.llm["hidden_size"]

    @property
    def latent_channels(self) -> int:
        return self.vae["latent_channels"]

    @property
    def latent_token_dim(self) -> int:
        return self.latent_channels * self.latent_patch_size**2

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def vit_patch_size(self) -> int:
        return self.vit["patch_size"]

    def llm_config(self) -> Qwen2Config:
        kwargs = {k: v for k, v in self.llm.items() if k != "qk_norm"}
        cfg = Qwen2Config(**kwargs)
        cfg.qk_norm = self.llm.get("qk_norm", True)
        return cfg

    def vit_config(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(**self.vit)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniConfig:
        return cls(**copy.deepcopy(data))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> OmniConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _llm(hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, **kw) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter,
        vocab_size=vocab,
        hidden_act="silu",
        rope_theta=kw.pop("rope_theta", 1_000_000.0),
        rms_norm_eps=1e-6,
        max_position_embeddings=kw.pop("max_position_embeddings", 32768),
        tie_word_embeddings=False,
        qk_norm=True,
        **kw,
    )


def _vae(blocks: tuple[int, ...], latent: int, groups: int, layers: int, scale: float, shift: float) -> dict:
    n = len(blocks)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(blocks),
        layers_per_block=layers,
        latent_channels=latent,
        norm_num_groups=groups,
        scaling_factor=scale,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def _vit(hidden: int, layers: int, heads: int, inter: int, image: int, patch: int) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
        num_channels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )


def tiny_config(vocab_size: int = 256) -> OmniConfig:
    """Random weights for unit tests: a training step takes a few milliseconds."""
    return OmniConfig(
        name="tiny",
        llm=_llm(32, 2, 4, 2, 64, vocab_size, max_position_embeddings=512),
        vit=_vit(16, 1, 2, 32, image=16, patch=4),
        vae=_vae((8, 8), latent=4, groups=4, layers=1, scale=1.0, shift=0.0),
        latent_patch_size=2,
        max_latent_size=8,
        vit_max_num_patch_per_side=4,
        image_size=16,
    )


def toy_config(vocab_size: int = 512) -> OmniConfig:
    """The backbone we pretrain on the toy world on a CPU: 32x32 images, 4x4-patch ViT,
    4x-downsampling VAE with 8 channels -> 4x4 grid of 32-dim latent tokens. With 4 channels the
    VAE's round trip lost markings (the recogniser read 30% of patterns wrong on reconstructions,
    so no edit could come back as the same scene); 8 read 99% right."""
    return OmniConfig(
        name="toy",
        llm=_llm(128, 4, 4, 2, 384, vocab_size, max_position_embeddings=1024),
        vit=_vit(64, 2, 4, 128, image=32, patch=4),
        vae=_vae((16, 32, 32), latent=8, groups=8, layers=1, scale=1.0, shift=0.0),
        latent_patch_size=2,
        max_latent_size=8,
        vit_max_num_patch_per_side=8,
        image_size=32,
    )


def bagel_7b_mot_config() -> OmniConfig:
    """The published BAGEL-7B-MoT shapes (Qwen2-7B LLM, SigLIP so400m/14, FLUX VAE)."""
    return OmniConfig(
        name="bagel-7b-mot",
        llm=_llm(3584, 28, 28, 4, 18944, 152064, max_position_embeddings=32768),
        # 26 of SigLIP's 27 layers; 980 px / 14 = 70 -> the 70x70 learned position table.
        vit=_vit(1152, 26, 16, 4304, image=980, patch=14),
        vae=_vae((128, 256, 512, 512), latent=16, groups=32, layers=2, scale=0.3611, shift=0.1159),
        latent_patch_size=2,
        max_latent_size=64,
        vit_max_num_patch_per_side=70,
        image_size=1024,
        train_timestep_shift=1.0,
    )


PRESETS = {"tiny": tiny_config, "toy": toy_config, "bagel-7b-mot": bagel_7b_mot_config}


def get_config(name: str, **overrides: Any) -> OmniConfig:
    """A preset by name; unknown names raise `ValueError` listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)
