"""Webhooks in the Standard Webhooks style.

Events are recorded as `WebhookDelivery` rows by `emit_event` inside the transaction that changes
the state they report (an outbox: no event without its change, no change without its event). The
relay (beat) hands due rows to the delivery task; a failed attempt is retried with exponential
backoff under the same `webhook-id`. Every attempt is signed
`v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>` with the tenant's `whsec_` secret.

Targets that resolve to loopback, private, link-local (cloud metadata), multicast or reserved
addresses are refused at registration and again at every delivery, and the connection goes to the
address that was checked (no second DNS lookup to rebind), unless the operator sets
`OMNI_WEBHOOKS_ALLOW_PRIVATE`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ..errors import ApiError
from ..models import Job, WebhookDelivery, WebhookEndpoint, WebhookSecret, utcnow
from ..settings import Settings
from .schemas import message_id

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_BACKOFF_SECONDS = 6 * 3600
ERROR_MAX_CHARS = 500
# A retry message may arrive a little before its row says it is due (clocks of two hosts).
CLAIM_SLACK = timedelta(seconds=5)
USER_AGENT = "OmniPersona-Webhooks/1"


# -- secrets and signatures ---------------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def ensure_secret(session: Session, tenant_id: uuid.UUID) -> str | None:
    """Creates the tenant's secret if it has none; returns it only when created now."""
    if session.scalars(select(WebhookSecret.id).where(WebhookSecret.tenant_id == tenant_id)).first() is not None:
        return None
    secret = new_secret()
    session.add(WebhookSecret(tenant_id=tenant_id, secret=secret))
    return secret


def rotate_secret(session: Session, tenant_id: uuid.UUID, grace_seconds: int) -> WebhookSecret:
    """A new secret replaces the old one. For `grace_seconds` deliveries carry a signature with
    each (the old one is kept as `previous_secret`), so a receiver can deploy the new secret
    without rejecting events meanwhile; a second rotation in that time drops the oldest."""
    row = session.scalars(select(WebhookSecret).where(WebhookSecret.tenant_id == tenant_id)
                          .with_for_update()).first()
    secret = new_secret()
    now = utcnow()
    if row is None:
        row = WebhookSecret(tenant_id=tenant_id, secret=secret, created_at=now)
        session.add(row)
    else:
        row.previous_secret = row.secret if grace_seconds > 0 else None
        row.previous_valid_until = now + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
        row.secret = secret
        row.created_at = now
    session.flush()
    return row


def signature_header(row: WebhookSecret, msg_id: str, timestamp: int, body: bytes,
                     now: datetime | None = None) -> str:
    """`webhook-signature`: the current secret's signature, then, during the grace period after a
    rotation, the previous secret's (space-separated, as Standard Webhooks allows)."""
    signatures = [sign(row.secret, msg_id, timestamp, body)]
    valid_until = row.previous_valid_until
    if row.previous_secret and valid_until is not None:
        if valid_until.tzinfo is None:  # SQLite hands back naive UTC
            valid_until = valid_until.replace(tzinfo=UTC)
        if (now or utcnow()) < valid_until:
            signatures.append(sign(row.previous_secret, msg_id, timestamp, body))
    return " ".join(signatures)


