"""Concept operations, called by the views (and usable from tasks and the admin CLI)."""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ApiError, Conflict, NotFound
from ..images import CleanImage, clean_image
from ..jobs import service as jobs
from ..models import Concept, ConceptImage, Fact, Job, Render, utcnow
from ..queue import Publisher
from ..scoping import get_scoped
from ..storage import ObjectStore, tenant_key
from ..text_rules import identifier_for
from ..usage.service import check_concept_quota, current_settings
from .schemas import ConceptCreate, parse_caption

# Captioning is not a job row (it is automatic, unbilled and not the client's to cancel): the
# message carries the image id, and the image row's `caption_state` is the truth.
CAPTION_KIND = "caption"
CAPTION_QUEUE = "render"

log = logging.getLogger(__name__)


def create_concept(session: Session, tenant_id: uuid.UUID, spec: ConceptCreate) -> Concept:
    check_concept_quota(session, tenant_id)  # 429 at the tenant's max_concepts
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


@dataclass(frozen=True)
class Rejected:
    index: int
    filename: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "filename": self.filename, "field": f"image[{self.index}]",
                "reason": self.reason}


@dataclass
class UploadResult:
    added: list[tuple[ConceptImage, bool]]  # (image, was_already_there) per accepted file
    rejected: list[Rejected]


class UploadRefused(ApiError):
    """Every file of the request was rejected: 400 naming the first, with the full list."""

    def __init__(self, rejected: list[Rejected]) -> None:
        first = rejected[0]
        super().__init__(f"image[{first.index}]", f"{first.filename or 'file'}: {first.reason}")
        self.rejected = rejected

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"rejected": [r.as_dict() for r in self.rejected]}


