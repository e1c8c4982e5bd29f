"""Response shapes of concept versions and their downloads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.schemas import iso
from ..models import ConceptVersion


class VersionOut(BaseModel):
    id: str
    concept_id: str
    number: int
    job_id: str
    parent_version_id: str | None = Field(description="the version this one's training warm-started from")
    source: Literal["trained", "stopped", "mock"] = Field(
        description="trained to the end, kept by 'stop and keep', or made by the mock recipe")
    current: bool
    backbone: str
    backbone_fingerprint: str
    metrics: dict[str, Any]
    created_at: str | None


class VersionList(BaseModel):
    versions: list[VersionOut]


class DownloadFile(BaseModel):
    name: str
    url: str


class VersionDownload(BaseModel):
    version_id: str
    files: list[DownloadFile]
    expires_in: int
    expires_at: str


class DownloadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in: int | None = Field(default=None, ge=1,
                                   description="URL lifetime in seconds (at most OMNI_MAX_PRESIGNED_URL_SECONDS)")


def version_out(version: ConceptVersion, current_version_id: Any) -> dict[str, Any]:
    return {"id": str(version.id), "concept_id": str(version.concept_id), "number": version.number,
            "job_id": str(version.job_id),
            "parent_version_id": str(version.parent_version_id) if version.parent_version_id else None,
            "source": version.source or "trained", "current": version.id == current_version_id,
            "backbone": version.backbone, "backbone_fingerprint": version.backbone_fingerprint,
            "metrics": version.metrics or {}, "created_at": iso(version.created_at)}
