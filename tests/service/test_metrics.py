"""GET /metrics: request counts and latency, jobs by state, queue depth, job durations and render
latency from the jobs table; the optional scrape token; counts shared between gunicorn-style
processes through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from api.db import make_engine, make_session_factory
from api.models import Job, Render, utcnow

from .conftest import add_version, create_concept

REPO = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def add_job(session_factory: sessionmaker, tenant_id: uuid.UUID, kind: str, state: str, *,
            run_seconds: float | None = None, concept_id: str | None = None) -> uuid.UUID:
    now = utcnow()
    with session_factory() as session:
        job = Job(tenant_id=tenant_id, kind=kind, queue=kind, state=state, payload={},
                  concept_id=uuid.UUID(concept_id) if concept_id else None,
                  created_at=now - timedelta(seconds=(run_seconds or 0) + 1))
        if run_seconds is not None:
            job.started_at = now - timedelta(seconds=run_seconds)
            job.finished_at = now
        session.add(job)
        session.commit()
        return job.id


def test_jobs_by_state_queue_depth_and_durations(acme, globex, session_factory, app):
    concept = create_concept(acme)
    version_id = add_version(session_factory, acme.tenant_id, concept["id"])  # one succeeded train job, no timings
    add_job(session_factory, acme.tenant_id, "train", "succeeded", run_seconds=40.0)
    add_job(session_factory, globex.tenant_id, "train", "failed", run_seconds=2.0)
    add_job(session_factory, acme.tenant_id, "render", "queued")
    add_job(session_factory, globex.tenant_id, "render", "queued")
    add_job(session_factory, acme.tenant_id, "render", "running")
    render_job = add_job(session_factory, acme.tenant_id, "render", "succeeded", run_seconds=3.0,
                         concept_id=concept["id"])
    with session_factory() as session:
        session.add(Render(tenant_id=acme.tenant_id, concept_id=uuid.UUID(concept["id"]), version_id=version_id,
                           job_id=render_job, kind="generate", text="<maeve> at its home"))
        session.commit()

    got = scrape(app.test_client())
    assert got[("omni_jobs", (("kind", "train"), ("queue", "train"), ("state", "succeeded")))] == 2
    assert got[("omni_jobs", (("kind", "train"), ("queue", "train"), ("state", "failed")))] == 1
    assert got[("omni_jobs", (("kind", "render"), ("queue", "render"), ("state", "queued")))] == 2
    assert got[("omni_jobs", (("kind", "render"), ("queue", "render"), ("state", "running")))] == 1
    assert got[("omni_queue_depth", (("queue", "render"),))] == 2
    assert got[("omni_queue_depth", (("queue", "train"),))] == 0

    train_ok = (("kind", "train"), ("state", "succeeded"))
    assert got[("omni_job_duration_seconds_count", train_ok)] == 1  # the untimed job is left out
    assert abs(got[("omni_job_duration_seconds_sum", train_ok)] - 40.0) < 0.5
    assert got[("omni_job_duration_seconds_bucket", (*train_ok[:1], ("le", "30.0"), *train_ok[1:]))] == 0
    assert got[("omni_job_duration_seconds_bucket", (*train_ok[:1], ("le", "60.0"), *train_ok[1:]))] == 1
    assert got[("omni_job_duration_seconds_bucket", (("kind", "train"), ("le", "5.0"), ("state", "failed")))] == 1

    render = (("render_kind", "generate"),)
    assert got[("omni_render_latency_seconds_count", render)] == 1
    assert abs(got[("omni_render_latency_seconds_sum", render)] - 4.0) < 0.5  # requested 1 s before it started
    assert got[("omni_render_latency_seconds_bucket", (("le", "2.5"), *render))] == 0
    assert got[("omni_render_latency_seconds_bucket", (("le", "5.0"), *render))] == 1
    assert got[("omni_metrics_database_up", ())] == 1


def test_requests_are_counted_by_route_and_status(acme, app):
    client = app.test_client()
    job_route = (("endpoint", "/v1/jobs/<job_id>"), ("method", "GET"))
    before = scrape(client)
    missing = str(uuid.uuid4())
    assert acme.get(f"/v1/jobs/{missing}").status_code == 404
    assert acme.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/jobs").status_code == 401  # refused before any view ran: still counted
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    def grew(name: str, labels: tuple) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("omni_http_requests_total", (*job_route, ("status", "404"))) == 2
    assert grew("omni_http_requests_total", (("endpoint", "/v1/jobs"), ("method", "GET"), ("status", "401"))) == 1
    assert grew("omni_http_requests_total", (("endpoint", "<unmatched>"), ("method", "GET"), ("status", "404"))) == 1
    assert grew("omni_http_request_duration_seconds_count", job_route) == 2
    assert not any(missing in name or any(missing in v for _, v in labels) for name, labels in after)


def test_scrape_token_when_configured(settings, session_factory, store, broker):
    app = create_app(settings.with_overrides(metrics_token="scrape-secret"), session_factory=session_factory,
                     store=store, publisher=broker.publisher)
    client = app.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json["error"]["field"] == "Authorization"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_database_down_still_serves_request_metrics(settings, store, broker):
    dead = make_session_factory(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1"))
    app = create_app(settings, session_factory=dead, store=store, publisher=broker.publisher)
    got = scrape(app.test_client())
    assert got[("omni_metrics_database_up", ())] == 0
    assert not any(name.startswith("omni_jobs") for name, _ in got)


def test_request_counts_are_shared_between_processes(tmp_path, pg_url):
    """Two processes (as gunicorn workers are) write to one PROMETHEUS_MULTIPROC_DIR: the second
    one's /metrics includes the first one's requests."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DATABASE_URL": pg_url,
           "BROKER_URL": "memory://", "OMNI_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    worker = textwrap.dedent("""
        import sys
        from api.app import create_app
        client = create_app().test_client()
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        if sys.argv[1] == "scrape":
            sys.stdout.write(client.get("/metrics").get_data(as_text=True))
    """)
    subprocess.run([sys.executable, "-c", worker, "serve"], env=env, cwd=REPO, check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", worker, "scrape"], env=env, cwd=REPO, check=True, timeout=120,
                         capture_output=True, text=True).stdout
    got = samples(out)
    assert got[("omni_http_requests_total", (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")))] == 6
    assert got[("omni_metrics_database_up", ())] == 1


def test_durations_on_the_embedded_sqlite_default(tmp_path):
    """SQLite keeps timestamps as text: durations are computed with julianday there."""
    from api.admin import create_tenant, migrate
    from api.metrics import render_metrics
    from api.settings import Settings

    settings = Settings.from_env({"OMNI_DATA_DIR": str(tmp_path)})
    migrate(settings)
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session:
        tenant, _ = create_tenant(session, "acme")
        session.commit()
    add_job(factory, tenant.id, "train", "succeeded", run_seconds=90.0)
    add_job(factory, tenant.id, "train", "queued")
    with factory() as session:
        got = samples(render_metrics(session).decode())
    train_ok = (("kind", "train"), ("state", "succeeded"))
    assert got[("omni_job_duration_seconds_count", train_ok)] == 1
    assert abs(got[("omni_job_duration_seconds_sum", train_ok)] - 90.0) < 0.5
    assert got[("omni_job_duration_seconds_bucket", (("kind", "train"), ("le", "60.0"), ("state", "succeeded")))] == 0
    assert got[("omni_job_duration_seconds_bucket", (("kind", "train"), ("le", "120.0"), ("state", "succeeded")))] == 1
    assert got[("omni_queue_depth", (("queue", "train"),))] == 1
