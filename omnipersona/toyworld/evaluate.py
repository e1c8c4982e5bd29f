"""Base-capability scores of a pretrained toy backbone (exact match against the world's ground
truth): VQA per question kind, captions, in-context naming (recognition as balanced accuracy,
facts, attributes) and the three recaptioning text tasks. The bars a base must pass before
personalising it."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..backbone import Backbone
from ..data import load_image
from ..sampler import Block, Runner, greedy_answers
from . import tasks
from .world import random_scene, render

CHUNK = 16  # contexts decoded together


def _answer_all(backbone: Backbone, contexts: list[list[Block]], max_new_tokens: int = 16) -> list[str]:
    bank = backbone.new_bank()
    runner = Runner(backbone.model, bank, backbone.special_ids)
    out: list[str] = []
    for i in range(0, len(contexts), CHUNK):
        out += [bank.decode(a) for a in greedy_answers(runner, contexts[i:i + CHUNK], max_new_tokens)]
    return out


Item = tuple[str, list[Block], str]  # (kind, context, reference answer)


@torch.no_grad()
def evaluate_base(backbone: Backbone, n: int = 100, seed: int = 1234) -> dict[str, float]:
    """Exact-match scores over `n` items per task family (drawn from `seed`)."""
    items = collect_items(backbone, n, seed)
    return score(items, _answer_all(backbone, [ctx for _, ctx, _ in items]))


@torch.no_grad()
def collect_items(backbone: Backbone, n: int, seed: int) -> list[Item]:
    model, size = backbone.model, backbone.config.image_size
    rng = np.random.default_rng(seed)
    bank = backbone.new_bank()

    def text(t: str) -> Block:
        return ("text", bank.encode(t))

    def vit(scene) -> Block:
        img = render(scene, size, seed=int(rng.integers(1 << 30)))
        return ("vit", model.vit_tokens(load_image(img, size)[None])[0])

    items: list[Item] = []
    for _ in range(n):
        scene = random_scene(rng)
        ex = tasks.vqa(scene, rng)
        items.append((f"vqa_{ex.kind}", [vit(scene), text(ex.question)], ex.answer))
    for _ in range(n):
        scene = random_scene(rng)
        items.append(("caption", [vit(scene), text(tasks.CAPTION_QUESTION)], tasks.caption(scene)))
    for _ in range(n):
        ex = tasks.naming_example(rng, n_defs=int(rng.integers(1, 3)))
        ctx = [text(d) for d in ex.definitions]
        if ex.scene is not None:
            ctx.append(vit(ex.scene))
        items.append((f"naming_{ex.kind}_{ex.answer}" if ex.kind == "recognition" else f"naming_{ex.kind}",
                      ctx + [text(ex.question)], ex.answer))
    for _ in range(n):
        ex = tasks.recaption_example(tasks.random_concept(rng), rng, name=tasks.NAMES[int(rng.integers(10))])
        for stage in ex.stages():
            items.append((stage.kind, [text(c) for c in stage.context], stage.target))

    return items


def score(items: list[Item], answers: list[str]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for (kind, _, ref), ans in zip(items, answers, strict=True):
        hits[kind].append(ans.strip() == ref.strip())
    scores = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    vqa = [h for k, v in hits.items() if k.startswith("vqa_") for h in v]
    scores["vqa"] = float(np.mean(vqa))
    if "naming_recognition_yes" in hits and "naming_recognition_no" in hits:
        scores["naming_recognition_balanced"] = (scores["naming_recognition_yes"] + scores["naming_recognition_no"]) / 2
    scores["items"] = len(items)
    return scores
