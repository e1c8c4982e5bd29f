"""The pieces behind the fault promises, on the real PostgreSQL fixtures (one rolled-back
transaction per test): a redelivery's takeover of a silent job and attempt fencing, the requeue
with exponential backoff after an outage, what counts as an outage, and the statement retry
while the database is unreachable. The same promises over real processes: test_faults.py."""

from __future__ import annotations

import types
import uuid
from datetime import timedelta

import psycopg
import pytest
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api.admin import create_tenant
from api.db import is_disconnect, retry_on_disconnect
from api.jobs import service as jobs
from api.models import Job, utcnow
from api.storage import ObjectNotFound
from workers.faults import describe_transient

from .conftest import MemoryBroker


def _running_job(session_factory: sessionmaker[Session]) -> uuid.UUID:
    with session_factory() as session:
        tenant, _ = create_tenant(session, f"t{uuid.uuid4().hex[:8]}")
        session.commit()
        job = jobs.create_job(session, tenant.id, "render", None, {"render_id": str(uuid.uuid4())})
        session.commit()
        assert jobs.claim(session, job.id, max_attempts=3).attempts == 1
        return job.id


def _no_wait(monkeypatch: pytest.MonkeyPatch, during_watch=lambda: None) -> None:
    """The watch's sleep, replaced by whatever the owner does meanwhile."""
    monkeypatch.setattr(jobs, "time", types.SimpleNamespace(sleep=lambda seconds: during_watch()))


def test_a_redelivery_takes_over_a_silent_job_and_fences_the_old_attempt(session_factory, monkeypatch):
    job_id = _running_job(session_factory)
    _no_wait(monkeypatch)
    with session_factory() as session:
        taken = jobs.claim(session, job_id, max_attempts=3, takeover_after=3.0)
        assert taken is not None and (taken.state, taken.attempts, taken.error) == ("running", 2, None)
        assert not jobs.attempt_is_current(session, job_id, 1)
        assert jobs.attempt_is_current(session, job_id, 2)
        jobs.record_progress(session, job_id, 0.9, [{"step": 9}], attempt=1)  # the old attempt: ignored
        jobs.record_progress(session, job_id, 0.2, [{"step": 2}], attempt=2)
        job = session.get(Job, job_id, populate_existing=True)
        assert (job.progress, job.progress_history) == (0.2, [{"step": 2}])


def test_a_redelivery_steps_aside_while_the_owner_beats(session_factory, monkeypatch):
    job_id = _running_job(session_factory)

    def owner_beats() -> None:
        with session_factory() as other:
            other.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() + timedelta(seconds=1)))
            other.commit()

    _no_wait(monkeypatch, owner_beats)
    with session_factory() as session:
        assert jobs.claim(session, job_id, max_attempts=3, takeover_after=3.0) is None
        job = session.get(Job, job_id, populate_existing=True)
        assert (job.state, job.attempts) == ("running", 1)
    # Without takeover_after (the old behaviour) a running job is never claimed.
    with session_factory() as session:
        assert jobs.claim(session, job_id, max_attempts=3) is None


def test_a_silent_job_on_its_last_attempt_is_failed_not_taken_over(session_factory, monkeypatch):
    job_id = _running_job(session_factory)
    _no_wait(monkeypatch)
    with session_factory() as session:
        assert jobs.claim(session, job_id, max_attempts=1, takeover_after=3.0) is None
        job = session.get(Job, job_id, populate_existing=True)
        assert job.state == "failed" and job.attempts == 1
        assert job.error.startswith("worker lost: no heartbeat for 3s after redelivery (attempt 1 of 1)")


def test_an_outage_requeues_with_doubling_backoff_until_the_attempts_are_used(session_factory):
    job_id = _running_job(session_factory)
    broker = MemoryBroker()
    with session_factory() as session:
        job = session.get(Job, job_id)
        for attempt, expected in ((1, 5.0), (2, 10.0)):
            delay = jobs.requeue_after_failure(session, job, broker.publisher, attempt=attempt, max_attempts=3,
                                               reason="object store unreachable: X", backoff_seconds=5)
            assert delay == expected
            assert (job.state, job.attempts, job.heartbeat_at) == ("queued", attempt, None)
            assert job.error == f"object store unreachable: X (attempt {attempt} of 3; retrying)"
            assert job.published_at is not None
            assert broker.take("render") == [("workers.render", [str(job_id)])]
            assert jobs.claim(session, job_id, max_attempts=3).attempts == attempt + 1
        # The last attempt is not requeued: the worker fails the job with the reason.
        assert jobs.requeue_after_failure(session, job, broker.publisher, attempt=3, max_attempts=3,
                                          reason="object store unreachable: X", backoff_seconds=5) is None
        # A stale attempt (not the row's current one) cannot requeue it either.
        assert jobs.requeue_after_failure(session, job, broker.publisher, attempt=1, max_attempts=9,
                                          reason="late", backoff_seconds=5) is None
        assert session.get(Job, job_id, populate_existing=True).state == "running"
        assert broker.take("render") == []


def test_outages_are_told_apart_from_the_jobs_own_errors():
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket/key")
    assert describe_transient(unreachable).startswith("object store unreachable: EndpointConnectionError: ")
    assert describe_transient(ObjectNotFound("t/concepts/x.png")) is None
    assert describe_transient(ValueError("bad recipe")) is None
    dropped = OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    assert is_disconnect(dropped) and describe_transient(dropped) == "database unreachable: OperationalError"
    assert not is_disconnect(IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")))


class _Session:
    def __init__(self) -> None:
        self.rollbacks = 0

    def rollback(self) -> None:
        self.rollbacks += 1


def test_statements_are_retried_while_the_database_is_unreachable_and_only_then():
    session = _Session()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE jobs", {}, psycopg.OperationalError("server closed the connection"))
        return "written"

    assert retry_on_disconnect(session, flaky, first_wait=0.01) == "written"  # type: ignore[arg-type]
    assert (len(calls), session.rollbacks) == (3, 2)

    def constraint() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup"))

    calls.clear()
    with pytest.raises(IntegrityError):
        retry_on_disconnect(session, constraint, first_wait=0.01)  # type: ignore[arg-type]
    assert len(calls) == 1

    def down() -> None:
        raise OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))

    with pytest.raises(OperationalError):
        retry_on_disconnect(session, down, seconds=0.1, first_wait=0.02)  # type: ignore[arg-type]


def test_pool_pings_only_connections_that_sat_idle_and_replaces_dead_ones(pg_url, monkeypatch):
    """A connection back from a request moments ago is handed out without a ping (a status poll
    pays no extra round trip); one that sat idle is pinged, and if its server side is gone (a
    restart, an idle timeout) the pool replaces it instead of failing the request."""
    from sqlalchemy import text

    from api import db

    engine = db.make_engine(pg_url, pool_size=1, max_overflow=0)
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    try:
        with engine.connect() as conn:  # a new connection: no ping
            first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as conn:  # back a moment ago: no ping, same connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == first_pid
        assert pings == []
        with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        import time

        time.sleep(0.3)  # idle longer than the threshold: the next checkout pings, finds it dead
        with engine.connect() as conn:
            second_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert len(pings) == 1 and second_pid != first_pid
    finally:
        engine.dispose()
