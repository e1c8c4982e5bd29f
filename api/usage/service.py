"""Quotas and metered usage per tenant.

Limits live on the tenant row (`max_concepts`, `max_concurrent_jobs`, `requests_per_minute`); a
NULL column means the settings' default. Usage is one row per (job, kind), so a job whose message
is delivered twice, or whose `succeed` runs twice, is counted once."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import ScalarSelect, Select

from ..errors import ApiError
from ..models import QUOTA_JOB_KINDS, QUOTA_JOBS_PREDICATE, Batch, Concept, Job, Tenant, UsageRecord
from ..settings import Settings


class QuotaExceeded(ApiError):
    status = 429
    code = "quota_exceeded"


def current_settings() -> Settings:
    """The settings of the running app (its own object in tests), else those of the environment
    (workers, CLI)."""
    from flask import current_app, has_app_context

    from ..context import EXTENSION

    if has_app_context() and EXTENSION in current_app.extensions:
        return current_app.extensions[EXTENSION].settings
    return Settings.from_env()


@dataclass(frozen=True)
class TenantLimits:
    max_concepts: int
    max_concurrent_jobs: int
    requests_per_minute: int

    def as_dict(self) -> dict[str, int]:
        return {"max_concepts": self.max_concepts, "max_concurrent_jobs": self.max_concurrent_jobs,
                "requests_per_minute": self.requests_per_minute}


def limits_for(tenant: Tenant | None, settings: Settings) -> TenantLimits:
    def pick(own: int | None, default: int) -> int:
        return default if own is None else own

    return TenantLimits(
        max_concepts=pick(tenant.max_concepts if tenant else None, settings.max_concepts),
        max_concurrent_jobs=pick(tenant.max_concurrent_jobs if tenant else None, settings.max_concurrent_jobs),
        requests_per_minute=pick(tenant.requests_per_minute if tenant else None, settings.requests_per_minute),
    )


def tenant_limits(session: Session, tenant_id: uuid.UUID, settings: Settings | None = None) -> TenantLimits:
    return limits_for(session.get(Tenant, tenant_id), settings or current_settings())


def _lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    """Serialises quota checks of one tenant (PostgreSQL row lock; SQLite locks the whole file on
    write anyway), so two simultaneous requests cannot both take the last slot."""
    return session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).first()


def check_job_quota(session: Session, tenant_id: uuid.UUID, kind: str | None = None,
                    settings: Settings | None = None) -> None:
    """429 when the tenant already has its maximum of unfinished train/render jobs. Only those kinds
    (QUOTA_JOB_KINDS: jobs a customer starts, which hold a worker for long) are checked; automatic
    housekeeping (captioning after an upload) is not."""
    if kind is not None and kind not in QUOTA_JOB_KINDS:
        return
    limits = limits_for(_lock_tenant(session, tenant_id), settings or current_settings())
    if unfinished_work(session, tenant_id, limits.max_concurrent_jobs) >= limits.max_concurrent_jobs:
        raise QuotaExceeded("jobs", f"at most {limits.max_concurrent_jobs} unfinished jobs per tenant; "
                                    "wait for one to finish or cancel one")


def unfinished_work(session: Session, tenant_id: uuid.UUID, up_to: int) -> int:
    """What counts against `max_concurrent_jobs`: unfinished train/render jobs outside batches
    (`QUOTA_JOBS_PREDICATE`), plus one per running batch (a batch is one request, however many items
    it fans out to; its size is bounded by OMNI_MAX_BATCH_ITEMS instead). Counting stops at `up_to`
    of each: the quota only asks whether the limit is reached."""
    return session.scalar(_UNFINISHED_WORK, {"tenant_id": tenant_id, "up_to": up_to}) or 0


def _count_up_to(rows: Select) -> ScalarSelect[int]:
    return select(func.count()).select_from(rows.limit(bindparam("up_to", type_=Integer)).subquery()).scalar_subquery()


# Every job creation runs it: both counts in one round trip, the statement built once. The jobs
# predicate is literal SQL, not bound parameters, so that a prepared (generic) plan still matches
# the partial index ix_jobs_tenant_quota.
_UNFINISHED_WORK = select(
    _count_up_to(select(Job.id).where(Job.tenant_id == bindparam("tenant_id"), text(QUOTA_JOBS_PREDICATE)))
    + _count_up_to(select(Batch.id).where(Batch.tenant_id == bindparam("tenant_id"), Batch.state == "running")))


def check_concept_quota(session: Session, tenant_id: uuid.UUID, settings: Settings | None = None) -> None:
    limits = limits_for(_lock_tenant(session, tenant_id), settings or current_settings())
    count = session.scalar(select(func.count()).select_from(Concept).where(Concept.tenant_id == tenant_id))
    if (count or 0) >= limits.max_concepts:
        raise QuotaExceeded("name", f"at most {limits.max_concepts} concepts per tenant; delete one first")


def record_usage(session: Session, tenant_id: uuid.UUID, kind: str, quantity: int,
                 job_id: uuid.UUID | None = None) -> None:
    """Adds a usage row (in the caller's transaction). With a job id it is idempotent per
    (job_id, kind): a second call for the same job and kind changes nothing."""
    values = {"id": uuid.uuid4(), "tenant_id": tenant_id, "job_id": job_id, "kind": kind, "quantity": int(quantity),
              "created_at": datetime.now(UTC)}
    if job_id is None:
        session.add(UsageRecord(**values))
        session.flush()
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(UsageRecord).values(**values).on_conflict_do_nothing(
        index_elements=["job_id", "kind"]))


def job_usage(job: Job) -> tuple[str, int]:
    """What a finished job is billed as: training steps actually run, one per render, one per
    captioned image; any other kind counts as one job."""
    result = job.result or {}
    if job.kind == "train":
        steps = result.get("steps_done", job.payload.get("steps", 0))
        return "training_steps", int(steps or 0)
    if job.kind == "render":
        return "renders", 1
    if job.kind == "caption":
        return "captions", len(job.payload.get("image_ids", []))
    return f"{job.kind}_jobs", 1


def record_job_usage(session: Session, job_id: uuid.UUID) -> None:
    """Called from `jobs.service.succeed`: meters a succeeded job once, and commits."""
    job = session.get(Job, job_id, populate_existing=True)  # `_finish` updated the row behind the ORM
    if job is None or job.state != "succeeded":
        return
    kind, quantity = job_usage(job)
    record_usage(session, job.tenant_id, kind, quantity, job.id)
    session.commit()


def usage_between(session: Session, tenant_id: uuid.UUID, start: date, end: date) -> dict[str, Any]:
    """Totals per kind and per UTC day for `start`..`end` (both days included)."""
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    rows = session.execute(
        select(UsageRecord.created_at, UsageRecord.kind, UsageRecord.quantity).where(
            UsageRecord.tenant_id == tenant_id, UsageRecord.created_at >= since, UsageRecord.created_at < until)
    ).all()
    totals: dict[str, int] = defaultdict(int)
    per_day: dict[tuple[date, str], int] = defaultdict(int)
    for created_at, kind, quantity in rows:
        if created_at.tzinfo is None:  # SQLite gives naive datetimes; everything is stored in UTC
            created_at = created_at.replace(tzinfo=UTC)
        totals[kind] += quantity
        per_day[(created_at.astimezone(UTC).date(), kind)] += quantity
    days = [{"date": day.isoformat(), "kind": kind, "quantity": quantity}
            for (day, kind), quantity in sorted(per_day.items())]
    return {"start": start.isoformat(), "end": end.isoformat(), "totals": dict(sorted(totals.items())),
            "days": days}
