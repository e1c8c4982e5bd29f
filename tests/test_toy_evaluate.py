"""Base-capability scoring: exact match per task family, balanced naming recognition."""

import torch

from omnipersona.backbone import Backbone
from omnipersona.config import get_config
from omnipersona.model import OmniModel, freeze
from omnipersona.toyworld.evaluate import collect_items, evaluate_base, score
from omnipersona.toyworld.language import build_toy_tokenizer


def _toy_random() -> Backbone:
    tok = build_toy_tokenizer()
    cfg = get_config("toy", vocab_size=len(tok))
    torch.manual_seed(0)
    return Backbone(cfg, freeze(OmniModel(cfg)), tok)


def test_scores_follow_the_answers():
    items = collect_items(_toy_random(), n=12, seed=3)
    assert len(items) == 12 * 3 + 12 * 3  # vqa, caption, naming + three recaptioning stages
    refs = [ref for _, _, ref in items]
    perfect = score(items, refs)
    assert all(v == 1.0 for k, v in perfect.items() if k != "items")
    yes = score(items, ["yes"] * len(items))
    assert yes["caption"] == 0.0 and yes.get("naming_recognition_yes", 1.0) == 1.0
    if "naming_recognition_balanced" in yes:
        assert yes["naming_recognition_balanced"] == 0.5
    wrong_first = score(items, ["wrong"] + refs[1:])
    assert wrong_first[items[0][0]] < 1.0


def test_random_toy_backbone_scores_near_zero():
    scores = evaluate_base(_toy_random(), n=4, seed=0)
    assert scores["caption"] == 0.0 and scores["vqa"] <= 0.5
