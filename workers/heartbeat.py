"""A thread that keeps a running job's heartbeat fresh; the reaper treats a stale heartbeat as a
dead worker."""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from api.jobs import service as jobs

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, session_factory: sessionmaker[Session], job_id: uuid.UUID, every_seconds: float) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                with self.session_factory() as session:
                    jobs.heartbeat(session, self.job_id)
            except Exception as exc:  # a missed beat is retried on the next tick
                log.warning("heartbeat for job %s failed: %s", self.job_id, type(exc).__name__)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_seconds + 5)
