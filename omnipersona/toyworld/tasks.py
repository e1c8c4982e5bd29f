"""Task generators of the toy world, each with exact ground truth.

- `caption(scene)`: a short caption (at most 12 words), deterministic;
- `vqa(scene, rng)`: a question about an object (colour, shape, pattern, size, position), the
  place, the number of objects, or "is there a ...?";
- `edit(scene, rng)`: an instruction and the exact source/target scene pair (remove, add, recolour,
  move an object, change the place);
- `recaption_example(concept, rng)`: the three text tasks of explicit knowledge recaptioning in
  the format of `omnipersona.recaption` (request -> question; question + facts -> answer;
  request + answer -> rewritten prompt);
- `naming_example(rng)`: in-context naming, "n5 is a large red dotted star ; its home is the beach ."
  followed by "is n5 in this image ?" (yes/no), a fact question or an attribute question.

All text is lower-case, space-separated words and punctuation, so the toy word tokenizer reads it
without unknown tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from ..recaption import PROMPT_PREFIX, QUESTION_PREFIX, RecaptionTrace, intent_context, rewrite_context
from .world import (
    COLOURS,
    MAX_OBJECTS,
    PLACES,
    POSITIONS,
    SHAPES,
    Concept,
    ObjectSpec,
    Scene,
    _choice,
    concept_scene,
    negative_scene,
    random_concept,
    random_object,
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES = tuple(f"n{i}" for i in range(10))  # names for in-context naming
PLACEHOLDER = "<x>"  # the concept placeholder of recaptioning stages 1 and 3 (as in the pipeline)

# Same wording as omnipersona.data's RECOGNITION_QUESTION / CAPTION_QUESTION / GENERATION_PROMPT,
# spelled the way the word tokenizer splits it.
RECOGNITION_QUESTION = "is {c} in this image ?"
CAPTION_QUESTION = "what is in this image ?"
GENERATION_PROMPT = "a photo of {c}"

VQA_TEMPLATES = {
    "colour": "what colour is the {ref} ?",
    "shape": "what shape is the {ref} ?",
    "pattern": "what pattern is on the {ref} ?",
    "size": "what size is the {ref} ?",
    "position": "where is the {ref} ?",
    "place": "what place is this ?",
    "count": "how many objects are there ?",
    "exists": "is there {obj} ?",
}
VQA_KINDS = tuple(VQA_TEMPLATES)
OBJECT_ATTRIBUTES = ("colour", "shape", "pattern", "size", "position")

EDIT_TEMPLATES = {
    "remove": "remove the {ref}",
    "add": "add {obj} {where}",
    "recolour": "make the {ref} {colour}",
    "move": "move the {ref} to the {position}",
    "place": "change the background to the {place}",
}
EDIT_KINDS = tuple(EDIT_TEMPLATES)

FACTS = ("home", "toy", "friend")
FACT_QUESTIONS = {
    "home": "what is the home of {c} ?",
    "toy": "what is the toy of {c} ?",
    "friend": "who is the friend of {c} ?",
}
# (request, fact it needs, rewritten prompt); {a} is the answer, {the} the answer with "the".
# The first six are omnipersona.recaption.FEW_SHOT's requests, rewritten the same way.
RECAPTION_REQUESTS = (
    ("generate a toy for {c}", "toy", "generate {the} of {c}"),
    ("draw {c} at its home", "home", "draw {c} at {a}"),
    ("show {c} with its friend", "friend", "show {c} with {a}"),
    ("make a photo of {c} at home", "home", "make a photo of {c} at {a}"),
    ("draw the toy of {c}", "toy", "draw {the} of {c}"),
    ("show the friend of {c}", "friend", "show {the} of {c}"),
    ("draw {c} with its toy", "toy", "draw {c} with {a}"),
    ("show {c} at its home", "home", "show {c} at {a}"),
    ("generate {c} with its friend", "friend", "generate {c} with {a}"),
)
NAMING_KINDS = ("recognition", "fact", "attribute")
NAMING_ATTRIBUTE_QUESTIONS = {
    "colour": "what colour is {c} ?",
    "shape": "what shape is {c} ?",
    "pattern": "what pattern is on {c} ?",
    "size": "what size is {c} ?",
}

# Every template, for the word list of `language.py`.
TEMPLATES = (
    RECOGNITION_QUESTION, CAPTION_QUESTION, GENERATION_PROMPT, *VQA_TEMPLATES.values(), *EDIT_TEMPLATES.values(),
    *FACT_QUESTIONS.values(), *(t for r in RECAPTION_REQUESTS for t in (r[0], r[2])),
    *NAMING_ATTRIBUTE_QUESTIONS.values(),
    "{c} is {obj} ; its home is {a} ; its toy is {a} ; its friend is {a} .",
    "{obj} , {obj} and {obj} at the {place}", "in the center", "at the {position}", "yes no",
)


# -- phrases ----------------------------------------------------------------------------------
def with_article(words: str) -> str:
    return ("an " if words[:1] in "aeiou" else "a ") + words


def object_words(obj: ObjectSpec | Concept, size: bool = True, colour: bool = True, pattern: bool = True,
                 shape: bool = True) -> str:
    """'large red dotted star' (a plain pattern is not spoken; 'object' stands for no shape)."""
    words = []
    if size:
        words.append(obj.size)
    if colour:
        words.append(obj.colour)
    if pattern and obj.pattern != "plain":
        words.append(obj.pattern)
    words.append(obj.shape if shape else "object")
    return " ".join(words)


def object_phrase(obj: ObjectSpec | Concept, **parts: bool) -> str:
    """'a large red dotted star'."""
    return with_article(object_words(obj, **parts))


def position_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def place_phrase(place: str) -> str:
    return f"the {place}"


def thing_phrase(colour: str, noun: str) -> str:
    """A toy or a friend: 'a red ball'."""
    return with_article(f"{colour} {noun}")


def _matches(obj: ObjectSpec, attrs: tuple[str, ...], ref: ObjectSpec) -> bool:
    return all(getattr(obj, a) == getattr(ref, a) for a in attrs)


_REF_ORDER = ("shape", "colour", "pattern", "size", "position")


def refer(scene: Scene, index: int, exclude: tuple[str, ...] = (), rng: np.random.Generator | None = None) -> str:
    """The shortest phrase that picks out object `index` in the scene without naming the
    attributes in `exclude` ('star', 'red object', 'dotted star', 'object at the top left', ...);
    with `rng`, a random one among the shortest."""
    obj = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    allowed = [a for a in _REF_ORDER if a not in exclude]
    for n in range(1, len(allowed) + 1):
        unique = [attrs for attrs in combinations(allowed, n) if not any(_matches(o, attrs, obj) for o in others)]
        if unique:
            attrs = unique[int(rng.integers(len(unique)))] if rng is not None else unique[0]
            adjectives = [getattr(obj, a) for a in ("size", "colour", "pattern") if a in attrs]
            words = " ".join([*adjectives, obj.shape if "shape" in attrs else "object"])
            if "position" in attrs:
                words += " " + position_phrase(obj.position)
            return words
    raise ValueError(f"object {index} cannot be told apart from the others without {exclude}")


# -- captions ---------------------------------------------------------------------------------
def caption(scene: Scene, names: dict[int, str] | None = None, every_marking: bool = False) -> str:
    """A short caption: one object with every attribute, two without size, three by colour and
    shape only; `names` replaces objects by a name (e.g. {0: '<sks>'}). `every_marking` names the
    marking of three objects too, so that an unnamed marking always means a plain object."""
    names = names or {}
    n = len(scene.objects)
    parts = []
    for i, obj in enumerate(scene.objects):
        if i in names:
            parts.append(names[i])
        else:
            parts.append(object_phrase(obj, size=n == 1, pattern=n <= 2 or every_marking))
    where = f"at {place_phrase(scene.place)}"
    if not parts:
        return place_phrase(scene.place)
    if len(parts) == 2:
        return f"{parts[0]} and {parts[1]} {where}"
    return f"{' , '.join(parts)} {where}"


# -- VQA --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VQAExample:
    scene: Scene
    question: str
    answer: str
    kind: str
    index: int | None = None  # the object asked about, if any


def vqa(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> VQAExample:
    """One question about the scene with its exact answer."""
    if kind is None:
        kind = _choice(rng, VQA_KINDS if scene.objects else ("place", "count", "exists"))
    if kind not in VQA_TEMPLATES:
        raise ValueError(f"unknown VQA kind {kind!r}; known: {', '.join(VQA_KINDS)}")
    template = VQA_TEMPLATES[kind]
    if kind in OBJECT_ATTRIBUTES:
        if not scene.objects:
            raise ValueError(f"a {kind} question needs an object in the scene")
        i = int(rng.integers(len(scene.objects)))
        question = template.format(ref=refer(scene, i, exclude=(kind,), rng=rng))
        return VQAExample(scene, question, getattr(scene.objects[i], kind), kind, i)
    if kind == "place":
        return VQAExample(scene, template, place_phrase(scene.place), kind)
    if kind == "count":
        return VQAExample(scene, template, NUMBER_WORDS[len(scene.objects)], kind)
    # exists: a (colour, shape) pair that is there, or one that is not (half the time sharing
    # one of the two with an object that is there)
    present = {(o.colour, o.shape) for o in scene.objects}
    if present and rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        while True:
            colour, shape = _choice(rng, COLOURS), _choice(rng, SHAPES)
            if scene.objects and rng.random() < 0.5:
                ref = scene.objects[int(rng.integers(len(scene.objects)))]
                colour, shape = (ref.colour, shape) if rng.random() < 0.5 else (colour, ref.shape)
            if (colour, shape) not in present:
                break
        answer = "no"
    return VQAExample(scene, template.format(obj=with_article(f"{colour} {shape}")), answer, kind)


# -- editing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    kind: str  # remove | add | recolour | move | place
    instruction: str
    source: Scene
    target: Scene
    attribute: str  # object (remove/add) | colour | position | place
    index: int | None = None  # edited object: its index in source (in target for add)
    old: object = None
    new: object = None


def _move_targets(scene: Scene, index: int) -> tuple[str, ...]:
    pos = scene.objects[index].position
    if len(scene.objects) == 1:
        return tuple(p for p in POSITIONS if p != pos)
    return scene.free_positions()


def feasible_edits(scene: Scene) -> tuple[str, ...]:
    kinds = ["recolour", "place"] if scene.objects else ["place"]
    if len(scene.objects) >= 2:
        kinds.append("remove")
    if len(scene.objects) < MAX_OBJECTS and scene.free_positions():
        kinds.append("add")
    if scene.objects and (len(scene.objects) == 1 or scene.free_positions()):
        kinds.append("move")
    return tuple(k for k in EDIT_KINDS if k in kinds)


def edit(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Edit:
    """An instruction and its exact result: the target differs from the source only in what the
    instruction names."""
    feasible = feasible_edits(scene)
    kind = kind or _choice(rng, feasible)
    if kind not in feasible:
        raise ValueError(f"edit {kind!r} is not possible on this scene (possible: {', '.join(feasible)})")
    template = EDIT_TEMPLATES[kind]
    objects = list(scene.objects)
    if kind == "place":
        new_place = _choice(rng, [p for p in PLACES if p != scene.place])
        return Edit(kind, template.format(place=new_place), scene, replace(scene, place=new_place),
                    "place", None, scene.place, new_place)
    if kind == "add":
        position = _choice(rng, scene.free_positions())
        obj = random_object(rng, position, avoid={o.identity for o in objects})
        instruction = template.format(obj=object_phrase(obj), where=position_phrase(position))
        return Edit(kind, instruction, scene, Scene(scene.place, (*objects, obj)), "object", len(objects), None, obj)
    i = int(rng.integers(len(objects)))
    obj = objects[i]
    ref = refer(scene, i, rng=rng)
    if kind == "remove":
        target = Scene(scene.place, tuple(objects[:i] + objects[i + 1:]))
        return Edit(kind, template.format(ref=ref), scene, target, "object", i, obj, None)
    if kind == "recolour":
        taken = {o.identity for o in objects}
        choices = [c for c in COLOURS if c != obj.colour and replace(obj, colour=c).identity not in taken]
        new = _choice(rng, choices)
        objects[i] = replace(obj, colour=new)
        return Edit(kind, template.format(ref=ref, colour=new), scene, Scene(scene.place, tuple(objects)),
                    "colour", i, obj.colour, new)
    # move
    new = _choice(rng, _move_targets(scene, i))
    objects[i] = replace(obj, position=new)
    return Edit(kind, template.format(ref=ref, position=new), scene, Scene(scene.place, tuple(objects)),
                "position", i, obj.position, new)


# -- concept facts and recaptioning -----------------------------------------------------------
def fact_answer(concept: Concept, fact: str) -> str:
    if fact == "home":
        return place_phrase(concept.home)
    if fact == "toy":
        return thing_phrase(*concept.toy)
    if fact == "friend":
        return thing_phrase(*concept.friend)
    raise ValueError(f"unknown fact {fact!r}; known: {', '.join(FACTS)}")


def concept_facts(concept: Concept) -> list[tuple[str, str]]:
    """(question, answer) pairs with `{c}` for the identifier, as `ConceptData.facts` takes them."""
    return [(FACT_QUESTIONS[f], fact_answer(concept, f)) for f in FACTS]


def definition(concept: Concept, name: str, facts: tuple[str, ...] = FACTS) -> str:
    """'n5 is a large red dotted star ; its home is the beach ; its toy is a red ball .'"""
    parts = [f"{name} is {object_phrase(concept)}"]
    parts += [f"its {f} is {fact_answer(concept, f)}" for f in facts]
    return " ; ".join(parts) + " ."


@dataclass(frozen=True)
class TextTask:
    """Text blocks given to the model and the completion it must produce."""

    context: tuple[str, ...]
    target: str
    kind: str


def _the(answer: str) -> str:
    for article in ("a ", "an "):
        if answer.startswith(article):
            return "the " + answer[len(article):]
    return answer


@dataclass(frozen=True)
class RecaptionExample:
    concept: Concept
    name: str  # how the concept is named in the request (e.g. 'n3' or '<sks>')
    template: int  # index into RECAPTION_REQUESTS
    fact: str
    answer: str

    def _fill(self, text: str, c: str) -> str:
        return text.format(c=c, a=self.answer, the=_the(self.answer))

    def request(self, c: str | None = None) -> str:
        return self._fill(RECAPTION_REQUESTS[self.template][0], c or self.name)

    def question(self, c: str | None = None) -> str:
        return self._fill(FACT_QUESTIONS[self.fact], c or self.name)

    def prompt(self, c: str | None = None) -> str:
        return self._fill(RECAPTION_REQUESTS[self.template][2], c or self.name)

    def trace(self) -> RecaptionTrace:
        return RecaptionTrace(self.request(), self.question(), self.answer, self.prompt())

    def stage1(self, k: int = 6, placeholder: str = PLACEHOLDER) -> TextTask:
        """Intent parsing: few-shot (request, question) pairs + the request -> 'question : ...'."""
        context = intent_context(self.request(placeholder), k, placeholder)
        return TextTask(tuple(context), f"{QUESTION_PREFIX} {self.question(placeholder)}", "recaption_intent")

    def stage2(self, with_definition: bool = True) -> TextTask:
        """Memory retrieval: (the concept's definition as text +) the question -> the answer.
        With concept tokens, their system prompt stands where the definition is."""
        context = ((definition(self.concept, self.name),) if with_definition else ()) + (self.question(),)
        return TextTask(context, self.answer, "recaption_answer")

    def stage3(self, k: int = 6, placeholder: str = PLACEHOLDER) -> TextTask:
        """Prompt rewriting: few-shot triples + request and answer -> 'prompt : ...'."""
        context = rewrite_context(self.request(placeholder), self.answer, k, placeholder)
        return TextTask(tuple(context), f"{PROMPT_PREFIX} {self.prompt(placeholder)}", "recaption_rewrite")

    def stages(self, k: int = 6) -> tuple[TextTask, TextTask, TextTask]:
        return (self.stage1(k), self.stage2(), self.stage3(k))


def recaption_example(concept: Concept, rng: np.random.Generator, name: str = "n0",
                      template: int | None = None) -> RecaptionExample:
    t = int(rng.integers(len(RECAPTION_REQUESTS))) if template is None else template
    fact = RECAPTION_REQUESTS[t][1]
    return RecaptionExample(concept, name, t, fact, fact_answer(concept, fact))


# -- in-context naming ------------------------------------------------------------------------
@dataclass(frozen=True)
class NamingExample:
    """Definitions as a text prefix, then a question about one named concept."""

    definitions: tuple[str, ...]
    question: str
    answer: str
    kind: str  # recognition | fact | attribute
    name: str
    concept: Concept
    scene: Scene | None = None  # the image, for recognition

    @property
    def context(self) -> tuple[str, ...]:
        return (*self.definitions, self.question)


def random_facts(rng: np.random.Generator) -> tuple[str, ...]:
    """A non-empty subset of FACTS in their usual order: definitions state one fact or all of
    them (the benchmark's text description states all three)."""
    keep = rng.random(len(FACTS)) < 0.5
    keep[int(rng.integers(len(FACTS)))] = True
    return tuple(f for f, k in zip(FACTS, keep, strict=True) if k)


def naming_example(rng: np.random.Generator, kind: str | None = None, n_defs: int = 1,
                   facts: tuple[str, ...] | None = None, hard_prob: float = 0.5) -> NamingExample:
    """`n_defs` concepts defined under distinct names; the question is about one of them. For
    recognition, half the images show it (with random companions), the other half do not: then
    with `hard_prob` the image holds a look-alike (one attribute off) or another defined concept.
    The definitions state `facts`, by default a `random_facts` draw."""
    kind = kind or _choice(rng, NAMING_KINDS)
    if kind not in NAMING_KINDS:
        raise ValueError(f"unknown naming kind {kind!r}; known: {', '.join(NAMING_KINDS)}")
    facts = facts or random_facts(rng)
    names = [NAMES[i] for i in rng.choice(len(NAMES), size=n_defs, replace=False)]
    concepts: list[Concept] = []
    while len(concepts) < n_defs:
        c = random_concept(rng)
        if all(c.identity != o.identity for o in concepts):
            concepts.append(c)
    defs = tuple(definition(c, n, facts) for c, n in zip(concepts, names, strict=True))
    j = int(rng.integers(n_defs))
    concept, name = concepts[j], names[j]
    if kind == "fact":
        fact = _choice(rng, facts)
        question = FACT_QUESTIONS[fact].format(c=name)
        return NamingExample(defs, question, fact_answer(concept, fact), kind, name, concept)
    if kind == "attribute":
        attr = _choice(rng, NAMING_ATTRIBUTE_QUESTIONS)
        question = NAMING_ATTRIBUTE_QUESTIONS[attr].format(c=name)
        return NamingExample(defs, question, getattr(concept, attr), kind, name, concept)
    question = RECOGNITION_QUESTION.format(c=name)
    if rng.random() < 0.5:
        scene = concept_scene(concept, rng, companions=int(rng.integers(MAX_OBJECTS)))
        return NamingExample(defs, question, "yes", kind, name, concept, scene)
    others = [c for c in concepts if c is not concept]
    if others and rng.random() < hard_prob:
        scene = concept_scene(_choice_obj(rng, others), rng, companions=int(rng.integers(MAX_OBJECTS)))
        if concept.in_scene(scene):  # a companion happened to be the asked concept
            scene = negative_scene(concept, rng, hard=True)
    else:
        scene = negative_scene(concept, rng, hard=rng.random() < hard_prob)
    return NamingExample(defs, question, "no", kind, name, concept, scene)


def _choice_obj(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]
