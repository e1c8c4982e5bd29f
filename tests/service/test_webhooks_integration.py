"""Renders, batches and webhooks end to end: gunicorn, a render worker and a housekeeping worker
with beat (the webhook relay and retries) as real processes, PostgreSQL, Redis, SeaweedFS S3. A
prompt naming two concepts renders on the worker and its image downloads from its presigned S3
URL; a batch settles with its manifest in S3; the job and batch events reach a receiver on
127.0.0.1 that fails twice first, signed, retried under the same webhook-id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import random
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import torch
from PIL import Image

from api.admin import create_tenant, migrate
from api.client import OmniClient
from api.db import make_engine, make_session_factory, session_scope
from api.models import Concept, ConceptVersion, Job
from api.settings import Settings
from api.storage import make_store
from infra.local_stack import LocalStack

from .conftest import create_database, database_url, drop_database

pytestmark = pytest.mark.integration

TIMEOUT = 120.0


class FlakyReceiver:
    """Answers 500 to the first `failures` requests of each webhook-id, then 200; keeps them all."""

    def __init__(self, failures: int) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append((headers, body))
                    seen = sum(1 for h, _ in receiver.requests if h["webhook-id"] == headers["webhook-id"])
                self.send_response(500 if seen <= failures else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def events(self) -> dict[str, list[tuple[dict[str, str], dict[str, Any], bytes]]]:
        """Requests per webhook-id, in arrival order: headers, parsed body, raw body."""
        by_id: dict[str, list[tuple[dict[str, str], dict[str, Any], bytes]]] = {}
        with self.lock:
            for headers, body in self.requests:
                by_id.setdefault(headers["webhook-id"], []).append((headers, json.loads(body), body))
        return by_id


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server) -> Iterator[dict[str, Any]]:
    redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    db_name = create_database()
    workdir = tmp_path_factory.mktemp("hooks-stack")
    env = dict(os.environ) | {
        "OMNI_DATA_DIR": str(workdir / "data"), "DATABASE_URL": database_url(db_name),
        "BROKER_URL": f"redis://127.0.0.1:6379/{random.randint(1, 15)}",
        "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_BUCKET": f"omni-{uuid.uuid4().hex[:10]}",
        "S3_ACCESS_KEY_ID": s3_server.access_key, "S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "OMNI_BACKBONE": "tiny", "OMNI_HEARTBEAT_SECONDS": "1", "OMNI_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1", "OMNI_REAP_EVERY_SECONDS": "5",
        # The receiver is on loopback; relay every second, retry after 1 s then 2 s.
        "OMNI_WEBHOOKS_ALLOW_PRIVATE": "1", "OMNI_WEBHOOK_RELAY_SECONDS": "1", "OMNI_WEBHOOK_BACKOFF_SECONDS": "1",
    }
    settings = Settings.from_env(env)
    migrate(settings)
    engine = make_engine(settings.database_url)
    processes = LocalStack(env, workdir / "logs")
    try:
        url = processes.start_api()
        workers = [processes.start_worker("render"),
                   processes.start_worker("housekeeping", beat_schedule=workdir / "celerybeat-schedule")]
        processes.wait_http(f"{url}/healthz", timeout=60)
        for worker in workers:
            processes.wait_log(worker, "ready.", timeout=90)
        yield {"url": url, "settings": settings, "engine": engine, "processes": processes}
    finally:
        processes.stop()
        engine.dispose()
        drop_database(db_name)


def _trained_concept(stack: dict[str, Any], tiny, tenant_id: uuid.UUID, client: OmniClient, name: str,
                     seed: int) -> None:
    """A concept with a version whose tokens are in S3, as the train worker would leave it."""
    from omnipersona.artifacts import META_FILE, TOKENS_FILE, save_concept
    from omnipersona.tokens import ConceptTokens

    concept = client.create_concept(name, [("What is the home of {c}?", "the beach")])
    tokens = ConceptTokens(name, tiny.config.hidden_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tokens.embeddings.copy_(torch.randn(tokens.embeddings.shape, generator=g))
        tokens.head_rows.copy_(torch.randn(tokens.head_rows.shape, generator=g))
    folder = stack["settings"].data_dir / "made" / name
    save_concept(tokens, folder, tiny.fingerprint())
    store = make_store(stack["settings"])
    with session_scope(make_session_factory(stack["engine"])) as session:
        concept_id = uuid.UUID(concept["id"])
        job = Job(tenant_id=tenant_id, concept_id=concept_id, kind="train", queue="train", state="succeeded",
                  payload={})
        session.add(job)
        session.flush()
        prefix = f"{tenant_id}/concepts/{concept_id}/versions/{job.id}"
        for file in (TOKENS_FILE, META_FILE):
            store.put_bytes(f"{prefix}/{file}", (folder / file).read_bytes())
        version = ConceptVersion(tenant_id=tenant_id, concept_id=concept_id, job_id=job.id, number=1,
                                 object_prefix=prefix, backbone="tiny", backbone_fingerprint=tiny.fingerprint(),
                                 metrics={})
        session.add(version)
        session.flush()
        row = session.get(Concept, concept_id)
        row.current_version_id, row.status = version.id, "ready"


def _wait(check, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_renders_batches_and_webhooks_over_the_real_stack(stack: dict[str, Any], tiny):
    with session_scope(make_session_factory(stack["engine"])) as session:
        tenant, key = create_tenant(session, "hooked")
        tenant_id = tenant.id
    client = OmniClient(stack["url"], key)
    for i, name in enumerate(("maeve", "rex")):
        _trained_concept(stack, tiny, tenant_id, client, name, 10 + i)
    receiver = FlakyReceiver(failures=2)
    try:
        hook = client.request("POST", "/v1/webhooks", json_body={"url": receiver.url,
                                                                 "events": ["job.succeeded", "batch.done"]})
        assert hook.status == 201, hook.body
        secret = hook.body["secret"]

        render = client.request("POST", "/v1/renders/generate",
                                json_body={"prompt": "<maeve> and <rex> at the beach", "steps": 3, "size": 40})
        assert render.status == 202, render.body
        job = client.wait_job(render.body["job_id"], TIMEOUT)
        assert job["state"] == "succeeded", job["error"]
        done = client.render(render.body["id"])
        assert [c["identifier"] for c in done["concepts"]] == ["<maeve>", "<rex>"]
        with urllib.request.urlopen(done["images"][0]["url"], timeout=30) as response:  # presigned S3, no key
            image = Image.open(io.BytesIO(response.read()))
        assert image.size == (40, 40) and done["timings"]["total_s"] > 0

        batch = client.request("POST", "/v1/batches", json_body={"template": "<rex> with a {value}",
                                                                 "values": ["red ball", "blue cat", "green box"],
                                                                 "steps": 2})
        assert batch.status == 202, batch.body
        finished = _wait(lambda: (b := client.request("GET", f"/v1/batches/{batch.body['id']}").body)["state"] == "done"
                         and b, what="the batch")
        assert finished["counts"]["succeeded"] == 3
        with urllib.request.urlopen(finished["manifest_url"], timeout=30) as response:
            manifest = json.loads(response.read())
        assert [len(i["outputs"]) for i in manifest["items"]] == [1, 1, 1]

        def delivered() -> dict | None:
            events = receiver.events()
            final = {h[0][1]["type"]: h for h in events.values() if len(h) == 3}
            return final if {"job.succeeded", "batch.done"} <= set(final) else None

        final = _wait(delivered, what="both events delivered on their third attempt")
        assert final["job.succeeded"][0][1]["data"]["job_id"] == render.body["job_id"]
        assert final["batch.done"][0][1]["data"]["batch_id"] == batch.body["id"]
        assert len(receiver.events()) == 2  # batch items send no job events of their own
        for attempts in final.values():
            assert len({h["webhook-id"] for h, _, _ in attempts}) == 1
            assert all(_verify(secret, h, raw) for h, _, raw in attempts)
        log = client.request("GET", f"/v1/webhooks/{hook.body['id']}/deliveries").body
        assert sorted(d["attempts"] for d in log["deliveries"]) == [3, 3]
        assert all([a["status"] for a in d["log"]] == [500, 500, 200] for d in log["deliveries"])
        stack["processes"].check_alive()
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
