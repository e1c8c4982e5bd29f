"""Concept data: ~10 photos + facts (+ negatives, + editing triplets) -> training samples, and
the packing of those samples into model inputs.

Sample kinds, as in the paper's joint recipe:
- recognition: "Is <sks> in this image?" -> yes (own photos) / no (negatives);
- qa: a fact question (text only) -> its answer; caption: a photo -> its caption (or "<sks>");
- generation: "a photo of <sks>" (or the photo's caption) -> the photo, flow loss;
- editing: source photo (VAE + ViT) + instruction -> target photo, flow loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .flow import noisy_latents, sample_train_timesteps
from .model import OmniModel
from .sequence import LossKind, PackedSequence, SequenceBuilder, SpecialIds
from .tokens import ConceptBank, ConceptTokens

ImageLike = Image.Image | torch.Tensor | str | Path

RECOGNITION_QUESTION = "Is {c} in this image?"
CAPTION_QUESTION = "What is in this image?"
GENERATION_PROMPT = "a photo of {c}"


def load_image(image: ImageLike, size: int) -> torch.Tensor:
    """Any image -> [3, size, size] float in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        if image.shape[-2:] != (size, size):
            image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear")[0]
        return image.float().clamp(-1, 1)
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """[3, h, w] in [-1, 1] -> PIL image."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


@dataclass
class EditExample:
    source: ImageLike
    instruction: str  # may name the concept as {c}
    target: ImageLike


@dataclass
class ConceptData:
    images: list[ImageLike]
    facts: list[tuple[str, str]] = field(default_factory=list)  # (question, answer); {c} = identifier
    negatives: list[ImageLike] = field(default_factory=list)
    edits: list[EditExample] = field(default_factory=list)
    captions: list[str | None] | None = None  # one per image; {c} = identifier


@dataclass
class Sample:
    kind: str  # recognition | qa | caption | generation | editing
    question: str = ""
    answer: str = ""
    image: int | None = None  # ViT input (understanding) or VAE target (generation)
    source: int | None = None
    target: int | None = None


@dataclass
class ConceptSamples:
    pixels: torch.Tensor  # [N_img, 3, s, s] every distinct image the samples use
    samples: list[Sample]


def build_concept_samples(data: ConceptData, identifier: str, image_size: int) -> ConceptSamples:
    if not data.images:
        raise ValueError("a concept needs at least one image")
    pixels: list[torch.Tensor] = []

    def add(img: ImageLike) -> int:
        pixels.append(load_image(img, image_size))
        return len(pixels) - 1

    def fmt(text: str) -> str:
        return text.replace("{c}", identifier)

    samples: list[Sample] = []
    captions = data.captions or [None] * len(data.images)
    rq = fmt(RECOGNITION_QUESTION)
    for img, caption in zip(data.images, captions, strict=True):
        i = add(img)
        samples.append(Sample("recognition", rq, "yes", image=i))
        samples.append(Sample("caption", CAPTION_QUESTION, fmt(caption) if caption else identifier, image=i))
        samples.append(Sample("generation", fmt(caption) if caption else fmt(GENERATION_PROMPT), image=i))
    for img in data.negatives:
        samples.append(Sample("recognition", rq, "no", image=add(img)))
    for q, a in data.facts:
        samples.append(Sample("qa", fmt(q), fmt(a)))
    for e in data.edits:
        samples.append(Sample("editing", fmt(e.instruction), source=add(e.source), target=add(e.target)))
    return ConceptSamples(torch.stack(pixels), samples)


@dataclass
class EncodedImages:
    """Frozen-encoder outputs, computed once per training image."""

    vit: torch.Tensor  # [N, n_vit, H]
    latents: torch.Tensor  # [N, n_lat, D] patchified, normalised VAE latents
    latent_pos: torch.Tensor  # [n_lat]


@torch.no_grad()
def encode_images(model: OmniModel, pixels: torch.Tensor, batch_size: int = 16) -> EncodedImages:
    vit, lat = [], []
    for chunk in pixels.split(batch_size):
        vit.append(model.vit_tokens(chunk))
        lat.append(model.patchify(model.encode_latents(chunk)))
    f = model.config.vae_downsample * model.config.latent_patch_size
    rows, cols = pixels.shape[-2] // f, pixels.shape[-1] // f
    return EncodedImages(torch.cat(vit), torch.cat(lat), model.latent_position_ids(rows, cols))


def new_builder(model: OmniModel, bank: ConceptBank, special: SpecialIds) -> SequenceBuilder:
    return SequenceBuilder(special, model.config.hidden_size, model.config.latent_token_dim, bank.gen_token_ids())


@dataclass
class Segment:
    """One block of a training sample: `text` (context), `answer` (CE target), `vit` or `latent`
    (clean conditioning of image `image`), `target` (noised latent of `image`, flow loss)."""

    kind: str
    text: str = ""
    image: int = -1
    loss: LossKind = LossKind.GENERATION


def sample_segments(s: Sample) -> list[Segment]:
    """The block layout of each concept sample kind (editing: source VAE + ViT, instruction, target)."""
    if s.kind in ("recognition", "caption"):
        return [Segment("vit", image=s.image), Segment("text", s.question), Segment("answer", s.answer)]
    if s.kind == "qa":
        return [Segment("text", s.question), Segment("answer", s.answer)]
    if s.kind == "generation":
        return [Segment("text", s.question), Segment("target", image=s.image)]
    if s.kind == "editing":
        return [Segment("latent", image=s.source), Segment("vit", image=s.source), Segment("text", s.question),
                Segment("target", image=s.target, loss=LossKind.EDITING)]
    raise ValueError(f"unknown sample kind {s.kind!r}")


def pack_segments(
    model: OmniModel,
    bank: ConceptBank,
    special: SpecialIds,
    samples: list[list[Segment]],
    encoded: EncodedImages,
    generator: torch.Generator,
    timestep_shift: float,
) -> PackedSequence:
    """Packs samples given as segment lists. Timesteps and noise come from `generator`, so a
    seeded run is reproducible and resumable."""
    b = new_builder(model, bank, special)
    for segments in samples:
        b.start_sample()
        for seg in segments:
            if seg.kind in ("text", "answer"):
                b.add_text(bank.encode(seg.text), loss=seg.kind == "answer")
            elif seg.kind == "vit":
                b.add_vit(encoded.vit[seg.image])
            elif seg.kind == "latent":
                b.add_latent(encoded.latents[seg.image], encoded.latent_pos)  # clean, t = 0
            elif seg.kind == "target":
                x0 = encoded.latents[seg.image]
                t = sample_train_timesteps(1, timestep_shift, generator)
                noise = torch.randn(x0.shape, generator=generator)
                x_t, v = noisy_latents(x0, noise.to(x0.device), t.to(x0.device))
                b.add_latent(x_t, encoded.latent_pos, t=float(t), target=v, kind=seg.loss, noised=True)
            else:
                raise ValueError(f"unknown segment kind {seg.kind!r}")
    return b.build()


def pack_samples(
    model: OmniModel,
    bank: ConceptBank,
    special: SpecialIds,
    concepts: list[ConceptTokens],
    samples: list[Sample],
    encoded: EncodedImages,
    generator: torch.Generator,
    timestep_shift: float,
) -> PackedSequence:
    """Packs concept samples; each starts with its concepts' system prompts."""
    prefix = [Segment("text", c.system_prompt()) for c in concepts]
    return pack_segments(model, bank, special, [prefix + sample_segments(s) for s in samples], encoded,
                         generator, timestep_shift)
