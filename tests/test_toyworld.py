"""The toy world: deterministic rendering, distinguishable places and attributes, exact edits,
and a language that the toy tokenizer reads without unknown words."""

import itertools
import re

import numpy as np
import pytest

from omnipersona.recaption import FEW_SHOT, PROMPT_PREFIX, QUESTION_PREFIX
from omnipersona.toyworld import (
    COLOURS,
    PATTERNS,
    PLACES,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    build_toy_tokenizer,
    caption,
    concept_scene,
    edit,
    naming_example,
    random_concept,
    random_scene,
    recaption_example,
    render,
    vqa,
)
from omnipersona.toyworld.tasks import (
    EDIT_KINDS,
    RECAPTION_REQUESTS,
    VQA_KINDS,
    _the,
    concept_facts,
    definition,
    feasible_edits,
)
from omnipersona.toyworld.world import POSITION_CENTRE, SIZE_FRACTION, negative_scene


def pixels(scene: Scene, seed: int | None = None) -> np.ndarray:
    return np.asarray(render(scene, seed=seed), dtype=np.int32)


def n_changed(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a - b).sum(-1) > 0).sum())


def n_words(text: str) -> int:
    return len(re.findall(r"[\w<>]+", text))


def test_render_is_deterministic_and_seeds_only_jitter():
    obj = ObjectSpec("star", "red", "dotted", "large", "center")
    scene = Scene("beach", (obj,))
    im = render(scene, seed=3)
    assert im.size == (32, 32) and im.mode == "RGB"
    assert np.array_equal(pixels(scene, 3), pixels(scene, 3))
    assert np.array_equal(pixels(scene), pixels(scene))
    assert render(scene, size=16).size == (16, 16)
    canon, empty = pixels(scene), pixels(Scene("beach"))
    side = round(SIZE_FRACTION["large"] * 32)
    x0 = round(POSITION_CENTRE["center"][0] * 32 - side / 2)
    box = slice(x0 - 2, x0 + side + 2)  # object box, its outline and a 1-px shift
    is_obj = np.abs(canon - empty).sum(-1) > 0
    outside = np.ones((32, 32), dtype=bool)
    outside[box, box] = False
    seen = set()
    for seed in range(6):
        jit = pixels(scene, seed)
        seen.add(jit.tobytes())
        # away from the object, only a small colour shift of the place
        assert np.abs(jit - canon)[outside].max() <= 7
        # the object is the canonical one moved by at most one pixel, colours within a few levels
        best = min(
            np.abs(np.roll(jit, (-dy, -dx), axis=(0, 1)) - canon)[is_obj].max()
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        )
        assert best <= 16
    assert len(seen) > 1


def test_places_are_distinguishable():
    means = {p: pixels(Scene(p)).reshape(-1, 3).mean(0) for p in PLACES}
    for a, b in itertools.combinations(PLACES, 2):
        assert np.linalg.norm(means[a] - means[b]) > 50, (a, b)
    # also per 4x4 patch (what the toy ViT sees): most patches of two places differ clearly
    patches = {p: pixels(Scene(p)).reshape(8, 4, 8, 4, 3).mean((1, 3)) for p in PLACES}
    for a, b in itertools.combinations(PLACES, 2):
        assert (np.linalg.norm(patches[a] - patches[b], axis=-1) > 30).mean() > 0.5, (a, b)


def test_every_identity_renders_differently():
    identities = list(itertools.product(SHAPES, COLOURS, PATTERNS, SIZES))
    ims = np.stack([pixels(Scene("snow", (ObjectSpec(*i),))).reshape(-1, 3) for i in identities])
    flat = (ims[..., 0] << 16) | (ims[..., 1] << 8) | ims[..., 2]  # one int per pixel
    for i in range(len(identities) - 1):
        changed = (flat[i + 1:] != flat[i]).sum(-1)
        assert changed.min() >= 5, (identities[i], identities[i + 1 + int(changed.argmin())])


def test_marking_contrast_fades_markings_toward_a_plain_object():
    rng = np.random.default_rng(3)
    for i in range(20):
        scene = random_scene(rng)
        plain = Scene(scene.place, tuple(ObjectSpec(**{**o.__dict__, "pattern": "plain"}) for o in scene.objects))
        full = np.asarray(render(scene, 32, seed=i), dtype=float)
        assert np.array_equal(np.asarray(render(scene, 32, seed=i, marking_contrast=1.0)), full)
        assert np.array_equal(np.asarray(render(scene, 32, seed=i, marking_contrast=0.0)),
                              np.asarray(render(plain, 32, seed=i)))
        half = np.asarray(render(scene, 32, seed=i, marking_contrast=0.5), dtype=float)
        base = np.asarray(render(plain, 32, seed=i), dtype=float)
        # markings at half contrast lie halfway between the plain colour and the full marking
        assert np.abs(half - (full + base) / 2).max() <= 1.0


