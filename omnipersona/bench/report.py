"""Benchmark outputs: a markdown table, a JSON file and a PNG grid of generations and edits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .run import METRICS, BenchResult

COLUMNS = (("rec", "Rec"), ("vqa", "VQA"), ("vqa_visual", "VQA vis"), ("vqa_fact", "VQA fact"),
           ("gen", "Gen"), ("parg", "PARG"), ("parg_place", "PARG place"), ("edit", "Edit"))
CELL = 64  # pixels per image in the grid


def markdown_table(result: BenchResult) -> str:
    table = result.table()
    head = "| row | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    lines = [head, rule]
    for row, scores in table.items():
        lines.append(f"| {row} | " + " | ".join(f"{scores[m]:.3f}" for m, _ in COLUMNS) + " |")
    return "\n".join(lines)


def to_json(result: BenchResult) -> dict:
    return {
        "seed": result.seed,
        "concepts": len(result.cases),
        "complete": result.complete,  # false: a run stopped (or still going) after `concepts` of `planned`
        "planned": result.planned,
        "steps": result.steps,
        "lr": result.lr,
        "seconds": round(result.seconds, 1),
        "train_seconds_per_concept": round(float(np.mean(result.train_seconds)), 1),
        "table": result.table(),
        "per_concept": {row: [{m: r.scores[m] for m in METRICS} for r in rs] for row, rs in result.rows.items()},
        "parg_traces": {row: [r.traces for r in rs] for row, rs in result.rows.items()},
    }


def grid(result: BenchResult, rows: tuple[str, ...] = ("base + text (short)", "OmniPersona", "no editing data"),
         max_concepts: int = 20) -> Image.Image:
    """One line per concept: a training photo, then per listed row its first two generations, its
    first PARG image and its edits (with the edit sources in front)."""
    rows = tuple(r for r in rows if r in result.rows)
    cases = result.cases[:max_concepts]
    n_edit = min(3, len(cases[0].edits))  # one of each kind: remove, move, add
    cols = 1 + n_edit + len(rows) * (3 + n_edit)
    label_h = 14
    img = Image.new("RGB", (cols * CELL, label_h + len(cases) * CELL), "white")
    draw = ImageDraw.Draw(img)
    x = CELL * (1 + n_edit)
    draw.text((2, 1), "photo | edit sources", fill="black")
    for r in rows:
        draw.text((x + 2, 1), f"{r}: gen gen parg | edits", fill="black")
        x += CELL * (3 + n_edit)
    for i, case in enumerate(cases):
        tiles = [case.image(case.train_scenes[0], case.train_seeds[0])]
        tiles += [case.image(e.source, seed) for e, seed in case.edits[:n_edit]]
        for r in rows:
            res = result.rows[r][i]
            tiles += res.images["gen"][:2] + res.images["parg"][:1] + res.images["edit"][:n_edit]
        for j, t in enumerate(tiles):
            img.paste(t.resize((CELL, CELL), Image.NEAREST), (j * CELL, label_h + i * CELL))
    return img


def write_report(result: BenchResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "table.md", "json": out / "results.json", "grid": out / "grid.png"}
    paths["markdown"].write_text(markdown_table(result) + "\n")
    paths["json"].write_text(json.dumps(to_json(result), indent=2))
    grid(result).save(paths["grid"])
    return paths
