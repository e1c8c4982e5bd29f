"""`load_bagel_folder` on a small random folder written in BAGEL's published layout.

The folder is built here independently of the loader: BAGEL's key names for `ema.safetensors`
(ViT patch embedding as a Linear in (ph, pw, c) order, one extra ViT layer that BAGEL's
`vit_select_layer=-2` drops), the FLUX autoencoder's LDM key names for `ae.safetensors`
enumerated from the architecture by hand, and a byte-level BPE tokenizer with Qwen's markers.
References for the forward checks are stock `transformers` models fed the source tensors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from omnipersona.backbone import Backbone, BackboneError
from omnipersona.bagel import _build_config, load_bagel_folder
from omnipersona.config import bagel_7b_mot_config
from omnipersona.sequence import SPECIAL_TOKENS, SequenceBuilder

# LLM
H, LAYERS, HEADS, KV, INTER = 32, 2, 4, 2, 64
HEAD_DIM = H // HEADS
ROPE_THETA, EPS = 10000.0, 1e-6
# ViT: the file says 3 layers, BAGEL (and we) use 2
VIT_H, VIT_LAYERS_FILE, VIT_HEADS, VIT_INTER, VIT_IMAGE, VIT_PATCH = 16, 3, 2, 32, 16, 4
VIT_SIDE = VIT_IMAGE // VIT_PATCH  # learned SigLIP position table side
VIT_POS_SIDE = 5  # vit_pos_embed (fixed 2-D table at LLM width) side
LATENT_SIDE = 6  # latent_pos_embed side
# VAE (FLUX-style Encoder/Decoder): ch 8, ch_mult (1, 2) -> channels (8, 16), 1 res block per level
VAE_CH, VAE_MULT, VAE_LAYERS, Z, GROUPS = 8, (1, 2), 1, 4, 4
LATENT_PATCH, T_DIM = 2, 256

LM = "language_model.model."
VIT = "vit_model.vision_model."
PATCH_W = VIT + "embeddings.patch_embedding.weight"

CORPUS = [
    "a photo of a red dog on the beach",
    "what is in this image? a blue mug and a green ball",
    "generate a picture of a yellow star in the forest",
    "edit: change the colour of the box to purple",
] * 4


# -- the folder ---------------------------------------------------------------------------------------
def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return fast


def make_ema(vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}

    def r(name: str, *shape: int, scale: float = 0.2, base: float = 0.0) -> None:
        t[name] = base + scale * torch.randn(*shape, generator=g)

    r(LM + "embed_tokens.weight", vocab, H, scale=1.0)
    for i in range(LAYERS):
        L = f"{LM}layers.{i}."
        for s in ("", "_moe_gen"):
            r(L + f"self_attn.q_proj{s}.weight", HEADS * HEAD_DIM, H)
            r(L + f"self_attn.q_proj{s}.bias", HEADS * HEAD_DIM)
            for kv in ("k", "v"):
                r(L + f"self_attn.{kv}_proj{s}.weight", KV * HEAD_DIM, H)
                r(L + f"self_attn.{kv}_proj{s}.bias", KV * HEAD_DIM)
            r(L + f"self_attn.o_proj{s}.weight", H, HEADS * HEAD_DIM)
            r(L + f"self_attn.q_norm{s}.weight", HEAD_DIM, scale=0.1, base=1.0)
            r(L + f"self_attn.k_norm{s}.weight", HEAD_DIM, scale=0.1, base=1.0)
            r(L + f"mlp{s}.gate_proj.weight", INTER, H)
            r(L + f"mlp{s}.up_proj.weight", INTER, H)
            r(L + f"mlp{s}.down_proj.weight", H, INTER)
            r(L + f"input_layernorm{s}.weight", H, scale=0.1, base=1.0)
            r(L + f"post_attention_layernorm{s}.weight", H, scale=0.1, base=1.0)
    r(LM + "norm.weight", H, scale=0.1, base=1.0)
    r(LM + "norm_moe_gen.weight", H, scale=0.1, base=1.0)
    r("language_model.lm_head.weight", vocab, H)

    r(PATCH_W, VIT_H, VIT_PATCH * VIT_PATCH * 3)  # BAGEL's Linear form
    r(VIT + "embeddings.patch_embedding.bias", VIT_H)
    r(VIT + "embeddings.position_embedding.weight", VIT_SIDE**2, VIT_H)
    for i in range(VIT_LAYERS_FILE):
        L = f"{VIT}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            r(L + f"{n}.weight", VIT_H, scale=0.1, base=1.0)
            r(L + f"{n}.bias", VIT_H, scale=0.1)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            r(L + f"self_attn.{n}.weight", VIT_H, VIT_H, scale=0.3)
            r(L + f"self_attn.{n}.bias", VIT_H, scale=0.1)
        r(L + "mlp.fc1.weight", VIT_INTER, VIT_H, scale=0.3)
        r(L + "mlp.fc1.bias", VIT_INTER, scale=0.1)
        r(L + "mlp.fc2.weight", VIT_H, VIT_INTER, scale=0.3)
        r(L + "mlp.fc2.bias", VIT_H, scale=0.1)
    r(VIT + "post_layernorm.weight", VIT_H, scale=0.1, base=1.0)
    r(VIT + "post_layernorm.bias", VIT_H, scale=0.1)

    r("connector.fc1.weight", H, VIT_H)
    r("connector.fc1.bias", H)
    r("connector.fc2.weight", H, H)
    r("connector.fc2.bias", H)
    r("vit_pos_embed.pos_embed", VIT_POS_SIDE**2, H)
    r("latent_pos_embed.pos_embed", LATENT_SIDE**2, H)
    r("vae2llm.weight", H, Z * LATENT_PATCH**2)
    r("vae2llm.bias", H)
    r("llm2vae.weight", Z * LATENT_PATCH**2, H)
    r("llm2vae.bias", Z * LATENT_PATCH**2)
    r("time_embedder.mlp.0.weight", H, T_DIM)
    r("time_embedder.mlp.0.bias", H)
    r("time_embedder.mlp.2.weight", H, H)
    r("time_embedder.mlp.2.bias", H)
    return t


def ldm_autoencoder(ch: int, mult: tuple[int, ...], n_res: int, z: int, make) -> dict[str, torch.Tensor]:
    """The LDM/FLUX `Encoder` / `Decoder` parameter names and shapes, written out from the
    architecture (flux/modules/autoencoder.py); `make(shape, kind)` makes each tensor."""
    t: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        t[f"{name}.weight"] = make((cout, cin, k, k), "w")
        t[f"{name}.bias"] = make((cout,), "b")

    def norm(name: str, c: int) -> None:
        t[f"{name}.weight"] = make((c,), "g")
        t[f"{name}.bias"] = make((c,), "b")

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.mid.block_1", c, c)
        norm(f"{prefix}.mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{n}", c, c, 1)
        resnet(f"{prefix}.mid.block_2", c, c)

    chans = [ch * m for m in mult]
    conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, c in enumerate(chans):
        for j in range(n_res):
            resnet(f"encoder.down.{i}.block.{j}", cin, c)
            cin = c
        if i != len(chans) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", 2 * z, cin, 3)

    cin = chans[-1]
    conv("decoder.conv_in", cin, z, 3)
    mid("decoder", cin)
    for i in reversed(range(len(chans))):
        for j in range(n_res + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, chans[i])
            cin = chans[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", 3, cin, 3)
    return t


def make_ae(g: torch.Generator) -> dict[str, torch.Tensor]:
    def make(shape: tuple[int, ...], kind: str) -> torch.Tensor:
        x = 0.1 * torch.randn(*shape, generator=g)
        return x + 1.0 if kind == "g" else x

    return ldm_autoencoder(VAE_CH, VAE_MULT, VAE_LAYERS, Z, make)


def llm_config_json(vocab: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "intermediate_size": INTER,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "rope_theta": ROPE_THETA,
        "rms_norm_eps": EPS,
        "max_position_embeddings": 128,
        "max_window_layers": LAYERS,
        "sliding_window": 128,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def vit_config_json() -> dict:
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": VIT_H,
        "intermediate_size": VIT_INTER,
        "num_hidden_layers": VIT_LAYERS_FILE,
        "num_attention_heads": VIT_HEADS,
        "image_size": VIT_IMAGE,
        "patch_size": VIT_PATCH,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    }


def write_folder(folder: Path, tokenizer, ema, ae, vocab: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "llm_config.json").write_text(json.dumps(llm_config_json(vocab)))
    (folder / "vit_config.json").write_text(json.dumps(vit_config_json()))
    # Ours, optional: what ae.safetensors' shapes cannot tell (the preset's FLUX values otherwise).
    (folder / "ae_config.json").write_text(
        json.dumps({"norm_num_groups": GROUPS, "scaling_factor": 0.5, "shift_factor": 0.1})
    )
    save_file(ema, folder / "ema.safetensors")
    save_file(ae, folder / "ae.safetensors")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    tokenizer = make_tokenizer()
    vocab = (len(tokenizer) // 16 + 2) * 16  # padded past the tokenizer, as Qwen's 152064 is
    ema, ae = make_ema(vocab, g), make_ae(g)
    folder = write_folder(tmp_path_factory.mktemp("bagel"), tokenizer, ema, ae, vocab)
    return {"folder": folder, "ema": ema, "ae": ae, "vocab": vocab, "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def backbone(src):
    return load_bagel_folder(src["folder"])


def variant(src, tmp_path: Path, ema=None, ae=None, drop: str | None = None) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(src["folder"], folder)
    if ema is not None:
        save_file(ema, folder / "ema.safetensors")
    if ae is not None:
        save_file(ae, folder / "ae.safetensors")
    if drop is not None:
        (folder / drop).unlink()
    return folder


# -- config ---------------------------------------------------------------------------------------------
def test_config_read_from_folder(backbone, src):
    c = backbone.config
    assert c.name == "bagel-custom"
    assert c.llm["vocab_size"] == src["vocab"] and c.llm["hidden_size"] == H
    assert c.llm["qk_norm"] is True and c.llm["tie_word_embeddings"] is False
    assert c.llm["rope_theta"] == ROPE_THETA
    assert c.vit["num_hidden_layers"] == VIT_LAYERS_FILE - 1
    assert c.vit_max_num_patch_per_side == VIT_POS_SIDE and c.max_latent_size == LATENT_SIDE
    assert c.vae["block_out_channels"] == [VAE_CH * m for m in VAE_MULT]
    assert (c.vae["latent_channels"], c.vae["layers_per_block"], c.vae["norm_num_groups"]) == (Z, VAE_LAYERS, GROUPS)
    assert (c.vae["scaling_factor"], c.vae["shift_factor"]) == (0.5, 0.1)
    assert c.vae["use_quant_conv"] is False and c.vae["use_post_quant_conv"] is False
    assert c.latent_patch_size == LATENT_PATCH and c.image_size == LATENT_SIDE * LATENT_PATCH * 2
    assert len(backbone.model.vit_model.vision_model.encoder.layers) == VIT_LAYERS_FILE - 1
    ids = backbone.special_ids
    assert len({ids.im_start, ids.im_end, ids.vision_start, ids.vision_end}) == 4


def test_published_shapes_give_the_preset():
    """BAGEL-7B-MoT's config files and tensor shapes (meta tensors: shapes only) -> the preset."""
    preset = bagel_7b_mot_config()
    llm = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
        "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "hidden_act": "silu", "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06, "max_position_embeddings": 32768, "max_window_layers": 28,
        "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_scaling": None,
    }
    vit = {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "siglip_vision_model",
           "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}
    ema = {
        "latent_pos_embed.pos_embed": torch.empty(64 * 64, 3584, device="meta"),
        "vit_pos_embed.pos_embed": torch.empty(70 * 70, 3584, device="meta"),
        "vae2llm.weight": torch.empty(3584, 64, device="meta"),
        "time_embedder.mlp.0.weight": torch.empty(3584, 256, device="meta"),
    }
    ae = ldm_autoencoder(128, (1, 2, 4, 4), 2, 16, lambda shape, kind: torch.empty(shape, device="meta"))
    config = _build_config(llm, vit, {}, ema, ae)
    assert config.to_dict() == preset.to_dict()


# -- weights ------------------------------------------------------------------------------------------
def test_every_ema_key_consumed_and_equal(backbone, src):
    ours = backbone.model.state_dict()
    dropped = [k for k in src["ema"] if k.startswith(f"{VIT}encoder.layers.{VIT_LAYERS_FILE - 1}.")]
    assert len(dropped) == 16
    assert not any(k.startswith(f"{VIT}encoder.layers.{VIT_LAYERS_FILE - 1}.") for k in ours)
    non_vae = {k for k in ours if not k.startswith("vae.")}
    assert non_vae == set(src["ema"]) - set(dropped)
    for key, value in src["ema"].items():
        if key in dropped:
            continue
        if key == PATCH_W:
            E, p = VIT_H, VIT_PATCH
            value = value.reshape(E, p, p, 3).permute(0, 3, 1, 2)
        assert ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key


def _fingerprint(t: torch.Tensor) -> tuple[int, str]:
    return t.numel(), hashlib.sha256(t.detach().contiguous().float().numpy().tobytes()).hexdigest()


def test_every_ae_key_consumed_and_mapped(backbone, src):
    ae = src["ae"]
    vae = {k: v for k, v in backbone.model.state_dict().items() if k.startswith("vae.")}
    # Every source tensor shows up exactly once (1x1 attention convs as Linear), nothing else.
    assert len(vae) == len(ae)
    assert sum(v.numel() for v in vae.values()) == sum(v.numel() for v in ae.values())
    assert sorted(map(_fingerprint, vae.values())) == sorted(map(_fingerprint, ae.values()))
    # The LDM -> diffusers renaming, checked by hand on every kind of key.
    mapping = {
        "encoder.conv_in.weight": "vae.encoder.conv_in.weight",
        "encoder.down.0.block.0.conv1.weight": "vae.encoder.down_blocks.0.resnets.0.conv1.weight",
        "encoder.down.0.downsample.conv.weight": "vae.encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight": "vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid.block_2.norm2.bias": "vae.encoder.mid_block.resnets.1.norm2.bias",
        "encoder.mid.attn_1.norm.weight": "vae.encoder.mid_block.attentions.0.group_norm.weight",
        "encoder.mid.attn_1.k.bias": "vae.encoder.mid_block.attentions.0.to_k.bias",
        "encoder.mid.attn_1.proj_out.bias": "vae.encoder.mid_block.attentions.0.to_out.0.bias",
        "encoder.norm_out.weight": "vae.encoder.conv_norm_out.weight",
        "encoder.conv_out.weight": "vae.encoder.conv_out.weight",
        "decoder.conv_in.bias": "vae.decoder.conv_in.bias",
        "decoder.mid.block_1.conv2.weight": "vae.decoder.mid_block.resnets.0.conv2.weight",
        "decoder.up.1.block.1.norm2.bias": "vae.decoder.up_blocks.0.resnets.1.norm2.bias",
        "decoder.up.1.upsample.conv.weight": "vae.decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.up.0.block.0.nin_shortcut.weight": "vae.decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.norm_out.bias": "vae.decoder.conv_norm_out.bias",
        "decoder.conv_out.weight": "vae.decoder.conv_out.weight",
    }
    for ldm, ours in mapping.items():
        assert torch.equal(vae[ours], ae[ldm]), ldm
    for n, d in (("q", "to_q"), ("v", "to_v"), ("proj_out", "to_out.0")):  # [C, C, 1, 1] -> [C, C]
        for side in ("encoder", "decoder"):
            src_w = ae[f"{side}.mid.attn_1.{n}.weight"]
            assert torch.equal(vae[f"vae.{side}.mid_block.attentions.0.{d}.weight"], src_w[:, :, 0, 0])
    # The converted VAE runs at the inferred shapes.
    lat = backbone.model.encode_latents(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert lat.shape == (1, Z, 8, 8)
    assert backbone.model.decode_latents(lat).shape == (1, 3, 16, 16)


# -- forward parity -------------------------------------------------------------------------------------
def qwen3_reference(ema: dict[str, torch.Tensor], vocab: int, s: str) -> Qwen3ForCausalLM:
    """A stock Qwen3 (per-head q/k RMS norm before RoPE) holding one expert's weights."""
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM, hidden_act="silu",
        max_position_embeddings=128, rms_norm_eps=EPS, attention_bias=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
    )
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg).eval()
    sd = {"model.embed_tokens.weight": ema[LM + "embed_tokens.weight"],
          "model.norm.weight": ema[LM + ("norm_moe_gen" if s else "norm") + ".weight"],
          "lm_head.weight": ema["language_model.lm_head.weight"]}
    for i in range(LAYERS):
        src, dst = f"{LM}layers.{i}.", f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj"):
            for wb in ("weight", "bias"):
                sd[f"{dst}self_attn.{n}.{wb}"] = ema[f"{src}self_attn.{n}{s}.{wb}"]
        sd[f"{dst}self_attn.o_proj.weight"] = ema[f"{src}self_attn.o_proj{s}.weight"]
        sd[f"{dst}self_attn.o_proj.bias"] = torch.zeros(H)  # Qwen2 / BAGEL: o_proj has no bias
        for n in ("q_norm", "k_norm"):
            sd[f"{dst}self_attn.{n}.weight"] = ema[f"{src}self_attn.{n}{s}.weight"]
        for n in ("gate_proj", "up_proj", "down_proj"):
            sd[f"{dst}mlp.{n}.weight"] = ema[f"{src}mlp{s}.{n}.weight"]
        for n in ("input_layernorm", "post_attention_layernorm"):
            sd[f"{dst}{n}.weight"] = ema[f"{src}{n}{s}.weight"]
    model.load_state_dict(sd, strict=True)
    return model


