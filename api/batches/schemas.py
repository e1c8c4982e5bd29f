"""Request and response shapes for batch rendering."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.schemas import iso
from ..models import Batch, Job, Render
from ..renders.schemas import DEFAULT_GUIDANCE, MAX_GUIDANCE, MAX_SEED, MIN_GUIDANCE, MIN_SIZE

ITEM_STATES = ("queued", "running", "succeeded", "failed", "canceled")


class BatchCreate(BaseModel):
    """Either `prompts` × `concepts` (each prompt writes the concept as `{c}`), or `template` with
    `values` (the template writes the value as `{value}` and names its concepts as `<name>`)."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] | None = Field(None, min_length=1, description="prompts using {c} for the concept")
    concepts: list[str] | None = Field(None, min_length=1, description="concept names (maeve) or identifiers (<maeve>)")
    template: str | None = Field(None, min_length=1, description="a prompt with one {value} placeholder")
    values: list[str] | None = Field(None, min_length=1, description="what {value} becomes, one item each")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the seed of every item")
    steps: int | None = Field(None, ge=1, description="flow-sampling steps (default OMNI_SAMPLE_STEPS)")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=MIN_GUIDANCE, le=MAX_GUIDANCE)
    size: int | None = Field(None, ge=MIN_SIZE, description="output side in pixels; default: the model's own")


class BatchCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


class BatchOut(BaseModel):
    id: str
    state: Literal["running", "done", "canceled"]
    total: int
    counts: BatchCounts
    progress: float = Field(description="finished items / total")
    cancel_requested: bool
    manifest_url: str | None = Field(None, description="presigned URL of manifest.json once the batch is finished")
    created_at: str | None
    finished_at: str | None


class BatchList(BaseModel):
    batches: list[BatchOut]


class BatchItem(BaseModel):
    index: int
    render_id: str
    job_id: str
    text: str
    state: str
    error: str | None
    image_urls: list[str]


class BatchItemList(BaseModel):
    items: list[BatchItem]
    total: int


class BatchItemQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


def batch_dict(batch: Batch, counts: dict[str, int], manifest_url: str | None) -> dict[str, Any]:
    finished = sum(counts.get(s, 0) for s in ("succeeded", "failed", "canceled"))
    return BatchOut(id=str(batch.id), state=batch.state, total=batch.total, counts=BatchCounts(**counts),
                    progress=round(finished / batch.total, 4) if batch.total else 1.0,
                    cancel_requested=batch.cancel_requested, manifest_url=manifest_url,
                    created_at=iso(batch.created_at), finished_at=iso(batch.finished_at)).model_dump()


def item_dict(render: Render, job: Job, image_urls: list[str]) -> dict[str, Any]:
    return BatchItem(index=render.batch_index or 0, render_id=str(render.id), job_id=str(job.id), text=render.text,
                     state=job.state, error=job.error, image_urls=image_urls).model_dump()
