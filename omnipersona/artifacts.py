"""Concept checkpoints: the token rows in safetensors + JSON metadata.

Metadata: token strings, method options, the fingerprint of the backbone the tokens were trained
on (config + weights), and training metrics. Loading onto another backbone is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .tokens import ConceptTokens

TOKENS_FILE = "tokens.safetensors"
META_FILE = "concept.json"
FORMAT_VERSION = 1


class ConceptMismatchError(ValueError):
    """A concept checkpoint that does not belong to the loaded backbone."""


def save_concept(concept: ConceptTokens, folder: str | Path, backbone_fingerprint: str,
                 metrics: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": concept.embeddings.detach().contiguous(),
               "head_rows": concept.head_rows.detach().contiguous()},
              folder / TOKENS_FILE, metadata={"backbone_fingerprint": backbone_fingerprint})
    meta = {
        "format_version": FORMAT_VERSION,
        "name": concept.name,
        "tokens": concept.token_strings,
        "method": concept.method,
        "n_und": concept.n_und,
        "n_gen": concept.n_gen,
        "hidden_size": concept.embeddings.shape[1],
        "backbone_fingerprint": backbone_fingerprint,
        "metrics": metrics or {},
        "recipe": recipe or {},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def read_concept_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ConceptMismatchError(f"{folder} is not a concept checkpoint (no {META_FILE})")
    return json.loads(path.read_text())


def load_concept(folder: str | Path, backbone_fingerprint: str) -> ConceptTokens:
    """Loads a concept checkpoint; raises `ConceptMismatchError` if it was trained on another
    backbone or its rows do not match its metadata."""
    meta = read_concept_meta(folder)
    if meta["backbone_fingerprint"] != backbone_fingerprint:
        raise ConceptMismatchError(
            f"concept {meta['name']!r} was trained on backbone {meta['backbone_fingerprint']}, "
            f"but the loaded backbone is {backbone_fingerprint}: retrain it on this backbone"
        )
    tensors = load_file(Path(folder) / TOKENS_FILE)
    concept = ConceptTokens(meta["name"], meta["hidden_size"], meta["n_und"], meta["n_gen"], meta["method"])
    if tensors["embeddings"].shape != concept.embeddings.shape:
        raise ConceptMismatchError(f"token rows {tuple(tensors['embeddings'].shape)} do not match the metadata")
    concept.load_state_dict(tensors)
    concept.requires_grad_(False)
    return concept
