"""Job lifecycle, shared by the views (create, cancel), the tasks (claim, progress, heartbeat,
finish) and the reaper. State changes that race (claim, reaping) are conditional UPDATEs: the
row, not the broker, decides who runs a job."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
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


def claim(session: Session, job_id: uuid.UUID, max_attempts: int, *, takeover_after: float = 0.0) -> Job | None:
    """queued -> running, only if still queued: a second delivery of the same id gets None.
    A job that has used up its attempts is failed instead.

    With `takeover_after` > 0, a delivery that finds the job `running` watches its heartbeat for
    that long: a live owner beats (or finishes) meanwhile and this delivery steps aside; a silent
    one is dead (its pool process was killed and Celery redelivered the message, rejected on
    worker loss), and this delivery takes the job over as the next attempt, at once rather than
    after the reaper's stale window. The old attempt, if it was only frozen, sees `attempts` move
    past its own and stops (see `attempt_is_current`)."""
    job = session.get(Job, job_id)
    if job is not None and job.state == "running" and takeover_after > 0:
        return _take_over_if_silent(session, job, max_attempts, takeover_after)
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


def _take_over_if_silent(session: Session, job: Job, max_attempts: int, watch_seconds: float) -> Job | None:
    seen_beat, seen_attempts = job.heartbeat_at, job.attempts
    session.rollback()
    time.sleep(watch_seconds)
    row = session.execute(select(Job.state, Job.heartbeat_at, Job.attempts).where(Job.id == job.id)).first()
    session.rollback()
    if row is None or row.state != "running" or row.heartbeat_at != seen_beat or row.attempts != seen_attempts:
        return None  # the owner is alive (it beat), finished, or someone else took over
    reason = (f"worker lost: no heartbeat for {watch_seconds:.0f}s after redelivery "
              f"(attempt {seen_attempts} of {max_attempts})")
    if seen_attempts >= max_attempts:
        if _finish(session, job.id, "failed", error=reason):
            settle_concept_after(session, job)
        return None
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.state == "running", Job.attempts == seen_attempts,
                          Job.heartbeat_at == seen_beat)
        .values(attempts=Job.attempts + 1, started_at=now, heartbeat_at=now, error=None)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    log.warning("job %s taken over from a silent attempt %d", job.id, seen_attempts)
    session.refresh(job)
    return job


def attempt_is_current(session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether the attempt numbered `attempt` still owns the job (running, not taken over)."""
    row = session.execute(select(Job.state, Job.attempts).where(Job.id == job_id)).first()
    session.rollback()  # end the read transaction so the next poll sees new commits
    return row is not None and row.state == "running" and row.attempts == attempt


def requeue_after_failure(session: Session, job: Job, publisher: Publisher, *, attempt: int, max_attempts: int,
                          reason: str, backoff_seconds: float) -> float | None:
    """A transient failure (the object store or database unreachable): put the job back on its queue,
    delivered after an exponential backoff (`backoff_seconds` * 2^(attempt-1)), and return that
    delay; None when the attempts are used up (the caller fails the job) or it changed meanwhile."""
    if attempt >= max_attempts:
        return None
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.state == "running", Job.attempts == attempt)
        .values(state="queued", error=f"{reason[:ERROR_MAX_CHARS - 80]} (attempt {attempt} of {max_attempts}; "
                                       "retrying)", published_at=None, heartbeat_at=None)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    delay = backoff_seconds * 2 ** (attempt - 1)
    session.refresh(job)
    # Unpublished (the broker is down too) it stays queued with no published_at: the reaper sends it.
    if publisher.publish(job.id, job.kind, job.queue, countdown=delay):
        job.published_at = utcnow()
        session.commit()
    return delay


def heartbeat(session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(heartbeat_at=utcnow()))
    session.commit()


