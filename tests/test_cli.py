"""The `omnipersona` command line, run in-process on the `tiny` backbone (plus one subprocess test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnipersona.backbone import Backbone
from omnipersona.cli import main

SIZE = 16  # the tiny backbone's image size


def write_pngs(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("omnipersona: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_fingerprint() -> str:
    return Backbone.from_preset("tiny", seed=0).fingerprint()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One concept trained through the CLI, shared by the inference tests."""
    root = tmp_path_factory.mktemp("trained")
    photos = write_pngs(root / "photos", 3, seed=0)
    facts = root / "facts.json"
    facts.write_text(json.dumps([["what is the toy of {c} ?", "a red ball"],
                                 {"question": "what is the home of {c} ?", "answer": "the beach"}]))
    out = root / "sks"
    assert main(["train", "--backbone", "tiny", "--images", str(photos), "--name", "sks", "--out", str(out),
                 "--facts", str(facts), "--steps", "3", "--batch-size", "4"]) == 0
    return out


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_pngs(tmp_path / "photos", 3, seed=1)


def test_train_writes_tokens_and_metadata(tmp_path, photos, capsys, tiny_fingerprint):
    negatives = write_pngs(tmp_path / "negatives", 2, seed=2)
    out = tmp_path / "concept"
    rc = main(["train", "--backbone", "tiny", "--images", str(photos), "--negatives", str(negatives),
               "--name", "maeve", "--out", str(out), "--steps", "5", "--batch-size", "4", "--lr", "0.01",
               "--seed", "3", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "2"])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.strip() == str(out)
    assert "total=" in captured.err and "ce=" in captured.err  # progress bar with the loss parts
    assert (out / "tokens.safetensors").is_file()
    meta = json.loads((out / "concept.json").read_text())
    assert meta["name"] == "maeve"
    assert meta["backbone_fingerprint"] == tiny_fingerprint
    assert meta["tokens"][0] == "<maeve>"
    assert meta["recipe"]["steps"] == 5 and meta["recipe"]["lr"] == 0.01 and meta["recipe"]["seed"] == 3
    assert meta["metrics"]["steps"] == 5 and "final_total" in meta["metrics"]
    assert (tmp_path / "ckpt" / "latest").is_file()


