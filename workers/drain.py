"""Draining a worker on SIGTERM (a pod or container being stopped): the running training stops at
its next step, its checkpoint goes to the object store and the job goes back on its queue, where
another worker resumes it from that checkpoint, instead of running on until the grace period ends
and SIGKILL loses everything since the last periodic checkpoint.

Celery's prefork pool runs tasks in child processes, but only the main process (PID 1 in a
container) gets the SIGTERM. Its warm shutdown waits for running tasks; `worker_shutting_down`
(connected in celery_app) forwards the signal to the pool children, whose handler (installed at
`worker_process_init`) only raises a flag that `TrainingControls.should_stop` reads. A second
SIGTERM in a child restores the default action: Celery's cold shutdown still ends it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.jobs.service import publish
from api.models import Job
from api.queue import Publisher

log = logging.getLogger(__name__)

_requested = threading.Event()


def drain_requested() -> bool:
    return _requested.is_set()


def request_drain() -> None:
    _requested.set()


def clear_drain() -> None:
    """For tests, and for a pool child forked after a drain began (it starts clean)."""
    _requested.clear()


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    if _requested.is_set():  # the second one: leave it to the default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested.set()


def install_child_handler(**_: object) -> None:
    """In a pool child: SIGTERM asks the running job to drain instead of killing the process."""
    clear_drain()
    signal.signal(signal.SIGTERM, _on_sigterm)


def pool_child_pids() -> list[int]:
    """The prefork pool's processes, children of this (main) worker process."""
    from billiard.process import active_children

    return [child.pid for child in active_children() if child.pid]


def forward_drain(how: str = "Warm", children: Callable[[], Iterable[int]] = pool_child_pids, **_: object) -> None:
    """In the main worker process, when a warm shutdown begins: drain this process (solo and threads
    pools run tasks here) and every pool child. Cold shutdowns kill at once; nothing to forward."""
    if how != "Warm":
        return
    request_drain()
    for pid in children():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def requeue_for_drain(session: Session, job: Job, publisher: Publisher, *, attempt: int) -> bool:
    """Put a training stopped by a drain back on its queue. The attempt it used is given back (the
    job did nothing wrong), so draining pods never exhausts `max_attempts`. False when the job is
    no longer this attempt's (taken over), or the user asked to cancel or stop-and-keep it meanwhile
    (their request wins), and nothing was changed."""
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.state == "running", Job.attempts == attempt,
                          Job.cancel_requested.is_(False), Job.keep_on_stop.is_(False))
        .values(state="queued", attempts=attempt - 1, published_at=None, heartbeat_at=None)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(job)
    # Unpublished (the broker is down as well) it stays queued: the reaper sends it later.
    publish(session, job, publisher)
    log.warning("job %s drained at shutdown: checkpoint saved, back on queue %s", job.id, job.queue)
    return True
