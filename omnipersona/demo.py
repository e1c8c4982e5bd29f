"""The README's main job: one concept from the bundled example photos, trained and then used for
all three tasks, on embedded defaults (no servers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .artifacts import save_concept
from .backbone import Backbone
from .data import ConceptData, ImageLike
from .pipeline import OmniPipeline
from .sampler import SamplerConfig
from .toyworld.tasks import concept_facts
from .toyworld.world import PLACES, Concept, concept_scene, render
from .trainer import TrainRecipe, train_concept

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "maeve"
# The bundled example is a toy-world concept (the default backbone's world): a large red dotted
# circle whose home is the beach. `make_example` re-creates its files exactly.
MAEVE = Concept("circle", "red", "dotted", "large", home="beach", toy=("blue", "ball"), friend=("green", "frog"))


def make_example(folder: str | Path = EXAMPLE, n_photos: int = 10, seed: int = 7) -> None:
    """Ten photos of <maeve> in varied places with companions, and its facts as text."""
    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_photos):
        scene = concept_scene(MAEVE, rng, place=PLACES[i % len(PLACES)], companions=int(rng.integers(3)))
        render(scene, 32, seed=int(rng.integers(1 << 30))).save(folder / "photos" / f"{i:02d}_{scene.place}.png")
    facts = [[q, a] for q, a in concept_facts(MAEVE)]
    (folder / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")


def run_demo(out: str | Path, photos: list[ImageLike], facts: list[tuple[str, str]], backbone: Backbone,
             steps: int = 100, sample_steps: int = 20) -> dict:
    """Train <maeve> on `photos` + `facts`, then ask, generate and edit; writes the PNGs, the
    concept checkpoint and summary.json under `out`, and returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bb = backbone
    data = ConceptData(images=photos, facts=facts)
    bar = tqdm(total=steps, desc="train <maeve>", unit="step")

    def progress(step: int, total: int, parts: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})

    result = train_concept(bb, data, "maeve", TrainRecipe(steps=steps, batch_size=8), progress=progress)
    bar.close()
    concept_dir = save_concept(result.concept, out / "concept", bb.fingerprint(), metrics=result.metrics)

    pipe = OmniPipeline(bb)
    pipe.add_concept(result.concept)
    answer = pipe.ask("Is <maeve> in this image?", photos[0])
    fact = pipe.ask("What is the home of <maeve>?")
    gen = pipe.generate("<maeve> at its home", seed=0, sampler=SamplerConfig(num_steps=sample_steps))
    gen.image.save(out / "generate.png")
    edit = pipe.edit(photos[0], "remove <maeve>", seed=0, sampler=SamplerConfig.for_editing(num_steps=sample_steps))
    edit.image.save(out / "edit.png")
    summary = {
        "backbone": bb.config.name,
        "concept": str(concept_dir),
        "train_seconds": round(result.seconds, 1),
        "metrics": result.metrics,
        "ask": {"Is <maeve> in this image?": answer, "What is the home of <maeve>?": fact},
        "generate": {"image": str(out / "generate.png"), "trace": gen.trace.to_dict() if gen.trace else None},
        "edit": {"image": str(out / "edit.png")},
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
