"""Request parsing and response shape for ask / generate / edit."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.schemas import iso
from ..errors import ApiError
from ..models import Job, Render
from ..text_rules import MAX_TEXT_CHARS, NAME_RE, RESERVED_RE, check_request_text, check_text

TEXT_FIELD = {"ask": "question", "generate": "prompt", "edit": "instruction"}
MAX_SEED = 2**31 - 1
MIN_SIZE = 16
MAX_IMAGES = 4
MAX_CONCEPTS_PER_PROMPT = 8
DEFAULT_GUIDANCE = 4.0
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 20.0
IDENTIFIER_RE = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True)
class RenderCreate:
    kind: str
    text: str
    seed: int
    sample_steps: int
    image: bytes | None
    guidance: float | None = None
    size: int | None = None
    num_images: int = 1


def _int_field(raw: Any, field: str, low: int, high: int) -> int:
    if isinstance(raw, str):  # multipart fields arrive as strings
        try:
            raw = int(raw.strip())
        except ValueError as exc:
            raise ApiError(field, f"must be an integer from {low} to {high}") from exc
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise ApiError(field, f"must be an integer from {low} to {high}")
    return raw


def parse_render_create(kind: str, fields: Any, image: bytes | None, identifier: str, *,
                        default_steps: int, max_steps: int, max_size: int = 1024) -> RenderCreate:
    if not isinstance(fields, dict):
        raise ApiError("body", "must be a JSON object or a multipart form")
    text_field = TEXT_FIELD[kind]
    allowed = {text_field} | ({"seed", "steps", "guidance", "size"} if kind != "ask" else set())
    unknown = set(fields) - allowed
    if unknown:
        raise ApiError(sorted(unknown)[0], "unknown field")
    text = check_request_text(fields.get(text_field), text_field, identifier)
    seed = _int_field(fields.get("seed", 0), "seed", 0, MAX_SEED)
    steps = _int_field(fields.get("steps", default_steps), "steps", 1, max_steps)
    guidance = None
    if "guidance" in fields:
        guidance = _float_field(fields["guidance"], "guidance", MIN_GUIDANCE, MAX_GUIDANCE)
    size = _int_field(fields["size"], "size", MIN_SIZE, max_size) if "size" in fields else None
    if kind == "edit" and image is None:
        raise ApiError("image", "editing needs the source photo in the multipart field 'image'")
    if kind == "generate" and image is not None:
        raise ApiError("image", "generate takes no image")
    return RenderCreate(kind, text, seed, steps, image, guidance, size)


def _float_field(raw: Any, field: str, low: float, high: float) -> float:
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError as exc:
            raise ApiError(field, f"must be a number from {low} to {high}") from exc
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not low <= raw <= high:
        raise ApiError(field, f"must be a number from {low} to {high}")
    return float(raw)


def concept_names_in(value: object, field: str) -> tuple[str, list[str]]:
    """A prompt that may name several concepts: every `<...>` must be a concept identifier
    (`<name>`); reserved token names (`<und_N>`, `<gen_N>`) and stray angle brackets are refused.
    Returns the text and the names in order of first appearance."""
    text = check_text(value, field)
    if RESERVED_RE.search(text):
        raise ApiError(field, "uses a reserved concept-token name (<und_N>, <gen_N>)")
    names: list[str] = []
    for token in IDENTIFIER_RE.findall(text):
        if not NAME_RE.match(token):
            raise ApiError(field, f"<{token}> is not a concept identifier")
        names.append(token)
    # NFKC folds look-alikes ("＜und_1＞", "﹤gen_2﹥") into the ASCII a tokenizer might see.
    rest = unicodedata.normalize("NFKC", IDENTIFIER_RE.sub("", text))
    if RESERVED_RE.search(rest):
        raise ApiError(field, "uses a reserved concept-token name (<und_N>, <gen_N>)")
    if "<" in rest or ">" in rest:
        raise ApiError(field, "may not contain '<' or '>' except in concept identifiers")
    names = list(dict.fromkeys(names))
    if not names:
        raise ApiError(field, "must name at least one of your concepts, as <name>")
    if len(names) > MAX_CONCEPTS_PER_PROMPT:
        raise ApiError(field, f"names more than {MAX_CONCEPTS_PER_PROMPT} concepts")
    return text, names


class AskBody(BaseModel):
    """`POST /v1/concepts/<id>/ask` as JSON (or the same field as a multipart form with an `image`)."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="must name the concept, e.g. "
                                                                                 "'What is the toy of <maeve>?'")


