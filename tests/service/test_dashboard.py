"""/admin over HTTP: who gets in (platform admins by cookie or bearer key; anyone else 404), what
the cookie is, what the pages show, and that cancel / retry need the CSRF token and change the
jobs. The browser test (test_dashboard_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.admin import create_tenant
from api.app import create_app
from api.dashboard.auth import COOKIE_NAME
from api.models import ApiKey, Job, utcnow
from api.usage.service import record_usage

from .conftest import TenantClient, snapshot

FAILURE_TEXT = "RuntimeError: CUDA out of memory while sampling step 7"


@dataclass
class Seeded:
    failed: uuid.UUID  # acme's failed render
    running: uuid.UUID  # globex's training at 42 %
    queued: uuid.UUID  # acme's queued render
    done: uuid.UUID  # acme's succeeded render


def make_platform_admin(session_factory: sessionmaker[Session], app: Flask, name: str = "ops") -> TenantClient:
    with session_factory() as session:
        tenant, key = create_tenant(session, name, role="platform_admin")
        session.commit()
        return TenantClient(app.test_client(), tenant.id, key)


@pytest.fixture
def ops(session_factory: sessionmaker[Session], app: Flask) -> TenantClient:
    return make_platform_admin(session_factory, app)


def add_job(session: Session, tenant_id: uuid.UUID, kind: str, state: str, **values: object) -> uuid.UUID:
    job = Job(tenant_id=tenant_id, kind=kind, queue=kind, state=state, payload={}, **values)
    session.add(job)
    session.flush()
    return job.id


def seed_jobs(session_factory: sessionmaker[Session], acme: TenantClient, globex: TenantClient) -> Seeded:
    now = utcnow()
    with session_factory() as session:
        seeded = Seeded(
            failed=add_job(session, acme.tenant_id, "render", "failed", attempts=3, error=FAILURE_TEXT,
                           started_at=now - timedelta(seconds=30), finished_at=now - timedelta(seconds=20)),
            running=add_job(session, globex.tenant_id, "train", "running", attempts=1, progress=0.42,
                            started_at=now - timedelta(seconds=60), heartbeat_at=now - timedelta(seconds=5)),
            queued=add_job(session, acme.tenant_id, "render", "queued"),
            done=add_job(session, acme.tenant_id, "render", "succeeded", progress=1.0, finished_at=now),
        )
        session.commit()
    return seeded


def login(client: FlaskClient, key: str) -> str:
    """Logs in with the form; returns the CSRF token of the page it lands on."""
    response = client.post("/admin/login", data={"api_key": key})
    assert response.status_code == 303 and response.headers["Location"] == "/admin"
    return csrf_of(client.get("/admin").get_data(as_text=True))


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def job_state(session_factory: sessionmaker[Session], job_id: uuid.UUID) -> tuple[str, int, bool, str | None]:
    with session_factory() as session:
        job = session.get(Job, job_id)
        return job.state, job.attempts, job.cancel_requested, job.error


def test_login_form_cookie_and_overview(app, ops, acme, globex, session_factory):
    seeded_at = time.monotonic()
    seeded = seed_jobs(session_factory, acme, globex)
    with session_factory() as session:
        record_usage(session, acme.tenant_id, "renders", 3)
        session.commit()
    client = app.test_client()
    anonymous = client.get("/admin")
    assert anonymous.status_code == 303 and anonymous.headers["Location"] == "/admin/login"
    assert 'name="api_key"' in client.get("/admin/login").get_data(as_text=True)

    wrong = client.post("/admin/login", data={"api_key": ops.api_key[:-3] + "xyz"})
    assert wrong.status_code == 401 and "Unknown or revoked API key" in wrong.get_data(as_text=True)
    member = client.post("/admin/login", data={"api_key": acme.api_key})  # a tenant admin, not a platform admin
    assert member.status_code == 404 and "Set-Cookie" not in member.headers

    response = client.post("/admin/login", data={"api_key": ops.api_key})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800", "Expires="):
        assert attribute in cookie
    assert ops.api_key not in cookie and ops.api_key.split("_", 2)[2] not in cookie

    page = client.get("/admin")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert FAILURE_TEXT in html
    running_row = re.search(rf'<tr id="job-{seeded.running}">(.*?)</tr>', html, re.S).group(1)
    assert "globex" in running_row and ">42%<" in running_row
    # the heartbeat was 5 s old when seeded; the page shows its age when rendered
    age = int(re.search(r">\s*(\d+) s\s*<", running_row).group(1))
    assert 5 <= age <= 6 + time.monotonic() - seeded_at
    assert re.search(r'<tr id="queue-render">.*?<td class="queued">1</td>.*?<td class="failed">1</td>', html, re.S)
    assert "no worker answered within 1s" in html
    assert "1 running job(s) with a heartbeat in the last 120 s." in html
    assert re.search(r"<td>acme</td><td>renders</td><td>3</td>", html)


def test_usage_table_says_when_nothing_is_recorded(app, ops):
    client = app.test_client()
    login(client, ops.api_key)
    assert "no usage recorded" in client.get("/admin").get_data(as_text=True)


def test_everyone_but_platform_admins_gets_404(app, ops, acme, globex, session_factory, store):
    seeded = seed_jobs(session_factory, acme, globex)
    before = snapshot(session_factory, store)
    for path in ("/admin", "/admin/jobs", "/admin/jobs?state=failed"):
        assert acme.get(path).status_code == 404
    assert acme.post(f"/admin/jobs/{seeded.failed}/retry").status_code == 404
    assert acme.post(f"/admin/jobs/{seeded.running}/cancel").status_code == 404
    assert snapshot(session_factory, store) == before
    assert ops.get("/admin").status_code == 200  # a script may use its bearer key instead of the cookie
    assert ops.get("/admin/jobs").status_code == 200


def test_buttons_need_the_session_csrf_token(app, ops, acme, globex, session_factory, broker):
    seeded = seed_jobs(session_factory, acme, globex)
    client = app.test_client()
    token = login(client, ops.api_key)
    for data in ({}, {"csrf_token": "forged"}):
        refused = client.post(f"/admin/jobs/{seeded.failed}/retry", data=data)
        assert refused.status_code == 403 and "stale or came from another site" in refused.get_data(as_text=True)
    assert job_state(session_factory, seeded.failed) == ("failed", 3, False, FAILURE_TEXT)
    assert broker.take("render") == []

    retried = client.post(f"/admin/jobs/{seeded.failed}/retry",
                          data={"csrf_token": token, "next": "/admin/jobs?state=queued"})
    assert retried.status_code == 303
    assert retried.headers["Location"] == f"/admin/jobs?state=queued&notice=retried&job={seeded.failed}"
    assert job_state(session_factory, seeded.failed) == ("queued", 0, False, None)
    assert broker.take("render") == [("workers.render", [str(seeded.failed)])]
    notice = client.get(retried.headers["Location"]).get_data(as_text=True)
    assert f"Retry queued as job {seeded.failed}." in notice

    stop = client.post(f"/admin/jobs/{seeded.running}/cancel", data={"csrf_token": token})
    assert stop.status_code == 303 and "notice=cancel_requested" in stop.headers["Location"]
    assert job_state(session_factory, seeded.running) == ("running", 1, True, None)  # stops at its next step
    now = client.post(f"/admin/jobs/{seeded.queued}/cancel", data={"csrf_token": token, "next": "//evil.example/"})
    assert now.headers["Location"] == f"/admin/jobs?notice=canceled&job={seeded.queued}"  # no open redirect
    assert job_state(session_factory, seeded.queued)[0] == "canceled"

    finished = client.post(f"/admin/jobs/{seeded.done}/cancel", data={"csrf_token": token})
    assert finished.status_code == 409 and "already succeeded" in finished.get_data(as_text=True)
    assert client.post(f"/admin/jobs/{uuid.uuid4()}/retry", data={"csrf_token": token}).status_code == 404


def test_job_list_filters(app, ops, acme, globex, session_factory):
    seeded = seed_jobs(session_factory, acme, globex)
    client = app.test_client()
    login(client, ops.api_key)

    def listed(query: str) -> set[str]:
        response = client.get(f"/admin/jobs?{query}")
        assert response.status_code == 200
        return set(re.findall(r'<tr id="job-([0-9a-f-]+)">', response.get_data(as_text=True)))

    assert listed("") == {str(j) for j in (seeded.failed, seeded.running, seeded.queued, seeded.done)}
    assert listed("state=failed") == {str(seeded.failed)}
    assert listed("tenant=globex") == {str(seeded.running)}
    assert listed("queue=render&tenant=acme&state=") == {str(seeded.failed), str(seeded.queued), str(seeded.done)}
    assert listed("kind=train&tenant=acme") == set()
    bad = client.get("/admin/jobs?state=sleeping")
    assert bad.status_code == 400 and "<h2>400</h2>" in bad.get_data(as_text=True)


def test_session_ends_on_logout_revocation_tampering_and_expiry(settings, session_factory, store, broker):
    app = create_app(settings, session_factory=session_factory, store=store, publisher=broker.publisher)
    ops = make_platform_admin(session_factory, app)
    client = app.test_client()

    token = login(client, ops.api_key)
    out = client.post("/admin/logout", data={"csrf_token": token})
    assert out.status_code == 303 and f"{COOKIE_NAME}=;" in out.headers["Set-Cookie"]
    assert client.get("/admin").headers["Location"] == "/admin/login"

    # expiry on an app with one-second sessions (the others keep the default, so a slow machine
    # cannot make them pass or fail by expiring first)
    short = create_app(settings.with_overrides(admin_session_seconds=1), session_factory=session_factory,
                       store=store, publisher=broker.publisher)
    short_client = short.test_client()
    login(short_client, ops.api_key)
    time.sleep(2.2)  # past the one-second lifetime: the signature's timestamp is checked, not only the browser
    assert short_client.get("/admin").status_code == 303

    login(client, ops.api_key)
    assert client.get("/admin").status_code == 200
    value = client.get_cookie(COOKIE_NAME, path="/admin").value
    client.set_cookie(COOKIE_NAME, value[:-2] + ("AA" if not value.endswith("AA") else "BB"), path="/admin")
    assert client.get("/admin").status_code == 303

    login(client, ops.api_key)
    assert client.get("/admin").status_code == 200
    with session_factory() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == ops.tenant_id)).one()
        key.revoked_at = utcnow()
        session.commit()
    assert client.get("/admin").status_code == 303
    assert client.post("/admin/login", data={"api_key": ops.api_key}).status_code == 401
