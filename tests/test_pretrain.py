"""Toy-backbone pretraining: every task packs, the VAE learns, the MoT (ViT included) learns."""

import json
import math

import numpy as np
import pytest
import torch

from omnipersona.losses import LossWeights, joint_loss
from omnipersona.toyworld.card import model_card
from omnipersona.toyworld.pretrain import (
    GENERATION_LAYERS,
    PretrainConfig,
    _lr,
    make_sample,
    new_toy_backbone,
    pack_world_batch,
    patch_labels,
    pretrain_backbone,
    pretrain_vae,
    pretrain_vit,
    trainable_parameters,
)


def test_every_task_makes_a_packable_sample():
    bb = new_toy_backbone(seed=0)
    rng = np.random.default_rng(0)
    samples = [make_sample(t, rng, 32) for t in ("caption", "vqa", "t2i", "edit", "recaption", "naming")]
    assert [len(s.images) for s in samples[:4]] == [1, 1, 1, 2] and samples[4].images == []
    seq = pack_world_batch(bb, samples, torch.Generator().manual_seed(0), 1.0, 32)
    assert seq.sample_id.unique().numel() == 6
    assert seq.ce_labels.numel() > 0 and seq.mse_index.numel() >= 2 * 16
    unk = bb.tokenizer.unk_token_id
    assert unk not in seq.text_ids.tolist()  # the world's language is fully in the vocabulary


def test_vae_stage_reduces_reconstruction_error_and_sets_latent_scale():
    bb = new_toy_backbone(seed=0)
    cfg = PretrainConfig(vae_steps=50, vae_batch=8, warmup=5)  # 8 latent channels start slower than 4
    hist = pretrain_vae(bb, cfg)
    first = np.mean([h["mse"] for h in hist[:5]])
    last = np.mean([h["mse"] for h in hist[-5:]])
    assert last < 0.7 * first, (first, last)
    assert bb.config.vae["scaling_factor"] != 1.0 and not any(p.requires_grad for p in bb.model.vae.parameters())


def test_patch_labels_mark_the_patches_an_object_covers():
    from omnipersona.toyworld.world import ObjectSpec, Scene

    scene = Scene("snow", (ObjectSpec("star", "red", "dotted", "large", "top left"),
                           ObjectSpec("circle", "blue", "plain", "small", "bottom right")))
    labels = patch_labels([scene], side=8)
    grid = labels["object"][0].reshape(8, 8)
    # large: 14 px box centred at (8, 8) -> patch centres 2, 6, 10, 14 px -> rows/cols 0..3
    assert grid[:4, :4].all() and grid[:4, 4:].sum() == 0
    # small: 9 px box centred at (24, 24) -> patch centres 22, 26 px -> rows/cols 5..6
    assert grid[5:7, 5:7].all() and grid.sum() == 16 + 4
    shape = labels["shape"][0].reshape(8, 8)
    assert (shape[:4, :4] == 3).all() and (shape[5:7, 5:7] == 0).all() and shape[0, 7] == -100
    assert (labels["place"] == 3).all()
    position = labels["position"][0].reshape(8, 8)  # the covering object's position class
    assert (position[:4, :4] == 0).all() and (position[5:7, 5:7] == 3).all() and position[0, 7] == -100


def test_vit_stage_learns_to_read_patches():
    bb = new_toy_backbone(seed=0)
    hist = pretrain_vit(bb, PretrainConfig(vit_steps=150, vit_batch=16, warmup=5))
    first = {k: np.mean([h[k] for h in hist[:5]]) for k in ("loss", "colour", "place")}
    last = {k: np.mean([h[k] for h in hist[-5:]]) for k in ("loss", "colour", "place")}
    assert last["loss"] < 0.6 * first["loss"], (first, last)
    assert last["colour"] > first["colour"] + 0.2 and last["place"] > 0.9, (first, last)
    assert not any(p.requires_grad for p in bb.model.vit_model.parameters())


