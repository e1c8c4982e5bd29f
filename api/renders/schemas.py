"""Request parsing and response shape for ask / generate / edit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..concepts.schemas import iso
from ..errors import ApiError
from ..models import Job, Render
from ..text_rules import check_request_text

TEXT_FIELD = {"ask": "question", "generate": "prompt", "edit": "instruction"}
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class RenderCreate:
    kind: str
    text: str
    seed: int
    sample_steps: int
    image: bytes | None


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
                        default_steps: int, max_steps: int) -> RenderCreate:
    if not isinstance(fields, dict):
        raise ApiError("body", "must be a JSON object or a multipart form")
    text_field = TEXT_FIELD[kind]
    allowed = {text_field} | ({"seed", "steps"} if kind != "ask" else set())
    unknown = set(fields) - allowed
    if unknown:
        raise ApiError(sorted(unknown)[0], "unknown field")
    text = check_request_text(fields.get(text_field), text_field, identifier)
    seed = _int_field(fields.get("seed", 0), "seed", 0, MAX_SEED)
    steps = _int_field(fields.get("steps", default_steps), "steps", 1, max_steps)
    if kind == "edit" and image is None:
        raise ApiError("image", "editing needs the source photo in the multipart field 'image'")
    if kind == "generate" and image is not None:
        raise ApiError("image", "generate takes no image")
    return RenderCreate(kind, text, seed, steps, image)


def render_dict(render: Render, job: Job) -> dict[str, Any]:
    has_image = render.output_object_key is not None
    return {
        "id": str(render.id),
        "kind": render.kind,
        "concept_id": str(render.concept_id),
        "version_id": str(render.version_id),
        "text": render.text,
        "seed": render.seed,
        "steps": render.sample_steps,
        "state": job.state,
        "job_id": str(job.id),
        "error": job.error,
        "answer": render.answer,
        "conditioned_prompt": render.conditioned_prompt,
        "trace": render.trace,
        "image_url": f"/v1/renders/{render.id}/image" if has_image else None,
        "created_at": iso(render.created_at),
    }
