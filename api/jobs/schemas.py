"""Request and response shapes of jobs: the training request (recipe overrides), the job as the API
shows it (progress with step, total, loss parts and an ETA; queue position while queued), training
snapshots (preview samples and saved tokens)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.schemas import iso
from ..errors import ApiError
from ..models import Job, TrainingSnapshot
from ..settings import Settings

MAX_SEED = 2**31 - 1


class LossWeightsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "8" or true is not a number here
    ce: float | None = Field(default=None, ge=0, description="understanding (text) loss weight")
    gen: float | None = Field(default=None, ge=0, description="generation (flow) loss weight")
    edit: float | None = Field(default=None, ge=0, description="editing loss weight")


class TrainRequest(BaseModel):
    """`POST /v1/concepts/<id>/train`. Every field is optional; bounds beyond these come from the
    settings (`OMNI_MAX_TRAIN_STEPS`, `OMNI_MAX_TRAIN_BATCH_SIZE`, `OMNI_MAX_LOSS_WEIGHT`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    recipe: Literal["default", "mock"] = Field(
        default="default", description="`mock`: finishes in seconds with a real, barely trained artifact")
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    loss_weights: LossWeightsIn | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    warm_start: bool = Field(default=True, description="start from the concept's current version's tokens")


def training_recipe(request: TrainRequest, settings: Settings) -> dict[str, Any]:
    """The recipe a train job runs, checked against the settings' bounds (400 naming the field)."""
    if request.recipe == "mock":
        for name in ("steps", "batch_size", "loss_weights", "seed"):
            if getattr(request, name) is not None:
                raise ApiError(name, "the mock recipe takes no overrides")
        return {"recipe": "mock", "steps": settings.mock_train_steps, "batch_size": 1,
                "warm_start": request.warm_start}
    steps = settings.default_train_steps if request.steps is None else request.steps
    if steps > settings.max_train_steps:
        raise ApiError("steps", f"must be an integer from 1 to {settings.max_train_steps}")
    recipe: dict[str, Any] = {"recipe": "default", "steps": steps, "warm_start": request.warm_start}
    if request.batch_size is not None:
        if request.batch_size > settings.max_train_batch_size:
            raise ApiError("batch_size", f"must be an integer from 1 to {settings.max_train_batch_size}")
        recipe["batch_size"] = request.batch_size
    if request.loss_weights is not None:
        weights = request.loss_weights.model_dump(exclude_none=True)
        for name, value in weights.items():
            if value > settings.max_loss_weight:
                raise ApiError(f"loss_weights.{name}", f"must be from 0 to {settings.max_loss_weight}")
        if weights and sum(weights.values()) == 0:
            raise ApiError("loss_weights", "at least one weight must be above 0")
        recipe["loss_weights"] = weights
    if request.seed is not None:
        recipe["seed"] = request.seed
    return recipe


class ProgressOut(BaseModel):
    step: int = Field(description="training steps done (0 before the first)")
    total_steps: int | None
    losses: dict[str, float] = Field(description="loss parts at the last recorded step")
    eta_seconds: float | None = Field(description="estimated seconds until done, from the recent step rate")


class QueueOut(BaseModel):
    position: int = Field(description="1: next to start in its queue")
    ahead: int
    running: int = Field(description="jobs running in the same queue now")
    eta_seconds: float | None = Field(description="estimated seconds until it starts, from recent job durations")


class SnapshotOut(BaseModel):
    id: str
    kind: Literal["preview", "saved"]
    step: int
    prompt: str | None
    metrics: dict[str, Any]
    created_at: str | None
    urls: dict[str, str] | None = Field(
        default=None, description="presigned download URLs by file name (GET one job / snapshots)")
    expires_at: str | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    queue: str
    state: Literal["queued", "running", "succeeded", "failed", "canceled"]
    concept_id: str | None
    progress: float
    progress_detail: ProgressOut
    progress_history: list[dict[str, Any]]
    attempts: int
    cancel_requested: bool
    keep_on_stop: bool
    save_requests: int
    retry_of: str | None
    error: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    created_at: str | None
    started_at: str | None
    heartbeat_at: str | None
    finished_at: str | None
    queue_position: QueueOut | None = Field(default=None, description="while queued")
    snapshots: list[SnapshotOut] | None = Field(default=None, description="previews and saved tokens (GET one)")


class JobList(BaseModel):
    jobs: list[JobOut]


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut]


def _parse_time(raw: str) -> datetime | None:
    try:
        return datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        return None


def progress_detail(job: Job) -> dict[str, Any]:
    """Step, total, last loss parts and an ETA from the step rate between the first and the last
    history entries (each carries its time), so a resumed job's rate is its own."""
    history = job.progress_history or []
    total = history[-1]["steps"] if history else job.payload.get("steps")
    if not history:
        return {"step": 0, "total_steps": total, "losses": {}, "eta_seconds": None}
    last = history[-1]
    eta = None
    if job.state == "running" and last["step"] < last["steps"]:
        first_step, first_at = 0, job.started_at
        if len(history) > 1:
            first_step, first_at = history[0]["step"], _parse_time(history[0]["at"])
        last_at = _parse_time(last["at"])
        if first_at is not None and last_at is not None:
            if first_at.tzinfo is None and last_at.tzinfo is not None:  # SQLite returns naive UTC times
                first_at = first_at.replace(tzinfo=last_at.tzinfo)
            done = last["step"] - first_step
            if done > 0:
                per_step = max(0.0, (last_at - first_at).total_seconds()) / done
                eta = round(per_step * (last["steps"] - last["step"]), 2)
    return {"step": last["step"], "total_steps": total, "losses": last.get("losses", {}), "eta_seconds": eta}


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "queue": job.queue,
        "state": job.state,
        "concept_id": str(job.concept_id) if job.concept_id else None,
        "progress": job.progress,
        "progress_detail": progress_detail(job),
        "progress_history": job.progress_history,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "keep_on_stop": bool(job.keep_on_stop),
        "save_requests": job.save_requests or 0,
        "retry_of": str(job.retry_of_id) if job.retry_of_id else None,
        "error": job.error,
        "payload": job.payload,
        "result": job.result,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "finished_at": iso(job.finished_at),
    }


def snapshot_dict(snapshot: TrainingSnapshot) -> dict[str, Any]:
    return {"id": str(snapshot.id), "kind": snapshot.kind, "step": snapshot.step, "prompt": snapshot.prompt,
            "metrics": snapshot.metrics or {}, "created_at": iso(snapshot.created_at)}
