"""Does the judge miss faint markings? (docs/benchmark.md, "The judge and faint markings")

    python docs/benchmark/probe_judge.py --train-faint FAINT_DIR   # ~19 min: the second judge
    python docs/benchmark/probe_judge.py FAINT_DIR [BACKBONE]      # ~4 min, one torch thread

The second judge is `train_recogniser` as committed (2,500 steps, seed 0) with every other batch's
markings drawn at 35-100 % of their contrast. Compares the committed recogniser ("old") with it
("faint"):
1. markings read right on held-out lone-object renders drawn at lower marking contrast, and how
   many are read plain (the world draws contrast 1; generators draw fainter);
2. the committed backbone's text-to-image on evaluate-base's 100 captions (seed 4321), scored per
   attribute by each judge, and the marking each judge reads on 160 lone-object captions (seed
   7), plain captions included (a judge that saw markings everywhere would fail those);
3. writes docs/benchmark/judge_disagreements.png: the generated lone objects on which the two
   judges read different markings, with the caption's marking, for a human to look at.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from omnipersona.backbone import load_backbone
from omnipersona.pipeline import OmniPipeline
from omnipersona.sampler import SamplerConfig
from omnipersona.toyworld import RECOGNISER_DIR
from omnipersona.toyworld.evaluate import caption_images, generation_scores
from omnipersona.toyworld.recogniser import load_recogniser, save_recogniser, train_recogniser
from omnipersona.toyworld.world import PATTERNS, Scene, random_scene, render

KEYS = ("all", "place", "colour", "shape", "pattern", "size", "count")


def attribute_line(truths: list[Scene], seen: list[Scene]) -> str:
    scores = generation_scores(truths, seen)
    short = {"all": scores["generation_attribute_accuracy"], "count": scores["generation_object_count"],
             **{a: scores[f"generation_{a}"] for a in KEYS[1:-1]}}
    return "  ".join(f"{k} {short[k]:.3f}" for k in KEYS)


def marking(scene: Scene) -> str:
    """The marking of the first object the judge reads ("none" if it reads none): what
    probe_generation.py counts too, also when a lone caption was drawn as two objects."""
    return scene.objects[0].pattern if scene.objects else "none"


def main(faint_dir: str, spec: str = "toy") -> None:
    torch.manual_seed(0)
    judges = {"old": load_recogniser(RECOGNISER_DIR)[0], "faint": load_recogniser(faint_dir)[0]}

    rng = np.random.default_rng(11)
    marked = [s for s in (random_scene(rng, n_objects=1) for _ in range(400)) if s.objects[0].pattern != "plain"]
    print(f"1. lone marked objects at lower marking contrast ({len(marked)} renders, seed 11): right / read plain")
    for contrast in (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1):
        images = [render(s, 32, seed=i, marking_contrast=contrast) for i, s in enumerate(marked)]
        row = []
        for name, judge in judges.items():
            seen = judge.read(images)
            right = sum(marking(r) == marking(t) for t, r in zip(marked, seen, strict=True))
            plain = sum(marking(r) == "plain" for r in seen)
            row.append(f"{name} {right:>3} / {plain:>3}")
        print(f"contrast {contrast:.2f}   " + "    ".join(row), flush=True)

    backbone = load_backbone(spec)
    pipe = OmniPipeline(backbone, recaption=False)
    sampler = SamplerConfig(num_steps=25)
    print("\n2. text-to-image on evaluate-base's 100 captions (seed 4321), per judge")
    rng = np.random.default_rng(4321)
    scenes = [random_scene(rng) for _ in range(100)]
    images = caption_images(pipe, scenes, sampler)
    for name, judge in judges.items():
        print(f"{name:<5} {attribute_line(scenes, judge.read(images))}", flush=True)

    print("\n   marking read (columns) for the marking named (rows), 160 lone-object captions (seed 7)")
    rng = np.random.default_rng(7)
    lone = [random_scene(rng, n_objects=1) for _ in range(160)]
    images = caption_images(pipe, lone, sampler)
    reads = {name: judge.read(images) for name, judge in judges.items()}
    for name, seen in reads.items():
        drawn = collections.Counter((marking(t), marking(s)) for t, s in zip(lone, seen, strict=True))
        print(f"   {name:<10}" + "".join(f"{p:>9}" for p in (*PATTERNS, "none")))
        for named in PATTERNS:
            print(f"   {named:<10}" + "".join(f"{drawn[(named, p)]:>9}" for p in (*PATTERNS, "none")))
        right = sum(drawn[(p, p)] for p in PATTERNS)
        plain_marked = sum(drawn[("plain", p)] for p in PATTERNS[1:])
        print(f"   named marking read: {right} of 160; a plain caption read as marked: {plain_marked}")

    differ = [i for i in range(len(lone)) if marking(reads["old"][i]) != marking(reads["faint"][i])]
    print(f"\n3. the judges read different markings on {len(differ)} of 160 lone objects; the first 32:")
    shown = differ[:32]
    scale, label = 3, 26
    sheet = Image.new("RGB", (8 * 34 * scale, 4 * (32 * scale + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(shown):
        x, y = (k % 8) * 34 * scale, (k // 8) * (32 * scale + label)
        asked, old, faint = marking(lone[i]), marking(reads["old"][i]), marking(reads["faint"][i])
        sheet.paste(images[i].resize((32 * scale, 32 * scale), Image.NEAREST), (x, y))
        draw.text((x + 2, y + 32 * scale + 1), f"asked {asked}", fill="black")
        draw.text((x + 2, y + 32 * scale + 13), f"{old} / {faint}", fill="black")
        print(f"   {k:>2}: asked {asked:<8} old {old:<8} faint {faint}")
    out = Path(__file__).with_name("judge_disagreements.png")
    sheet.save(out)
    print(f"   sheet (caption's marking; old judge / faint judge): docs/benchmark/{out.name}")


def train_faint(out: str) -> None:
    torch.set_num_threads(2)
    model, report = train_recogniser(2500, seed=0, faint_markings=(0.35, 1.0))
    save_recogniser(model, report, out)
    print(f"clean renders (2,000 held out): {report.accuracy}; {report.seconds} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train-faint"]:
        train_faint(sys.argv[2])
    else:
        torch.set_num_threads(1)
        main(*sys.argv[1:3])
