"""Request parsing and response shapes for concepts and their images."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import ApiError
from ..models import Concept, ConceptImage, ConceptVersion, Fact
from ..text_rules import check_fact_text, check_name, identifier_for


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
           "height": image.height, "filename": image.filename, "created_at": iso(image.created_at)}
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