def _text_sequence(backbone, ids: list[int]):
    b = SequenceBuilder(backbone.special_ids, H, backbone.config.latent_token_dim, set())
    b.start_sample()
    b.add_text(ids)
    seq = b.build()
    full = [backbone.special_ids.im_start, *ids, backbone.special_ids.im_end]
    assert seq.text_ids.tolist() == full and seq.position_ids.tolist() == list(range(len(full)))
    return seq, torch.tensor([full])


@pytest.mark.parametrize("expert", ["und", "gen"])
def test_expert_logits_match_qwen3(backbone, src, expert):
    ids = src["tokenizer"]("what is in this image? a red dog", add_special_tokens=False).input_ids
    ids = ids + [src["vocab"] - 1]  # a padded row of the embedding table too
    seq, full = _text_sequence(backbone, ids)
    if expert == "gen":
        seq.is_gen = torch.ones(seq.length, dtype=torch.bool)  # every token through the gen expert
    assert seq.is_gen.all() == (expert == "gen") and seq.is_gen.any() == (expert == "gen")
    with torch.no_grad():
        hidden, _ = backbone.model(seq)
        ours = backbone.model.logits(hidden)
        ref = qwen3_reference(src["ema"], src["vocab"], "_moe_gen" if expert == "gen" else "")(full).logits[0]
    assert ours.shape == ref.shape == (full.shape[1], src["vocab"])
    assert ref.abs().max() > 0.5  # not a vacuous comparison
    assert (ours - ref).abs().max().item() < 1e-5


