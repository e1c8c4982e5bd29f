"""Concept dataset builder, frozen-encoder shapes, latent patchify, packing."""

from collections import Counter

import torch

from omnipersona.data import build_concept_samples, encode_images, pack_samples
from omnipersona.sequence import LossKind
from omnipersona.tokens import ConceptTokens


def test_builder_makes_every_sample_kind(concept_data):
    prepared = build_concept_samples(concept_data, "<sks>", image_size=16)
    kinds = Counter(s.kind for s in prepared.samples)
    assert kinds == {"recognition": 6 + 4, "caption": 6, "generation": 6, "qa": 2, "editing": 1}
    answers = Counter(s.answer for s in prepared.samples if s.kind == "recognition")
    assert answers == {"yes": 6, "no": 4}  # negatives answer "no"
    qa = [s for s in prepared.samples if s.kind == "qa"]
    assert qa[0].question == "What is the home of <sks>?" and qa[0].answer == "the beach"
    gen = [s for s in prepared.samples if s.kind == "generation"]
    assert gen[0].question == "a photo of <sks>"
    assert prepared.pixels.shape == (6 + 4 + 2, 3, 16, 16)


def test_encoders_and_patchify_shapes(tiny):
    model, cfg = tiny.model, tiny.config
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    enc = encode_images(model, pixels)
    n_vit = (16 // cfg.vit_patch_size) ** 2
    side = 16 // (cfg.vae_downsample * cfg.latent_patch_size)
    assert enc.vit.shape == (3, n_vit, cfg.hidden_size)
    assert enc.latents.shape == (3, side * side, cfg.latent_token_dim)
    assert enc.latent_pos.tolist() == [r * cfg.max_latent_size + c for r in range(side) for c in range(side)]
    lat = model.encode_latents(pixels)
    assert torch.equal(model.unpatchify(model.patchify(lat), side, side), lat)
    # BAGEL's (p, q, c) token order: the first token's first C entries are pixel (0, 0) of every channel
    assert torch.equal(model.patchify(lat)[0, 0, : cfg.latent_channels], lat[0, :, 0, 0])
    assert model.decode_latents(lat).shape == (3, 3, 16, 16)


def test_packing_sets_losses_per_kind(tiny, concept_data):
    concept = ConceptTokens("sks", tiny.config.hidden_size)
    bank = tiny.new_bank()
    bank.add(concept)
    prepared = build_concept_samples(concept_data, concept.identifier, 16)
    enc = encode_images(tiny.model, prepared.pixels)
    by_kind = {s.kind: s for s in reversed(prepared.samples)}  # first sample of each kind
    g = torch.Generator().manual_seed(0)
    seq = pack_samples(tiny.model, bank, tiny.special_ids, [concept], [by_kind["recognition"], by_kind["editing"]],
                       enc, g, timestep_shift=1.0)
    assert seq.sample_id.unique().tolist() == [0, 1]
    # recognition: "yes" + <|im_end|> are CE targets; editing: one noised target block with MSE
    assert bank.decode(seq.ce_labels.tolist()[:1]) == "yes"
    n_lat = enc.latents.shape[1]
    assert seq.mse_index.numel() == n_lat and (seq.mse_kind == LossKind.EDITING).all()
    # editing conditions on the source's clean latents and ViT tokens before the instruction
    assert seq.latent_index.numel() == 2 * n_lat and seq.vit_index.numel() == 2 * enc.vit.shape[1]