def record_progress(session: Session, job_id: uuid.UUID, progress: float,
                    entries: list[dict[str, Any]], attempt: int | None = None) -> None:
    """Only the attempt that owns the job writes: one the reaper or a takeover replaced (a frozen
    worker waking up) would otherwise mix its steps into the new attempt's history."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != "running" or (attempt is not None and job.attempts != attempt):
        session.rollback()
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
        job.keep_on_stop = False  # a cancel after "stop and keep" discards after all
        session.commit()
    session.refresh(job)
    return job


def request_stop_and_keep(session: Session, job: Job) -> Job:
    """"Stop and keep": a running training stops at its next step and records a version from the
    tokens it has; a queued one has no tokens yet and is canceled."""
    if job.kind != "train":
        raise Conflict("job", "only training jobs can be stopped and kept")
    if job.state in FINISHED_STATES:
        raise Conflict("state", f"job is already {job.state}")
    if job.state == "queued":
        return request_cancel(session, job)
    session.execute(update(Job).where(Job.id == job.id, Job.state == "running")
                    .values(cancel_requested=True, keep_on_stop=True))
    session.commit()
    session.refresh(job)
    return job


def request_save(session: Session, job: Job) -> Job:
    """"Save now": the running training saves its current tokens at its next step (a snapshot on
    the job). A counter, not a flag, so that two requests are two saves."""
    if job.kind != "train":
        raise Conflict("job", "only training jobs save tokens")
    if job.state != "running":
        raise Conflict("state", f"only a running training can save now; this job is {job.state}")
    session.execute(update(Job).where(Job.id == job.id).values(save_requests=Job.save_requests + 1))
    session.commit()
    session.refresh(job)
    return job


RETRYABLE_STATES = ("failed", "canceled")


def retry_job(session: Session, job: Job, publisher: Publisher) -> Job:
    """Run a failed or canceled job again. A training retry is a new job (`retry_of` the old one)
    with the same recipe, warm-starting from whatever version the concept has now; another kind of
    job (a render) is put back on its queue as it is, with its attempts reset."""
    if job.state not in RETRYABLE_STATES:
        raise Conflict("state", f"only a failed or canceled job can be retried; this one is {job.state}")
    if job.kind != "train":
        result = session.execute(
            update(Job).where(Job.id == job.id, Job.state.in_(RETRYABLE_STATES))
            .values(state="queued", attempts=0, cancel_requested=False, keep_on_stop=False, error=None,
                    result=None, progress=0.0, progress_history=[], started_at=None, heartbeat_at=None,
                    finished_at=None, published_at=None)
        )
        session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("state", "the job changed while being retried")
        session.refresh(job)
        publish(session, job, publisher)
        return job
    concept = session.get(Concept, job.concept_id) if job.concept_id else None
    if concept is None or concept.tenant_id != job.tenant_id:
        raise Conflict("concept", "the job's concept is gone")
    payload = {k: v for k, v in job.payload.items() if k != "init_version_id"}
    if payload.get("warm_start", True) and concept.current_version_id is not None:
        payload["init_version_id"] = str(concept.current_version_id)
    try:
        retried = create_job(session, job.tenant_id, "train", concept.id, payload)
        retried.retry_of_id = job.id
        concept.status = "training"
        session.commit()
    except IntegrityError as exc:  # another training of this concept started first
        session.rollback()
        raise Conflict("concept", "this concept is already training") from exc
    publish(session, retried, publisher)
    return retried


# A status read runs these on every poll: built once with bind parameters, so a read costs the
# round trips and not the construction and cache-key hashing of the same expressions again.
# Ahead: queued before this job (ties on created_at broken by id), as one row comparison so
# the count is a range of ix_jobs_queue_state_created.
_AHEAD = (Job.queue == bindparam("queue"), Job.state == "queued",
          tuple_(Job.created_at, Job.id) < tuple_(bindparam("created_at", type_=Job.created_at.type),
                                                  bindparam("job_id", type_=Job.id.type)))
_IS_RUNNING = (Job.queue == bindparam("queue")) & (Job.state == "running")
_RECENT_FINISHED = (
    select(Job.started_at, Job.finished_at, Job.payload)
    .where(Job.queue == bindparam("queue"), Job.state == "succeeded", Job.started_at.is_not(None),
           Job.finished_at.is_not(None))
    .order_by(Job.finished_at.desc()).limit(bindparam("recent")))
_COUNT_AHEAD = select(func.count()).select_from(Job).where(*_AHEAD)
# Two counts, each an index range (ix_jobs_queue_state_created), not a scan of the queue's history.
_COUNT_AHEAD_AND_RUNNING = select(_COUNT_AHEAD.scalar_subquery(),
                                  select(func.count()).select_from(Job).where(_IS_RUNNING).scalar_subquery())
_RUNNING = select(Job.payload, Job.progress).where(_IS_RUNNING)
_AHEAD_PAYLOADS = select(Job.payload).where(*_AHEAD)


class QueueStats:
    """The durations of each queue's last finished jobs, reused for `ttl` seconds (one per app).
    They change when a job finishes, not at the rate clients poll a status: a poll within `ttl`
    skips their query, a round trip in four, and an ETA is an estimate either way."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.clock = ttl, clock
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[float, int]]]] = {}

    def durations(self, session: Session, queue: str, recent: int) -> list[tuple[float, int]]:
        """(seconds, steps) of the queue's last `recent` succeeded jobs, newest first."""
        now = self.clock()
        cached = self._cache.get((queue, recent))
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        finished = session.execute(_RECENT_FINISHED, {"queue": queue, "recent": recent}).all()
        durations = [((f - s).total_seconds(), int(p.get("steps") or 0)) for s, f, p in finished]
        self._cache[(queue, recent)] = (now, durations)  # one assignment: safe across request threads
        return durations


