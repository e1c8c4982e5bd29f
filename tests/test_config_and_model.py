"""Config presets, packed-sequence masks and positions, MoT routing."""

import torch

from omnipersona.config import get_config
from omnipersona.model import OmniModel
from omnipersona.sequence import SequenceBuilder
from omnipersona.tokens import ConceptTokens


def test_bagel_preset_has_the_published_shapes():
    cfg = get_config("bagel-7b-mot")
    llm = cfg.llm_config()
    assert (llm.hidden_size, llm.num_hidden_layers, llm.num_attention_heads, llm.num_key_value_heads) == (
        3584, 28, 28, 4)
    assert llm.hidden_size // llm.num_attention_heads == 128
    assert (llm.intermediate_size, llm.vocab_size) == (18944, 152064)
    assert llm.rope_parameters["rope_theta"] == 1_000_000.0
    assert llm.qk_norm and not llm.tie_word_embeddings
    assert cfg.vit["hidden_size"] == 1152 and cfg.vit["num_hidden_layers"] == 26
    assert cfg.vit["image_size"] // cfg.vit["patch_size"] == 70
    assert cfg.latent_channels == 16 and cfg.vae_downsample == 8 and cfg.latent_token_dim == 64
    with torch.device("meta"):
        model = OmniModel(cfg)
    lm = sum(p.numel() for n, p in model.named_parameters() if n.startswith("language_model"))
    # Two experts of Qwen2-7B's layers + shared embeddings and head: ~14.1 B; with ViT/VAE ~14.6 B.
    assert 13.9e9 < lm < 14.3e9
    total = sum(p.numel() for p in model.parameters())
    assert 14.4e9 < total < 14.8e9


def test_round_trip_config_dict():
    cfg = get_config("toy")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def _builder(tiny, gen_ids=frozenset()):
    cfg = tiny.config
    return SequenceBuilder(tiny.special_ids, cfg.hidden_size, cfg.latent_token_dim, set(gen_ids))


def test_mask_and_positions_of_a_packed_editing_sample(tiny):
    cfg = tiny.config
    b = _builder(tiny)
    b.start_sample()
    b.add_text([10, 11])  # 4 tokens (with markers), positions 0..3
    b.add_latent(torch.zeros(2, cfg.latent_token_dim), torch.tensor([0, 1]))  # clean: 4 tokens @ 4
    b.add_vit(torch.zeros(3, cfg.hidden_size))  # 5 tokens @ 5
    b.add_latent(torch.zeros(2, cfg.latent_token_dim), torch.tensor([0, 1]), t=0.5, noised=True)  # @ 6
    b.add_text([12])  # 3 tokens @ 7..9
    b.start_sample()
    b.add_text([13])  # second sample, positions restart
    seq = b.build()
    assert seq.length == 4 + 4 + 5 + 4 + 3 + 3
    assert seq.position_ids.tolist() == [0, 1, 2, 3] + [4] * 4 + [5] * 5 + [6] * 4 + [7, 8, 9] + [0, 1, 2]
    m = seq.attn_mask
    # text is causal
    assert m[1, 0] and not m[0, 1]
    # an image block is bidirectional inside and sees all earlier blocks
    assert m[4:8, 4:8].all() and m[8:13, 8:13].all() and m[8:13, 0:8].all()
    # the noised block sees earlier blocks, and nothing after it sees the noised block
    assert m[13:17, 0:17].all()
    assert not m[17:20, 13:17].any() and m[17:20, 0:13].all()
    # packed samples never see each other
    assert not m[20:, :20].any() and not m[:20, 20:].any()
    # routing: latent tokens -> gen, markers and ViT -> und
    assert seq.is_gen.tolist() == [False] * 4 + [False, True, True, False] + [False] * 5 + [
        False, True, True, False] + [False] * 6


def test_perturbing_generation_weights_changes_only_generation_tokens(tiny):
    model = OmniModel(tiny.config).eval()
    bank = tiny.new_bank()
    concept = ConceptTokens("sks", tiny.config.hidden_size, n_und=2, n_gen=2)
    torch.nn.init.normal_(concept.embeddings)
    bank.add(concept)
    b = _builder(tiny, bank.gen_token_ids())
    b.start_sample()
    b.add_text(bank.encode(concept.system_prompt()))
    b.add_latent(torch.randn(4, tiny.config.latent_token_dim), torch.arange(4), t=0.7, noised=True)
    seq = b.build()
    ids = seq.text_ids.tolist()
    gen_pos = [int(seq.text_index[i]) for i, t in enumerate(ids) if t in bank.gen_token_ids()]
    assert len(gen_pos) == 2 and seq.is_gen[gen_pos].all()
    assert int(seq.is_gen.sum()) == 2 + 4  # the <gen_j> tokens and the latent tokens

    with torch.no_grad():
        before, _ = model(seq, bank.embedding_rows())
        last = model.language_model.model.layers[-1]
        last.mlp_moe_gen.down_proj.weight.add_(torch.randn_like(last.mlp_moe_gen.down_proj.weight))
        after, _ = model(seq, bank.embedding_rows())
    changed = (after - before).abs().amax(-1) > 1e-6
    assert torch.equal(changed, seq.is_gen)

    # The shared (no decoupling) variant routes every concept token through understanding.
    shared = ConceptTokens("sks", tiny.config.hidden_size, n_und=2, n_gen=2, method="shared")
    assert not shared.gen_routed.any()
    assert concept.gen_routed.tolist() == [False, False, False, True, True]


def test_understanding_weights_do_not_touch_latents_before_attention(tiny):
    """An und-only sequence gives identical outputs when gen weights are perturbed anywhere."""
    model = OmniModel(tiny.config).eval()
    b = _builder(tiny)
    b.start_sample()
    b.add_text([5, 6, 7])
    seq = b.build()
    with torch.no_grad():
        before, _ = model(seq)
        for layer in model.language_model.model.layers:
            layer.self_attn.q_proj_moe_gen.weight.mul_(3)
            layer.input_layernorm_moe_gen.weight.add_(1)
        after, _ = model(seq)
    assert torch.equal(before, after)
