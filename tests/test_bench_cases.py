"""Benchmark cases carry exact ground truth: positives hold the concept, negatives do not, edit
targets are what the instruction says, and the same seed draws the same benchmark."""

from omnipersona.bench.cases import EDIT_KINDS, build_cases
from omnipersona.toyworld import tasks
from omnipersona.toyworld.evaluate import generation_attribute_hits, generation_hits
from omnipersona.toyworld.recogniser import same_scene
from omnipersona.toyworld.world import ObjectSpec, Scene


def test_same_seed_same_benchmark_other_seed_other_concepts():
    a, b, c = build_cases(0, 4), build_cases(0, 4), build_cases(1, 4)
    assert [x.concept for x in a] == [x.concept for x in b]
    assert [x.train_seeds for x in a] == [x.train_seeds for x in b]
    assert [x.concept for x in a] != [x.concept for x in c]
    assert len({x.concept.identity for x in build_cases(0, 20)}) == 20


def test_a_quick_run_scores_the_first_concepts_of_the_full_run():
    full, quick = build_cases(0, 20), build_cases(0, 5)
    assert len(quick) == 5
    for q, f in zip(quick, full, strict=False):
        assert q.concept == f.concept and q.test_positive == f.test_positive
        assert q.test_negative == f.test_negative and q.edits == f.edits and q.train_seeds == f.train_seeds


def test_positives_hold_the_concept_and_negatives_do_not():
    for case in build_cases(3, 5):
        c = case.concept
        assert len(case.train_scenes) == 10 and len({s.place for s in case.train_scenes}) == 6
        assert all(c.in_scene(s) for s in case.train_scenes)
        assert all(c.in_scene(s) for s, _ in case.test_positive)
        assert not any(c.in_scene(s) for s in case.negative_scenes)
        assert not any(c.in_scene(s) for s, _ in case.test_negative)
        # half the negatives are look-alikes: one identity attribute off
        hard = [s for s, _ in case.test_negative
                if any(sum(x != y for x, y in zip(o.identity, c.identity, strict=True)) == 1 for o in s.objects)]
        assert len(hard) >= len(case.test_negative) // 2


def test_edit_cases_do_exactly_what_they_say():
    for case in build_cases(5, 6):
        c = case.concept
        assert [e.kind for e, _ in case.edits] == list(EDIT_KINDS + EDIT_KINDS[:2])
        for e, _ in case.edits + case.train_edits:
            assert "{c}" in e.instruction and e.source.place == e.target.place
            others_before = {o for o in e.source.objects if o.identity != c.identity}
            others_after = {o for o in e.target.objects if o.identity != c.identity}
            assert others_before == others_after  # the rest is preserved
            if e.kind == "remove":
                assert c.in_scene(e.source) and not c.in_scene(e.target)
            elif e.kind == "add":
                assert not c.in_scene(e.source) and c.in_scene(e.target)
                pos = next(o.position for o in e.target.objects if o.identity == c.identity)
                assert e.instruction.endswith(tasks.position_phrase(pos))
            else:
                new = next(o.position for o in e.target.objects if o.identity == c.identity)
                old = next(o.position for o in e.source.objects if o.identity == c.identity)
                assert new != old and e.instruction == f"move {{c}} to the {new}"


def test_training_data_names_the_concept_and_keeps_facts_as_text():
    case = build_cases(0, 1)[0]
    data = case.training_data()
    assert len(data.images) == 10 and len(data.negatives) == 10 and len(data.edits) == 6
    assert all(cap.startswith("{c}") for cap in data.captions)
    assert dict(data.facts)["what is the home of {c} ?"] == f"the {case.concept.home}"
    assert case.training_data(with_edits=False).edits == []


def test_descriptions_short_and_exact():
    case = build_cases(0, 3)[2]
    c = case.concept
    short, exact = case.description(exact=False), case.description(exact=True)
    assert short.startswith(f"{case.text_name} is {tasks.object_phrase(c, size=False, pattern=False)} ;")
    assert exact.startswith(f"{case.text_name} is {tasks.object_phrase(c)} ;")
    assert f"its home is the {c.home}" in short and f"its home is the {c.home}" in exact


def test_generation_hits_counts_spoken_attributes_only():
    truth = Scene("beach", (ObjectSpec("star", "red", "dotted", "large", "top left"),
                            ObjectSpec("circle", "blue", "plain", "small", "bottom right")))
    # two objects: shape, colour, pattern each (no size); positions never count
    moved = Scene("beach", (ObjectSpec("circle", "blue", "plain", "large", "top left"),
                            ObjectSpec("star", "red", "dotted", "small", "bottom left")))
    assert generation_hits(truth, moved) == (7, 7)
    wrong = Scene("snow", (ObjectSpec("star", "green", "dotted", "large", "top left"),))
    assert generation_hits(truth, wrong) == (2, 7)
    # where the five misses are: the place, the green star's colour, and the blue circle drawn
    # not at all (all three of its attributes)
    assert generation_attribute_hits(truth, wrong) == {"place": (0, 1), "shape": (1, 2), "colour": (0, 2),
                                                       "pattern": (1, 2)}
    assert same_scene(truth, Scene("beach", truth.objects[::-1])) and not same_scene(truth, moved)
