"""Response shape of a job."""

from __future__ import annotations

from typing import Any

from ..concepts.schemas import iso
from ..models import Job


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "queue": job.queue,
        "state": job.state,
        "concept_id": str(job.concept_id) if job.concept_id else None,
        "progress": job.progress,
        "progress_history": job.progress_history,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "payload": job.payload,
        "result": job.result,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "finished_at": iso(job.finished_at),
    }
