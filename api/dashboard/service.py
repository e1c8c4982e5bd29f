"""What the operators' dashboard shows and does. This is the one place that reads across tenants
on purpose: only platform admins reach it (see views.py), and every row it shows names its tenant.
Cancel and retry are the jobs service's own, as the API's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import models
from ..errors import NotFound
from ..jobs import service as jobs
from ..models import Job, Tenant, utcnow
from ..queue import Publisher
from .schemas import JobFilter

RECENT_FAILURES = 20
JOBS_PAGE = 200
INSPECT_TIMEOUT_SECONDS = 1.0
RETRYABLE_STATES = jobs.RETRYABLE_STATES


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:  # SQLite returns naive datetimes, stored in UTC
        return moment.replace(tzinfo=UTC)
    return moment


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    tenant: str
    kind: str
    queue: str
    state: str
    progress: float
    attempts: int
    error: str | None
    created_at: datetime | None
    finished_at: datetime | None
    heartbeat_age_seconds: float | None
    cancel_requested: bool

    @property
    def can_cancel(self) -> bool:
        return self.state in ("queued", "running") and not self.cancel_requested

    @property
    def can_retry(self) -> bool:
        return self.state in RETRYABLE_STATES


def _rows(session: Session, query: Any, now: datetime) -> list[JobRow]:
    rows = []
    for job, tenant_name in session.execute(query):
        heartbeat = _aware(job.heartbeat_at)
        age = (now - heartbeat).total_seconds() if heartbeat is not None and job.state == "running" else None
        rows.append(JobRow(job.id, tenant_name, job.kind, job.queue, job.state, job.progress or 0.0, job.attempts,
                           job.error, _aware(job.created_at), _aware(job.finished_at), age, job.cancel_requested))
    return rows


def _with_tenant() -> Any:
    return select(Job, Tenant.name).join(Tenant, Tenant.id == Job.tenant_id)


def running_jobs(session: Session, now: datetime | None = None) -> list[JobRow]:
    query = _with_tenant().where(Job.state == "running").order_by(Job.started_at)
    return _rows(session, query, now or utcnow())


def recent_failures(session: Session, limit: int = RECENT_FAILURES) -> list[JobRow]:
    query = _with_tenant().where(Job.state == "failed").order_by(Job.finished_at.desc().nulls_last()).limit(limit)
    return _rows(session, query, utcnow())


def filtered_jobs(session: Session, flt: JobFilter) -> list[JobRow]:
    query = _with_tenant().order_by(Job.created_at.desc()).limit(JOBS_PAGE)
    if flt.state:
        query = query.where(Job.state == flt.state)
    if flt.queue:
        query = query.where(Job.queue == flt.queue)
    if flt.kind:
        query = query.where(Job.kind == flt.kind)
    if flt.tenant:
        query = query.where(Tenant.name == flt.tenant)
    return _rows(session, query, utcnow())


def jobs_by_state(session: Session) -> dict[str, int]:
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    return {state: int(counts.get(state, 0)) for state in models.JOB_STATES}


def queue_names(session: Session) -> list[str]:
    return sorted(set(session.scalars(select(Job.queue).distinct())) | {"train", "render"})


def tenant_names(session: Session) -> list[str]:
    return list(session.scalars(select(Tenant.name).order_by(Tenant.name)))


def usage_by_tenant(session: Session) -> list[tuple[str, str, int]]:
    """(tenant, kind, total) of metered usage; empty while no usage table exists or nothing is recorded."""
    usage = getattr(models, "UsageRecord", None)
    if usage is None:
        return []
    rows = session.execute(
        select(Tenant.name, usage.kind, func.sum(usage.quantity)).join(Tenant, Tenant.id == usage.tenant_id)
        .group_by(Tenant.name, usage.kind).order_by(Tenant.name, usage.kind)
    ).all()
    return [(name, kind, int(total or 0)) for name, kind, total in rows]


def workers_seen(publisher: Publisher, timeout: float = INSPECT_TIMEOUT_SECONDS) -> tuple[list[str], str | None]:
    """Worker names that answered a Celery ping within `timeout`, and a note when none could be asked."""
    app = getattr(publisher, "app", None)
    if app is None:
        return [], "this publisher cannot reach the workers"
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:  # a broker that is down or cannot broadcast: say so, keep the page up
        return [], f"could not ask the workers ({type(exc).__name__})"
    names = sorted(name for reply in replies for name in reply)
    return names, None if names else f"no worker answered within {timeout:g}s"


def heartbeating_jobs(session: Session, within_seconds: int, now: datetime | None = None) -> int:
    """Running jobs whose worker touched them recently: evidence of live workers even without a ping."""
    now = now or utcnow()
    recent = [job for job in running_jobs(session, now)
              if job.heartbeat_age_seconds is not None and job.heartbeat_age_seconds <= within_seconds]
    return len(recent)


def get_job(session: Session, job_id: str) -> Job:
    """Any tenant's job (platform admins only reach this)."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError as exc:
        raise NotFound("job", f"no job {job_id}") from exc
    job = session.get(Job, parsed)
    if job is None:
        raise NotFound("job", f"no job {job_id}")
    return job


def cancel_job(session: Session, job: Job) -> Job:
    return jobs.request_cancel(session, job)


def retry_job(session: Session, publisher: Publisher, job: Job) -> Job:
    """The jobs service's retry: a render goes back on its queue, a training runs again as a new
    job (warm-started). Returns the job that will run."""
    return jobs.retry_job(session, job, publisher)
