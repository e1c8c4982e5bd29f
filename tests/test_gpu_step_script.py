"""bench/gpu_step.py's code path, on the tiny config on the CPU (the real run needs a GPU)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_step.py"


def test_dry_run_reports_training_and_generation(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.json"
    assert module.main(["--dry-run", "--json-out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["config"] == "tiny"
    assert "error" not in results["train"] and "error" not in results["generate"]
    assert results["train"]["concept_rows_changed"] and results["train"]["backbone_grads_none"]
    assert results["train"]["tokens"] > 0 and results["generate"]
