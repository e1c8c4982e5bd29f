"""A loaded backbone: the frozen model, its tokenizer and config, saved as safetensors."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .config import OmniConfig, get_config
from .model import OmniModel, freeze
from .sequence import IM_END, IM_START, VISION_END, VISION_START, SpecialIds
from .tokenizer import build_word_tokenizer
from .tokens import ConceptBank

CONFIG_FILE = "omni_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class BackboneError(ValueError):
    """A backbone folder or preset that cannot be loaded."""


@dataclass
class Backbone:
    config: OmniConfig
    model: OmniModel
    tokenizer: PreTrainedTokenizerBase
    _fingerprint: str | None = None

    @property
    def special_ids(self) -> SpecialIds:
        ids = self.tokenizer.convert_tokens_to_ids([IM_START, IM_END, VISION_START, VISION_END])
        return SpecialIds(*ids)

    def new_bank(self) -> ConceptBank:
        """A concept registry with its own copy of the tokenizer (adding tokens mutates it)."""
        return ConceptBank(copy.deepcopy(self.tokenizer), self.config.llm["vocab_size"])

    def fingerprint(self) -> str:
        """sha256 over the config and every weight: a concept trained on one backbone is only
        valid on the same one."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> Backbone:
        """Random weights of a preset (`tiny`, `toy`); word tokenizer sized to the vocabulary."""
        if name == "bagel-7b-mot":
            raise BackboneError("bagel-7b-mot has no random preset here: load a BAGEL folder")
        tokenizer = build_word_tokenizer()
        config = get_config(name, vocab_size=len(tokenizer))
        torch.manual_seed(seed)
        return cls(config, freeze(OmniModel(config)), tokenizer)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_FILE)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE, metadata={"fingerprint": self.fingerprint()})
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Backbone:
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            if (folder / "llm_config.json").is_file():
                from .bagel import load_bagel_folder

                return load_bagel_folder(folder)
            raise BackboneError(f"{folder} is not a backbone folder (no {CONFIG_FILE} or llm_config.json)")
        config = OmniConfig.load(folder / CONFIG_FILE)
        model = OmniModel(config)
        missing, unexpected = model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise BackboneError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
        return cls(config, freeze(model), tokenizer)


def load_backbone(spec: str | Path, seed: int = 0) -> Backbone:
    """`toy` (the committed backbone pretrained on the toy world), `tiny` (random weights, for
    tests), or a folder (ours or BAGEL's layout)."""
    path = Path(spec)
    if path.is_dir():
        return Backbone.load(path)
    if str(spec) == "toy":
        from .toyworld import TOY_BACKBONE_DIR

        if not TOY_BACKBONE_DIR.is_dir():
            raise BackboneError(f"the toy backbone is missing from {TOY_BACKBONE_DIR}; "
                                "make it with `omnipersona pretrain-toy --out` that folder")
        return Backbone.load(TOY_BACKBONE_DIR)
    if str(spec) == "tiny":
        return Backbone.from_preset(str(spec), seed=seed)
    raise BackboneError(f"unknown backbone {str(spec)!r}: not a folder and not one of tiny, toy")
