"""The benchmark's concepts, drawn from a seed: for each, what a customer would upload (about ten
photos, facts as text, optionally negatives and editing pairs) and what we test it on (held-out
positive and negative photos, questions, "<c> at its home" prompts, editing cases). Everything
carries its ground truth as a `Scene`, so the recogniser can score images exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data import ConceptData, EditExample
from ..toyworld import tasks
from ..toyworld.world import (
    MAX_OBJECTS,
    PLACES,
    POSITIONS,
    QUADRANTS,
    Concept,
    Scene,
    concept_scene,
    negative_scene,
    random_concept,
    render,
)

C = "{c}"  # stands for the concept's identifier (`<c3>`) or its described name (`n3`)
PARG_REQUESTS = (1, 3, 7)  # indices into tasks.RECAPTION_REQUESTS: the requests that need the home
EDIT_KINDS = ("remove", "move", "add")
FULL_CONCEPTS = 20  # the full benchmark; smaller runs are its first concepts


@dataclass(frozen=True)
class EditCase:
    kind: str
    instruction: str  # with {c}
    source: Scene
    target: Scene


@dataclass
class BenchConcept:
    index: int
    concept: Concept
    image_size: int
    train_scenes: list[Scene]
    train_seeds: list[int]
    negative_scenes: list[Scene]
    train_edits: list[tuple[EditCase, int]]  # (case, render seed)
    test_positive: list[tuple[Scene, int]]
    test_negative: list[tuple[Scene, int]]
    questions: list[tuple[str, str, str]]  # (kind visual|fact, question with {c}, answer)
    parg: list[tuple[str, int]]  # (request with {c} that needs the home, seed)
    edits: list[tuple[EditCase, int]]
    gen_seeds: list[int] = field(default_factory=lambda: list(range(5)))

    @property
    def token_name(self) -> str:
        return f"c{self.index}"

    @property
    def text_name(self) -> str:
        return tasks.NAMES[self.index % len(tasks.NAMES)]

    def image(self, scene: Scene, seed: int) -> Image.Image:
        return render(scene, self.image_size, seed=seed)

    def description(self, exact: bool) -> str:
        """What the base + text-prompt rows are told. `exact`: every attribute words can say (in
        the toy world that is the whole identity); otherwise what a customer would type about
        their thing — its colour and kind ('a red star'), not its marking or size."""
        parts = {} if exact else {"size": False, "pattern": False}
        facts = [f"its {f} is {tasks.fact_answer(self.concept, f)}" for f in tasks.FACTS]
        return " ; ".join([f"{self.text_name} is {tasks.object_phrase(self.concept, **parts)}", *facts]) + " ."

    def training_data(self, with_edits: bool = True) -> ConceptData:
        images = [self.image(s, seed) for s, seed in zip(self.train_scenes, self.train_seeds, strict=True)]
        captions = [tasks.caption(s, names={0: C}) for s in self.train_scenes]
        negatives = [self.image(s, 7_000 + i) for i, s in enumerate(self.negative_scenes)]
        edits = [EditExample(self.image(e.source, seed), e.instruction, self.image(e.target, seed))
                 for e, seed in self.train_edits] if with_edits else []
        return ConceptData(images, tasks.concept_facts(self.concept), negatives, edits, captions)


def _edit_case(concept: Concept, rng: np.random.Generator, kind: str) -> EditCase:
    """A personalised edit: the instruction names the concept, the target is exact."""
    if kind == "remove":  # the concept among 1-2 others; only it goes
        src = concept_scene(concept, rng, companions=int(rng.integers(1, MAX_OBJECTS)))
        return EditCase(kind, f"remove {C}", src, Scene(src.place, src.objects[1:]))
    if kind == "move":
        src = concept_scene(concept, rng, companions=int(rng.integers(0, 2)))
        here = src.objects[0].position
        free = [p for p in POSITIONS if p != here] if len(src.objects) == 1 else list(src.free_positions())
        new = free[int(rng.integers(len(free)))]
        moved = (concept.spec(new), *src.objects[1:])
        return EditCase(kind, f"move {C} to the {new}", src, Scene(src.place, moved))
    if kind == "add":  # a scene without it gets it at a free quadrant
        n = int(rng.integers(1, MAX_OBJECTS))
        src = negative_scene(concept, rng, hard=False, n_objects=n)
        free = [p for p in QUADRANTS if p not in {o.position for o in src.objects}]
        if "center" in {o.position for o in src.objects}:  # a lone centred object: start over
            return _edit_case(concept, rng, kind)
        pos = free[int(rng.integers(len(free)))]
        where = tasks.position_phrase(pos)
        return EditCase(kind, f"add {C} {where}", src, Scene(src.place, (*src.objects, concept.spec(pos))))
    raise ValueError(f"unknown edit kind {kind!r}")


def build_cases(seed: int = 0, n_concepts: int = 20, image_size: int = 32, n_train: int = 10,
                n_test: int = 10, n_parg: int = 5, n_edit: int = 5) -> list[BenchConcept]:
    """With the defaults and 20 concepts every metric has >= 100 test items (Rec 400, VQA 140,
    Gen, PARG and Edit 100 each). Fewer concepts are the first ones of the full draw, items
    included, so a `--quick` run scores a subset of what the full run scores."""
    rng = np.random.default_rng(seed)
    n_drawn = max(n_concepts, FULL_CONCEPTS)  # items are drawn after all identities
    concepts: list[Concept] = []
    while len(concepts) < n_drawn:  # distinct identities
        c = random_concept(rng)
        if all(c.identity != o.identity for o in concepts):
            concepts.append(c)

    def seeds(n: int) -> list[int]:
        return [int(s) for s in rng.integers(1 << 30, size=n)]

    out = []
    for i, concept in enumerate(concepts):
        places = [PLACES[j % len(PLACES)] for j in rng.permutation(n_train)]  # varied places
        train = [concept_scene(concept, rng, place=p, companions=int(rng.integers(MAX_OBJECTS))) for p in places]
        negatives = [negative_scene(concept, rng, hard=bool(j % 2)) for j in range(n_train)]
        train_edits = [(_edit_case(concept, rng, k), s) for k, s in zip(EDIT_KINDS * 2, seeds(6), strict=True)]
        pos = [concept_scene(concept, rng, companions=int(rng.integers(MAX_OBJECTS))) for _ in range(n_test)]
        neg = [negative_scene(concept, rng, hard=bool(j % 2)) for j in range(n_test)]
        questions = [("visual", q, getattr(concept, a)) for a, q in tasks.NAMING_ATTRIBUTE_QUESTIONS.items()]
        questions += [("fact", q, a) for q, a in tasks.concept_facts(concept)]
        parg = [(tasks.RECAPTION_REQUESTS[PARG_REQUESTS[k % len(PARG_REQUESTS)]][0], 100 + k) for k in range(n_parg)]
        kinds = [EDIT_KINDS[k % len(EDIT_KINDS)] for k in range(n_edit)]
        edits = [(_edit_case(concept, rng, k), s) for k, s in zip(kinds, seeds(n_edit), strict=True)]
        out.append(BenchConcept(
            i, concept, image_size, train, seeds(n_train), negatives, train_edits,
            list(zip(pos, seeds(n_test), strict=True)), list(zip(neg, seeds(n_test), strict=True)),
            questions, parg, edits,
        ))
    return out[:n_concepts]
