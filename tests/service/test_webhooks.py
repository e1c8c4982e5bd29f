"""Webhooks: registration (SSRF refusals, the secret shown once, rotation), events recorded with the
job's state change, signed deliveries to a real HTTP receiver on 127.0.0.1, retries under the same
webhook-id with backoff, and the delivery log through the API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from api.app import create_app
from api.jobs import service as jobs
from api.models import Job, WebhookDelivery, WebhookEndpoint, WebhookSecret, utcnow
from api.webhooks import service as webhooks
from workers.webhooks import deliver_webhook, relay_webhooks

from .conftest import create_concept, make_tenant


class Receiver:
    """An HTTP server on 127.0.0.1 that records each request and answers the next status in
    `statuses` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?x=1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (Standard Webhooks): HMAC-SHA256 over id.timestamp.body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def private_ok(settings, session_factory, store, broker):
    """An app whose operator allows loopback targets (the receiver runs on 127.0.0.1)."""
    return create_app(settings.with_overrides(webhooks_allow_private=True, webhook_backoff_seconds=10),
                      session_factory=session_factory, store=store, publisher=broker.publisher)


@pytest.fixture
def tenant(private_ok, session_factory):
    return make_tenant(session_factory, private_ok, "hooks")


def _register(tc, url: str, events: list[str] | None = None) -> dict:
    response = tc.post("/v1/webhooks", json={"url": url, "events": events or ["job.succeeded", "job.failed"]})
    assert response.status_code == 201, response.json
    return response.json


class _Runtime:
    def __init__(self, settings, session_factory) -> None:
        self.settings = settings
        self.session_factory = session_factory


@pytest.fixture
def rt(private_ok, session_factory):
    return _Runtime(private_ok.extensions["omnipersona"].settings, session_factory)


def _finished_job(session_factory, tenant_id: uuid.UUID, state: str = "succeeded") -> uuid.UUID:
    with session_factory() as session:
        job = jobs.create_job(session, tenant_id, "render", None, {"render_id": str(uuid.uuid4())})
        session.commit()
        if state == "succeeded":
            assert jobs.succeed(session, job.id, {"ok": True})
        else:
            assert jobs.fail(session, job.id, "boom")
        return job.id


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[fd00:ec2::254]/",
    "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "ftp://example.com/", "http://user:pw@example.com/",
    "not a url",
])
def test_private_and_malformed_targets_are_refused(acme, session_factory, url):
    response = acme.post("/v1/webhooks", json={"url": url, "events": ["job.succeeded"]})
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == "url"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0


def test_bad_events_are_refused_naming_the_field(tenant, receiver):
    for events, field in (([], "events"), (["job.exploded"], "events.0"), ("job.failed", "events")):
        response = tenant.post("/v1/webhooks", json={"url": receiver.url, "events": events})
        assert response.status_code == 400
        assert response.json["error"]["field"] == field
    response = tenant.post("/v1/webhooks", json={"url": receiver.url, "events": ["batch.done"], "extra": 1})
    assert response.status_code == 400 and response.json["error"]["field"] == "extra"


def test_secret_is_shown_once_and_rotates(tenant, receiver):
    first = _register(tenant, receiver.url)
    assert first["secret"].startswith("whsec_") and len(base64.b64decode(first["secret"][6:])) == 32
    second = _register(tenant, receiver.url, ["batch.done"])
    assert second["secret"] is None
    assert tenant.get(f"/v1/webhooks/{first['id']}").json["secret"] is None
    listed = tenant.get("/v1/webhooks").json["webhooks"]
    assert [w["id"] for w in listed] == [first["id"], second["id"]]
    rotated = tenant.post("/v1/webhooks/secret/rotate").json["secret"]
    assert rotated.startswith("whsec_") and rotated != first["secret"]


def test_job_event_is_delivered_signed_to_a_real_receiver(tenant, receiver, session_factory, rt):
    secret = _register(tenant, receiver.url)["secret"]
    job_id = _finished_job(session_factory, tenant.tenant_id)
    sent: list[uuid.UUID] = []
    assert relay_webhooks(rt, sent.append) == 1
    assert deliver_webhook(rt, sent[0], lambda *_: pytest.fail("no retry expected")) == "succeeded"
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert verify(secret, headers, body)
    assert headers["webhook-id"] == f"msg_{sent[0].hex}"
    assert json.loads(body)["type"] == "job.succeeded"
    assert json.loads(body)["data"]["job_id"] == str(job_id)
    # A second message for the same delivery sends nothing.
    assert deliver_webhook(rt, sent[0], lambda *_: None) == "skipped"
    assert relay_webhooks(rt, sent.append) == 0
    assert len(receiver.requests) == 1


