"""Publishing job ids to the broker. A failed publish never fails the request: the job row stays
`queued` with no `published_at`, and the reaper publishes it later (the broker may be down)."""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

from celery import Celery

from .celery_config import TASK_BY_KIND

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, job_id: uuid.UUID, kind: str, queue: str, countdown: float | None = None) -> bool: ...


class CeleryPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, job_id: uuid.UUID, kind: str, queue: str, countdown: float | None = None) -> bool:
        """`countdown`: deliver no sooner than this many seconds from now (a retry's backoff)."""
        try:
            self.app.send_task(TASK_BY_KIND[kind], args=[str(job_id)], queue=queue, retry=False,
                               countdown=countdown)
            return True
        except Exception as exc:  # the broker being down must not lose the job: the reaper retries
            log.warning("could not publish job %s to queue %s: %s", job_id, queue, type(exc).__name__)
            return False
