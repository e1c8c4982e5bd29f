"""OmniPersona: personalized understanding, generation and editing with decoupled concept tokens
on a BAGEL-style Mixture-of-Transformers. This package is the ML library and CLI; it imports no
web, queue or database code."""

from .artifacts import ConceptMismatchError, load_concept, save_concept
from .backbone import Backbone, BackboneError, load_backbone
from .config import OmniConfig, get_config
from .data import ConceptData, EditExample, build_concept_samples
from .losses import LossWeights
from .model import OmniModel
from .pipeline import GenerateRequest, OmniPipeline, RenderResult
from .recaption import RecaptionTrace
from .sampler import SamplerConfig
from .tokens import ConceptTokens
from .trainer import TrainRecipe, TrainResult, train_concept

__all__ = [
    "Backbone", "BackboneError", "ConceptData", "ConceptMismatchError", "ConceptTokens", "EditExample",
    "GenerateRequest", "LossWeights", "OmniConfig", "OmniModel", "OmniPipeline", "RecaptionTrace",
    "RenderResult", "SamplerConfig", "TrainRecipe", "TrainResult", "build_concept_samples", "get_config",
    "load_backbone", "load_concept", "save_concept", "train_concept",
]