def test_failing_receiver_is_retried_with_the_same_id_and_backoff(tenant, session_factory, rt):
    flaky = Receiver([500, 503])
    try:
        secret = _register(tenant, flaky.url)["secret"]
        _finished_job(session_factory, tenant.tenant_id, "failed")
        due: list[uuid.UUID] = []
        relay_webhooks(rt, due.append)
        retries: list[tuple[uuid.UUID, int]] = []
        assert deliver_webhook(rt, due[0], lambda i, c: retries.append((i, c))) == "pending"
        # Not due yet: neither the relay nor an early message sends it again.
        assert relay_webhooks(rt, due.append) == 0
        assert deliver_webhook(rt, due[0], lambda *_: None) == "skipped"
        for _ in range(2):
            with session_factory() as session:
                row = session.get(WebhookDelivery, due[0])
                row.next_attempt_at = webhooks.utcnow()  # the countdown has passed
                session.commit()
            deliver_webhook(rt, due[0], lambda i, c: retries.append((i, c)))
        assert [c for _, c in retries] == [10, 20]  # exponential backoff, one countdown per failure
        assert [h["webhook-id"] for h, _ in flaky.requests] == [f"msg_{due[0].hex}"] * 3
        assert all(verify(secret, h, b) for h, b in flaky.requests)
        hook_id = tenant.get("/v1/webhooks").json["webhooks"][0]["id"]
        log = tenant.get(f"/v1/webhooks/{hook_id}/deliveries").json
        assert log["total"] == 1
        delivery = log["deliveries"][0]
        assert delivery["state"] == "succeeded" and delivery["attempts"] == 3
        assert [a["status"] for a in delivery["log"]] == [500, 503, 200]
        assert delivery["event"] == "job.failed"
        one = tenant.get(f"/v1/webhooks/{hook_id}/deliveries/{delivery['id']}")
        assert one.status_code == 200 and one.json["id"] == delivery["id"]
    finally:
        flaky.stop()


def test_delivery_gives_up_after_max_attempts(tenant, session_factory, rt):
    rt.settings = rt.settings.with_overrides(webhook_max_attempts=2)
    down = Receiver([500, 500, 500])
    try:
        _register(tenant, down.url)
        _finished_job(session_factory, tenant.tenant_id)
        due: list[uuid.UUID] = []
        relay_webhooks(rt, due.append)
        assert deliver_webhook(rt, due[0], lambda *_: None) == "pending"
        with session_factory() as session:
            session.get(WebhookDelivery, due[0]).next_attempt_at = webhooks.utcnow()
            session.commit()
        assert deliver_webhook(rt, due[0], lambda *_: pytest.fail("no retry after the last attempt")) == "failed"
        assert len(down.requests) == 2
    finally:
        down.stop()


def test_events_only_for_subscribed_endpoints_and_not_without_a_state_change(tenant, receiver, session_factory):
    _register(tenant, receiver.url, ["job.failed"])
    job_id = _finished_job(session_factory, tenant.tenant_id, "succeeded")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        assert not jobs.fail(session, job_id, "late")  # already finished: no change, no event
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    _finished_job(session_factory, tenant.tenant_id, "failed")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


def test_canceling_a_job_emits_job_canceled(tenant, receiver, session_factory):
    _register(tenant, receiver.url, ["job.canceled"])
    concept = create_concept(tenant)
    with session_factory() as session:
        job = jobs.create_job(session, tenant.tenant_id, "render", uuid.UUID(concept["id"]), {})
        session.commit()
        job_id = job.id
    assert tenant.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    with session_factory() as session:
        rows = session.scalars(select(WebhookDelivery)).all()
        assert [r.event for r in rows] == ["job.canceled"]
        assert rows[0].payload["data"]["job_id"] == str(job_id)
        assert session.get(Job, job_id).state == "canceled"


def test_another_tenants_webhooks_are_not_found(tenant, receiver, private_ok, session_factory):
    hook = _register(tenant, receiver.url)
    other = make_tenant(session_factory, private_ok, "other")
    assert other.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert other.get(f"/v1/webhooks/{hook['id']}/deliveries").status_code == 404
    assert other.client.delete(f"/v1/webhooks/{hook['id']}",
                               headers={"Authorization": f"Bearer {other.api_key}"}).status_code == 404
    assert other.get("/v1/webhooks").json["webhooks"] == []
    assert tenant.client.delete(f"/v1/webhooks/{hook['id']}",
                                headers={"Authorization": f"Bearer {tenant.api_key}"}).status_code == 204
    assert tenant.get(f"/v1/webhooks/{hook['id']}").status_code == 404


# -- PATCH /v1/webhooks/<id> ----------------------------------------------------------------------
def _patch(tc, path: str, body: object):
    return tc.client.patch(path, json=body, headers={"Authorization": f"Bearer {tc.api_key}"})


def _endpoint_row(session_factory, hook_id: str) -> tuple[str, list[str], bool]:
    with session_factory() as session:
        row = session.get(WebhookEndpoint, uuid.UUID(hook_id))
        return row.url, list(row.events), row.enabled


