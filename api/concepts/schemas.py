"""Request parsing and response shapes for concepts and their images."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ApiError
from ..models import Concept, ConceptImage, ConceptVersion, Fact
from ..text_rules import check_fact_text, check_name, identifier_for

MAX_PAGE = 100  # concepts per page


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes; everything is stored in UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ConceptCreate:
    name: str
    facts: list[tuple[str, str]]


def parse_concept_create(body: Any, max_facts: int) -> ConceptCreate:
    if not isinstance(body, dict):
        raise ApiError("body", "must be a JSON object")
    unknown = set(body) - {"name", "facts"}
    if unknown:
        raise ApiError(sorted(unknown)[0], "unknown field")
    name = check_name(body.get("name"))
    identifier = identifier_for(name)
    raw_facts = body.get("facts", [])
    if not isinstance(raw_facts, list):
        raise ApiError("facts", "must be a list of {question, answer} objects")
    if len(raw_facts) > max_facts:
        raise ApiError("facts", f"at most {max_facts} facts")
    facts = []
    for i, fact in enumerate(raw_facts):
        if not isinstance(fact, dict):
            raise ApiError(f"facts[{i}]", "must be an object with question and answer")
        question = check_fact_text(fact.get("question"), f"facts[{i}].question", identifier)
        if "{c}" not in question:
            raise ApiError(f"facts[{i}].question", f"must name the concept as {identifier} or {{c}}")
        answer = check_fact_text(fact.get("answer"), f"facts[{i}].answer", identifier)
        facts.append((question, answer))
    return ConceptCreate(name, facts)


def parse_train_request(body: Any, default_steps: int, max_steps: int) -> int:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError("body", "must be a JSON object")
    unknown = set(body) - {"steps"}
    if unknown:
        raise ApiError(sorted(unknown)[0], "unknown field")
    steps = body.get("steps", default_steps)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= max_steps:
        raise ApiError("steps", f"must be an integer from 1 to {max_steps}")
    return steps


def fact_dict(fact: Fact) -> dict[str, Any]:
    return {"question": fact.question, "answer": fact.answer}


def image_dict(image: ConceptImage, duplicate: bool = False) -> dict[str, Any]:
    out = {"id": str(image.id), "sha256": image.sha256, "size_bytes": image.size_bytes, "width": image.width,
           "height": image.height, "filename": image.filename, "created_at": iso(image.created_at),
           "caption": image.caption, "caption_state": image.caption_state or "pending"}
    if duplicate:
        out["duplicate"] = True
    return out


def version_dict(version: ConceptVersion) -> dict[str, Any]:
    return {"id": str(version.id), "number": version.number, "job_id": str(version.job_id),
            "backbone": version.backbone, "backbone_fingerprint": version.backbone_fingerprint,
            "metrics": version.metrics, "created_at": iso(version.created_at)}


def concept_dict(concept: Concept) -> dict[str, Any]:
    return {
        "id": str(concept.id),
        "name": concept.name,
        "identifier": concept.identifier,
        "status": concept.status,
        "facts": [fact_dict(f) for f in concept.facts],
        "images": [image_dict(i) for i in concept.images],
        "current_version": version_dict(concept.current_version) if concept.current_version else None,
        "created_at": iso(concept.created_at),
        "updated_at": iso(concept.updated_at),
    }


# -- pydantic shapes of the routes added for issue 5 (list / patch / delete, image captions) -------

class ConceptListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["draft", "training", "ready", "failed"] | None = None
    name: str | None = Field(None, max_length=32, description="only concepts whose name starts with this")
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(None, max_length=200, description="`next_cursor` of the previous page")


class FactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="must name the concept as {c} or its identifier")
    answer: str


class ConceptPatch(BaseModel):
    """Replaces the concept's facts (the whole list; send [] to remove them all)."""

    model_config = ConfigDict(extra="forbid")
    facts: list[FactIn]


class ConceptCreateIn(BaseModel):
    """`POST /v1/concepts` (checked by `parse_concept_create`; this model documents it)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="the identifier users write is <name>")
    facts: list[FactIn] = Field(default_factory=list)


class ImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caption: str | None = Field(None, description="new caption text; {c} or the identifier names the concept")
    accepted: bool | None = Field(None, description="true: training uses this caption; false: it does not")


class FactOut(BaseModel):
    question: str
    answer: str


class ImageOut(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    filename: str | None
    created_at: str | None
    caption: str | None
    caption_state: Literal["pending", "suggested", "accepted", "failed"]
    duplicate: bool | None = None


class VersionOut(BaseModel):
    id: str
    number: int
    job_id: str
    backbone: str
    backbone_fingerprint: str
    metrics: dict[str, Any]
    created_at: str | None


class ConceptOut(BaseModel):
    id: str
    name: str
    identifier: str
    status: str
    facts: list[FactOut]
    images: list[ImageOut]
    current_version: VersionOut | None
    created_at: str | None
    updated_at: str | None


class ConceptPage(BaseModel):
    concepts: list[ConceptOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class RejectedFile(BaseModel):
    index: int
    filename: str | None
    field: str = Field(description="image[<index>]")
    reason: str


class UploadOut(BaseModel):
    """201 when at least one file was accepted; the others are listed in `rejected`."""

    images: list[ImageOut]
    rejected: list[RejectedFile]


class ConceptDeleted(BaseModel):
    id: str
    deleted: bool
    objects_removed: int


def parse_facts(facts: list[FactIn], identifier: str, max_facts: int) -> list[tuple[str, str]]:
    """The same rules as at creation: each question names the concept; stored with `{c}`."""
    if len(facts) > max_facts:
        raise ApiError("facts", f"at most {max_facts} facts")
    parsed = []
    for i, fact in enumerate(facts):
        question = check_fact_text(fact.question, f"facts[{i}].question", identifier)
        if "{c}" not in question:
            raise ApiError(f"facts[{i}].question", f"must name the concept as {identifier} or {{c}}")
        parsed.append((question, check_fact_text(fact.answer, f"facts[{i}].answer", identifier)))
    return parsed


def parse_caption(value: str, identifier: str) -> str:
    """A caption training can use: it names the concept (as {c} or the identifier), stored with {c}."""
    caption = check_fact_text(value, "caption", identifier)
    if "{c}" not in caption:
        raise ApiError("caption", f"must name the concept as {identifier} or {{c}}")
    return caption
