"""`OmniPipeline`: one loaded backbone, any number of concepts, and the three things users do:
`ask`, `generate`, `edit`. Batches of requests naming *different* concepts run together: their
contexts are packed into one sequence and every step is one forward pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .artifacts import load_concept
from .backbone import Backbone
from .data import ImageLike, load_image, to_pil
from .recaption import (
    ANSWER_PREFIX,
    PROMPT_PREFIX,
    QUESTION_PREFIX,
    RecaptionTrace,
    intent_context,
    rewrite_context,
    strip_prefix,
)
from .sampler import Block, ImageRequest, Runner, SamplerConfig, greedy_answers, sample_latents
from .tokens import CONCEPT_REFERENCE_RE, ConceptTokens


@dataclass
class RenderResult:
    image: Image.Image
    prompt: str  # what the image was conditioned on (after recaptioning)
    trace: RecaptionTrace | None = None
    seed: int = 0


@dataclass
class GenerateRequest:
    prompt: str
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


class OmniPipeline:
    def __init__(self, backbone: Backbone, recaption: bool = True, few_shot: int = 6):
        self.backbone = backbone
        self.model = backbone.model
        self.bank = backbone.new_bank()
        self.runner = Runner(self.model, self.bank, backbone.special_ids)
        self.recaption = recaption
        self.few_shot = few_shot
        self.descriptions: dict[str, str] = {}

    # -- concepts -------------------------------------------------------------------------------
    def describe(self, name: str, description: str) -> None:
        """A concept known only from text (the base + text-prompt baseline): `description` goes
        into the context of every request that mentions `name` as a word."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"a described concept's name is one lowercase word, got {name!r}")
        self.descriptions[name] = description

    def add_concept(self, concept: ConceptTokens) -> None:
        self.bank.add(concept.to(next(self.model.parameters()).device))

    def load_concept(self, folder: str | Path) -> ConceptTokens:
        concept = load_concept(folder, self.backbone.fingerprint())
        self.add_concept(concept)
        return concept

    @property
    def concepts(self) -> list[str]:
        return list(self.bank.concepts)

    def _require_loaded(self, *texts: str) -> None:
        """Refuse a `<name>` in `texts` that names no loaded concept."""
        for text in texts:
            for name in CONCEPT_REFERENCE_RE.findall(text):
                if name not in self.bank:
                    raise ValueError(f"unknown concept <{name}>; loaded: {', '.join(self.concepts) or 'none'}")

    def _system_blocks(self, *texts: str) -> list[Block]:
        """System prompts of the loaded concepts that `texts` mention; unknown `<name>` refused."""
        self._require_loaded(*texts)
        names: list[str] = []
        for text in texts:
            names += self.bank.mentioned(text)
        names = list(dict.fromkeys(names))
        blocks: list[Block] = [("text", self.bank.encode(self.bank.concepts[n].system_prompt())) for n in names]
        described = [n for n in self.descriptions if any(re.search(rf"\b{n}\b", t) for t in texts)]
        return blocks + [("text", self.bank.encode(self.descriptions[n])) for n in described]

    def _text(self, text: str) -> Block:
        return ("text", self.bank.encode(text))

    def _image_blocks(self, image: ImageLike, vit: bool = True, latent: bool = False) -> list[Block]:
        size = self.backbone.config.image_size
        pixels = load_image(image, size)[None]
        blocks: list[Block] = []
        if latent:
            lat = self.model.patchify(self.model.encode_latents(pixels))[0]
            f = self.backbone.config.vae_downsample * self.backbone.config.latent_patch_size
            blocks.append(("latent", (lat, self.model.latent_position_ids(size // f, size // f))))
        if vit:
            blocks.append(("vit", self.model.vit_tokens(pixels)[0]))
        return blocks

    # -- understanding --------------------------------------------------------------------------
    def ask_batch(self, questions: list[tuple[str, ImageLike | None]], max_new_tokens: int = 32) -> list[str]:
        contexts = []
        for question, image in questions:
            ctx = self._system_blocks(question)
            if image is not None:
                ctx += self._image_blocks(image)
            contexts.append(ctx + [self._text(question)])
        return [self.bank.decode(a) for a in greedy_answers(self.runner, contexts, max_new_tokens)]

    def ask(self, question: str, image: ImageLike | None = None, max_new_tokens: int = 32) -> str:
        return self.ask_batch([(question, image)], max_new_tokens)[0]

    def _complete(self, blocks: list[str], max_new_tokens: int = 24) -> str:
        """Text-mode continuation of few-shot blocks (no concept prompts needed)."""
        ctx = [self._text(b) for b in blocks]
        return self.bank.decode(greedy_answers(self.runner, [ctx], max_new_tokens)[0])

    def recaption_request(self, request: str) -> RecaptionTrace | None:
        """The three recaptioning stages for a request naming concept(s); None if it names none."""
        names = self.bank.mentioned(request)
        if not names:
            return None
        ident = f"<{names[0]}>"
        # Stage 1 and 3 run with a placeholder so that few-shot text never needs concept rows.
        generic = request.replace(ident, "<x>")
        # What the model writes keeps only the loaded concepts' names: a stray `<x>` in an answer or a
        # concept it was never given must not fail the request (or reach the prompt).
        query = strip_prefix(self._complete(intent_context(generic, self.few_shot)), QUESTION_PREFIX)
        query = self.bank.without_unknown(query.replace("<x>", ident))
        answer = self.bank.without_unknown(strip_prefix(self.ask(query), ANSWER_PREFIX))
        prompt = strip_prefix(self._complete(rewrite_context(generic, answer, self.few_shot)), PROMPT_PREFIX)
        prompt = self.bank.without_unknown(prompt.replace("<x>", ident))
        if ident not in prompt:  # the rewritten prompt must still name the concept
            prompt = f"{request} {answer}"
        return RecaptionTrace(request=request, query=query, answer=answer, prompt=prompt)

    # -- generation -----------------------------------------------------------------------------
    def _latent_grid(self) -> int:
        cfg = self.backbone.config
        return cfg.image_size // (cfg.vae_downsample * cfg.latent_patch_size)

    def _decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        side = self._latent_grid()
        pixels = self.model.decode_latents(self.model.unpatchify(tokens, side, side))
        return [to_pil(p) for p in pixels]

    def generate_batch(self, requests: list[GenerateRequest], recaption: bool | None = None) -> list[RenderResult]:
        recaption = self.recaption if recaption is None else recaption
        traces, image_requests = [], []
        for r in requests:
            self._require_loaded(r.prompt)  # the user's own names, before recaptioning rewrites them
            trace = self.recaption_request(r.prompt) if recaption else None
            prompt = trace.prompt if trace else r.prompt
            cond = self._system_blocks(prompt) + [self._text(prompt)]
            image_requests.append(ImageRequest(cond=cond, text_uncond=[], seed=r.seed, sampler=r.sampler))
            traces.append((prompt, trace))
        side = self._latent_grid()
        images = self._decode(sample_latents(self.runner, image_requests, side, side))
        return [RenderResult(img, p, t, r.seed) for img, (p, t), r in zip(images, traces, requests, strict=True)]

    def generate(self, prompt: str, seed: int = 0, sampler: SamplerConfig | None = None,
                 recaption: bool | None = None) -> RenderResult:
        req = GenerateRequest(prompt, seed, sampler or SamplerConfig())
        return self.generate_batch([req], recaption)[0]

    def edit(
        self, image: ImageLike, instruction: str, seed: int = 0, sampler: SamplerConfig | None = None
    ) -> RenderResult:
        """Editing context: [VAE(source) clean, ViT(source), instruction] -> noised target."""
        system = self._system_blocks(instruction)
        source = self._image_blocks(image, vit=True, latent=True)
        req = ImageRequest(
            cond=system + source + [self._text(instruction)],
            text_uncond=system + source,
            image_uncond=system + [self._text(instruction)],
            seed=seed,
            sampler=sampler or SamplerConfig.for_editing(),
        )
        side = self._latent_grid()
        image_out = self._decode(sample_latents(self.runner, [req], side, side))[0]
        return RenderResult(image_out, instruction, None, seed)

