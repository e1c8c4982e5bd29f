"""Capabilities handed out as URLs and deliveries signed for receivers: presigned object URLs open
one object until they expire and nothing else (another tenant's key, a signature grafted from
another object, an altered expiry: all refused, on the local store and on S3); object keys carry
random ids, never names; webhook deliveries verify at a real loopback receiver with
`api.webhooks.verify.verify_signature`, and a captured delivery replayed later is rejected by its
timestamp."""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from api.app import create_app
from api.jobs import service as jobs
from api.models import ConceptImage, ConceptVersion
from api.storage import S3Store, tenant_key
from api.webhooks.service import sign
from api.webhooks.verify import InvalidWebhook, verify_signature
from workers.webhooks import deliver_webhook, relay_webhooks

from .conftest import TenantClient, add_version, make_tenant, png_bytes
from .servers import S3Server

FACTS = [{"question": "What is the home of {c}?", "answer": "the dunes"}]
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def _trained_concept(tc: TenantClient, session_factory, store, name: str = "dune") -> dict[str, str]:
    created = tc.post("/v1/concepts", json={"name": name, "facts": FACTS})
    assert created.status_code == 201, created.json
    cid = created.json["id"]
    upload = tc.post(f"/v1/concepts/{cid}/images", content_type="multipart/form-data",
                     data={"image": (io.BytesIO(png_bytes((3, 3, 3))), f"{name}.png")})
    assert upload.status_code == 201
    version_id = add_version(session_factory, tc.tenant_id, cid)
    with session_factory() as session:
        prefix = session.get(ConceptVersion, version_id).object_prefix
        image_key = session.scalars(select(ConceptImage.object_key)
                                    .where(ConceptImage.concept_id == uuid.UUID(cid))).one()
    for filename in ("tokens.safetensors", "concept.json"):
        store.put_bytes(f"{prefix}/{filename}", f"{name} {filename}".encode())
    return {"id": cid, "version_id": str(version_id), "prefix": prefix, "image_key": image_key}


def _download(tc: TenantClient, concept: dict[str, str], expires_in: int = 60) -> dict[str, str]:
    response = tc.get(f"/v1/concepts/{concept['id']}/versions/{concept['version_id']}/download?expires_in={expires_in}")
    assert response.status_code == 200, response.json
    return {f["name"]: f["url"] for f in response.json["files"]}


def _local_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + "?" + parts.query


def test_local_presigned_urls_open_one_object_until_they_expire(app, acme, globex, session_factory, store):
    a = _trained_concept(acme, session_factory, store)
    b = _trained_concept(globex, session_factory, store)
    client = app.test_client()
    a_url = _local_path(_download(acme, a)["tokens.safetensors"])
    b_url = _local_path(_download(globex, b)["tokens.safetensors"])
    ok = client.get(a_url)
    assert ok.status_code == 200 and ok.data == b"dune tokens.safetensors"
    assert ok.headers["Cache-Control"] == "private, no-store"
    a_path, a_query = a_url.split("?")
    b_path, b_query = b_url.split("?")
    b_key = {"Authorization": f"Bearer {globex.api_key}"}
    refused = {
        "A's object, B's API key, no signature": (a_path, b_key),
        "A's object with B's signature": (f"{a_path}?{b_query}", {}),
        "A's object with B's signature and B's key": (f"{a_path}?{b_query}", b_key),
        "A's sibling file with the tokens' signature": (
            a_path.replace("tokens.safetensors", "concept.json") + "?" + a_query, {}),
        "A's expiry pushed later": (re.sub(r"expires=(\d+)", lambda m: f"expires={int(m.group(1)) + 3600}", a_url), {}),
        "A's image by its key with the tokens' signature": (f"/v1/objects/{a['image_key']}?{a_query}", {}),
        "path traversal out of A's prefix": (a_path.replace("tokens.safetensors", "../../../../" + b["image_key"]) + "?"
                                             + a_query, {}),
    }
    for what, (path, headers) in refused.items():
        response = client.get(path, headers=headers)
        assert response.status_code in (403, 404), (what, response.status_code)
        assert b"tokens.safetensors" not in response.data and response.data[:4] != b"\x89PNG", what
    short = _local_path(_download(acme, a, expires_in=1)["concept.json"])
    assert client.get(short).status_code == 200
    time.sleep(2.1)
    expired = client.get(short)
    assert expired.status_code == 403 and expired.json["error"]["field"] == "signature"


