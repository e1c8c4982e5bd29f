"""The DeepSpeed backend gives the same tokens as plain PyTorch for the same seed.

DeepSpeed runs in a child process (it initialises torch.distributed and compiles a CPU comm op
on first use), with its own MASTER_PORT, the RANK/WORLD_SIZE variables and a timeout.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnipersona.trainer import TrainRecipe, train_concept

CHILD = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import save_file
    from omnipersona.backbone import Backbone
    from omnipersona.trainer import TrainRecipe, train_concept
    from tests.conftest import concept_data_for_tests
    bb = Backbone.from_preset("tiny", seed=0)
    out = {}
    for stage in (0, 2):
        recipe = TrainRecipe(steps=6, batch_size=4, seed=11, backend="deepspeed",
                             deepspeed_config={"zero_optimization": {"stage": stage}})
        r = train_concept(bb, concept_data_for_tests(), "sks", recipe)
        out[f"stage{stage}.embeddings"] = r.concept.embeddings.detach().clone()
        out[f"stage{stage}.head_rows"] = r.concept.head_rows.detach().clone()
        assert all(p.grad is None for p in bb.model.parameters())
    save_file(out, sys.argv[1])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deepspeed_matches_torch(tmp_path, tiny):
    from .conftest import concept_data_for_tests

    root = Path(__file__).resolve().parents[1]
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache/omnipersona/torch_extensions_tests")
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), TORCH_EXTENSIONS_DIR=ext,
               PYTHONPATH=str(root))
    out = tmp_path / "ds.safetensors"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = load_file(out)

    ref = train_concept(tiny, concept_data_for_tests(), "sks", TrainRecipe(steps=6, batch_size=4, seed=11))
    init = train_concept(tiny, concept_data_for_tests(), "sks", TrainRecipe(steps=0, seed=11))
    moved = (ref.concept.embeddings - init.concept.embeddings).abs().max().item()
    assert moved > 1e-3  # training changed the tokens, so agreement below means something
    for stage in (0, 2):
        assert torch.allclose(ds[f"stage{stage}.embeddings"], ref.concept.embeddings, atol=1e-5, rtol=0)
        assert torch.allclose(ds[f"stage{stage}.head_rows"], ref.concept.head_rows, atol=1e-5, rtol=0)
