"""Base-capability scores of a pretrained toy backbone (exact match against the world's ground
truth): VQA per question kind, captions, in-context naming (recognition as balanced accuracy,
facts, attributes), the three recaptioning text tasks, and — judged by the recogniser —
generation attribute accuracy and edit success. The bars a base must pass before personalising
it. Every item is drawn from a seed the pretraining never uses."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from ..backbone import Backbone
from ..data import load_image
from ..pipeline import GenerateRequest, OmniPipeline
from ..sampler import Block, Runner, SamplerConfig, greedy_answers
from . import tasks
from .recogniser import Recogniser, same_scene
from .world import ObjectSpec, Scene, random_scene, render

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


def caption_attributes(scene: Scene) -> list[tuple[str, ...]]:
    """The attributes `tasks.caption` speaks for each object (positions are never spoken)."""
    n = len(scene.objects)
    attrs = ("shape", "colour") + (("pattern",) if n <= 2 else ()) + (("size",) if n == 1 else ())
    return [attrs] * n


def generation_attribute_hits(truth: Scene, seen: Scene) -> dict[str, tuple[int, int]]:
    """(right, asked) per attribute for an image generated from `caption(truth)`: the place, and
    for each described object those of its attributes the caption names, matched greedily to the
    generated object that agrees on most of them (a described object with nothing left to match
    gets every attribute wrong)."""
    hits = {"place": (int(truth.place == seen.place), 1)}
    left: list[ObjectSpec] = list(seen.objects)
    for obj, attrs in zip(truth.objects, caption_attributes(truth), strict=True):
        best = max(left, key=lambda o: sum(getattr(o, a) == getattr(obj, a) for a in attrs)) if left else None
        for a in attrs:
            right, asked = hits.get(a, (0, 0))
            hits[a] = (right + int(best is not None and getattr(best, a) == getattr(obj, a)), asked + 1)
        if best is not None:
            left.remove(best)
    return hits


def generation_hits(truth: Scene, seen: Scene) -> tuple[int, int]:
    """(attributes right, attributes asked) over all of `generation_attribute_hits`."""
    per = generation_attribute_hits(truth, seen).values()
    return sum(r for r, _ in per), sum(a for _, a in per)


def generation_scores(truths: list[Scene], seen: list[Scene]) -> dict[str, float]:
    """Scores of images generated from `caption(truth)` as the recogniser read them: attribute
    accuracy over every attribute asked, the share of images with all of them right, accuracy per
    attribute, and the share of images with as many objects as the caption describes. Extra
    objects cannot lower the attribute scores (each described object is matched to the best drawn
    one), so the object count is what shows a model drawing more than it was asked for."""
    per_image = [generation_attribute_hits(t, s) for t, s in zip(truths, seen, strict=True)]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for hits in per_image:
        for attribute, (right, asked) in hits.items():
            totals[attribute][0] += right
            totals[attribute][1] += asked
    return {
        "generation_attribute_accuracy": sum(r for r, _ in totals.values()) / sum(a for _, a in totals.values()),
        "generation_all_right": float(np.mean([all(r == a for r, a in h.values()) for h in per_image])),
        **{f"generation_{attribute}": r / a for attribute, (r, a) in sorted(totals.items())},
        "generation_object_count": float(np.mean([len(t.objects) == len(s.objects)
                                                  for t, s in zip(truths, seen, strict=True)])),
    }


@torch.no_grad()
def caption_images(pipe: OmniPipeline, scenes: list[Scene], sampler: SamplerConfig) -> list[Image.Image]:
    """The image generated from each scene's caption (image i from seed i, CHUNK per batch)."""
    images: list[Image.Image] = []
    for i in range(0, len(scenes), CHUNK):
        batch = [GenerateRequest(tasks.caption(s), i + j, sampler) for j, s in enumerate(scenes[i:i + CHUNK])]
        images += [r.image for r in pipe.generate_batch(batch)]
    return images


def draw_captions(pipe: OmniPipeline, recogniser: Recogniser, scenes: list[Scene],
                  sampler: SamplerConfig) -> list[Scene]:
    """What the recogniser reads in the image generated from each scene's caption."""
    return recogniser.read(caption_images(pipe, scenes, sampler))


@torch.no_grad()
def evaluate_generation(backbone: Backbone, recogniser: Recogniser, n: int = 100, seed: int = 4321,
                        sample_steps: int = 25) -> dict[str, float]:
    """Text-to-image from held-out captions: attribute accuracy (see `generation_attribute_hits`),
    overall and per attribute, and the share of images whose every spoken attribute is right."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    seen = draw_captions(OmniPipeline(backbone, recaption=False), recogniser, scenes,
                         SamplerConfig(num_steps=sample_steps))
    return generation_scores(scenes, seen)


@torch.no_grad()
def evaluate_editing(backbone: Backbone, recogniser: Recogniser, n: int = 60, seed: int = 8765,
                     sample_steps: int = 25) -> dict[str, float]:
    """Instruction edits on held-out scenes: success = the result reads as exactly the target
    (the instruction done, everything else preserved), overall and per edit kind."""
    rng = np.random.default_rng(seed)
    pipe = OmniPipeline(backbone, recaption=False)
    sampler = SamplerConfig.for_editing(num_steps=sample_steps)
    ok: dict[str, list[bool]] = defaultdict(list)
    for i in range(n):
        kind = tasks.EDIT_KINDS[i % len(tasks.EDIT_KINDS)]  # the same number of each kind
        scene = random_scene(rng)
        while kind not in tasks.feasible_edits(scene):
            scene = random_scene(rng)
        ex = tasks.edit(scene, rng, kind=kind)
        out = pipe.edit(render(ex.source, backbone.config.image_size, seed=i), ex.instruction, seed=i, sampler=sampler)
        ok[ex.kind].append(same_scene(recogniser.read([out.image])[0], ex.target))
    scores = {f"edit_{k}": float(np.mean(v)) for k, v in sorted(ok.items())}
    scores["edit_success"] = float(np.mean([x for v in ok.values() for x in v]))
    return scores