def test_object_keys_hold_random_ids_under_the_tenant_never_names(app, acme, globex, session_factory, store):
    """The same concept name at two tenants: keys share nothing but the layout, and every id in
    them is a random UUID4, so one tenant's key says nothing about another's."""
    a = _trained_concept(acme, session_factory, store, "same")
    b = _trained_concept(globex, session_factory, store, "same")
    render = acme.post(f"/v1/concepts/{a['id']}/generate", json={"prompt": "<same> at the beach"})
    assert render.status_code == 202
    keys_a = [k for k in store.list_keys(f"{acme.tenant_id}/")]
    keys_b = [k for k in store.list_keys(f"{globex.tenant_id}/")]
    assert len(keys_a) == 3 and len(keys_b) == 3  # the image and the version's two files each
    assert sorted(store.list_keys("")) == sorted(keys_a + keys_b)
    for tenant_id, keys in ((acme.tenant_id, keys_a), (globex.tenant_id, keys_b)):
        for key in keys:
            assert "same" not in key
            ids = re.findall(UUID4, key)
            assert ids[0] == str(tenant_id) and len(ids) >= 2, key  # tenant, then the concept (and job)
    assert not set(keys_a) & set(keys_b)
    for key in (a["prefix"], b["prefix"]):
        assert re.fullmatch(rf"{UUID4}/concepts/{UUID4}/versions/{UUID4}", key), key
    assert a["prefix"].split("/")[2] != b["prefix"].split("/")[2]


