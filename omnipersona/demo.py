"""The README's main job: one concept from the bundled example photos, trained and then used for
all three tasks, on embedded defaults (no servers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from .artifacts import save_concept
from .backbone import load_backbone
from .data import ConceptData
from .pipeline import OmniPipeline
from .sampler import SamplerConfig
from .trainer import TrainRecipe, train_concept

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "maeve"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_facts(path: Path) -> list[tuple[str, str]]:
    """`[[question, answer], ...]` or `[{"question": ..., "answer": ...}, ...]`."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{path}: facts must be a JSON list")
    facts = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str):
            facts.append((item["question"], item["answer"]))
        elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            facts.append((item[0], item[1]))
        else:
            raise ValueError(f"{path}: fact {i} must be [question, answer] or {{question, answer}}")
    return facts


def run_demo(out: str | Path, backbone: str = "toy", steps: int = 100, sample_steps: int = 20) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bb = load_backbone(backbone)
    photos = list_images(EXAMPLE / "photos")
    data = ConceptData(images=photos, facts=read_facts(EXAMPLE / "facts.json"))
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
        "backbone": backbone,
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
