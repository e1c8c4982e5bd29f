"""What a worker does when the infrastructure, not the job, fails: an object store or database
that cannot be reached is worth another attempt later (with exponential backoff); anything else
is the job's own failure. Also how long a delivery that finds its job `running` watches the
heartbeat before taking the job over from a dead pool process."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from api.db import is_disconnect, retry_on_disconnect
from api.jobs import service as jobs
from api.models import Job
from api.settings import Settings

from .runtime import WorkerRuntime

log = logging.getLogger(__name__)


def takeover_seconds(settings: Settings) -> float:
    """Two missed beats and a second: a live owner always beats within this."""
    return 2 * settings.heartbeat_seconds + 1.0


def is_store_unreachable(exc: BaseException) -> bool:
    """Connection refused / reset / timed out talking to S3 (botocore's connection errors, after
    its own quick retries). A missing object or a refused signature is not transient."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # local-store-only installs
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def describe_transient(exc: BaseException) -> str | None:
    """A short, clear reason when `exc` is an infrastructure outage; None for the job's own errors."""
    if is_store_unreachable(exc):
        return f"object store unreachable: {type(exc).__name__}: {exc}"
    if is_disconnect(exc):
        return f"database unreachable: {type(exc).__name__}"
    return None


def settle_failure(rt: WorkerRuntime, session: Session, job_id: uuid.UUID, attempt: int,
                   exc: BaseException) -> str:
    """Record a failed attempt: an outage puts the job back on its queue after a backoff while
    attempts remain ('retrying'); the last attempt, or any other error, fails the job with the
    reason ('failed'); an attempt that was replaced meanwhile writes nothing ('released').
    Statements are retried while the database is down."""
    settings = rt.settings
    session.rollback()
    reason = describe_transient(exc)
    job = retry_on_disconnect(session, lambda: session.get(Job, job_id, populate_existing=True),
                              seconds=settings.db_retry_seconds)
    if job is None:
        return "failed"
    if job.attempts != attempt:
        return "released"  # another attempt owns the job now: its outcome is not ours to write
    if reason is not None:
        delay = retry_on_disconnect(session, lambda: jobs.requeue_after_failure(
            session, job, rt.publisher(), attempt=attempt, max_attempts=settings.max_attempts, reason=reason,
            backoff_seconds=settings.retry_backoff_seconds), seconds=settings.db_retry_seconds)
        if delay is not None:
            log.warning("job %s attempt %d hit an outage; retrying in %.0fs: %s", job_id, attempt, delay, reason)
            return "retrying"
        error = f"gave up after {attempt} attempts: {reason}"
    else:
        error = f"{type(exc).__name__}: {exc}"
    retry_on_disconnect(session, lambda: jobs.fail(session, job_id, error), seconds=settings.db_retry_seconds)
    return "failed"