# -- target addresses ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP the connection goes to


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def resolve_target(url: str, allow_private: bool, field: str = "url") -> Target:
    """Parses and resolves a webhook URL; ApiError naming `field` when it may not be used."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ApiError(field, "is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise ApiError(field, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise ApiError(field, "must name a host")
    if parts.username or parts.password:
        raise ApiError(field, "may not contain credentials")
    if parts.fragment:
        raise ApiError(field, "may not contain a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ApiError(field, f"host {parts.hostname} does not resolve") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise ApiError(field, f"host {parts.hostname} does not resolve")
    if not allow_private:
        for address in addresses:
            if _refused(ipaddress.ip_address(address.split("%")[0])):
                raise ApiError(field, "resolves to a private, loopback, link-local or reserved address")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, addresses[0])


# -- endpoints ----------------------------------------------------------------------------------
def create_endpoint(session: Session, settings: Settings, tenant_id: uuid.UUID, url: str,
                    events: list[str]) -> tuple[WebhookEndpoint, str | None]:
    resolve_target(url, settings.webhooks_allow_private)
    endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, events=list(dict.fromkeys(events)), enabled=True)
    session.add(endpoint)
    secret = ensure_secret(session, tenant_id)
    session.commit()
    return endpoint, secret


def update_endpoint(session: Session, settings: Settings, endpoint: WebhookEndpoint, url: str | None,
                    events: list[str] | None, enabled: bool | None) -> WebhookEndpoint:
    """Changes the given fields; a new URL passes the same address checks as at registration
    (before anything is written). Deliveries already recorded keep going to the endpoint's URL
    as it is when they are sent."""
    if url is not None:
        resolve_target(url, settings.webhooks_allow_private)
        endpoint.url = url
    if events is not None:
        endpoint.events = list(dict.fromkeys(events))
    if enabled is not None:
        endpoint.enabled = enabled
    session.commit()
    return endpoint


# -- the outbox ---------------------------------------------------------------------------------
def emit_event(session: Session, tenant_id: uuid.UUID, event: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """Records one delivery per subscribed endpoint in the caller's transaction (not committed
    here: the caller's commit makes the state change and its events visible together)."""
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id,
                                                              WebhookEndpoint.enabled.is_(True))).all()
    now = utcnow()
    deliveries = []
    for endpoint in endpoints:
        if event not in endpoint.events:
            continue
        delivery = WebhookDelivery(id=uuid.uuid4(), tenant_id=tenant_id, endpoint_id=endpoint.id, event=event,
                                   state="pending", attempts=0, next_attempt_at=now, log=[], created_at=now)
        delivery.payload = {"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}
        session.add(delivery)
        deliveries.append(delivery)
    if deliveries:
        session.flush()
    return deliveries


def emit_job_event(session: Session, job_id: uuid.UUID, state: str) -> None:
    """`job.<state>` for a job that has just finished (called by jobs.service before its commit).
    Items of a batch send no event each: their batch reports them in `batch.done`."""
    job = session.get(Job, job_id)
    if job is None or job.batch_id is not None:
        return
    data: dict[str, Any] = {"job_id": str(job.id), "kind": job.kind, "state": state,
                            "concept_id": str(job.concept_id) if job.concept_id else None}
    if "render_id" in (job.payload or {}):
        data["render_id"] = job.payload["render_id"]
    emit_event(session, job.tenant_id, f"job.{state}", data)


# -- delivery -----------------------------------------------------------------------------------
def backoff_seconds(attempts: int, base: int) -> int:
    """Wait before attempt `attempts + 1`: base, 2 base, 4 base, ... at most 6 hours."""
    return min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address while verifying the certificate for the URL's host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(target: Target, headers: dict[str, str], body: bytes, timeout: float) -> int:
    """One POST to the checked address; redirects are not followed (they could point anywhere)."""
    if target.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPSConnection(target.address, target.host, target.port, timeout)
    else:
        conn = http.client.HTTPConnection(target.address, target.port, timeout=timeout)
    try:
        host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        conn.request("POST", target.path, body=body, headers=headers | {"Host": host_header})
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        conn.close()


@dataclass(frozen=True)
class DeliveryOutcome:
    state: str  # succeeded | pending (retry due) | failed | skipped (not ours to send now)
    status: int | None = None
    retry_in: int | None = None


def deliver(session: Session, settings: Settings, delivery_id: uuid.UUID) -> DeliveryOutcome:
    """One attempt: claim the row (pending -> sending), POST, record the outcome. A second message
    for the same row finds it claimed or finished and does nothing."""
    now = utcnow()
    claimed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending",
               or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at <= now + CLAIM_SLACK))
        .values(state="sending", attempts=WebhookDelivery.attempts + 1, next_attempt_at=now)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return DeliveryOutcome("skipped")
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    session.refresh(delivery)
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    secret = session.scalars(select(WebhookSecret).where(WebhookSecret.tenant_id == delivery.tenant_id)).first()
    status: int | None = None
    error: str | None = None
    started = time.monotonic()
    if endpoint is None or not endpoint.enabled or secret is None:
        error = "the endpoint was removed or disabled"
    else:
        msg_id = message_id(delivery)
        timestamp = int(time.time())
        body = encode_body(delivery.payload)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature_header(secret, msg_id, timestamp, body)}
        try:
            target = resolve_target(endpoint.url, settings.webhooks_allow_private)
            status = post(target, headers, body, settings.webhook_timeout_seconds)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except ApiError as exc:
            error = f"refused: {exc.message}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]
    duration_ms = int((time.monotonic() - started) * 1000)
    finished = utcnow()
    entry = {"attempt": delivery.attempts, "at": finished.isoformat().replace("+00:00", "Z"), "status": status,
             "error": error, "duration_ms": duration_ms}
    delivery.log = [*delivery.log, entry]  # a new list: JSON columns track assignment
    delivery.last_status = status
    delivery.last_error = error
    retry_in = None
    if error is None:
        delivery.state = "succeeded"
        delivery.delivered_at = finished
    elif endpoint is None or not endpoint.enabled or delivery.attempts >= settings.webhook_max_attempts:
        delivery.state = "failed"
    else:
        retry_in = backoff_seconds(delivery.attempts, settings.webhook_backoff_seconds)
        delivery.state = "pending"
        delivery.next_attempt_at = finished + timedelta(seconds=retry_in)
    session.commit()
    if error is not None:
        log.info("webhook delivery %s attempt %d: %s", delivery.id, delivery.attempts, error)
    return DeliveryOutcome(delivery.state, status, retry_in)


def due_deliveries(session: Session, *, stuck_after_seconds: int, limit: int = 500,
                   now: datetime | None = None) -> list[uuid.UUID]:
    """Deliveries to hand to the delivery task now: pending and due, and those left `sending` by a
    worker that died mid-attempt (put back to pending first)."""
    now = now or utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.state == "sending",
               WebhookDelivery.next_attempt_at < now - timedelta(seconds=stuck_after_seconds))
        .values(state="pending")
    )
    session.commit()
    ids = session.scalars(
        select(WebhookDelivery.id).where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ).all()
    session.rollback()
    return list(ids)
