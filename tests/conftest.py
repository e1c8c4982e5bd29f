import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from omnipersona.backbone import Backbone
from omnipersona.data import ConceptData, EditExample

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str) -> ModuleType:
    """A `bench/` script as a module, importable as when run from `bench/` (the scripts import
    `bench_common`; dataclasses look their module up in `sys.modules`)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    return Backbone.from_preset("tiny", seed=0)


def random_images(n: int, seed: int, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(n)]


def concept_data_for_tests() -> ConceptData:
    images = random_images(6, seed=1)
    negatives = random_images(4, seed=2)
    return ConceptData(
        images=images,
        facts=[("What is the home of {c}?", "the beach"), ("What is the toy of {c}?", "a red ball")],
        negatives=negatives,
        edits=[EditExample(images[0], "remove {c}", negatives[0])],
    )


@pytest.fixture(scope="session")
def concept_data() -> ConceptData:
    return concept_data_for_tests()
