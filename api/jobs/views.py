"""/v1/jobs: get one (progress, queue position, snapshots), list, cancel, retry, and the controls of
a running training: save now, stop and keep."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ..context import principal, services, session
from ..idempotency import idempotent
from ..models import Job, TrainingSnapshot
from ..scoping import get_scoped
from ..spec import documented, parse_model
from ..versions.schemas import DownloadQuery
from ..versions.service import absolute_url, bounded_expiry, presign_expiry
from . import service
from .schemas import JobList, JobListQuery, JobOut, SnapshotList, job_dict, snapshot_dict

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

SNAPSHOT_FILES = ("tokens.safetensors", "concept.json")


def _job(job_id: str) -> Job:
    return get_scoped(session(), Job, job_id, principal().tenant_id, "job")


def _snapshots(job: Job, expires_in: int) -> list[dict[str, Any]]:
    """The job's previews and saved tokens, each with presigned URLs valid for `expires_in` s."""
    if job.kind != "train":  # only trainings save snapshots: a render's status read skips the query
        return []
    store = services().store
    rows = session().scalars(select(TrainingSnapshot).where(
        TrainingSnapshot.job_id == job.id, TrainingSnapshot.tenant_id == job.tenant_id)
        .order_by(TrainingSnapshot.step, TrainingSnapshot.kind))
    out = []
    for snapshot in rows:
        urls: dict[str, str] = {}
        if snapshot.image_key:
            urls["preview.png"] = absolute_url(store.presigned_url(snapshot.image_key, expires_in))
        if snapshot.tokens_prefix:
            for name in SNAPSHOT_FILES:
                urls[name] = absolute_url(store.presigned_url(f"{snapshot.tokens_prefix}/{name}", expires_in))
        out.append(snapshot_dict(snapshot) | {"urls": urls, "expires_at": presign_expiry(expires_in)})
    return out


def _expires_in() -> int:
    query = parse_model(DownloadQuery, request.args.to_dict(), "query")
    return bounded_expiry(query.expires_in, services().settings)


def _full(job: Job) -> dict[str, Any]:
    return job_dict(job) | {"queue_position": service.queue_position(session(), job, stats=services().queue_stats)}


@bp.get("/<job_id>")
@documented(response=JobOut, errors=(400, 404), query=DownloadQuery)
def get(job_id: str) -> ResponseReturnValue:
    expires_in = _expires_in()
    job = _job(job_id)
    return jsonify(_full(job) | {"snapshots": _snapshots(job, expires_in)})


@bp.get("")
@documented(response=JobList, errors=(400,), query=JobListQuery)
def list_() -> ResponseReturnValue:
    query = select(Job).where(Job.tenant_id == principal().tenant_id).order_by(Job.created_at.desc()).limit(100)
    filters = parse_model(JobListQuery, request.args.to_dict(), "query")
    if filters.state is not None:
        query = query.where(Job.state == filters.state)
    return jsonify({"jobs": [_full(j) for j in session().scalars(query)]})


@bp.get("/<job_id>/snapshots")
@documented(response=SnapshotList, errors=(400, 404), query=DownloadQuery)
def snapshots(job_id: str) -> ResponseReturnValue:
    expires_in = _expires_in()
    return jsonify({"snapshots": _snapshots(_job(job_id), expires_in)})


@bp.post("/<job_id>/cancel")
@documented(response=JobOut, status=202, errors=(404, 409))
def cancel(job_id: str) -> ResponseReturnValue:
    """Queued: canceled now. Running: stops at the next step, keeping no version."""
    return jsonify(_full(service.request_cancel(session(), _job(job_id)))), 202


@bp.post("/<job_id>/stop")
@documented(response=JobOut, status=202, errors=(400, 404, 409))
@idempotent
def stop_and_keep(job_id: str) -> ResponseReturnValue:
    """"Stop and keep": a running training stops at its next step and records a version from the
    tokens it has (a queued one is canceled)."""
    return jsonify(_full(service.request_stop_and_keep(session(), _job(job_id)))), 202


@bp.post("/<job_id>/save")
@documented(response=JobOut, status=202, errors=(400, 404, 409))
@idempotent
def save_now(job_id: str) -> ResponseReturnValue:
    """"Save now": the running training saves its current tokens at its next step; they appear in
    the job's snapshots (kind `saved`) with download URLs."""
    return jsonify(_full(service.request_save(session(), _job(job_id)))), 202


@bp.post("/<job_id>/retry")
@documented(response=JobOut, status=202, errors=(400, 404, 409, 422, 429))
@idempotent
def retry(job_id: str) -> ResponseReturnValue:
    """A failed or canceled job again: training as a new job (`retry_of`), a render re-queued."""
    job = service.retry_job(session(), _job(job_id), services().publisher)
    return jsonify(_full(job)), 202
