"""Job rows are the truth: conditional claim (double delivery runs once), attempts, and the
reaper that recovers jobs of dead workers and jobs that were never published."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from api.celery_config import make_celery
from api.jobs import service as jobs
from api.models import Concept, Job, utcnow
from api.queue import CeleryPublisher
from api.settings import Settings
from infra.local_stack import free_port


def _concept(session, tenant_id) -> Concept:
    name = f"c{uuid.uuid4().hex[:8]}"
    concept = Concept(tenant_id=tenant_id, name=name, identifier=f"<{name}>", status="training")
    session.add(concept)
    session.flush()
    return concept


def _job(session, tenant_id, concept, **values) -> Job:
    job = jobs.create_job(session, tenant_id, "train", concept.id, {"steps": 3})
    for k, v in values.items():
        setattr(job, k, v)
    session.commit()
    return job


def test_claim_once_then_skip(acme, session_factory):
    with session_factory() as session:
        job = _job(session, acme.tenant_id, _concept(session, acme.tenant_id))
        claimed = jobs.claim(session, job.id, max_attempts=3)
        assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
        assert claimed.heartbeat_at is not None and claimed.started_at is not None
        assert jobs.claim(session, job.id, max_attempts=3) is None  # a second delivery
        assert session.get(Job, job.id).attempts == 1


def test_claim_fails_a_job_out_of_attempts(acme, session_factory):
    with session_factory() as session:
        concept = _concept(session, acme.tenant_id)
        job = _job(session, acme.tenant_id, concept, attempts=3)
        assert jobs.claim(session, job.id, max_attempts=3) is None
        session.refresh(job)
        assert job.state == "failed" and "3 attempts" in job.error
        assert session.get(Concept, concept.id).status == "draft"


def test_progress_and_finish(acme, session_factory):
    with session_factory() as session:
        job = _job(session, acme.tenant_id, _concept(session, acme.tenant_id))
        jobs.claim(session, job.id, 3)
        jobs.record_progress(session, job.id, 0.5, [{"step": 1}])
        jobs.record_progress(session, job.id, 1.0, [{"step": 2}])
        assert session.get(Job, job.id).progress_history == [{"step": 1}, {"step": 2}]
        assert jobs.succeed(session, job.id, {"ok": True})
        assert not jobs.fail(session, job.id, "late failure")  # finished jobs stay finished
        session.refresh(job)
        assert (job.state, job.result, job.error, job.progress) == ("succeeded", {"ok": True}, None, 1.0)


def test_reaper_requeues_stale_fails_exhausted_and_republishes(acme, session_factory, broker):
    now = utcnow()
    with session_factory() as session:
        def concept() -> Concept:
            return _concept(session, acme.tenant_id)

        stale = _job(session, acme.tenant_id, concept(), state="running", attempts=1,
                     heartbeat_at=now - timedelta(seconds=600), published_at=now - timedelta(seconds=900))
        exhausted = _job(session, acme.tenant_id, concept(), state="running", attempts=3,
                         heartbeat_at=now - timedelta(seconds=600))
        alive = _job(session, acme.tenant_id, concept(), state="running", attempts=1,
                     heartbeat_at=now - timedelta(seconds=5))
        unpublished = _job(session, acme.tenant_id, concept())  # the broker was down at submit time
        fresh = _job(session, acme.tenant_id, concept(), published_at=now)
        report = jobs.reap(session, broker.publisher, stale_after_seconds=120, max_attempts=3,
                           requeue_queued_after_seconds=300, now=now)
        assert report.requeued == [stale.id] and report.failed == [exhausted.id]
        assert sorted(report.republished) == sorted([stale.id, unpublished.id])
        for job in (stale, exhausted, alive, unpublished, fresh):
            session.refresh(job)
        assert stale.state == "queued" and "no heartbeat" in stale.error and stale.published_at is not None
        assert exhausted.state == "failed" and "attempt 3 of 3" in exhausted.error
        assert (alive.state, fresh.state) == ("running", "queued")
    assert sorted(args[0] for _, args in broker.take("train")) == sorted([str(stale.id), str(unpublished.id)])


def test_failed_publish_leaves_the_job_for_the_reaper(acme, session_factory, tmp_path):
    dead = Settings.from_env({"OMNI_DATA_DIR": str(tmp_path), "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with session_factory() as session:
        job = _job(session, acme.tenant_id, _concept(session, acme.tenant_id))
        assert not jobs.publish(session, job, CeleryPublisher(make_celery(dead)))
        assert session.get(Job, job.id).published_at is None


def test_queue_depth_counts_rows(acme, session_factory):
    with session_factory() as session:
        _job(session, acme.tenant_id, _concept(session, acme.tenant_id))
        _job(session, acme.tenant_id, _concept(session, acme.tenant_id), state="running")
        assert jobs.queue_depth(session) == {"train": {"queued": 1, "running": 1}}


def test_one_unfinished_training_job_per_concept(acme, session_factory):
    """The database refuses a second active training job even when two requests race past the
    API's check."""
    with session_factory() as session:
        concept = _concept(session, acme.tenant_id)
        _job(session, acme.tenant_id, concept, state="succeeded")
        _job(session, acme.tenant_id, concept, state="failed")
        _job(session, acme.tenant_id, concept, state="running")
        with pytest.raises(IntegrityError):
            _job(session, acme.tenant_id, concept)
        session.rollback()
        render = jobs.create_job(session, acme.tenant_id, "render", concept.id, {})
        session.commit()  # render jobs are not limited
        assert render.state == "queued"


