"""The toy world: a procedural world (numpy/Pillow) in which every benchmark metric has exact
ground truth. `world` holds the scenes, concepts and the renderer; `language` the word list and
tokenizer; `tasks` the captioning, VQA, editing, recaptioning and in-context naming generators.
See DESIGN.md, "Toy world: CPU-scale ground truth"."""

from pathlib import Path

from .language import WORDS, build_toy_tokenizer
from .tasks import (
    Edit,
    NamingExample,
    RecaptionExample,
    TextTask,
    VQAExample,
    caption,
    edit,
    naming_example,
    recaption_example,
    vqa,
)
from .world import (
    COLOURS,
    PATTERNS,
    PLACES,
    POSITIONS,
    SHAPES,
    SIZES,
    Concept,
    ObjectSpec,
    Scene,
    concept_scene,
    random_concept,
    random_scene,
    render,
)

# Committed artifacts: the pretrained `toy` backbone and the benchmark's recogniser.
WEIGHTS = Path(__file__).parent / "weights"
TOY_BACKBONE_DIR = WEIGHTS / "backbone"
RECOGNISER_DIR = WEIGHTS / "recogniser"

__all__ = [
    "RECOGNISER_DIR", "TOY_BACKBONE_DIR", "WEIGHTS",
    "COLOURS", "PATTERNS", "PLACES", "POSITIONS", "SHAPES", "SIZES", "WORDS", "Concept", "Edit",
    "NamingExample", "ObjectSpec", "RecaptionExample", "Scene", "TextTask", "VQAExample",
    "build_toy_tokenizer", "caption", "concept_scene", "edit", "naming_example", "random_concept",
    "random_scene", "recaption_example", "render", "vqa",
]
