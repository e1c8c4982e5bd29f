"""Run the benchmark: train each concept once per training variant, then score every row.

Rows (the paper's table, toy-world analogue):
- base + text (short / exact): no training; the concept is a name with a text description in
  context (the pretrained in-context naming slot). "short" is what a customer types, "exact"
  every attribute words can say (an upper reference that only a toy world allows);
- OmniPersona: decoupled understanding/generation tokens, editing pairs, recaptioning;
- shared tokens: one set of tokens for both experts (no decoupling);
- no recaptioning: OmniPersona's tokens, requests go to the generator unrewritten;
- no editing data: decoupled tokens trained without the editing pairs.

Metrics per concept (then averaged): Rec = balanced accuracy of "is <c> in this image ?" on
held-out positives/negatives; VQA = exact match on attribute and fact questions; Gen = share of
"a photo of <c>" images where the recogniser finds an object with the concept's identity;
PARG = share of "<c> at its home" requests whose image shows the concept *and* its home
(PARG place: the home alone, whatever object is drawn);
Edit = share of personalised edits whose result reads as exactly the target scene.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..backbone import Backbone
from ..pipeline import GenerateRequest, OmniPipeline
from ..sampler import SamplerConfig
from ..toyworld import tasks
from ..toyworld.recogniser import Recogniser, same_scene
from ..toyworld.world import Scene
from ..trainer import TrainRecipe, train_concept
from .cases import BenchConcept, build_cases

METRICS = ("rec", "vqa", "vqa_visual", "vqa_fact", "gen", "parg", "parg_place", "edit")


@dataclass(frozen=True)
class Row:
    name: str
    text: str | None = None  # "short" | "exact": base + text description, no training
    method: str = "decoupled"
    edits: bool = True
    recaption: bool = True

    @property
    def training(self) -> tuple[str, bool] | None:
        """Which trained tokens the row uses (rows that differ only at inference share them)."""
        return None if self.text else (self.method, self.edits)


ROWS = (
    Row("base + text (short)", text="short"),
    Row("base + text (exact)", text="exact"),
    Row("OmniPersona"),
    Row("shared tokens", method="shared"),
    Row("no recaptioning", recaption=False),
    Row("no editing data", edits=False),
)


@dataclass
class ConceptResult:
    scores: dict[str, float]
    images: dict[str, list[Image.Image]]  # gen / parg / edit outputs, for the grid
    traces: list[dict] = field(default_factory=list)


@dataclass
class BenchResult:
    seed: int
    steps: int
    lr: float
    rows: dict[str, list[ConceptResult]]
    train_seconds: list[float]  # one per trained concept (all variants)
    cases: list[BenchConcept]  # the concepts scored so far
    seconds: float
    planned: int  # concepts the run was asked for; more than len(cases) while it is under way

    @property
    def complete(self) -> bool:
        return len(self.cases) == self.planned

    def table(self) -> dict[str, dict[str, float]]:
        return {row: {m: float(np.mean([r.scores[m] for r in results])) for m in METRICS}
                for row, results in self.rows.items()}


def _has_identity(scene: Scene, case: BenchConcept) -> bool:
    return any(o.identity == case.concept.identity for o in scene.objects)


@torch.no_grad()
def recognition_rates(pipe: OmniPipeline, ref: str, case: BenchConcept) -> tuple[float, float]:
    """(true-positive rate, true-negative rate) of "is `ref` in this image ?" on the held-out
    positives and negatives; Rec is their mean."""
    question = tasks.RECOGNITION_QUESTION.format(c=ref)
    tests = [(case.image(s, seed), True) for s, seed in case.test_positive]
    tests += [(case.image(s, seed), False) for s, seed in case.test_negative]
    said = pipe.ask_batch([(question, img) for img, _ in tests], max_new_tokens=2)
    yes = [a.strip() == "yes" for a in said]
    tpr = np.mean([y for y, (_, pos) in zip(yes, tests, strict=True) if pos])
    tnr = np.mean([not y for y, (_, pos) in zip(yes, tests, strict=True) if not pos])
    return float(tpr), float(tnr)


@torch.no_grad()
def evaluate_concept(pipe: OmniPipeline, ref: str, case: BenchConcept, recogniser: Recogniser, row: Row,
                     sampler: SamplerConfig, edit_sampler: SamplerConfig) -> ConceptResult:
    """Score one concept as `ref` (`<c3>` for tokens, `n3` for a described name) in `pipe`."""
    fill = {"c": ref}
    tpr, tnr = recognition_rates(pipe, ref, case)
    answers = pipe.ask_batch([(q.format(**fill), None) for _, q, _ in case.questions], max_new_tokens=6)
    right = {"visual": [], "fact": []}
    for (kind, _, ref_answer), a in zip(case.questions, answers, strict=True):
        right[kind].append(a.strip() == ref_answer)

    gens = pipe.generate_batch([GenerateRequest(tasks.GENERATION_PROMPT.format(**fill), s, sampler)
                                for s in case.gen_seeds], recaption=False)
    pargs = pipe.generate_batch([GenerateRequest(p.format(**fill), s, sampler) for p, s in case.parg],
                                recaption=row.recaption)
    edits = [pipe.edit(case.image(e.source, seed), e.instruction.format(**fill), seed=seed, sampler=edit_sampler)
             for e, seed in case.edits]

    read = recogniser.read([r.image for r in gens + pargs + edits])
    read_gen, read_parg, read_edit = read[:len(gens)], read[len(gens):len(gens) + len(pargs)], read[-len(edits):]
    home = case.concept.home
    scores = {
        "rec": float((tpr + tnr) / 2),
        "vqa": float(np.mean(right["visual"] + right["fact"])),
        "vqa_visual": float(np.mean(right["visual"])),
        "vqa_fact": float(np.mean(right["fact"])),
        "gen": float(np.mean([_has_identity(s, case) for s in read_gen])),
        "parg": float(np.mean([_has_identity(s, case) and s.place == home for s in read_parg])),
        # the fact-derived half of PARG alone (the home drawn), whoever is drawn in it
        "parg_place": float(np.mean([s.place == home for s in read_parg])),
        "edit": float(np.mean([same_scene(s, e.target) for s, (e, _) in zip(read_edit, case.edits, strict=True)])),
    }
    traces = [r.trace.to_dict() for r in pargs if r.trace is not None]
    images = {"gen": [r.image for r in gens], "parg": [r.image for r in pargs], "edit": [r.image for r in edits]}
    return ConceptResult(scores, images, traces)


def run_bench(
    backbone: Backbone,
    recogniser: Recogniser,
    seed: int = 0,
    n_concepts: int = 20,
    steps: int = 300,
    rows: tuple[Row, ...] = ROWS,
    sample_steps: int = 25,
    log: Callable[[str], None] | None = None,
    on_concept: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Train and score every concept; `on_concept` gets the result so far after each one (the CLI
    rewrites its report then, so a stopped run keeps exact scores for the concepts it finished)."""
    start = time.monotonic()
    log = log or (lambda _: None)
    cases = build_cases(seed, n_concepts, backbone.config.image_size)
    sampler = SamplerConfig(num_steps=sample_steps)
    edit_sampler = SamplerConfig.for_editing(num_steps=sample_steps)
    results: dict[str, list[ConceptResult]] = {r.name: [] for r in rows}
    train_seconds = []
    variants = list(dict.fromkeys(r.training for r in rows if r.training))

    def so_far(done: int) -> BenchResult:
        rows_done = {name: scored[:done] for name, scored in results.items()}  # a copy: the run goes on
        return BenchResult(seed, steps, TrainRecipe().lr, rows_done, train_seconds[:done], cases[:done],
                           time.monotonic() - start, len(cases))

    for case in cases:
        t0 = time.monotonic()
        trained = {}
        for method, with_edits in variants:
            recipe = TrainRecipe(steps=steps, seed=seed * 1000 + case.index, method=method)
            result = train_concept(backbone, case.training_data(with_edits), case.token_name, recipe)
            trained[(method, with_edits)] = result.concept
        train_seconds.append(time.monotonic() - t0)
        for row in rows:
            pipe = OmniPipeline(backbone, recaption=row.recaption)
            if row.text:
                pipe.describe(case.text_name, case.description(exact=row.text == "exact"))
                ref = case.text_name
            else:
                pipe.add_concept(trained[row.training])
                ref = f"<{case.token_name}>"
            results[row.name].append(evaluate_concept(pipe, ref, case, recogniser, row, sampler, edit_sampler))
        line = " ".join(f"{r.name}: " + ",".join(f"{m}={results[r.name][-1].scores[m]:.2f}"
                                                  for m in ("rec", "vqa", "gen", "parg", "edit")) for r in rows)
        log(f"concept {case.index + 1}/{len(cases)} ({time.monotonic() - start:.0f}s) {line}")
        if on_concept is not None:
            on_concept(so_far(case.index + 1))
    return so_far(len(cases))