def test_patch_changes_url_events_and_enabled(tenant, receiver, session_factory):
    hook = _register(tenant, receiver.url, ["job.failed"])
    path = f"/v1/webhooks/{hook['id']}"
    changed = _patch(tenant, path, {"events": ["job.succeeded", "job.succeeded", "batch.done"]})
    assert changed.status_code == 200, changed.json
    assert changed.json["events"] == ["job.succeeded", "batch.done"] and changed.json["secret"] is None
    new_url = receiver.url.replace("/hooks?x=1", "/moved")
    assert _patch(tenant, path, {"url": new_url}).json["url"] == new_url
    _finished_job(session_factory, tenant.tenant_id, "succeeded")  # now subscribed: recorded
    assert _patch(tenant, path, {"enabled": False}).json["enabled"] is False
    _finished_job(session_factory, tenant.tenant_id, "succeeded")  # paused: not recorded
    assert tenant.get(path).json == {**hook, "url": new_url, "events": ["job.succeeded", "batch.done"],
                                     "enabled": False, "secret": None}
    with session_factory() as session:
        events = session.scalars(select(WebhookDelivery.event)).all()
    assert events == ["job.succeeded"]


@pytest.mark.parametrize("body, field", [
    ({}, "body"), ({"url": None}, "url"), ({"events": []}, "events"), ({"events": ["job.exploded"]}, "events.0"),
    ({"enabled": "yes"}, "enabled"), ({"secret": "x"}, "secret"), ({"url": "ftp://example.com/"}, "url"),
])
def test_bad_patches_are_400_naming_the_field_and_change_nothing(tenant, receiver, session_factory, body, field):
    hook = _register(tenant, receiver.url)
    before = _endpoint_row(session_factory, hook["id"])
    response = _patch(tenant, f"/v1/webhooks/{hook['id']}", body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert _endpoint_row(session_factory, hook["id"]) == before


def test_patch_checks_the_new_url_like_registration(tenant, receiver, session_factory, app):
    """On an app whose operator does not allow private targets (the default), the same key may
    not move an endpoint to a loopback, private or metadata address."""
    hook = _register(tenant, receiver.url)
    strict = type(tenant)(app.test_client(), tenant.tenant_id, tenant.api_key)
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"):
        response = _patch(strict, f"/v1/webhooks/{hook['id']}", {"url": url})
        assert response.status_code == 400 and response.json["error"]["field"] == "url", url
    assert _endpoint_row(session_factory, hook["id"])[0] == receiver.url


def test_patch_of_another_tenants_webhook_is_404(tenant, receiver, private_ok, session_factory):
    hook = _register(tenant, receiver.url)
    other = make_tenant(session_factory, private_ok, "other")
    for hook_id in (hook["id"], str(uuid.uuid4()), "not-a-uuid"):
        assert _patch(other, f"/v1/webhooks/{hook_id}", {"enabled": False}).status_code == 404
    assert _endpoint_row(session_factory, hook["id"])[2] is True


# -- secret rotation with a grace period ----------------------------------------------------------
def _deliver_one(rt, session_factory, tenant_id) -> None:
    """A finished job's event, relayed and delivered once (to the test's receiver)."""
    _finished_job(session_factory, tenant_id)
    sent: list[uuid.UUID] = []
    assert relay_webhooks(rt, sent.append) == 1
    assert deliver_webhook(rt, sent[0], lambda *_: pytest.fail("no retry expected")) == "succeeded"


def test_after_rotation_deliveries_are_signed_with_both_secrets_until_the_grace_ends(
        tenant, receiver, session_factory, rt):
    old = _register(tenant, receiver.url)["secret"]
    rotated = tenant.post("/v1/webhooks/secret/rotate")
    assert rotated.status_code == 200
    new = rotated.json["secret"]
    assert new != old and rotated.json["previous_secret_valid_until"] is not None

    _deliver_one(rt, session_factory, tenant.tenant_id)
    headers, body = receiver.requests[-1]
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret, signature in zip((new, old), signatures, strict=True):  # the new one first
        assert verify(secret, {**headers, "webhook-signature": signature}, body)

    with session_factory() as session:  # the grace period is over
        row = session.scalars(select(WebhookSecret).where(WebhookSecret.tenant_id == tenant.tenant_id)).one()
        row.previous_valid_until = utcnow() - timedelta(seconds=1)
        session.commit()
    _deliver_one(rt, session_factory, tenant.tenant_id)
    headers, body = receiver.requests[-1]
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert verify(new, headers, body) and not verify(old, headers, body)


def test_a_second_rotation_keeps_only_the_secret_it_replaced(tenant, receiver, session_factory, rt):
    first = _register(tenant, receiver.url)["secret"]
    second = tenant.post("/v1/webhooks/secret/rotate").json["secret"]
    third = tenant.post("/v1/webhooks/secret/rotate").json["secret"]
    _deliver_one(rt, session_factory, tenant.tenant_id)
    headers, body = receiver.requests[-1]
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert verify(third, {**headers, "webhook-signature": signatures[0]}, body)
    assert verify(second, {**headers, "webhook-signature": signatures[1]}, body)
    assert not verify(first, headers, body)


def test_without_a_grace_period_the_old_secret_stops_at_once(session_factory, acme):
    with session_factory() as session:
        webhooks.ensure_secret(session, acme.tenant_id)
        row = webhooks.rotate_secret(session, acme.tenant_id, grace_seconds=0)
        session.commit()
        assert (row.previous_secret, row.previous_valid_until) == (None, None)
        assert " " not in webhooks.signature_header(row, "msg_1", 0, b"{}")
