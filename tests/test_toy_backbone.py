"""The committed `toy` backbone: it loads by name, its weights are the ones its model card
describes (fingerprint), and it can do what personalisation builds on (held-out items, a seed
neither pretraining nor the model card's evaluation used)."""

import json

import numpy as np
import torch

from omnipersona.backbone import load_backbone
from omnipersona.pipeline import GenerateRequest, OmniPipeline
from omnipersona.sampler import SamplerConfig
from omnipersona.toyworld import RECOGNISER_DIR, TOY_BACKBONE_DIR, tasks
from omnipersona.toyworld.evaluate import evaluate_base, evaluate_generation, generation_hits
from omnipersona.toyworld.recogniser import load_recogniser
from omnipersona.toyworld.world import random_scene


def test_loads_by_name_and_matches_its_model_card():
    backbone = load_backbone("toy")
    report = json.loads((TOY_BACKBONE_DIR / "pretrain.json").read_text())
    assert backbone.fingerprint() == report["fingerprint"]
    assert (TOY_BACKBONE_DIR / "MODEL_CARD.md").is_file()
    size = sum(p.stat().st_size for p in TOY_BACKBONE_DIR.rglob("*") if p.is_file())
    assert size <= 30 * 2**20


@torch.no_grad()
def test_base_answers_held_out_questions():
    scores = evaluate_base(load_backbone("toy"), n=40, seed=777)
    # what the model card reports it can do (position only in part: see the card); chance over all
    # VQA kinds is about 0.3
    assert scores["vqa_place"] >= 0.9 and scores["vqa_count"] >= 0.85 and scores["vqa_colour"] >= 0.55, scores
    assert scores["vqa_shape"] >= 0.6 and scores["vqa_size"] >= 0.6 and scores["vqa"] >= 0.65, scores
    assert min(scores[f"recaption_{k}"] for k in ("intent", "answer", "rewrite")) >= 0.9, scores


@torch.no_grad()
def test_base_draws_what_a_caption_says():
    backbone = load_backbone("toy")
    recogniser, _ = load_recogniser(RECOGNISER_DIR)
    rng = np.random.default_rng(99)
    scenes = [random_scene(rng, n_objects=1) for _ in range(8)]
    pipe = OmniPipeline(backbone, recaption=False)
    images = pipe.generate_batch([GenerateRequest(tasks.caption(s), i, SamplerConfig(num_steps=20))
                                  for i, s in enumerate(scenes)])
    hits = [generation_hits(s, r) for s, r in zip(scenes, recogniser.read([x.image for x in images]), strict=True)]
    # the place and the colour it draws; a random image would get about 1/6 and 1/8 of them
    assert sum(h[0] for h in hits) / sum(h[1] for h in hits) >= 0.45, hits


@torch.no_grad()
def test_generation_score_breaks_down_by_attribute():
    recogniser, _ = load_recogniser(RECOGNISER_DIR)
    scores = evaluate_generation(load_backbone("toy"), recogniser, n=32, seed=55, sample_steps=20)
    per_attribute = {a: scores[f"generation_{a}"] for a in ("place", "colour", "shape", "pattern", "size")}
    # the overall score is the mean over every attribute asked, so it lies among the parts
    assert min(per_attribute.values()) <= scores["generation_attribute_accuracy"] <= max(per_attribute.values())
    # what the card reports it draws well (chance: 1/6 of places, 1/8 of colours)
    assert per_attribute["place"] >= 0.9 and per_attribute["colour"] >= 0.6, scores
    # one to three objects described: it draws that many about half the time (0.58 on the card)
    assert scores["generation_object_count"] >= 0.35, scores