def display_filename(raw: str | None) -> str | None:
    """The client's file name as shown back to it: the last path part only, without control
    characters (NUL breaks PostgreSQL text). Object keys never use it (they are content hashes)."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
    return name or None


def add_images(session: Session, store: ObjectStore, concept: Concept, uploads: list[Upload], *,
               max_pixels: int, max_images: int, max_bytes: int | None = None,
               publisher: Publisher | None = None) -> UploadResult:
    """Each file is judged on its own: the bad ones (not PNG/JPEG/WebP by content, too many bytes
    or pixels, over the concept's maximum) are reported with their reason and the good ones kept.
    If none is good the request is refused and nothing is stored. New images are then sent to be
    captioned (the `publisher`'s render queue), after the commit."""
    if not uploads:
        raise ApiError("image", "send one or more files in the multipart field 'image'")
    existing = {img.sha256: img for img in concept.images}
    room = max_images - len(existing)
    accepted: list[tuple[Upload, CleanImage]] = []
    rejected: list[Rejected] = []
    for i, upload in enumerate(uploads):
        try:
            clean = clean_image(upload.data, f"image[{i}]", max_pixels, max_bytes)
        except ApiError as exc:
            rejected.append(Rejected(i, upload.filename, exc.message))
            continue
        is_new = clean.sha256 not in existing and all(c.sha256 != clean.sha256 for _, c in accepted)
        if is_new and room <= 0:
            rejected.append(Rejected(i, upload.filename, f"the concept already holds its maximum of {max_images} "
                                                         "images"))
            continue
        room -= is_new
        accepted.append((upload, clean))
    if not accepted:
        raise UploadRefused(rejected)
    results: list[tuple[ConceptImage, bool]] = []
    written: list[str] = []
    fresh: list[ConceptImage] = []
    try:
        for upload, clean in accepted:
            if clean.sha256 in existing:
                results.append((existing[clean.sha256], True))
                continue
            key = tenant_key(concept.tenant_id, "concepts", str(concept.id), "images", f"{clean.sha256}.png")
            store.put_bytes(key, clean.png, "image/png")
            written.append(key)
            image = ConceptImage(tenant_id=concept.tenant_id, concept_id=concept.id, sha256=clean.sha256,
                                 object_key=key, size_bytes=len(clean.png), width=clean.width,
                                 height=clean.height, filename=display_filename(upload.filename),
                                 caption_state="pending")
            session.add(image)
            existing[clean.sha256] = image
            fresh.append(image)
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
    if publisher is not None:
        for image in fresh:  # a lost message leaves the caption `pending`; the upload itself stands
            publisher.publish(image.id, CAPTION_KIND, CAPTION_QUEUE)
    return UploadResult(results, rejected)


def get_image(session: Session, concept: Concept, image_id: str) -> ConceptImage:
    image = get_scoped(session, ConceptImage, image_id, concept.tenant_id, "image")
    if image.concept_id != concept.id:
        raise NotFound("image", f"no image {image_id}")
    return image


def update_caption(session: Session, concept: Concept, image: ConceptImage, caption: str | None,
                   accepted: bool | None) -> ConceptImage:
    """Edits the suggestion and/or accepts it; training uses only accepted captions, and a caption
    is accepted only when it names the concept."""
    if caption is not None:
        image.caption = parse_caption(caption, concept.identifier)
        if accepted is None and image.caption_state != "accepted":
            image.caption_state = "suggested"
    if accepted is True:
        if not image.caption:
            raise ApiError("accepted", "there is no caption to accept yet; send one in `caption`")
        image.caption = parse_caption(image.caption, concept.identifier)  # a model suggestion must name it too
        image.caption_state = "accepted"
    elif accepted is False and image.caption_state == "accepted":
        image.caption_state = "suggested"
    session.commit()
    return image


def active_training_job(session: Session, concept: Concept) -> Job | None:
    return session.scalars(
        select(Job).where(Job.concept_id == concept.id, Job.tenant_id == concept.tenant_id, Job.kind == "train",
                          Job.state.in_(("queued", "running")))
    ).first()


def start_training(session: Session, publisher: Publisher, concept: Concept, steps: int, backbone: str,
                   recipe: dict[str, Any] | None = None) -> Job:
    """`recipe`: the rest of the job's payload (see `api.jobs.schemas.training_recipe`); a concept
    with a version warm-starts from it unless the recipe says `warm_start: false`."""
    min_images = max(1, current_settings().min_images_to_train)
    if len(concept.images) < min_images:
        raise Conflict("images", f"upload at least {min_images} image(s) before training "
                                 f"(the concept has {len(concept.images)})")
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


def _encode_cursor(concept: Concept) -> str:
    raw = f"{concept.created_at.isoformat()}|{concept.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, concept_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(concept_id)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise ApiError("cursor", "not a cursor this API gave out") from exc


def list_concepts_page(session: Session, tenant_id: uuid.UUID, *, status: str | None = None,
                       name_prefix: str | None = None, limit: int = 50,
                       cursor: str | None = None) -> tuple[list[Concept], str | None]:
    """One page in creation order (keyset on (created_at, id), stable while concepts are added)
    and the cursor of the next page, None on the last."""
    query = select(Concept).where(Concept.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Concept.status == status)
    if name_prefix:
        escaped = name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Concept.name.like(f"{escaped}%", escape="\\"))
    if cursor:
        created, last_id = _decode_cursor(cursor)
        query = query.where((Concept.created_at > created) | ((Concept.created_at == created) & (Concept.id > last_id)))
    rows = list(session.scalars(query.order_by(Concept.created_at, Concept.id).limit(limit + 1)))
    page = rows[:limit]
    return page, (_encode_cursor(page[-1]) if len(rows) > limit else None)


def replace_facts(session: Session, concept: Concept, facts: list[tuple[str, str]]) -> Concept:
    """The concept's facts become exactly `facts` (a later training uses them)."""
    session.execute(delete(Fact).where(Fact.concept_id == concept.id, Fact.tenant_id == concept.tenant_id))
    for position, (question, answer) in enumerate(facts):
        session.add(Fact(tenant_id=concept.tenant_id, concept_id=concept.id, position=position,
                         question=question, answer=answer))
    concept.updated_at = utcnow()
    session.commit()
    session.refresh(concept)
    return concept


def concept_object_prefixes(session: Session, concept: Concept) -> list[str]:
    """Every store prefix holding this concept's objects: its own folder (images, versions), its
    jobs' folders (resumable checkpoints, previews) and its renders' folders (inputs, outputs)."""
    tenant = concept.tenant_id
    prefixes = [tenant_key(tenant, "concepts", str(concept.id)) + "/"]
    job_ids = session.scalars(select(Job.id).where(Job.concept_id == concept.id, Job.tenant_id == tenant))
    prefixes += [tenant_key(tenant, "jobs", str(job_id)) + "/" for job_id in job_ids]
    render_ids = session.scalars(select(Render.id).where(Render.concept_id == concept.id, Render.tenant_id == tenant))
    prefixes += [tenant_key(tenant, "renders", str(render_id)) + "/" for render_id in render_ids]
    return prefixes


def delete_concept(session: Session, store: ObjectStore, concept: Concept) -> int:
    """Deletes the concept's rows (facts, images, versions, jobs, renders go with it by ON DELETE
    CASCADE; usage records stay, they are the tenant's bill) and then every object under its
    prefixes. Refused while one of its jobs is unfinished: a worker would write after the purge.
    Returns the number of objects removed."""
    unfinished = session.scalars(select(Job.id).where(
        Job.concept_id == concept.id, Job.tenant_id == concept.tenant_id, Job.state.in_(("queued", "running")))).first()
    if unfinished is not None:
        raise Conflict("concept", f"job {unfinished} of this concept is unfinished; cancel it first")
    prefixes = concept_object_prefixes(session, concept)
    # Rows first: once committed, no request can reach these objects; a failed object delete then
    # leaves an unreachable orphan (logged), never a concept pointing at missing files.
    session.execute(update(Concept).where(Concept.id == concept.id).values(current_version_id=None))
    session.execute(delete(Concept).where(Concept.id == concept.id, Concept.tenant_id == concept.tenant_id))
    session.commit()
    session.expunge_all()
    removed = 0
    for prefix in prefixes:
        for key in store.list_keys(prefix):
            try:
                store.delete(key)
                removed += 1
            except Exception as exc:
                log.warning("could not delete object %s of a deleted concept: %s", key, type(exc).__name__)
    return removed
