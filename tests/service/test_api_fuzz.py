"""Schemathesis fuzzes every operation of `/v1/openapi.json` against the app (WSGI) on the real
PostgreSQL test database: no answer is a 5xx, and every answer conforms to the document (its
status is documented for the operation, its content type and headers are the documented ones,
its body matches the schema).

Requests carry a valid key of a tenant that owns a trained concept, a draft concept with a photo,
a job, a render, a batch and a webhook; most path parameters are swapped for those ids so the
generated bodies and queries reach the views' logic instead of stopping at 404. Bounded for CI:
few examples per operation, no deadline, derandomized (the same cases every run)."""

from __future__ import annotations

import io
import itertools
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from api.models import Tenant

from .conftest import TenantClient, add_version, create_concept, png_bytes

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
REAL_ID_EVERY = 4  # three cases in four use the seeded ids; the fourth keeps the generated ones (404 paths)


@dataclass
class World:
    api_key: str
    ids: dict[str, str]  # path parameter name -> an id the tenant owns


def _numeric_only_getaddrinfo(real: Any) -> Any:
    """Webhook URLs are resolved when registered; generated host names must not reach DNS."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real(host, port, *args[:2], flags=socket.AI_NUMERICHOST)

    return getaddrinfo


@pytest.fixture
def world(app: Flask, acme: TenantClient, session_factory: sessionmaker[Session],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(socket, "getaddrinfo", _numeric_only_getaddrinfo(socket.getaddrinfo))
    with session_factory() as session:  # limits high enough that 429 does not hide every later operation
        tenant = session.get(Tenant, acme.tenant_id)
        tenant.requests_per_minute, tenant.max_concurrent_jobs, tenant.max_concepts = 100_000, 10_000, 10_000
        session.commit()
    trained = create_concept(acme, "maeve")
    version_id = add_version(session_factory, acme.tenant_id, trained["id"])
    draft = acme.post("/v1/concepts", json={"name": "rex"}).json
    upload = acme.post(f"/v1/concepts/{draft['id']}/images", data={"image": (io.BytesIO(png_bytes()), "rex.png")},
                       content_type="multipart/form-data")
    assert upload.status_code == 201, upload.json
    render = acme.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve> at home"})
    assert render.status_code == 202, render.json
    batch = acme.post("/v1/batches", json={"prompts": ["{c} on a hill"], "concepts": ["maeve"]})
    assert batch.status_code == 202, batch.json
    webhook = acme.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook", "events": ["job.succeeded"]})
    assert webhook.status_code == 201, webhook.json
    me = acme.get("/v1/me").json
    yield World(acme.api_key, {
        "concept_id": trained["id"], "version_id": str(version_id), "image_id": upload.json["images"][0]["id"],
        "render_id": render.json["id"], "job_id": render.json["job_id"], "batch_id": batch.json["id"],
        "webhook_id": webhook.json["id"], "user_id": me["user_id"], "delivery_id": str(uuid.uuid4()),
    })


@pytest.fixture
def api_schema(app: Flask, world: World) -> Any:
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")
case_numbers = itertools.count()


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: Any, world: World) -> None:
    if next(case_numbers) % REAL_ID_EVERY:
        for name in case.path_parameters or {}:
            if name in world.ids:
                case.path_parameters[name] = world.ids[name]
    case.call_and_validate(headers={"Authorization": f"Bearer {world.api_key}"}, checks=CHECKS)