def test_queue_stats_reuse_durations_until_they_expire(acme, session_factory):
    now = utcnow()
    clock = [100.0]
    stats = jobs.QueueStats(ttl=5.0, clock=lambda: clock[0])

    def finish(seconds: int, steps: int) -> None:
        with session_factory() as session:
            session.add(Job(tenant_id=acme.tenant_id, kind="train", queue="train", state="succeeded",
                            payload={"steps": steps}, started_at=now - timedelta(seconds=seconds),
                            finished_at=now))
            session.commit()

    finish(50, 100)
    with session_factory() as session:
        assert stats.durations(session, "train", 20) == [(50.0, 100)]
        finish(150, 300)
        clock[0] += 4.9  # within the ttl: the first reading, not the new job
        assert stats.durations(session, "train", 20) == [(50.0, 100)]
        assert jobs.QueueStats(ttl=0.0).durations(session, "train", 20) != [(50.0, 100)]  # fresh reads see it
        clock[0] += 0.2
        assert sorted(stats.durations(session, "train", 20)) == [(50.0, 100), (150.0, 300)]
        assert stats.durations(session, "render", 20) == []  # per queue


def test_queue_position_on_the_embedded_sqlite_database(tmp_path):
    """The ahead count is a row comparison on (created_at, id): its parameters must bind on
    SQLite (the embedded default) as on PostgreSQL, with ties on created_at broken by id."""
    from sqlalchemy.orm import Session

    from api.db import make_engine
    from api.models import Base, Tenant

    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        tenant = Tenant(name="solo")
        session.add(tenant)
        session.flush()
        now = utcnow()
        queued = [Job(tenant_id=tenant.id, kind="render", queue="render", state="queued", payload={},
                      created_at=now + timedelta(seconds=i // 2)) for i in range(4)]  # pairs share a time
        running = Job(tenant_id=tenant.id, kind="render", queue="render", state="running", payload={})
        session.add_all([*queued, running])
        session.commit()
        by_order = sorted(queued, key=lambda j: (j.created_at, j.id.hex))
        positions = [jobs.queue_position(session, j)["position"] for j in by_order]
        assert positions == [1, 2, 3, 4]
        assert jobs.queue_position(session, by_order[0])["running"] == 1
    engine.dispose()