def test_mot_learns_a_fixed_batch_with_gradients_reaching_the_vit():
    bb = new_toy_backbone(seed=0)
    rng = np.random.default_rng(1)
    samples = [make_sample(t, rng, 32) for t in ("caption", "vqa", "naming", "t2i")]
    params = trainable_parameters(bb.model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for step in range(25):
        seq = pack_world_batch(bb, samples, torch.Generator().manual_seed(0), 1.0, 32)
        loss, parts = joint_loss(bb.model, seq, None, None, LossWeights())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            vit_grad = bb.model.vit_model.vision_model.encoder.layers[0].mlp.fc1.weight.grad
            assert vit_grad is not None and vit_grad.abs().sum() > 0
            assert all(p.grad is None for p in bb.model.vae.parameters())
        opt.step()
        losses.append(parts)
    assert losses[-1]["ce"] < 0.5 * losses[0]["ce"]
    assert losses[-1]["gen"] < losses[0]["gen"]


def test_backbone_stage_runs_and_freezes_afterwards():
    bb = new_toy_backbone(seed=0)
    before = bb.fingerprint()
    hist = pretrain_backbone(bb, PretrainConfig(steps=2, batch_size=4, warmup=1))
    assert len(hist) == 2 and set(hist[0]) == {"ce", "gen", "edit", "total"}
    assert bb.fingerprint() != before
    assert all(not p.requires_grad and p.grad is None for p in bb.model.parameters())


def test_constant_lr_holds_the_peak_rate_where_the_cosine_decays_it():
    cfg = PretrainConfig(steps=1000, warmup=10, lr=3e-4)
    cosine = [_lr(s, cfg, cfg.lr, cfg.steps) for s in (0, 9, 10, 505, 999)]
    flat = [_lr(s, cfg, cfg.lr, cfg.steps, constant=True) for s in (0, 9, 10, 505, 999)]
    assert flat[:2] == cosine[:2] == pytest.approx([3e-5, 3e-4])  # the same warm-up
    assert flat[2:] == [3e-4] * 3
    assert cosine[2:] == pytest.approx([3e-4, 3e-4 * 0.55, 3e-5], rel=1e-4)


def test_backbone_stage_runs_at_the_schedule_its_config_names(monkeypatch):
    import omnipersona.toyworld.pretrain as pretrain

    rates: list[float] = []
    opt_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return opt_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    for constant in (False, True):
        pretrain.pretrain_backbone(new_toy_backbone(seed=0), PretrainConfig(steps=4, batch_size=2, warmup=1, lr=1e-3,
                                                                           constant_lr=constant))
    cosine, flat = rates[:4], rates[4:]
    assert flat == [1e-3] * 4
    assert cosine[:2] == [1e-3, 1e-3]  # warm-up 1 step, then the cosine starts at its peak
    assert cosine[1] > cosine[2] > cosine[3] == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def test_backbone_stage_keeps_the_vit_as_stage_1b_left_it():
    bb = new_toy_backbone(seed=0)
    vit = {n: p.clone() for n, p in bb.model.named_parameters() if n.startswith(("vit_model.", "connector."))}
    pretrain_backbone(bb, PretrainConfig(steps=3, batch_size=4, warmup=1))  # freeze_vit by default
    after = dict(bb.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in vit.items())
    pretrain_backbone(bb, PretrainConfig(steps=3, batch_size=4, warmup=1, freeze_vit=False))
    assert not all(torch.equal(after[n], p) for n, p in vit.items())


def test_single_object_text_to_image_names_the_marking_of_its_one_object():
    from omnipersona.toyworld.world import SIZES

    rng = np.random.default_rng(3)
    samples = [make_sample("t2i_single", rng, 32) for _ in range(40)]
    captions = [s.segments[0].text for s in samples]
    assert all(s.task == "t2i_single" and len(s.images) == 1 and s.segments[1].kind == "target" for s in samples)
    assert all(" and " not in c and " , " not in c for c in captions)  # one object each
    assert any(w in c for c in captions for w in ("dotted", "striped", "ringed"))
    assert {"t2i_single": 0.0}.items() <= PretrainConfig().mix.items()  # off unless a run asks for it
    # the world's one-object caption: only that one names the size
    assert all(any(f" {size} " in f" {c} " for size in SIZES) for c in captions)


def test_generation_only_run_leaves_understanding_exactly_as_it_was():
    bb = new_toy_backbone(seed=0)
    rng = np.random.default_rng(2)
    understanding = [make_sample(t, rng, 32) for t in ("vqa", "caption", "naming", "recaption")]
    t2i = [make_sample("t2i", rng, 32)]

    def outputs():
        with torch.no_grad():
            seq = pack_world_batch(bb, understanding, torch.Generator().manual_seed(0), 1.0, 32)
            hidden, _ = bb.model(seq, None)
            logits = bb.model.logits(hidden[seq.ce_index], None)
            seq = pack_world_batch(bb, t2i, torch.Generator().manual_seed(0), 1.0, 32)
            hidden, _ = bb.model(seq, None)
            return logits, bb.model.velocity(hidden[seq.mse_index])

    bb.model.eval()
    logits, velocity = outputs()
    pretrain_backbone(bb, PretrainConfig(steps=3, batch_size=4, warmup=1, generation_only=True,
                                         mix={"t2i": 1.0, "edit": 1.0, "vqa": 1.0}))
    after_logits, after_velocity = outputs()
    assert torch.equal(logits, after_logits)  # VQA, captions, naming, recaptioning: bit for bit
    assert (after_velocity - velocity).abs().max() > 1e-4  # while generation moved on
    names = {n for n, _ in bb.model.named_parameters()}
    trained = {n for n, p in bb.model.named_parameters() if any(p is q for q in
               trainable_parameters(bb.model, generation_only=True))}
    generation = {n for n in names if "_moe_gen" in n or n.startswith(GENERATION_LAYERS)}
    assert trained == generation and any(n.endswith("norm_moe_gen.weight") for n in trained)
    assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= names - trained


def test_continued_run_starts_from_saved_weights_and_keeps_every_run_on_record(tmp_path):
    from omnipersona.backbone import Backbone
    from omnipersona.toyworld.pretrain import pretrain_toy

    first = pretrain_toy(tmp_path / "a", PretrainConfig(vae_steps=2, vae_batch=2, vit_steps=2, vit_batch=2, steps=2,
                                                          batch_size=2, warmup=1))
    a = Backbone.load(tmp_path / "a")
    second = pretrain_toy(tmp_path / "b", PretrainConfig(seed=1, steps=3, batch_size=2, warmup=1), init=tmp_path / "a")
    b = Backbone.load(tmp_path / "b")
    # the VAE is carried over untouched; the LLM moved on from the saved weights
    assert torch.equal(a.model.vae.encoder.conv_in.weight, b.model.vae.encoder.conv_in.weight)
    assert not torch.equal(a.model.language_model.lm_head.weight, b.model.language_model.lm_head.weight)
    assert second["backbone_steps"] == 5 and len(second["runs"]) == 2
    assert second["seconds"] >= first["seconds"] and second["runs"][1]["init"] == str(tmp_path / "a")
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "losses.jsonl").read_text().splitlines()
             if '"backbone"' in line]
    assert steps == [1, 2, 3, 4, 5]