def queue_position(session: Session, job: Job, recent: int = 20,
                   stats: QueueStats | None = None) -> dict[str, Any] | None:
    """Where a queued job stands: jobs queued before it in the same queue, jobs running there,
    and an ETA until it starts. Durations come from the queue's last `recent` finished jobs; for
    training, per step (so a long job ahead counts for more). Parallelism is taken to be the number
    of jobs running now (at least one): the API cannot see the workers. `stats` caches the
    durations (the app's, in a request); without it they are read fresh."""
    if job.state != "queued":
        return None
    # Jobs ahead are counted in the database, not loaded: a status read must not grow with the
    # queue (only a training ETA reads their step counts). Running jobs are few (one per worker).
    params = {"queue": job.queue, "job_id": job.id, "created_at": job.created_at}
    durations = (stats or QueueStats(ttl=0.0)).durations(session, job.queue, recent)
    if not durations:  # no ETA to make: both counts in one round trip
        ahead, running_count = session.execute(_COUNT_AHEAD_AND_RUNNING, params).one()
        return {"position": ahead + 1, "ahead": ahead, "running": running_count, "eta_seconds": None}
    ahead = session.scalar(_COUNT_AHEAD, params) or 0
    running = session.execute(_RUNNING, params).all()
    report: dict[str, Any] = {"position": ahead + 1, "ahead": ahead, "running": len(running),
                              "eta_seconds": None}
    mean_seconds = sum(d for d, _ in durations) / len(durations)
    total_steps = sum(n for _, n in durations)
    per_step = sum(d for d, _ in durations) / total_steps if job.kind == "train" and total_steps else None

    def expected(payload: dict[str, Any] | None) -> float:
        steps = int((payload or {}).get("steps") or 0)
        return per_step * steps if per_step is not None and steps else mean_seconds

    if per_step is None:
        work = mean_seconds * ahead
    else:
        work = sum(expected(payload) for payload in session.scalars(_AHEAD_PAYLOADS, params))
    work += sum(expected(payload) * (1.0 - (progress or 0.0)) for payload, progress in running)
    report["eta_seconds"] = round(work / max(1, len(running)), 2)
    return report


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
