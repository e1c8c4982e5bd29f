"""Quotas and metered usage: record_usage counts a job once, check_job_quota answers 429 at the
tenant's limit, succeed() meters training steps and renders, GET /v1/usage reads them by date."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from api.jobs import service as jobs
from api.models import Job, Tenant, UsageRecord
from api.usage.service import _UNFINISHED_WORK, QuotaExceeded, check_job_quota, record_usage, unfinished_work

from .conftest import create_concept, png_bytes


def _usage_rows(session_factory, tenant_id):
    with session_factory() as session:
        return [(r.kind, r.quantity, r.job_id) for r in
                session.scalars(select(UsageRecord).where(UsageRecord.tenant_id == tenant_id))]


def test_record_usage_counts_a_job_once_per_kind(session_factory, acme):
    job_id = uuid.uuid4()
    with session_factory() as session:
        record_usage(session, acme.tenant_id, "renders", 1, job_id)
        record_usage(session, acme.tenant_id, "renders", 1, job_id)  # the same job delivered twice
        record_usage(session, acme.tenant_id, "training_steps", 40, job_id)
        record_usage(session, acme.tenant_id, "renders", 3)  # no job: always a new row
        record_usage(session, acme.tenant_id, "renders", 3)
        session.commit()
    rows = sorted(_usage_rows(session_factory, acme.tenant_id), key=lambda r: (r[0], r[1]))
    assert rows == [("renders", 1, job_id), ("renders", 3, None), ("renders", 3, None),
                    ("training_steps", 40, job_id)]


def _add_job(session, tenant_id, kind="train", state="queued"):
    job = Job(tenant_id=tenant_id, kind=kind, queue=kind, state=state, payload={"steps": 7})
    session.add(job)
    session.flush()
    return job


def test_job_quota_counts_unfinished_train_and_render_jobs(session_factory, acme, globex, settings):
    with session_factory() as session:
        session.get(Tenant, acme.tenant_id).max_concurrent_jobs = 2
        _add_job(session, acme.tenant_id, "train", "running")
        _add_job(session, acme.tenant_id, "render", "succeeded")  # finished: does not count
        _add_job(session, acme.tenant_id, "caption", "queued")  # automatic work: does not count
        _add_job(session, globex.tenant_id, "render", "queued")  # another tenant's
        session.commit()
        check_job_quota(session, acme.tenant_id, "render", settings)  # 1 of 2
        _add_job(session, acme.tenant_id, "render", "queued")
        session.commit()
        with pytest.raises(QuotaExceeded) as caught:
            check_job_quota(session, acme.tenant_id, "render", settings)
        assert caught.value.status == 429 and caught.value.field == "jobs"
        check_job_quota(session, acme.tenant_id, "caption", settings)  # captions are never refused
        check_job_quota(session, globex.tenant_id, "render", settings)  # settings default: 20


def test_the_quota_count_reads_only_the_tenants_unfinished_quota_jobs(session_factory, acme):
    """Every job creation runs this count: it must be a range of the partial index, not a pass over
    every job the tenant ever ran with a probe into renders per job, and it stops at the limit."""
    with session_factory() as session:
        for _ in range(3):
            _add_job(session, acme.tenant_id, "render", "queued")
        _add_job(session, acme.tenant_id, "render", "succeeded")
        session.commit()
        assert unfinished_work(session, acme.tenant_id, up_to=10) == 3
        assert unfinished_work(session, acme.tenant_id, up_to=2) == 2  # enough to answer "is the limit reached"
        session.execute(text("SET LOCAL enable_seqscan = off"))  # these tables are tiny: ask for the best index plan
        compiled = _UNFINISHED_WORK.compile(session.get_bind())
        params = {**compiled.params, "tenant_id": acme.tenant_id, "up_to": 20}
        plan = "\n".join(row[0] for row in session.connection().exec_driver_sql("EXPLAIN " + compiled.string, params))
    assert "ix_jobs_tenant_quota" in plan, plan
    assert "renders" not in plan, plan


def test_training_over_the_job_quota_is_429_and_creates_nothing(session_factory, acme):
    with session_factory() as session:
        session.get(Tenant, acme.tenant_id).max_concurrent_jobs = 0
        session.commit()
    concept = create_concept(acme)
    assert acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (__import__("io").BytesIO(png_bytes()),
                     "a.png")}).status_code == 201
    response = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3})
    assert response.status_code == 429, response.json
    assert response.json["error"]["code"] == "quota_exceeded"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(
            Job.tenant_id == acme.tenant_id, Job.kind == "train")) == 0


def test_succeed_meters_steps_and_renders_once(session_factory, acme):
    with session_factory() as session:
        train = _add_job(session, acme.tenant_id, "train", "running")
        render = _add_job(session, acme.tenant_id, "render", "running")
        canceled = _add_job(session, acme.tenant_id, "render", "canceled")
        session.commit()
        assert jobs.succeed(session, train.id, {"steps_done": 5})
        assert not jobs.succeed(session, train.id, {"steps_done": 5})  # a second delivery
        assert jobs.succeed(session, render.id, {})
        assert not jobs.succeed(session, canceled.id, {})  # never succeeded: not billed
    rows = sorted(_usage_rows(session_factory, acme.tenant_id), key=lambda r: r[0])
    assert rows == [("renders", 1, render.id), ("training_steps", 5, train.id)]


def test_usage_endpoint_sums_per_kind_and_day_in_range(session_factory, acme, globex):
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with session_factory() as session:
        for days_ago, kind, quantity in [(0, "renders", 1), (0, "renders", 1), (0, "training_steps", 30),
                                         (2, "training_steps", 10), (40, "renders", 9)]:
            session.add(UsageRecord(tenant_id=acme.tenant_id, kind=kind, quantity=quantity,
                                    created_at=today - timedelta(days=days_ago)))
        session.add(UsageRecord(tenant_id=globex.tenant_id, kind="renders", quantity=100, created_at=today))
        session.commit()
    start = (today - timedelta(days=7)).date().isoformat()
    end = today.date().isoformat()
    response = acme.get(f"/v1/usage?start={start}&end={end}")
    assert response.status_code == 200, response.json
    assert response.json["totals"] == {"renders": 2, "training_steps": 40}
    assert response.json["days"] == [
        {"date": (today - timedelta(days=2)).date().isoformat(), "kind": "training_steps", "quantity": 10},
        {"date": end, "kind": "renders", "quantity": 2},
        {"date": end, "kind": "training_steps", "quantity": 30},
    ]
    default_range = acme.get("/v1/usage")  # the last 30 days
    assert default_range.json["totals"] == {"renders": 2, "training_steps": 40}
    assert acme.get(f"/v1/usage?start={end}&end={start}").status_code == 400
    bad = acme.get("/v1/usage?start=yesterday")
    assert bad.status_code == 400 and bad.json["error"]["field"] == "start"
