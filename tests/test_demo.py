"""The README's main job, on the tiny backbone: it trains the bundled concept and writes outputs."""

import json

from PIL import Image

from omnipersona.cli import main


def test_demo_writes_concept_images_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--backbone", "tiny", "--steps", "4", "--sample-steps", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 4
    assert json.loads((out / "concept" / "concept.json").read_text())["name"] == "maeve"
    for name in ("generate.png", "edit.png"):
        with Image.open(out / name) as im:
            assert im.size == (16, 16)
    trace = summary["generate"]["trace"]
    assert trace["request"] == "<maeve> at its home" and "<maeve>" in trace["prompt"]
    assert str(out / "generate.png") in capsys.readouterr().out
