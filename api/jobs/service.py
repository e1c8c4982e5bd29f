"""Job lifecycle, shared by the views (create, cancel), the tasks (claim, progress, heartbeat,
finish) and the reaper. State changes that race (claim, reaping) are conditional UPDATEs: the
row, not the broker, decides who runs a job."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ..celery_config import QUEUE_BY_KIND
from ..errors import Conflict
from ..models import FINISHED_STATES, Concept, Job, utcnow
from ..queue import Publisher
from ..usage.service import check_job_quota, record_job_usage
from ..webhooks.service import emit_job_event

log = logging.getLogger(__name__)

ERROR_MAX_CHARS = 2000


def create_job(session: Session, tenant_id: uuid.UUID, kind: str, concept_id: uuid.UUID | None,
               payload: dict[str, Any]) -> Job:
    check_job_quota(session, tenant_id, kind)  # 429 over the tenant's concurrent-job limit
    job = Job(tenant_id=tenant_id, kind=kind, queue=QUEUE_BY_KIND[kind], concept_id=concept_id, payload=payload,
              state="queued", progress=0.0, progress_history=[], attempts=0, cancel_requested=False)
    session.add(job)
    session.flush()
    return job


def publish(session: Session, job: Job, publisher: Publisher) -> bool:
    """Send the job id to its queue; on success remember when (the reaper re-publishes otherwise)."""
    ok = publisher.publish(job.id, job.kind, job.queue)
    if ok:
        job.published_at = utcnow()
        session.commit()
    return ok


def claim(session: Session, job_id: uuid.UUID, max_attempts: int) -> Job | None:
    """queued -> running, only if still queued: a second delivery of the same id gets None.
    A job that has used up its attempts is failed instead."""
    job = session.get(Job, job_id)
    if job is None or job.state != "queued":
        session.rollback()
        return None
    if job.attempts >= max_attempts:
        if fail(session, job_id, f"gave up after {job.attempts} attempts"):
            settle_concept_after(session, job)
        return None
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "queued")
        .values(state="running", attempts=Job.attempts + 1, started_at=now, heartbeat_at=now, error=None)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.refresh(job)
    return job


def heartbeat(session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(heartbeat_at=utcnow()))
    session.commit()


def record_progress(session: Session, job_id: uuid.UUID, progress: float,
                    entries: list[dict[str, Any]]) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.progress = max(0.0, min(1.0, progress))
    if entries:
        job.progress_history = [*job.progress_history, *entries]  # a new list: JSON columns track assignment
    job.heartbeat_at = utcnow()
    session.commit()


def cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    row = session.execute(select(Job.cancel_requested, Job.state).where(Job.id == job_id)).first()
    session.rollback()  # end the read transaction so the next poll sees new commits
    return row is None or bool(row.cancel_requested) or row.state != "running"


def _finish(session: Session, job_id: uuid.UUID, state: str, **values: Any) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state.not_in(FINISHED_STATES))
        .values(state=state, finished_at=utcnow(), **values)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        emit_job_event(session, job_id, state)  # webhook outbox rows, committed with the state change
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def succeed(session: Session, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
    finished = _finish(session, job_id, "succeeded", result=result, progress=1.0, error=None)
    record_job_usage(session, job_id)  # metered once per job, even if delivered twice
    return finished


def fail(session: Session, job_id: uuid.UUID, error: str) -> bool:
    return _finish(session, job_id, "failed", error=error[:ERROR_MAX_CHARS])


def mark_canceled(session: Session, job_id: uuid.UUID) -> bool:
    return _finish(session, job_id, "canceled")


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is canceled at once; a running one is asked to stop (training checks between
    steps)."""
    if job.state in FINISHED_STATES:
        raise Conflict("state", f"job is already {job.state}")
    if job.state == "queued":
        _finish(session, job.id, "canceled", cancel_requested=True)
        settle_concept_after(session, job)
    else:
        job.cancel_requested = True
        session.commit()
    session.refresh(job)
    return job


def settle_concept_after(session: Session, job: Job) -> None:
    """A training job that ends without a new version leaves the concept as it was before."""
    if job.kind != "train" or job.concept_id is None:
        return
    concept = session.get(Concept, job.concept_id)
    if concept is not None and concept.status == "training":
        concept.status = "ready" if concept.current_version_id else "draft"
        session.commit()


@dataclass
class ReapReport:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    republished: list[uuid.UUID] = field(default_factory=list)


def reap(session: Session, publisher: Publisher, *, stale_after_seconds: int, max_attempts: int,
         requeue_queued_after_seconds: int, now: datetime | None = None) -> ReapReport:
    """Recover jobs: a running job whose heartbeat went stale (its worker died) goes back to the
    queue, or fails once its attempts are used up; a queued job that was never published, or was
    published long ago and nobody took, is published again (double delivery is harmless: claim)."""
    now = now or utcnow()
    report = ReapReport()
    stale_before = now - timedelta(seconds=stale_after_seconds)
    stale = session.scalars(
        select(Job).where(Job.state == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))
    ).all()
    for job in stale:
        reason = f"worker lost: no heartbeat for over {stale_after_seconds}s (attempt {job.attempts} of {max_attempts})"
        if job.attempts >= max_attempts:
            if _finish(session, job.id, "failed", error=reason):
                settle_concept_after(session, job)
                report.failed.append(job.id)
            continue
        result = session.execute(
            update(Job).where(Job.id == job.id, Job.state == "running", Job.heartbeat_at == job.heartbeat_at)
            .values(state="queued", error=reason, published_at=None)
        )
        session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            report.requeued.append(job.id)
    republish_before = now - timedelta(seconds=requeue_queued_after_seconds)
    waiting = session.scalars(
        select(Job).where(Job.state == "queued", or_(Job.published_at.is_(None), Job.published_at < republish_before))
    ).all()
    for job in waiting:
        if publish(session, job, publisher):
            report.republished.append(job.id)
    if report.requeued or report.failed or report.republished:
        log.info("reaper: requeued %d, failed %d, republished %d",
                 len(report.requeued), len(report.failed), len(report.republished))
    return report


def queue_depth(session: Session) -> dict[str, dict[str, int]]:
    """Jobs per queue and state, from the jobs table (the broker's own counts miss unpublished jobs)."""
    rows = session.execute(select(Job.queue, Job.state, func.count()).group_by(Job.queue, Job.state)).all()
    depth: dict[str, dict[str, int]] = {}
    for queue, state, count in rows:
        depth.setdefault(queue, {})[state] = count
    return depth
