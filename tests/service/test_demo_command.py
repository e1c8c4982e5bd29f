"""README command (1): `infra/demo.py` on the embedded defaults (SQLite database, SQLite-backed
broker, local object store), run twice into the same folder, leaves its outputs and no process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _processes_with_env(marker: str) -> list[int]:
    """Ids of live processes whose environment holds `marker` (the run's OMNI_DATA_DIR)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return found


def test_demo_runs_twice_and_leaves_no_process(tmp_path):
    out = tmp_path / "demo"
    for _ in range(2):
        run = subprocess.run([sys.executable, "infra/demo.py", "--out", str(out), "--steps", "3",
                              "--sample-steps", "2", "--backbone", "tiny", "--timeout", "240"],
                             cwd=REPO, capture_output=True, text=True, timeout=420)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"images and summary.json in {out}" in run.stdout
        assert _processes_with_env(f"OMNI_DATA_DIR={out / 'state'}") == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_job"]["state"] == "succeeded"
    assert [e["step"] for e in summary["train_job"]["progress_history"]] == [1, 2, 3]
    assert set(summary["renders"]) == {"ask_photo", "ask_fact", "generate", "edit"}
    assert set(summary["renders"]["generate"]["trace"]) == {"request", "query", "answer", "prompt"}
    for name in ("generate", "edit"):
        assert Path(summary["renders"][name]["image"]) == out / f"{name}.png"
        assert Image.open(out / f"{name}.png").format == "PNG"
    # each run starts clean: one tenant, one concept, one version in the state it leaves
    assert summary["concept"]["current_version"]["number"] == 1
