"""The benchmark run on the committed toy backbone, cut to two concepts and a few steps: a run
rewrites its report after every concept, so one stopped for time keeps exact scores for the
concepts it finished, and the table is the mean of the per-concept scores."""

import json

import numpy as np
import pytest
from PIL import Image

from omnipersona.bench import ROWS, run_bench, write_report
from omnipersona.bench.report import CELL
from omnipersona.cli import load_backbone, main
from omnipersona.toyworld import RECOGNISER_DIR
from omnipersona.toyworld.recogniser import load_recogniser

ROW_NAMES = ("base + text (short)", "OmniPersona")
FAST = {"steps": 3, "sample_steps": 2}


@pytest.fixture(scope="module")
def toy():
    return load_backbone("toy")


@pytest.fixture(scope="module")
def recogniser():
    return load_recogniser(RECOGNISER_DIR)[0]


def test_a_stopped_run_keeps_exact_scores_for_the_concepts_it_finished(toy, recogniser, tmp_path):
    rows = tuple(r for r in ROWS if r.name in ROW_NAMES)
    snapshots = []

    def rewrite(so_far):
        paths = write_report(so_far, tmp_path)
        snapshots.append((json.loads(paths["json"].read_text()), Image.open(paths["grid"]).size))

    final = run_bench(toy, recogniser, seed=2, n_concepts=2, rows=rows, on_concept=rewrite, **FAST)

    assert len(snapshots) == 2
    (first, first_grid), (last, last_grid) = snapshots
    assert (first["concepts"], first["planned"], first["complete"]) == (1, 2, False)
    assert (last["concepts"], last["planned"], last["complete"]) == (2, 2, True)
    assert last_grid[1] - first_grid[1] == CELL  # one more line of images per finished concept
    for row in ROW_NAMES:
        assert len(first["per_concept"][row]) == 1 and len(last["per_concept"][row]) == 2
        # what the stopped run said about concept 1 is what the full run says about it
        assert first["per_concept"][row][0] == last["per_concept"][row][0]
        assert first["table"][row] == first["per_concept"][row][0]
        for metric, mean in last["table"][row].items():
            assert mean == pytest.approx(np.mean([c[metric] for c in last["per_concept"][row]]))
            assert 0.0 <= mean <= 1.0
    for row, scores in final.table().items():
        assert last["table"][row] == pytest.approx(scores)
    assert len(final.train_seconds) == 2 and final.complete


def test_bench_command_writes_table_json_and_grid(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--concepts", "1", "--steps", "2", "--sample-steps", "2", "--seed", "4",
                 "--rows", *ROW_NAMES, "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["seed"] == 4 and results["steps"] == 2
    assert set(results["table"]) == set(ROW_NAMES)
    for row in ROW_NAMES:
        assert f"| {row} | {results['table'][row]['rec']:.3f} |" in printed
        assert f"| {row} |" in (out / "table.md").read_text()
    assert Image.open(out / "grid.png").size[1] > CELL


def test_bench_command_rejects_an_unknown_row(capsys):
    assert main(["bench", "--rows", "OmniPersona", "bagel"]) == 2
    assert "unknown row(s) ['bagel']" in capsys.readouterr().err
