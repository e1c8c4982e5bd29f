"""Concept tokens: the only weights OmniPersona trains.

A concept named `sks` owns 1 + N_u + N_g tokens: the identifier `<sks>`, understanding tokens
`<und_1:sks>`..`<und_16:sks>` and generation tokens `<gen_1:sks>`..`<gen_16:sks>` (the concept
name is part of each string so that several concepts can share one prompt). Each token has a
trainable input-embedding row and a trainable output-head row. With the `decoupled` method the
`<gen_j>` tokens are routed through the generation expert; with `shared` (the ablation) every
concept token goes through the understanding expert.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

METHODS = ("decoupled", "shared")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Any token string this module can mint; refused in user text by the service.
RESERVED_RE = re.compile(r"<(und|gen)_\d+(:[^>]*)?>")
# How text names a concept: its identifier `<name>`.
CONCEPT_REFERENCE_RE = re.compile(r"<([a-z][a-z0-9_]*)>")


class ConceptTokens(nn.Module):
    def __init__(self, name: str, hidden_size: int, n_und: int = 16, n_gen: int = 16, method: str = "decoupled"):
        super().__init__()
        if not NAME_RE.match(name):
            raise ValueError(f"concept name {name!r} must match {NAME_RE.pattern}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.name, self.n_und, self.n_gen, self.method = name, n_und, n_gen, method
        n = 1 + n_und + n_gen
        self.embeddings = nn.Parameter(torch.zeros(n, hidden_size))  # input rows [N, H]
        self.head_rows = nn.Parameter(torch.zeros(n, hidden_size))  # lm_head rows [N, H]

    @property
    def identifier(self) -> str:
        return f"<{self.name}>"

    @property
    def und_tokens(self) -> list[str]:
        return [f"<und_{i}:{self.name}>" for i in range(1, self.n_und + 1)]

    @property
    def gen_tokens(self) -> list[str]:
        return [f"<gen_{i}:{self.name}>" for i in range(1, self.n_gen + 1)]

    @property
    def token_strings(self) -> list[str]:
        return [self.identifier, *self.und_tokens, *self.gen_tokens]

    @property
    def gen_routed(self) -> torch.Tensor:
        """[N] bool: which of this concept's tokens go through the generation expert."""
        mask = torch.zeros(len(self.token_strings), dtype=torch.bool)
        if self.method == "decoupled":
            mask[1 + self.n_und :] = True
        return mask

    def system_prompt(self) -> str:
        """`<sks> is <und_1>…<und_16> <gen_1>…<gen_16>.`"""
        return f"{self.identifier} is {''.join(self.und_tokens)} {''.join(self.gen_tokens)}."

    @torch.no_grad()
    def init_from(self, embed_table: torch.Tensor, head_table: torch.Tensor, token_ids: list[int], seed: int = 0):
        """Start every row from the mean of `token_ids`' rows (e.g. the words of "object") plus
        a little seeded noise, so the tokens begin on the backbone's embedding manifold."""
        g = torch.Generator().manual_seed(seed)
        base = embed_table[token_ids].float().mean(0)
        head = head_table[token_ids].float().mean(0)
        scale = embed_table.float().std().item()
        noise = torch.randn(self.embeddings.shape, generator=g).to(base.device) * scale * 0.1
        self.embeddings.copy_(base[None] + noise)  # copy_ also moves rows to this module's device
        self.head_rows.copy_(head[None].expand_as(self.head_rows))


class ConceptBank:
    """The concepts a tokenizer knows: maps each concept token to a row beyond the vocabulary.

    Model ids: ordinary tokens keep their tokenizer id (< vocab_size); concept token k of the
    bank gets id vocab_size + k, which `OmniModel.embed` looks up in `embedding_rows()`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.concepts: dict[str, ConceptTokens] = {}
        self._tok_to_model: dict[int, int] = {}
        self._strings: list[str] = []

    def add(self, concept: ConceptTokens) -> None:
        if concept.name in self.concepts:
            raise ValueError(f"concept {concept.name!r} is already loaded")
        self.tokenizer.add_tokens(concept.token_strings)
        for s in concept.token_strings:
            tid = self.tokenizer.convert_tokens_to_ids(s)
            self._tok_to_model[tid] = self.vocab_size + len(self._strings)
            self._strings.append(s)
        self.concepts[concept.name] = concept

    def __contains__(self, name: str) -> bool:
        return name in self.concepts

    def embedding_rows(self) -> torch.Tensor | None:  # [E, H]
        if not self.concepts:
            return None
        return torch.cat([c.embeddings for c in self.concepts.values()])

    def head_rows(self) -> torch.Tensor | None:  # [E, H]
        if not self.concepts:
            return None
        return torch.cat([c.head_rows for c in self.concepts.values()])

    def gen_token_ids(self) -> set[int]:
        ids: set[int] = set()
        offset = self.vocab_size
        for c in self.concepts.values():
            ids.update(offset + i for i in c.gen_routed.nonzero(as_tuple=True)[0].tolist())
            offset += len(c.token_strings)
        return ids

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [self._tok_to_model.get(i, i) for i in ids]

    def decode(self, model_ids: list[int]) -> str:
        words = []
        for i in model_ids:
            if i >= self.vocab_size:
                words.append(self._strings[i - self.vocab_size])
            else:
                words.append(self.tokenizer.decode([i], skip_special_tokens=True))
        return " ".join(w for w in words if w).strip()

    def mentioned(self, text: str) -> list[str]:
        """Names of loaded concepts whose identifier appears in `text`, in order of appearance."""
        found = CONCEPT_REFERENCE_RE.findall(text)
        return list(dict.fromkeys(n for n in found if n in self.concepts))

    def without_unknown(self, text: str) -> str:
        """`text` with every `<name>` that is no loaded concept taken out. For model-written text
        (recaptioning), which can name the stages' placeholder `<x>` or a concept it was never given."""
        kept = CONCEPT_REFERENCE_RE.sub(lambda m: m.group(0) if m.group(1) in self.concepts else "", text)
        return " ".join(kept.split())
