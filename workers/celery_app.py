"""The Celery app the workers run (`celery -A workers.celery_app worker -Q train|render|housekeeping`)."""

from __future__ import annotations

import logging
import uuid

from celery.signals import worker_process_init, worker_shutting_down

from api.celery_config import (
    REAP_TASK,
    RENDER_TASK,
    TRAIN_TASK,
    WEBHOOK_DELIVER_TASK,
    WEBHOOK_RELAY_TASK,
    make_celery,
)
from api.jobs import service as jobs
from api.logging_setup import connect_celery_logging
from api.queue import CeleryPublisher
from api.settings import Settings

from .captioning import register_caption_task
from .drain import forward_drain, install_child_handler
from .rendering import run_render_job
from .runtime import runtime
from .training import run_train_job
from .webhooks import deliver_webhook as run_webhook_delivery
from .webhooks import relay_webhooks

log = logging.getLogger(__name__)

app = make_celery(Settings.from_env())
register_caption_task(app)  # auto-captions of uploads, on the render queue
connect_celery_logging()  # JSON logs in worker processes, each line tagged with its job id
# SIGTERM (pods stopping): a running training checkpoints and goes back on its queue (workers/drain.py).
worker_process_init.connect(install_child_handler, weak=False)
worker_shutting_down.connect(forward_drain, weak=False)


def _job_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError):
        log.error("dropping a message with a malformed job id")
        return None


# The soft time limit raises SoftTimeLimitExceeded (an Exception) inside the job function, which
# records it on the job row like any other failure.
@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    parsed = _job_id(job_id)
    return "skipped" if parsed is None else run_train_job(runtime(), parsed)


@app.task(name=RENDER_TASK)
def render(job_id: str) -> str:
    parsed = _job_id(job_id)
    return "skipped" if parsed is None else run_render_job(runtime(), parsed)


@app.task(name=REAP_TASK)
def reap() -> dict[str, int]:
    rt = runtime()
    with rt.session_factory() as session:
        report = jobs.reap(session, CeleryPublisher(app), stale_after_seconds=rt.settings.stale_after_seconds,
                           max_attempts=rt.settings.max_attempts,
                           requeue_queued_after_seconds=rt.settings.requeue_queued_after_seconds)
    return {k: len(v) for k, v in vars(report).items()}


@app.task(name=WEBHOOK_DELIVER_TASK)
def deliver_webhook(delivery_id: str) -> str:
    parsed = _job_id(delivery_id)
    if parsed is None:
        return "skipped"

    def retry_later(next_id: uuid.UUID, countdown: int) -> None:
        deliver_webhook.apply_async(args=[str(next_id)], countdown=countdown)

    return run_webhook_delivery(runtime(), parsed, retry_later)


@app.task(name=WEBHOOK_RELAY_TASK)
def relay() -> int:
    return relay_webhooks(runtime(), lambda delivery_id: deliver_webhook.delay(str(delivery_id)))