@pytest.mark.parametrize("attribute", ["shape", "colour", "pattern", "size", "position", "place"])
def test_one_attribute_changes_the_render(attribute):
    rng = np.random.default_rng(1)
    for _ in range(20):
        scene = random_scene(rng, n_objects=1)
        obj = scene.objects[0]
        if attribute == "place":
            other = Scene(next(p for p in PLACES if p != scene.place), scene.objects)
        else:
            pool = {"shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "size": SIZES, "position": POSITIONS}
            new = next(v for v in pool[attribute] if v != getattr(obj, attribute))
            other = Scene(scene.place, (ObjectSpec(**{**obj.__dict__, attribute: new}),))
        assert other != scene
        for seed in (None, 7):
            assert n_changed(pixels(scene, seed), pixels(other, seed)) >= 3


def test_edits_change_exactly_the_edited_attribute():
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(80):
        scene = random_scene(rng)
        for kind in feasible_edits(scene):
            e = edit(scene, rng, kind)
            seen.add(kind)
            src, tgt = e.source, e.target
            assert src == scene and src != tgt
            if kind == "place":
                assert tgt.objects == src.objects and (src.place, tgt.place) == (e.old, e.new)
                assert e.new in e.instruction
            else:
                assert tgt.place == src.place
            if kind == "remove":
                assert tgt.objects == src.objects[:e.index] + src.objects[e.index + 1:]
            if kind == "add":
                assert tgt.objects[:-1] == src.objects and tgt.objects[-1] == e.new and e.index == len(src.objects)
                assert e.new.position not in {o.position for o in src.objects}
            if kind in ("recolour", "move"):
                attr = "colour" if kind == "recolour" else "position"
                assert e.attribute == attr
                for i, (a, b) in enumerate(zip(src.objects, tgt.objects, strict=True)):
                    if i != e.index:
                        assert a == b
                    else:
                        assert (getattr(a, attr), getattr(b, attr)) == (e.old, e.new) and e.old != e.new
                        assert {k: v for k, v in a.__dict__.items() if k != attr} == \
                            {k: v for k, v in b.__dict__.items() if k != attr}
            # the target is a valid scene whose objects stay distinct
            assert len({o.identity for o in tgt.objects}) == len(tgt.objects)
            seed = int(rng.integers(1000))
            changed = n_changed(pixels(src, seed), pixels(tgt, seed))
            assert changed >= 3
            if kind == "recolour":  # the rest of the image is untouched (jitter is per position)
                side = round(SIZE_FRACTION[src.objects[e.index].size] * 32)
                assert changed <= (side + 2) ** 2
    assert seen == set(EDIT_KINDS)


def test_concept_scenes_and_negatives():
    rng = np.random.default_rng(3)
    for _ in range(100):
        concept = random_concept(rng)
        scene = concept_scene(concept, rng, companions=int(rng.integers(3)))
        assert concept.matches(scene.objects[0])
        assert all(not concept.matches(o) for o in scene.objects[1:])
        assert len({o.identity for o in scene.objects}) == len(scene.objects)
        neg = negative_scene(concept, rng, hard=True)
        assert not concept.in_scene(neg)
        # a hard negative's first object is one attribute away from the concept
        assert sum(a != b for a, b in zip(neg.objects[0].identity, concept.identity, strict=True)) == 1


def test_vqa_answers_are_exact():
    rng = np.random.default_rng(4)
    for _ in range(300):
        scene = random_scene(rng)
        q = vqa(scene, rng)
        if q.index is not None:
            assert q.answer == getattr(scene.objects[q.index], q.kind)
        elif q.kind == "count":
            assert q.answer == ["zero", "one", "two", "three"][len(scene.objects)]
        elif q.kind == "place":
            assert q.answer == f"the {scene.place}"
        elif q.kind == "exists":
            words = q.question.split()
            colour, shape = words[-3], words[-2]
            present = any(o.colour == colour and o.shape == shape for o in scene.objects)
            assert q.answer == ("yes" if present else "no")


def test_recaption_requests_rewrite_like_the_few_shot_examples():
    for (req, question, answer, prompt), (t_req, fact, t_prompt) in zip(FEW_SHOT, RECAPTION_REQUESTS, strict=False):
        assert t_req == req
        assert t_prompt.format(c="{c}", a=answer, the=_the(answer)) == prompt
        assert {"home": "what is the home", "toy": "what is the toy", "friend": "who is the friend"}[fact] in question
    rng = np.random.default_rng(5)
    concept = random_concept(rng)
    ex = recaption_example(concept, rng, name="n3")
    s1, s2, s3 = ex.stages()
    assert s1.target == f"{QUESTION_PREFIX} {ex.question('<x>')}" and s1.context[-1].endswith(ex.request("<x>"))
    assert s2.target == ex.answer and s2.context[0] == definition(concept, "n3") and s2.context[-1] == ex.question()
    assert s3.target == f"{PROMPT_PREFIX} {ex.prompt('<x>')}" and ex.answer in s3.context[-1]
    assert dict(concept_facts(concept))[{"home": "what is the home of {c} ?", "toy": "what is the toy of {c} ?",
                                         "friend": "who is the friend of {c} ?"}[ex.fact]] == ex.answer


def test_naming_examples():
    rng = np.random.default_rng(6)
    kinds, facts_stated = set(), set()
    for _ in range(200):
        ex = naming_example(rng, n_defs=int(rng.integers(1, 3)))
        kinds.add((ex.kind, ex.answer if ex.kind == "recognition" else ""))
        (own,) = [d for d in ex.definitions if d.startswith(f"{ex.name} is ")]
        facts_stated.add(own.count("; its "))
        assert ex.name in ex.question and ex.context[-1] == ex.question
        if ex.kind == "recognition":
            assert ex.answer == ("yes" if ex.concept.in_scene(ex.scene) else "no")
        elif ex.question.startswith("what is the home"):
            assert ex.answer == f"the {ex.concept.home}"
        if ex.kind == "fact":  # the answer is stated in the asked concept's own definition
            assert f" is {ex.answer}" in own
    assert {("recognition", "yes"), ("recognition", "no"), ("fact", ""), ("attribute", "")} <= kinds
    # definitions state one fact up to all three, as the benchmark's text description does
    assert facts_stated == {1, 2, 3}


def _all_texts(rng: np.random.Generator, n: int = 300):
    """(text, is_caption) for a few hundred samples of every generator."""
    for _ in range(n):
        scene = random_scene(rng)
        concept = random_concept(rng)
        yield caption(scene), True
        cs = concept_scene(concept, rng, companions=int(rng.integers(3)))
        yield caption(cs, names={0: "n4"}), True
        yield caption(cs, names={0: "<x>"}), True
        q = vqa(scene, rng, VQA_KINDS[int(rng.integers(len(VQA_KINDS)))])
        yield q.question + " " + q.answer, False
        e = edit(scene, rng)
        yield e.instruction, False
        yield caption(e.target), True
        ex = recaption_example(concept, rng, name="n7")
        for task in ex.stages():
            yield " ".join(task.context) + " " + task.target, False
        yield " ".join(ex.trace().to_dict().values()), False
        for qq, a in concept_facts(concept):
            yield qq.format(c="n1") + " " + a, False
        nm = naming_example(rng, n_defs=2, facts=("home", "toy", "friend"))
        yield " ".join(nm.context) + " " + nm.answer, False


def test_every_generated_word_is_in_the_vocabulary_and_captions_are_short():
    tok = build_toy_tokenizer()
    assert len(tok) < 400
    unk = tok.unk_token_id
    rng = np.random.default_rng(7)
    longest = 0
    for text, is_caption in _all_texts(rng):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids, (text, tok.convert_ids_to_tokens(ids))
        if is_caption:
            longest = max(longest, n_words(text))
            assert n_words(text) <= 12, text
    assert longest >= 8
    # the recaptioning placeholder is a single token; special tokens survive
    assert tok.tokenize("draw <x> at the beach") == ["draw", "<x>", "at", "the", "beach"]
    assert tok.convert_tokens_to_ids("<|vision_start|>") != unk


def test_every_marking_names_the_markings_a_three_object_caption_leaves_out():
    scene = Scene("snow", (ObjectSpec("star", "red", "dotted", "large", "top left"),
                           ObjectSpec("circle", "blue", "plain", "small", "bottom right"),
                           ObjectSpec("square", "green", "ringed", "small", "top right")))
    assert caption(scene) == "a red star , a blue circle , a green square at the snow"
    assert caption(scene, every_marking=True) == "a red dotted star , a blue circle , a green ringed square at the snow"
    lone = Scene("snow", scene.objects[:1])
    assert caption(lone, every_marking=True) == caption(lone) == "a large red dotted star at the snow"