class SamplingFields(BaseModel):
    """Sampling options of generate and edit. Multipart forms send them as text ("4"), read as numbers."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, description="flow-sampling steps (default OMNI_SAMPLE_STEPS, at most "
                                                      "OMNI_MAX_SAMPLE_STEPS)")
    guidance: float | None = Field(None, ge=MIN_GUIDANCE, le=MAX_GUIDANCE,
                                   description="classifier-free guidance scale on the text")
    size: int | None = Field(None, ge=MIN_SIZE, description="output side in pixels (at most OMNI_MAX_RENDER_SIZE)")


class ConceptGenerateBody(SamplingFields):
    """`POST /v1/concepts/<id>/generate`."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="must name the concept, e.g. "
                                                                             "'<maeve> at the beach'")


class EditForm(SamplingFields):
    """`POST /v1/concepts/<id>/edit`: these fields and the source photo in the multipart field `image`."""

    instruction: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="must name the concept")


RENDER_BODIES: dict[str, type[BaseModel]] = {"ask": AskBody, "generate": ConceptGenerateBody, "edit": EditForm}


class GenerateBody(BaseModel):
    """A tenant-level generate: the prompt names one or several of the tenant's concepts."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                        description="text naming one or more of your concepts, e.g. '<maeve> and <rex> at the beach'")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the first image's seed; image i uses seed + i")
    steps: int | None = Field(None, ge=1, description="flow-sampling steps (default OMNI_SAMPLE_STEPS)")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=MIN_GUIDANCE, le=MAX_GUIDANCE,
                            description="classifier-free guidance scale on the text")
    size: int | None = Field(None, ge=MIN_SIZE, description="output side in pixels (the model samples at its own "
                                                            "resolution and the image is resampled); default: native")
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)


class RenderImage(BaseModel):
    url: str = Field(description="presigned download URL")
    expires_in: int
    seed: int
    width: int
    height: int


class RenderConcept(BaseModel):
    concept_id: str
    version_id: str
    identifier: str


class RenderOut(BaseModel):
    id: str
    kind: str
    concept_id: str
    version_id: str
    concepts: list[RenderConcept]
    text: str
    seed: int
    steps: int
    guidance: float | None
    size: int | None
    num_images: int
    state: str
    job_id: str
    error: str | None
    answer: str | None
    conditioned_prompt: str | None
    trace: dict[str, str] | None
    image_url: str | None
    images: list[RenderImage]
    timings: dict[str, float] | None
    batch_id: str | None
    created_at: str | None


def render_dict(render: Render, job: Job, images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`images`: the stored outputs with their presigned URLs (see service.image_links)."""
    has_image = render.output_object_key is not None
    return {
        "id": str(render.id),
        "kind": render.kind,
        "concept_id": str(render.concept_id),
        "version_id": str(render.version_id),
        "concepts": render.concepts or [],
        "text": render.text,
        "seed": render.seed,
        "steps": render.sample_steps,
        "guidance": render.guidance,
        "size": render.size,
        "num_images": render.num_images or 1,
        "state": job.state,
        "job_id": str(job.id),
        "error": job.error,
        "answer": render.answer,
        "conditioned_prompt": render.conditioned_prompt,
        "trace": render.trace,
        "image_url": f"/v1/renders/{render.id}/image" if has_image else None,
        "images": images or [],
        "timings": render.timings,
        "batch_id": str(render.batch_id) if render.batch_id else None,
        "created_at": iso(render.created_at),
    }
