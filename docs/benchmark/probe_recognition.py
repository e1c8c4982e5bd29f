"""Why do trained concept tokens recognise worse than a text description? (docs/benchmark.md)

    python docs/benchmark/probe_recognition.py [N_CONCEPTS] [SEED] [STEPS] [LR]

Draws the benchmark's cases for N concepts of SEED (defaults 4 and 0: the first four concepts
of the 20-concept run, items included), trains
OmniPersona's tokens with the benchmark's recipe (STEPS: default its 300; LR: default the
recipe's) and asks "is <c> in this image ?" of: the held-out
positives, the held-out look-alikes (one attribute off, split by which), the held-out easy
negatives, and the training photos themselves. The same questions go to the base with the short
and the exact description. Prints the share of "yes" per group: a good recogniser says yes to
positives only.
"""

from __future__ import annotations

import collections
import sys

import numpy as np
import torch

from omnipersona.backbone import load_backbone
from omnipersona.bench.cases import build_cases
from omnipersona.pipeline import OmniPipeline
from omnipersona.toyworld import tasks
from omnipersona.trainer import TrainRecipe, train_concept

ATTRIBUTES = ("shape", "colour", "pattern", "size")


def main(n_concepts: int = 4, seed: int = 0, steps: int = 300, lr: float | None = None) -> None:
    torch.set_num_threads(2)
    backbone = load_backbone("toy")
    said_yes: dict[str, dict[str, list[bool]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for case in build_cases(seed, n_concepts, backbone.config.image_size):
        groups: list[tuple[str, object]] = [("test positive", case.image(s, k)) for s, k in case.test_positive]
        for scene, k in case.test_negative:
            off = [a for a, o, c in zip(ATTRIBUTES, scene.objects[0].identity, case.concept.identity, strict=True)
                   if o != c]
            groups.append((f"look-alike, {off[0]} off" if len(off) == 1 else "easy negative", case.image(scene, k)))
        train = case.training_data()
        groups += [("train positive", img) for img in train.images]
        groups += [("train negative", img) for img in train.negatives]

        recipe = TrainRecipe(steps=steps, seed=seed * 1000 + case.index)
        if lr is not None:
            recipe.lr = lr
        tokens = train_concept(backbone, train, case.token_name, recipe).concept
        with_tokens = OmniPipeline(backbone)
        with_tokens.add_concept(tokens)
        readers = {"OmniPersona tokens": (with_tokens, f"<{case.token_name}>")}
        for kind in ("short", "exact"):
            pipe = OmniPipeline(backbone)
            pipe.describe(case.text_name, case.description(exact=kind == "exact"))
            readers[f"base + text ({kind})"] = (pipe, case.text_name)
        for reader, (pipe, ref) in readers.items():
            question = tasks.RECOGNITION_QUESTION.format(c=ref)
            answers = pipe.ask_batch([(question, img) for _, img in groups], max_new_tokens=2)
            for (group, _), a in zip(groups, answers, strict=True):
                said_yes[reader][group].append(a.strip() == "yes")
        print(f"concept {case.index + 1}/{n_concepts} done", file=sys.stderr)

    names = sorted({g for r in said_yes.values() for g in r})
    print("| share answered yes | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for reader, by_group in said_yes.items():
        cells = [f"{np.mean(by_group[g]):.2f} ({len(by_group[g])})" for g in names]
        print(f"| {reader} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), *(float(a) for a in sys.argv[4:5]))