def vit_reference(ema: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """BAGEL's ViT path from the source tensors: patchify in (ph, pw, c) order -> the stored
    Linear -> learned position (row * side + col) -> a stock SigLIP encoder with the first
    N-1 layers + post-layernorm -> connector (fc1, GELU-tanh, fc2) -> + vit_pos_embed."""
    p = VIT_PATCH
    C, h, w = pixels.shape[1:]
    rows, cols = h // p, w // p
    x = pixels[0].reshape(C, rows, p, cols, p)
    patches = torch.einsum("chpwq->hwpqc", x).reshape(rows * cols, p * p * C)
    emb = F.linear(patches, ema[PATCH_W], ema[VIT + "embeddings.patch_embedding.bias"])
    learned = (torch.arange(rows)[:, None] * VIT_SIDE + torch.arange(cols)[None]).reshape(-1)
    emb = emb + ema[VIT + "embeddings.position_embedding.weight"][learned]

    cfg = SiglipVisionConfig(
        hidden_size=VIT_H, intermediate_size=VIT_INTER, num_hidden_layers=VIT_LAYERS_FILE - 1,
        num_attention_heads=VIT_HEADS, image_size=VIT_IMAGE, patch_size=VIT_PATCH,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
    )
    ref = SiglipVisionModel(cfg).eval()
    ref = getattr(ref, "vision_model", ref)  # transformers < 5.x nests the tower one level down
    enc = VIT + "encoder."
    ref.encoder.load_state_dict(
        {k.removeprefix(enc): v for k, v in ema.items()
         if k.startswith(enc) and not k.startswith(f"{enc}layers.{VIT_LAYERS_FILE - 1}.")},
        strict=True,
    )
    ref.post_layernorm.load_state_dict(
        {"weight": ema[VIT + "post_layernorm.weight"], "bias": ema[VIT + "post_layernorm.bias"]}
    )
    hid = ref.post_layernorm(ref.encoder(inputs_embeds=emb[None]).last_hidden_state)
    y = F.linear(F.gelu(F.linear(hid, ema["connector.fc1.weight"], ema["connector.fc1.bias"]), approximate="tanh"),
                 ema["connector.fc2.weight"], ema["connector.fc2.bias"])
    grid = (torch.arange(rows)[:, None] * VIT_POS_SIDE + torch.arange(cols)[None]).reshape(-1)
    return y + ema["vit_pos_embed.pos_embed"][grid]


@pytest.mark.parametrize("size", [(16, 16), (12, 8)])
def test_vit_tokens_match_reference(backbone, src, size):
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 3, *size, generator=g) * 2 - 1
    with torch.no_grad():
        ours = backbone.model.vit_tokens(pixels)
        ref = vit_reference(src["ema"], pixels)
    n = (size[0] // VIT_PATCH) * (size[1] // VIT_PATCH)
    assert ours.shape == ref.shape == (1, n, H)
    assert (ours - ref).abs().max().item() < 1e-5


# -- the Backbone entry point -----------------------------------------------------------------------------
def test_backbone_load_dispatches_and_roundtrips(src, tmp_path):
    bb = Backbone.load(src["folder"])  # a BAGEL folder: llm_config.json, no omni_config.json
    assert bb.config.name == "bagel-custom"
    assert all(not p.requires_grad for p in bb.model.parameters())
    again = Backbone.load(bb.save(tmp_path / "ours"))
    assert again.fingerprint() == bb.fingerprint()


def test_rotary_buffers_in_checkpoint_are_discarded(src, tmp_path):
    ema = dict(src["ema"])
    ema[LM + "rotary_emb.inv_freq"] = torch.ones(HEAD_DIM // 2)
    bb = load_bagel_folder(variant(src, tmp_path, ema=ema))
    inv = bb.model.language_model.model.rotary_emb.inv_freq
    assert torch.allclose(inv, 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ae.safetensors", "ema.safetensors", "vit_config.json", "tokenizer.json"])
def test_missing_file_is_named(src, tmp_path, name):
    with pytest.raises(BackboneError, match=name.replace(".", r"\.")):
        load_bagel_folder(variant(src, tmp_path, drop=name))


def test_unexpected_ema_key_is_named(src, tmp_path):
    ema = dict(src["ema"])
    ema[LM + "layers.0.self_attn.bogus_proj.weight"] = torch.zeros(2, 2)
    with pytest.raises(BackboneError, match=r"unexpected keys: .*self_attn\.bogus_proj\.weight"):
        load_bagel_folder(variant(src, tmp_path, ema=ema))


def test_missing_ema_key_is_named(src, tmp_path):
    ema = {k: v for k, v in src["ema"].items() if k != "connector.fc1.bias"}
    with pytest.raises(BackboneError, match=r"missing keys: connector\.fc1\.bias"):
        load_bagel_folder(variant(src, tmp_path, ema=ema))


def test_wrong_shape_is_named(src, tmp_path):
    ema = dict(src["ema"])
    ema["llm2vae.bias"] = torch.zeros(7)
    with pytest.raises(BackboneError, match=r"shape mismatches: llm2vae\.bias"):
        load_bagel_folder(variant(src, tmp_path, ema=ema))


def test_unexpected_ae_key_is_named(src, tmp_path):
    ae = dict(src["ae"])
    ae["encoder.bogus.weight"] = torch.zeros(3)
    with pytest.raises(BackboneError, match=r"encoder\.bogus\.weight"):
        load_bagel_folder(variant(src, tmp_path, ae=ae))


@pytest.mark.parametrize(
    "key, named",
    [
        ("decoder.up.1.block.0.conv1.weight", "vae.decoder.up_blocks.0.resnets.0.conv1.weight"),
        ("encoder.down.0.downsample.conv.bias", "vae.encoder.down_blocks.0.downsamplers.0.conv.bias"),
        ("decoder.up.1.upsample.conv.bias", "decoder.up.1.upsample.conv.bias"),
    ],
)
def test_missing_ae_key_is_named(src, tmp_path, key, named):
    ae = {k: v for k, v in src["ae"].items() if k != key}
    with pytest.raises(BackboneError, match="missing keys: " + named.replace(".", r"\.")):
        load_bagel_folder(variant(src, tmp_path, ae=ae))


def test_bf16_checkpoint_loads_in_bf16(src, tmp_path):
    ema = {k: v.to(torch.bfloat16) for k, v in src["ema"].items()}
    bb = load_bagel_folder(variant(src, tmp_path, ema=ema))
    assert bb.model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert bb.model.vae.encoder.conv_in.weight.dtype == torch.float32  # ae.safetensors stayed fp32
    assert torch.equal(load_file(tmp_path / "variant" / "ema.safetensors")["connector.fc1.weight"],
                       bb.model.connector.fc1.weight)