def test_pretrain_command_continues_a_run_with_the_batch_size_and_rate_it_is_given(tmp_path, capsys):
    from omnipersona.cli import main
    from omnipersona.toyworld import TOY_BACKBONE_DIR

    out = tmp_path / "next"
    assert main(["pretrain-toy", "--out", str(out), "--init", str(TOY_BACKBONE_DIR), "--seed", "5", "--steps", "2",
                 "--batch-size", "3", "--lr", "2e-5", "--mix", "vqa=1", "t2i=1"]) == 0
    run = json.loads((out / "pretrain.json").read_text())["runs"][-1]
    assert run["backbone_steps"] == 2 and run["init"] == str(TOY_BACKBONE_DIR)
    assert (run["config"]["batch_size"], run["config"]["lr"], run["config"]["seed"]) == (3, 2e-5, 5)
    assert run["config"]["constant_lr"] is False
    flat = tmp_path / "flat"
    assert main(["pretrain-toy", "--out", str(flat), "--init", str(out), "--seed", "6", "--steps", "2",
                 "--batch-size", "3", "--constant-lr", "--mix", "t2i_single=1"]) == 0
    runs = json.loads((flat / "pretrain.json").read_text())["runs"]
    assert [r["config"]["constant_lr"] for r in runs[-2:]] == [False, True]
    # the model card tells each run's schedule
    (flat / "base_scores.json").write_text((TOY_BACKBONE_DIR / "base_scores.json").read_text())
    stage2 = [line for line in model_card(flat).splitlines() if line.startswith("- stage 2")]
    assert "cosine to 10%" in stage2[-2] and "then flat" in stage2[-1]
    for bad in (["--lr", "0"], ["--lr", "fast"], ["--batch-size", "0"], ["--mix", "vqa"]):
        assert main(["pretrain-toy", "--out", str(tmp_path / "bad"), *bad]) == 2
    assert "--lr: must be above 0" in capsys.readouterr().err
    assert main(["pretrain-toy", "--out", str(tmp_path / "bad"), "--generation-only"]) == 2
    assert "--generation-only continues a pretrained run: give it --init DIR" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
