"""Webhook delivery on the housekeeping queue: the relay (beat) hands due outbox rows to the
delivery task; a failed attempt schedules the next one with a countdown (exponential backoff).
A message delivered twice is harmless: `deliver` claims the row before sending."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from api.webhooks import service as webhooks

from .runtime import WorkerRuntime

log = logging.getLogger(__name__)

# A row left `sending` this long after its attempt began belongs to a worker that died mid-POST.
STUCK_FACTOR = 3


def deliver_webhook(rt: WorkerRuntime, delivery_id: uuid.UUID,
                    schedule_retry: Callable[[uuid.UUID, int], None]) -> str:
    with rt.session_factory() as session:
        outcome = webhooks.deliver(session, rt.settings, delivery_id)
    if outcome.retry_in is not None:
        schedule_retry(delivery_id, outcome.retry_in)
    return outcome.state


def relay_webhooks(rt: WorkerRuntime, send: Callable[[uuid.UUID], None]) -> int:
    """Hands every due delivery to the delivery task; returns how many."""
    with rt.session_factory() as session:
        due = webhooks.due_deliveries(session, stuck_after_seconds=rt.settings.webhook_timeout_seconds * STUCK_FACTOR)
    for delivery_id in due:
        send(delivery_id)
    if due:
        log.info("webhook relay: %d deliveries due", len(due))
    return len(due)
