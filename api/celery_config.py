"""The Celery app configuration shared by the API (which only publishes job ids) and the workers
(which register the tasks). Settings follow what long GPU tasks need: late acks, reject on a lost
worker, prefetch 1, visibility timeout above the hard time limit, JSON ids only."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .settings import Settings

TRAIN_TASK = "workers.train"
RENDER_TASK = "workers.render"
REAP_TASK = "workers.reap"
CAPTION_TASK = "workers.caption"  # message: an image id (captions are not job rows)
WEBHOOK_DELIVER_TASK = "workers.deliver_webhook"
WEBHOOK_RELAY_TASK = "workers.relay_webhooks"
TASK_BY_KIND = {"train": TRAIN_TASK, "render": RENDER_TASK, "caption": CAPTION_TASK}
QUEUE_BY_KIND = {"train": "train", "render": "render"}
HOUSEKEEPING_QUEUE = "housekeeping"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Above the hard time limit, or Redis redelivers a long task to a second worker mid-run.
        return {"visibility_timeout": settings.task_time_limit + 600, "socket_connect_timeout": 5,
                "socket_timeout": 30}
    if settings.broker_url.startswith("sqla+sqlite"):
        # The kombu SQLAlchemy transport hands these to create_engine; SQLite waits on locks.
        return {"connect_args": {"timeout": 30}}
    return {}


def make_celery(settings: Settings) -> Celery:
    app = Celery("omnipersona", broker=settings.broker_url)
    transport_options = broker_transport_options(settings)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the jobs table
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=HOUSEKEEPING_QUEUE,
        task_routes={
            TRAIN_TASK: {"queue": QUEUE_BY_KIND["train"]},
            RENDER_TASK: {"queue": QUEUE_BY_KIND["render"]},
            CAPTION_TASK: {"queue": QUEUE_BY_KIND["render"]},
            REAP_TASK: {"queue": HOUSEKEEPING_QUEUE},
            WEBHOOK_DELIVER_TASK: {"queue": HOUSEKEEPING_QUEUE},
            WEBHOOK_RELAY_TASK: {"queue": HOUSEKEEPING_QUEUE},
        },
        beat_schedule={
            "reap-stale-jobs": {"task": REAP_TASK, "schedule": float(settings.reap_every_seconds)},
            "relay-webhooks": {"task": WEBHOOK_RELAY_TASK, "schedule": float(settings.webhook_relay_seconds)},
        },
        worker_hijack_root_logger=False,
    )
    return app


def declare_queues(app: Celery) -> None:
    """Declare the queues before any process uses them. With the SQLite-backed broker this also
    creates its tables once, instead of by three processes racing on first use."""
    from kombu import Queue

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (*QUEUE_BY_KIND.values(), HOUSEKEEPING_QUEUE):
            Queue(name, channel=channel).declare()
