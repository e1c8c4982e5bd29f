"""Load a published BAGEL checkpoint folder (e.g. BAGEL-7B-MoT) into our `OmniModel`.

The folder layout is BAGEL's own:

- `llm_config.json` -- a Qwen2 config. BAGEL always runs it with per-head q/k RMS norm
  (`qk_norm=True`) and an untied `lm_head`, whatever the file says.
- `vit_config.json` -- a SigLIP vision config. BAGEL builds its tower with
  `num_hidden_layers + 1 + vit_select_layer` layers, `vit_select_layer = -2`, i.e. it drops the
  last layer (26 of so400m's 27). Weights of that dropped layer, if the checkpoint holds them,
  are read and discarded.
- `ema.safetensors` -- every non-VAE weight under our own `OmniModel.state_dict()` names (the
  model mirrors BAGEL's module names), except that the ViT patch embedding is stored as a
  Linear `[E, p*p*C]` flattened in (ph, pw, c) order (BAGEL's `convert_conv2d_to_linear`); it
  is turned back into our Conv2d `[E, C, p, p]`. RoPE `inv_freq` buffers and SigLIP's
  `position_ids` buffer, if present, are discarded (ours are computed).
- `ae.safetensors` -- the FLUX autoencoder in the original (LDM-style) key names, converted
  with diffusers' `convert_ldm_vae_checkpoint` (one module's weight and bias at a time, so that
  every source key is accounted for) into `model.vae` (diffusers `AutoencoderKL`).
- Qwen2 tokenizer files (`tokenizer_config.json` plus `tokenizer.json` or `vocab.json` +
  `merges.txt`), read with `AutoTokenizer`; it must know `<|im_start|>`, `<|im_end|>`,
  `<|vision_start|>` and `<|vision_end|>`.

VAE config: BAGEL's folder carries none. We start from the bagel-7b-mot preset's `vae` dict
(FLUX: 16 latent channels, scaling 0.3611, shift 0.1159, no quant convs), update it with an
optional `ae_config.json` in the folder (a partial or full dict of our `OmniConfig.vae` keys,
e.g. `norm_num_groups` or the scaling factors, which tensor shapes cannot tell), and finally
take the structural fields from the tensor shapes of `ae.safetensors` (`block_out_channels`,
`layers_per_block`, `latent_channels`, in/out channels, mid-block attention). An
`ae_config.json` value that contradicts the shapes is an error.

Other `OmniConfig` fields come from the weights: `max_latent_size` and
`vit_max_num_patch_per_side` are the sides of the `latent_pos_embed` / `vit_pos_embed` tables,
`latent_patch_size` follows from `vae2llm`'s input width, `timestep_embed_dim` from the time
embedder, and `image_size` = max_latent_size * latent_patch_size * VAE downsampling. The config
is named `bagel-7b-mot` when these shapes equal the preset's, else `bagel-custom`.

Key accounting is strict: every checkpoint key must land on a parameter of ours (or be one of
the discarded ones above), every parameter of ours must be filled, and shapes must agree;
anything else raises `BackboneError` naming the keys. Tensors keep the checkpoint's dtype
(bf16 for the published weights): the model is built on the meta device and the loaded tensors
are assigned, so no fp32 copy of the 14 B parameters is ever made. Within one file, floating
tensors are cast to that file's dominant floating dtype so that no module mixes dtypes.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from .backbone import Backbone, BackboneError
from .config import OmniConfig, bagel_7b_mot_config
from .model import OmniModel, freeze
from .sequence import SPECIAL_TOKENS

LLM_CONFIG = "llm_config.json"
VIT_CONFIG = "vit_config.json"
EMA_WEIGHTS = "ema.safetensors"
AE_WEIGHTS = "ae.safetensors"
AE_CONFIG = "ae_config.json"  # optional, ours (not BAGEL's): overrides of the preset's vae dict
TOKENIZER_CONFIG = "tokenizer_config.json"

VIT_SELECT_LAYER = -2  # BAGEL: vit layers = num_hidden_layers + 1 + vit_select_layer
PATCH_WEIGHT = "vit_model.vision_model.embeddings.patch_embedding.weight"
VIT_LAYER_RE = re.compile(r"^vit_model\.vision_model\.encoder\.layers\.(\d+)\.")
# Computed buffers some checkpoints carry; ours are non-persistent and rebuilt, so drop them.
DISCARDED_RE = re.compile(
    r"^(language_model\.model\.(layers\.\d+\.self_attn\.)?rotary_emb\.[A-Za-z_]+"
    r"|vit_model\.vision_model\.embeddings\.position_ids)$"
)

LLM_REQUIRED = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)
LLM_OPTIONAL = {
    "hidden_act": "silu",
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
}
VIT_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size")
VIT_OPTIONAL = {"num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
VAE_STRUCTURAL = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                  "mid_block_add_attention", "down_block_types", "up_block_types")


def load_bagel_folder(folder: str | Path) -> Backbone:
    """A BAGEL checkpoint folder (see the module docstring) -> a frozen `Backbone`.

    Raises `BackboneError` for missing files, unreadable configs, checkpoint keys that do not
    map onto the model, parameters the checkpoint does not fill, shape mismatches, and a
    tokenizer without BAGEL's special tokens.
    """
    folder = Path(folder)
    _check_files(folder)
    llm_raw = _read_json(folder / LLM_CONFIG)
    vit_raw = _read_json(folder / VIT_CONFIG)
    ae_override = _read_json(folder / AE_CONFIG) if (folder / AE_CONFIG).is_file() else {}
    ema = _read_safetensors(folder / EMA_WEIGHTS)
    ae = _read_safetensors(folder / AE_WEIGHTS)

    config = _build_config(llm_raw, vit_raw, ae_override, ema, ae)
    n_vit_file = int(vit_raw["num_hidden_layers"])

    try:
        with torch.device("meta"):  # shapes only: the checkpoint's tensors are assigned below
            model = OmniModel(config)
    except Exception as exc:  # a config transformers / diffusers refuse
        raise BackboneError(f"{folder}: cannot build the model from its configs: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    state, sources = _translate_ema(ema, config, n_vit_file, folder / EMA_WEIGHTS)
    expected_ema = {k: s for k, s in expected.items() if not k.startswith("vae.")}
    _account(state, sources, expected_ema, folder / EMA_WEIGHTS)
    vae_state, vae_sources = _translate_ae(ae, config.vae, folder / AE_WEIGHTS)
    expected_ae = {k: s for k, s in expected.items() if k.startswith("vae.")}
    _account(vae_state, vae_sources, expected_ae, folder / AE_WEIGHTS)
    state.update(vae_state)

    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(model, config)
    tokenizer = _load_tokenizer(folder, config.llm["vocab_size"])
    return Backbone(config, freeze(model), tokenizer)


# -- files ----------------------------------------------------------------------------------------
def _check_files(folder: Path) -> None:
    if not folder.is_dir():
        raise BackboneError(f"{folder} is not a folder")
    missing = [n for n in (LLM_CONFIG, VIT_CONFIG, EMA_WEIGHTS, AE_WEIGHTS, TOKENIZER_CONFIG)
               if not (folder / n).is_file()]
    has_vocab = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    if not has_vocab:
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise BackboneError(f"{folder} is not a complete BAGEL folder: missing {', '.join(missing)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BackboneError(f"{path} does not hold a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises its own error types
        raise BackboneError(f"cannot read {path}: {exc}") from exc
    return _unify_dtype(tensors)


def _unify_dtype(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cast floating tensors to the file's dominant floating dtype (by element count)."""
    counts: Counter[torch.dtype] = Counter()
    for t in tensors.values():
        if t.is_floating_point():
            counts[t.dtype] += t.numel()
    if len(counts) <= 1:
        return tensors
    dtype = counts.most_common(1)[0][0]
    return {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}