def test_ask_prints_an_answer(trained, photos, capsys):
    assert main(["ask", "--backbone", "tiny", "--concept", str(trained),
                 "--question", "what is the toy of <sks> ?"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.splitlines()) == 1
    assert main(["ask", "--backbone", "tiny", "--concept", str(trained), "--question", "is <sks> in this image ?",
                 "--image", str(photos / "00.png")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_generate_writes_png_and_prints_trace(trained, tmp_path, capsys):
    png = tmp_path / "gen" / "a.png"
    assert main(["generate", "--backbone", "tiny", "--concept", str(trained), "--prompt", "draw <sks> at its home",
                 "--out", str(png), "--steps", "3", "--seed", "7"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(png) and report["seed"] == 7
    assert set(report["trace"]) == {"request", "query", "answer", "prompt"}
    assert report["trace"]["request"] == "draw <sks> at its home"
    assert "<sks>" in report["prompt"]
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size == (SIZE, SIZE)

    plain = tmp_path / "b.png"
    assert main(["generate", "--backbone", "tiny", "--concept", str(trained), "--prompt", "a photo of <sks>",
                 "--out", str(plain), "--steps", "3", "--no-recaption"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trace"] is None and report["prompt"] == "a photo of <sks>"
    assert plain.is_file()


def test_edit_writes_png(trained, photos, tmp_path, capsys):
    png = tmp_path / "edited.png"
    assert main(["edit", "--backbone", "tiny", "--concept", str(trained), "--image", str(photos / "01.png"),
                 "--instruction", "remove <sks>", "--out", str(png), "--steps", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(png)
    with Image.open(png) as im:
        im.load()
        assert im.size == (SIZE, SIZE)


def test_info_prints_json(trained, capsys, tiny_fingerprint):
    assert main(["info", "--backbone", "tiny"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"] == "tiny" and info["fingerprint"] == tiny_fingerprint
    counts = info["parameters"]
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert counts["understanding_expert"] == counts["generation_expert"] > 0
    assert "concept" not in info

    assert main(["info", "--backbone", "tiny", "--concept", str(trained)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["concept"]["name"] == "sks" and info["concept_compatible"] is True


# -- bad input: one error line, exit 2, nothing written -------------------------------------------
def _bad_inputs(root: Path, trained: Path) -> dict[str, list[str]]:
    photos = write_pngs(root / "photos", 2, seed=5)
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    truncated = write_pngs(root / "truncated", 2, seed=6)
    data = (truncated / "01.png").read_bytes()
    (truncated / "01.png").write_bytes(data[: len(data) // 2])
    garbage = root / "garbage"
    garbage.mkdir()
    (garbage / "a.jpg").write_bytes(b"this is not a jpeg" * 10)
    facts = {"not_json": "[[\"q\", \"a\"", "not_list": '{"question": "q", "answer": "a"}',
             "bad_item": '[["only one"]]', "bad_type": '[{"question": "q", "answer": 3}]'}
    for name, text in facts.items():
        (root / f"{name}.json").write_text(text)
    other = root / "other_backbone"
    shutil.copytree(trained, other)
    meta = json.loads((other / "concept.json").read_text())
    meta["backbone_fingerprint"] = "0" * 32
    (other / "concept.json").write_text(json.dumps(meta))
    not_concept = root / "not_concept"
    not_concept.mkdir()

    out = root / "out"
    train = ["train", "--backbone", "tiny", "--name", "sks", "--out", str(out / "c"), "--steps", "2",
             "--checkpoint-dir", str(out / "ckpt")]
    gen = ["generate", "--backbone", "tiny", "--out", str(out / "g.png"), "--steps", "2"]
    edit = ["edit", "--backbone", "tiny", "--instruction", "remove <sks>", "--out", str(out / "e.png"), "--steps", "2"]
    return {
        "missing_folder": train + ["--images", str(root / "nope")],
        "folder_without_images": train + ["--images", str(empty)],
        "truncated_png": train + ["--images", str(truncated)],
        "not_an_image": train + ["--images", str(garbage)],
        "missing_negatives": train + ["--images", str(photos), "--negatives", str(root / "nope")],
        "bad_concept_name": train + ["--images", str(photos), "--name", "Bad Name"],
        "unknown_backbone_train": train[:2] + ["nope"] + train[3:] + ["--images", str(photos)],
        "missing_facts": train + ["--images", str(photos), "--facts", str(root / "nope.json")],
        **{f"facts_{k}": train + ["--images", str(photos), "--facts", str(root / f"{k}.json")] for k in facts},
        "unknown_backbone_ask": ["ask", "--backbone", "nope", "--question", "x"],
        "missing_backbone_folder": ["ask", "--backbone", str(empty), "--question", "x"],
        "concept_other_backbone": ["ask", "--backbone", "tiny", "--concept", str(other), "--question", "x"],
        "concept_other_backbone_gen": gen + ["--concept", str(other), "--prompt", "a photo of <sks>"],
        "missing_concept": ["ask", "--backbone", "tiny", "--concept", str(root / "nope"), "--question", "x"],
        "not_a_concept": ["ask", "--backbone", "tiny", "--concept", str(not_concept), "--question", "x"],
        "ask_missing_image": ["ask", "--backbone", "tiny", "--question", "x", "--image", str(root / "x.png")],
        "ask_corrupt_image": ["ask", "--backbone", "tiny", "--question", "x",
                              "--image", str(truncated / "01.png")],
        "unknown_concept_generate": gen + ["--concept", str(trained), "--prompt", "draw <bob> at home"],
        "unknown_concept_no_recaption": gen + ["--prompt", "draw <bob>", "--no-recaption"],
        "unknown_concept_edit": edit + ["--concept", str(trained), "--image", str(photos / "00.png"),
                                        "--instruction", "remove <bob>"],
        "edit_corrupt_image": edit + ["--image", str(garbage / "a.jpg")],
        "info_missing_concept": ["info", "--backbone", "tiny", "--concept", str(root / "nope")],
        "info_unknown_backbone": ["info", "--backbone", "nope"],
    }


# case -> words the error line must contain (so each case fails for the reason it is meant to)
BAD_CASES = {
    "missing_folder": "does not exist",
    "folder_without_images": "holds no images",
    "truncated_png": "truncated",
    "not_an_image": "cannot identify image",
    "missing_negatives": "does not exist",
    "bad_concept_name": "concept name",
    "unknown_backbone_train": "unknown backbone 'nope'",
    "missing_facts": "does not exist",
    "facts_not_json": "cannot read facts",
    "facts_not_list": "JSON list",
    "facts_bad_item": "item 0",
    "facts_bad_type": "non-empty strings",
    "unknown_backbone_ask": "unknown backbone 'nope'",
    "missing_backbone_folder": "not a backbone folder",
    "concept_other_backbone": "was trained on backbone",
    "concept_other_backbone_gen": "was trained on backbone",
    "missing_concept": "does not exist",
    "not_a_concept": "not a concept checkpoint",
    "ask_missing_image": "does not exist",
    "ask_corrupt_image": "truncated",
    "unknown_concept_generate": "unknown concept <bob>",
    "unknown_concept_no_recaption": "unknown concept <bob>",
    "unknown_concept_edit": "unknown concept <bob>",
    "edit_corrupt_image": "cannot identify image",
    "info_missing_concept": "does not exist",
    "info_unknown_backbone": "unknown backbone 'nope'",
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_one_error_line(case, trained, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, trained)
    assert set(cases) == set(BAD_CASES)
    argv = cases[case]
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert BAD_CASES[case] in error_line(captured.err)
    assert captured.out == ""
    assert not (tmp_path / "out").exists()  # nothing written: no concept, checkpoint or PNG


def test_concept_mismatch_message_names_the_backbones(trained, tmp_path, capsys):
    argv = _bad_inputs(tmp_path, trained)["concept_other_backbone"]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert "0" * 32 in line and "retrain" in line


def test_usage_errors_exit_2(capsys):
    assert main(["train", "--backbone", "tiny"]) == 2  # required options missing
    assert "omnipersona train: error:" in capsys.readouterr().err
    assert main(["generate", "--backbone", "tiny", "--prompt", "x", "--out", "x.png", "--steps", "0"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0


@pytest.mark.slow  # two interpreter start-ups with torch + transformers imports: ~20 s
def test_module_entry_point_subprocess(tmp_path):
    start = time.monotonic()
    ok = subprocess.run([sys.executable, "-m", "omnipersona", "info", "--backbone", "tiny"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["config"] == "tiny"
    bad = subprocess.run([sys.executable, "-m", "omnipersona", "ask", "--backbone", "nope", "--question", "x"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("omnipersona: error: unknown backbone 'nope'")
    assert time.monotonic() - start < 120
