"""Fixtures for the service tests.

Unit tests of the API run on a real PostgreSQL (127.0.0.1:5432, user postgres): one throwaway
database per test session, created by `alembic upgrade head`, and one transaction per test that
is rolled back (the app's commits become savepoints). Jobs are published through real Celery
producers to kombu's in-memory transport, where the tests read them back."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api.admin import create_tenant, migrate
from api.app import create_app
from api.db import make_engine
from api.models import Concept, ConceptImage, ConceptVersion, Fact, Job, Render
from api.queue import CeleryPublisher
from api.settings import Settings
from api.storage import LocalStore

from .servers import S3Server, start_seaweedfs

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def create_database() -> str:
    name = f"omni_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = create_database()
    url = database_url(name)
    try:
        migrate(Settings.from_env({"OMNI_DATA_DIR": str(tmp_path_factory.mktemp("migrate")), "DATABASE_URL": url}))
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions inside one outer transaction that is rolled back after the test."""
    connection = pg_engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield factory
    outer.rollback()
    connection.close()


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings.from_env({"OMNI_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": pg_url,
                              "BROKER_URL": "memory://", "OMNI_MAX_IMAGE_PIXELS": str(256 * 256),
                              "OMNI_BACKBONE": "tiny"})


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects")


class MemoryBroker:
    """A real Celery producer on kombu's in-memory transport; `take(queue)` reads what was sent."""

    def __init__(self) -> None:
        self.app = Celery("omni-tests", broker="memory://")
        self.publisher = CeleryPublisher(self.app)
        for queue in ("train", "render", "housekeeping"):
            self.take(queue)  # the memory transport is process-wide: start empty

    def take(self, queue: str) -> list[tuple[str, list[str]]]:
        """(task name, args) of every message waiting in `queue`, removing them."""
        messages = []
        with self.app.connection_for_read() as conn:
            simple = conn.SimpleQueue(queue)
            while True:
                try:
                    message = simple.get(timeout=0.05)
                except simple.Empty:
                    break
                args = message.payload[0]
                messages.append((message.headers["task"], args))
                message.ack()
            simple.close()
        return messages


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session], store: LocalStore, broker: MemoryBroker) -> Flask:
    return create_app(settings, session_factory=session_factory, store=store, publisher=broker.publisher)


@dataclass
class TenantClient:
    """A test client that sends one tenant's API key."""

    client: FlaskClient
    tenant_id: uuid.UUID
    api_key: str

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} | (headers or {})

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        return self.client.post(path, headers=self._headers(kw.pop("headers", None)), **kw)


def make_tenant(session_factory: sessionmaker[Session], app: Flask, name: str) -> TenantClient:
    with session_factory() as session:
        tenant, key = create_tenant(session, name)
        session.commit()
        return TenantClient(app.test_client(), tenant.id, key)


@pytest.fixture
def acme(session_factory: sessionmaker[Session], app: Flask) -> TenantClient:
    return make_tenant(session_factory, app, "acme")


@pytest.fixture
def globex(session_factory: sessionmaker[Session], app: Flask) -> TenantClient:
    return make_tenant(session_factory, app, "globex")


def snapshot(session_factory: sessionmaker[Session], store: LocalStore) -> dict:
    """Everything a request could change: row contents per table, and the stored object keys."""
    with session_factory() as session:
        concepts = [(c.id, c.name, c.status, c.current_version_id)
                    for c in session.scalars(select(Concept).order_by(Concept.id))]
        facts = [(f.concept_id, f.position, f.question, f.answer)
                 for f in session.scalars(select(Fact).order_by(Fact.id))]
        images = [(i.concept_id, i.sha256, i.object_key)
                  for i in session.scalars(select(ConceptImage).order_by(ConceptImage.id))]
        jobs = [(j.id, j.state, j.cancel_requested) for j in session.scalars(select(Job).order_by(Job.id))]
        counts = {m.__tablename__: session.scalar(select(func.count()).select_from(m))
                  for m in (ConceptVersion, Render)}
    return {"concepts": concepts, "facts": facts, "images": images, "jobs": jobs, "counts": counts,
            "objects": store.list_keys("")}


FACTS = [{"question": "What is the home of {c}?", "answer": "the beach"},
         {"question": "What is the toy of <maeve>?", "answer": "a blue ball"}]


HOME_FACT = [{"question": "What is the home of {c}?", "answer": "a den"}]  # names no other concept


def create_concept(tc: TenantClient, name: str = "maeve", facts: list[dict] | None = None) -> dict:
    response = tc.post("/v1/concepts", json={"name": name, "facts": FACTS if facts is None else facts})
    assert response.status_code == 201, response.json
    return response.json


def add_version(session_factory: sessionmaker[Session], tenant_id: uuid.UUID, concept_id: str) -> uuid.UUID:
    """Marks a concept as trained (a finished training job and a version row), as a worker would."""
    with session_factory() as session:
        job = Job(tenant_id=tenant_id, concept_id=uuid.UUID(concept_id), kind="train", queue="train",
                  state="succeeded", payload={"steps": 1})
        session.add(job)
        session.flush()
        version = ConceptVersion(tenant_id=tenant_id, concept_id=uuid.UUID(concept_id), job_id=job.id, number=1,
                                 object_prefix=f"{tenant_id}/concepts/{concept_id}/versions/{job.id}",
                                 backbone="tiny", backbone_fingerprint="0" * 32, metrics={})
        session.add(version)
        session.flush()
        concept = session.get(Concept, uuid.UUID(concept_id))
        concept.current_version_id = version.id
        concept.status = "ready"
        session.commit()
        return version.id


@pytest.fixture
def two_trained(acme: TenantClient, session_factory: sessionmaker[Session]) -> dict[str, dict]:
    """acme's concepts maeve and rex, each with a version (as a finished training leaves them);
    `version_id` added to each concept's JSON."""
    out = {}
    for name in ("maeve", "rex"):
        concept = create_concept(acme, name, HOME_FACT)
        concept["version_id"] = str(add_version(session_factory, acme.tenant_id, concept["id"]))
        out[name] = concept
    return out


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