def _names(keys: list[str] | set[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# -- config ---------------------------------------------------------------------------------------
def _table_side(ema: dict[str, torch.Tensor], key: str) -> int:
    if key not in ema:
        raise BackboneError(f"{EMA_WEIGHTS} lacks {key}, needed to size the position table")
    rows = ema[key].shape[0]
    side = math.isqrt(rows)
    if side * side != rows:
        raise BackboneError(f"{EMA_WEIGHTS}: {key} has {rows} rows, not a square number")
    return side


def _build_config(
    llm_raw: dict[str, Any],
    vit_raw: dict[str, Any],
    ae_override: dict[str, Any],
    ema: dict[str, torch.Tensor],
    ae: dict[str, torch.Tensor],
) -> OmniConfig:
    preset = bagel_7b_mot_config()
    llm = _llm_dict(llm_raw)
    vit = _vit_dict(vit_raw)
    vae = _vae_dict(ae, preset.vae, ae_override)

    max_latent_size = _table_side(ema, "latent_pos_embed.pos_embed")
    vit_side = _table_side(ema, "vit_pos_embed.pos_embed")
    latent_patch = preset.latent_patch_size
    if "vae2llm.weight" in ema:
        width, channels = ema["vae2llm.weight"].shape[1], vae["latent_channels"]
        p = math.isqrt(width // channels) if width % channels == 0 else 0
        if p * p * channels != width:
            raise BackboneError(
                f"{EMA_WEIGHTS}: vae2llm.weight takes {width} inputs, not p*p*{channels} latent channels"
            )
        latent_patch = p
    t_dim = preset.timestep_embed_dim
    if "time_embedder.mlp.0.weight" in ema:
        t_dim = ema["time_embedder.mlp.0.weight"].shape[1]
    downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    config = OmniConfig(
        name="bagel-custom",
        llm=llm,
        vit=vit,
        vae=vae,
        latent_patch_size=latent_patch,
        max_latent_size=max_latent_size,
        vit_max_num_patch_per_side=vit_side,
        connector_act=preset.connector_act,
        timestep_embed_dim=t_dim,
        image_size=max_latent_size * latent_patch * downsample,
        train_timestep_shift=preset.train_timestep_shift,
    )
    if _shape_signature(config) == _shape_signature(preset):
        config.name = preset.name
    return config


def _shape_signature(c: OmniConfig) -> tuple:
    return (
        tuple(c.llm[k] for k in LLM_REQUIRED),
        tuple(c.vit[k] for k in VIT_REQUIRED),
        tuple(c.vae["block_out_channels"]),
        c.vae["latent_channels"],
        c.vae["layers_per_block"],
        c.vae["norm_num_groups"],
        c.latent_patch_size,
        c.max_latent_size,
        c.vit_max_num_patch_per_side,
        c.timestep_embed_dim,
    )


def _llm_dict(raw: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in LLM_REQUIRED if k not in raw]
    if missing:
        raise BackboneError(f"{LLM_CONFIG} lacks {', '.join(missing)}")
    llm: dict[str, Any] = {k: raw[k] for k in LLM_REQUIRED}
    for key, default in LLM_OPTIONAL.items():
        llm[key] = raw.get(key, default)
    rope = raw.get("rope_parameters") or {}
    if isinstance(rope, dict) and "rope_theta" in rope:  # transformers >= 5 writes it here
        llm["rope_theta"] = rope["rope_theta"]
    scaling = raw.get("rope_scaling") or (rope if isinstance(rope, dict) else {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type != "default":
        raise BackboneError(f"{LLM_CONFIG}: RoPE scaling {rope_type!r} is not supported (BAGEL uses none)")
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != raw["hidden_size"] // raw["num_attention_heads"]:
        llm["head_dim"] = head_dim
    llm["tie_word_embeddings"] = False  # BAGEL: untied lm_head
    llm["qk_norm"] = True  # BAGEL: per-head RMS norm on q and k before RoPE
    return llm


def _vit_dict(raw: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in VIT_REQUIRED if k not in raw]
    if missing:
        raise BackboneError(f"{VIT_CONFIG} lacks {', '.join(missing)}")
    vit: dict[str, Any] = {k: raw[k] for k in VIT_REQUIRED}
    for key, default in VIT_OPTIONAL.items():
        vit[key] = raw.get(key, default)
    layers = int(raw["num_hidden_layers"]) + 1 + VIT_SELECT_LAYER
    if layers < 1:
        raise BackboneError(f"{VIT_CONFIG}: num_hidden_layers={raw['num_hidden_layers']} leaves no ViT layer")
    vit["num_hidden_layers"] = layers
    if vit["image_size"] % vit["patch_size"]:
        raise BackboneError(f"{VIT_CONFIG}: image_size is not a multiple of patch_size")
    return vit


def _vae_dict(
    ae: dict[str, torch.Tensor], preset: dict[str, Any], override: dict[str, Any]
) -> dict[str, Any]:
    """The preset's vae dict, updated by `ae_config.json`, with the structure read from shapes."""

    def need(key: str) -> torch.Tensor:
        if key not in ae:
            raise BackboneError(f"{AE_WEIGHTS} lacks {key}")
        return ae[key]

    levels = sorted({int(m[1]) for k in ae if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
    if not levels:
        raise BackboneError(f"{AE_WEIGHTS} holds no encoder.down.* weights: not an LDM/FLUX autoencoder")
    if levels != list(range(len(levels))):
        raise BackboneError(f"{AE_WEIGHTS}: encoder.down levels {levels} are not numbered 0..n-1")
    n = len(levels)
    blocks = sorted({int(m[1]) for k in ae if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))})
    inferred = {
        "in_channels": need("encoder.conv_in.weight").shape[1],
        "out_channels": need("decoder.conv_out.weight").shape[0],
        "block_out_channels": [need(f"encoder.down.{i}.block.0.conv1.weight").shape[0] for i in range(n)],
        "layers_per_block": len(blocks),
        "latent_channels": need("encoder.conv_out.weight").shape[0] // 2,
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in ae),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
    }
    vae = dict(preset)
    vae.update(override)
    for key in VAE_STRUCTURAL:
        if key in override and _plain(override[key]) != _plain(inferred[key]):
            raise BackboneError(
                f"{AE_CONFIG} says {key}={override[key]!r} but {AE_WEIGHTS} has {inferred[key]!r}"
            )
        vae[key] = inferred[key]
    groups = vae.get("norm_num_groups", 32)
    if any(c % groups for c in vae["block_out_channels"]):
        raise BackboneError(
            f"norm_num_groups={groups} does not divide block_out_channels {vae['block_out_channels']}: "
            f"put the right value in {AE_CONFIG}"
        )
    return vae


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- weights --------------------------------------------------------------------------------------
def _translate_ema(
    ema: dict[str, torch.Tensor], config: OmniConfig, n_vit_file: int, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """BAGEL names -> ours. Returns the state and, per our key, the source key."""
    n_vit = config.vit["num_hidden_layers"]
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, t in ema.items():
        if DISCARDED_RE.match(key):
            continue
        m = VIT_LAYER_RE.match(key)
        if m and n_vit <= int(m[1]) < n_vit_file:  # the layer(s) BAGEL's vit_select_layer drops
            continue
        if key == PATCH_WEIGHT and t.ndim == 2:
            t = _linear_to_conv(t, config, path)
        state[key] = t
        sources[key] = key
    return state, sources


def _linear_to_conv(w: torch.Tensor, config: OmniConfig, path: Path) -> torch.Tensor:
    """BAGEL's Linear [E, p*p*C] in (ph, pw, c) order -> Conv2d weight [E, C, p, p]."""
    E, p, C = config.vit["hidden_size"], config.vit["patch_size"], config.vit["num_channels"]
    if tuple(w.shape) != (E, p * p * C):
        raise BackboneError(f"{path}: {PATCH_WEIGHT} has shape {tuple(w.shape)}, expected ({E}, {p * p * C})")
    return w.reshape(E, p, p, C).permute(0, 3, 1, 2).contiguous()


def _translate_ae(
    ae: dict[str, torch.Tensor], vae_config: dict[str, Any], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LDM/FLUX autoencoder names -> `vae.` + diffusers names. The converter runs on one
    module's tensors at a time (its weight and bias: it reads up/downsample pairs together), so
    that a key it does not know is reported rather than silently dropped."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in ae.items():
        groups.setdefault(key.rsplit(".", 1)[0], {})[key] = t
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unknown: list[str] = []
    for group in groups.values():
        try:
            converted = convert_ldm_vae_checkpoint(group, vae_config)
        except KeyError as exc:  # e.g. an upsample conv's weight without its bias
            raise BackboneError(f"{path} does not match its configs: missing keys: {exc.args[0]}") from exc
        converted = {k: v for k, v in converted.items() if v is not None}  # a partner it did not find
        if len(converted) != len(group):
            unknown.extend(group)
            continue
        by_leaf = {k.rsplit(".", 1)[1]: k for k in group}  # a group's keys differ in the leaf only
        for new_key, new_t in converted.items():
            key = by_leaf.get(new_key.rsplit(".", 1)[1])
            if key is None:
                raise BackboneError(f"{path}: cannot tell which of {sorted(group)} became {new_key}")
            new_key = "vae." + new_key
            if new_key in state:
                raise BackboneError(f"{path}: {sources[new_key]} and {key} both map to {new_key}")
            state[new_key] = new_t.contiguous()
            sources[new_key] = key
    if unknown:
        raise BackboneError(f"{path}: unexpected keys (not LDM autoencoder weights): {_names(unknown)}")
    return state, sources


def _account(
    state: dict[str, torch.Tensor], sources: dict[str, str], expected: dict[str, tuple[int, ...]], path: Path
) -> None:
    unexpected = [sources[k] for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{sources[k]} {tuple(t.shape)} (expected {expected[k]})"
        for k, t in state.items()
        if k in expected and tuple(t.shape) != expected[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if wrong:
        problems.append(f"shape mismatches: {_names(wrong)}")
    if problems:
        raise BackboneError(f"{path} does not match its configs: " + "; ".join(problems))


def _rebuild_buffers(model: OmniModel, config: OmniConfig) -> None:
    """Materialise the non-persistent buffers the meta-device build left empty."""
    lm = model.language_model.model
    lm.rotary_emb = Qwen2RotaryEmbedding(config.llm_config())
    emb = model.vit_model.vision_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a new buffer in model.py that this loader does not know how to compute
        raise BackboneError(f"internal: tensors left unmaterialised after loading: {_names(left)}")


def _load_tokenizer(folder: Path, vocab_size: int):
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises many kinds
        raise BackboneError(f"{folder}: cannot load the tokenizer: {exc}") from exc
    vocab = tokenizer.get_vocab()
    absent = [t for t in SPECIAL_TOKENS if t not in vocab]
    if absent:
        raise BackboneError(f"{folder}: the tokenizer lacks BAGEL's special tokens {', '.join(absent)}")
    top = max(vocab.values())
    if top >= vocab_size:
        raise BackboneError(
            f"{folder}: tokenizer id {top} does not fit the embedding table (vocab_size={vocab_size})"
        )
    return tokenizer


__all__ = ["load_bagel_folder"]
