"""Concept versions: listing (newest first), one by id, and presigned download URLs for a version's
checkpoint files. Shared by the views and usable from tasks."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urljoin

from flask import has_request_context, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..concepts.schemas import iso
from ..errors import ApiError, NotFound
from ..models import Concept, ConceptVersion, utcnow
from ..scoping import get_scoped
from ..settings import Settings
from ..storage import ObjectStore

CHECKPOINT_FILES = ("tokens.safetensors", "concept.json")


def list_versions(session: Session, concept: Concept) -> list[ConceptVersion]:
    return list(session.scalars(
        select(ConceptVersion).where(ConceptVersion.concept_id == concept.id,
                                     ConceptVersion.tenant_id == concept.tenant_id)
        .order_by(ConceptVersion.number.desc())
    ))


def get_version(session: Session, concept: Concept, version_id: str) -> ConceptVersion:
    """A version of this concept; another concept's (or tenant's) version answers 404."""
    version = get_scoped(session, ConceptVersion, version_id, concept.tenant_id, "version")
    if version.concept_id != concept.id:
        raise NotFound("version", f"no version {version_id}")
    return version


def bounded_expiry(expires_in: int | None, settings: Settings) -> int:
    """`expires_in` as asked, the settings' default when absent; 400 naming it above the bound."""
    seconds = settings.presigned_url_seconds if expires_in is None else expires_in
    if not 1 <= seconds <= settings.max_presigned_url_seconds:
        raise ApiError("expires_in", f"must be from 1 to {settings.max_presigned_url_seconds} seconds")
    return seconds


def presign_expiry(expires_in: int) -> str:
    return iso(utcnow() + timedelta(seconds=expires_in)) or ""


def absolute_url(url: str) -> str:
    """The local store's URLs are paths on this API; S3's are absolute already."""
    if url.startswith("/") and has_request_context():
        return urljoin(request.host_url, url)
    return url


def download_urls(store: ObjectStore, version: ConceptVersion, expires_in: int) -> list[dict[str, str]]:
    return [{"name": name, "url": absolute_url(store.presigned_url(f"{version.object_prefix}/{name}", expires_in))}
            for name in CHECKPOINT_FILES]

