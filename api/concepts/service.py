"""Concept operations, called by the views (and usable from tasks and the admin CLI)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ApiError, Conflict
from ..images import CleanImage, clean_image
from ..jobs import service as jobs
from ..models import Concept, ConceptImage, Fact, Job
from ..queue import Publisher
from ..scoping import get_scoped
from ..storage import ObjectStore, tenant_key
from ..text_rules import identifier_for
from .schemas import ConceptCreate

log = logging.getLogger(__name__)


def create_concept(session: Session, tenant_id: uuid.UUID, spec: ConceptCreate) -> Concept:
    if session.scalars(select(Concept.id).where(Concept.tenant_id == tenant_id, Concept.name == spec.name)).first():
        raise Conflict("name", f"a concept named {spec.name!r} already exists")
    concept = Concept(tenant_id=tenant_id, name=spec.name, identifier=identifier_for(spec.name), status="draft")
    session.add(concept)
    session.flush()
    for position, (question, answer) in enumerate(spec.facts):
        session.add(Fact(tenant_id=tenant_id, concept_id=concept.id, position=position,
                         question=question, answer=answer))
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent create with the same name
        session.rollback()
        raise Conflict("name", f"a concept named {spec.name!r} already exists") from exc
    session.refresh(concept)
    return concept


def list_concepts(session: Session, tenant_id: uuid.UUID) -> list[Concept]:
    return list(session.scalars(select(Concept).where(Concept.tenant_id == tenant_id).order_by(Concept.created_at)))


def get_concept(session: Session, tenant_id: uuid.UUID, concept_id: str | uuid.UUID) -> Concept:
    return get_scoped(session, Concept, concept_id, tenant_id, "concept")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def add_images(session: Session, store: ObjectStore, concept: Concept, uploads: list[Upload], *,
               max_pixels: int, max_images: int) -> list[tuple[ConceptImage, bool]]:
    """All files are validated before anything is stored: one bad file rejects the whole request
    and leaves the concept as it was. Returns (image, was_already_there) per upload."""
    if not uploads:
        raise ApiError("image", "send one or more files in the multipart field 'image'")
    cleaned: list[tuple[Upload, CleanImage]] = []
    for i, upload in enumerate(uploads):
        cleaned.append((upload, clean_image(upload.data, f"image[{i}]", max_pixels)))
    existing = {img.sha256: img for img in concept.images}
    new_hashes = {c.sha256 for _, c in cleaned} - set(existing)
    if len(existing) + len(new_hashes) > max_images:
        raise ApiError("image", f"a concept holds at most {max_images} images")
    results: list[tuple[ConceptImage, bool]] = []
    written: list[str] = []
    try:
        for upload, clean in cleaned:
            if clean.sha256 in existing:
                results.append((existing[clean.sha256], True))
                continue
            key = tenant_key(concept.tenant_id, "concepts", str(concept.id), "images", f"{clean.sha256}.png")
            store.put_bytes(key, clean.png, "image/png")
            written.append(key)
            image = ConceptImage(tenant_id=concept.tenant_id, concept_id=concept.id, sha256=clean.sha256,
                                 object_key=key, size_bytes=len(clean.png), width=clean.width,
                                 height=clean.height, filename=upload.filename[:255] if upload.filename else None)
            session.add(image)
            existing[clean.sha256] = image
            results.append((image, False))
        session.commit()
    except Exception:
        session.rollback()
        for key in written:  # objects with no row would be orphans; keys are content-addressed
            try:
                store.delete(key)
            except Exception:
                log.warning("could not remove orphan object after a failed upload")
        raise
    return results


def active_training_job(session: Session, concept: Concept) -> Job | None:
    return session.scalars(
        select(Job).where(Job.concept_id == concept.id, Job.tenant_id == concept.tenant_id, Job.kind == "train",
                          Job.state.in_(("queued", "running")))
    ).first()


def start_training(session: Session, publisher: Publisher, concept: Concept, steps: int, backbone: str,
                   recipe: dict[str, Any] | None = None) -> Job:
    """`recipe`: the rest of the job's payload (see `api.jobs.schemas.training_recipe`); a concept
    with a version warm-starts from it unless the recipe says `warm_start: false`."""
    if not concept.images:
        raise Conflict("images", "upload at least one image before training")
    if active_training_job(session, concept) is not None:
        raise Conflict("concept", "this concept is already training")
    try:
        payload: dict[str, Any] = {**(recipe or {}), "steps": steps, "backbone": backbone}
        if payload.get("warm_start", True) and concept.current_version_id is not None:
            payload["init_version_id"] = str(concept.current_version_id)
        job = jobs.create_job(session, concept.tenant_id, "train", concept.id, payload)
        concept.status = "training"
        session.commit()
    except IntegrityError as exc:  # a concurrent request started one first (uq_jobs_one_active_training)
        session.rollback()
        raise Conflict("concept", "this concept is already training") from exc
    jobs.publish(session, job, publisher)
    return job