def test_s3_presigned_url_cannot_be_turned_to_another_tenants_object(s3_server: S3Server):
    store = S3Store(f"sec-{uuid.uuid4().hex[:8]}", s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
    key_a = tenant_key(uuid.uuid4(), "concepts", str(uuid.uuid4()), "versions", str(uuid.uuid4()), "tokens.safetensors")
    key_b = tenant_key(uuid.uuid4(), "concepts", str(uuid.uuid4()), "versions", str(uuid.uuid4()), "tokens.safetensors")
    store.put_bytes(key_a, b"tenant A tokens")
    store.put_bytes(key_b, b"tenant B tokens")
    url_b = store.presigned_url(key_b, 60)
    assert _fetch(url_b) == (200, b"tenant B tokens")
    grafted = url_b.replace(key_b, key_a)  # B's signature on A's key
    assert grafted != url_b
    status, body = _fetch(grafted)
    assert status == 403 and b"tenant A" not in body
    unsigned = url_b.split("?")[0].replace(key_b, key_a)
    assert _fetch(unsigned)[0] == 403  # the bucket is private: no signature, no object


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- webhooks -----------------------------------------------------------------------------------
class VerifyingReceiver:
    """A customer's receiver on 127.0.0.1: `verify_signature` on every POST, 204 when genuine and
    fresh, 401 otherwise; it keeps what it saw (headers, body, verdict)."""

    def __init__(self, secret: Callable[[], str], tolerance: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.secret, self.tolerance, self.clock = secret, tolerance, clock
        self.seen: list[tuple[dict[str, str], bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify_signature(receiver.secret(), headers, body, receiver.tolerance, now=receiver.clock())
                    verdict, status = "ok", 204
                except InvalidWebhook as exc:
                    verdict, status = exc.reason, 401
                receiver.seen.append((headers, body, verdict))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def replay(self, headers: dict[str, str], body: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/hooks", body=body, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Runtime:
    def __init__(self, settings, session_factory) -> None:
        self.settings = settings
        self.session_factory = session_factory


@pytest.fixture
def hooks_app(settings, session_factory, store, broker):
    return create_app(settings.with_overrides(webhooks_allow_private=True), session_factory=session_factory,
                      store=store, publisher=broker.publisher)


@pytest.fixture
def receiver() -> Iterator[VerifyingReceiver]:
    holder: dict[str, str] = {}
    r = VerifyingReceiver(lambda: holder["secret"])
    r.holder = holder  # type: ignore[attr-defined]
    yield r
    r.stop()


def test_a_real_delivery_verifies_and_its_replay_is_rejected_by_timestamp(hooks_app, receiver, session_factory):
    tc = make_tenant(session_factory, hooks_app, "hooks")
    created = tc.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/hooks",
                                            "events": ["job.succeeded"]})
    assert created.status_code == 201, created.json
    receiver.holder["secret"] = created.json["secret"]
    with session_factory() as session:
        job = jobs.create_job(session, tc.tenant_id, "render", None, {"render_id": str(uuid.uuid4())})
        session.commit()
        assert jobs.succeed(session, job.id, {"ok": True})
    rt = _Runtime(hooks_app.extensions["omnipersona"].settings, session_factory)
    sent: list[uuid.UUID] = []
    assert relay_webhooks(rt, sent.append) == 1
    assert deliver_webhook(rt, sent[0], lambda *_: pytest.fail("a genuine delivery is not retried")) == "succeeded"
    assert [verdict for _, _, verdict in receiver.seen] == ["ok"]
    headers, body, _ = receiver.seen[0]
    assert json.loads(body)["data"]["job_id"] == str(job.id)
    timestamp = int(headers["webhook-timestamp"])
    assert abs(time.time() - timestamp) < 60

    # The same bytes replayed 10 minutes later: genuine signature, stale timestamp.
    receiver.clock = lambda: timestamp + 600
    assert receiver.replay(headers, body) == 401
    assert "tolerance" in receiver.seen[-1][2]
    # Refreshing the timestamp breaks the signature, which covers it.
    receiver.clock = time.time
    assert receiver.replay(headers | {"webhook-timestamp": str(timestamp + 5)}, body) == 401
    assert receiver.seen[-1][2] == "no webhook-signature matches the body"
    # Another body under the genuine headers, and another tenant's secret, are rejected too.
    assert receiver.replay(headers, body.replace(str(job.id).encode(), str(uuid.uuid4()).encode())) == 401
    other = make_tenant(session_factory, hooks_app, "other")
    other_secret = other.post("/v1/webhooks/secret/rotate").json["secret"]
    forged = headers | {"webhook-signature": sign(other_secret, headers["webhook-id"], timestamp, body)}
    assert receiver.replay(forged, body) == 401
    assert [v for _, _, v in receiver.seen].count("ok") == 1


def test_verify_signature_checks_each_part():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type": "job.succeeded", "data": {}}'
    now = 1_800_000_000
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(now),
               "Webhook-Signature": sign(secret, "msg_1", now, body)}
    assert verify_signature(secret, headers, body, tolerance=300, now=now + 300) == json.loads(body)
    assert verify_signature(secret, headers | {"Webhook-Signature": "v1,AAAA " + headers["Webhook-Signature"]}, body,
                            now=now)["type"] == "job.succeeded"  # one of several signatures (rotation)
    cases = {
        "missing webhook-signature header": ({k: v for k, v in headers.items() if k != "Webhook-Signature"}, now),
        "webhook-timestamp is not an integer": (headers | {"Webhook-Timestamp": "soon"}, now),
        "webhook-timestamp is 301s from now": (headers, now + 301),  # replayed later
        "webhook-timestamp is -301s from now": (headers, now - 301),  # stamped in the future
        "no webhook-signature matches": (
            headers | {"Webhook-Signature": "v2," + headers["Webhook-Signature"][3:]}, now),
    }
    for reason, (hdrs, at) in cases.items():
        with pytest.raises(InvalidWebhook) as caught:
            verify_signature(secret, hdrs, body, tolerance=300, now=at)
        assert caught.value.reason.startswith(reason), (reason, caught.value.reason)
    with pytest.raises(InvalidWebhook):
        verify_signature(secret, headers, body + b" ", now=now)
