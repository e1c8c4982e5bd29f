"""Who may reach what, generated from `app.url_map` itself: every route is walked with another
tenant's ids (404, never data), without a key (401 unless the route is public on purpose), with
malformed and revoked keys (401), and with a member's key on admin-only routes (404). A route added
later with a path parameter or a public status this file does not know makes these tests fail
until it is covered here."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.routing import Rule

from api.auth import TENANT_ADMIN
from api.models import ApiKey, User, WebhookDelivery, WebhookEndpoint

from .conftest import TenantClient, add_version, png_bytes

SECRET_NAME = "acmesecret"  # tenant A's concept name: must never appear in tenant B's answers
FACTS = [{"question": "What is the home of {c}?", "answer": "the dunes"}]

# Routes that answer without an API key, and what they answer to a stranger.
PUBLIC = {
    "healthz": {200},
    "metrics": {200},  # open unless OMNI_METRICS_TOKEN is set (tested in test_metrics.py)
    "objects.download": {403},  # the URL's own signature is the permission; none given here
    "dashboard.login_form": {200},
    "dashboard.login": {400, 401, 404},  # the form with no key in it
    "openapi.document": {200},
}
# The dashboard is for browsers: someone not logged in is sent to the form, never shown a page.
DASHBOARD_LOGIN_REDIRECT = {"dashboard.overview"}

# Bodies for routes that take one, so a refusal is about the id and not about a missing field.
JSON_BODIES: dict[str, Any] = {
    "concepts.update": {"facts": FACTS},
    "concepts.update_image": {"caption": f"<{SECRET_NAME}> on the sand", "accepted": True},
    "concepts.train": {"recipe": "mock"},
    "renders.ask": {"question": f"What is <{SECRET_NAME}>?"},
    "renders.generate": {"prompt": f"<{SECRET_NAME}> at the beach"},
    "batches.create": {"prompts": ["{c} at the beach"], "concepts": [SECRET_NAME]},
    "renders.generate_many": {"prompt": f"<{SECRET_NAME}> at the beach"},
}
MULTIPART_BODIES = {"concepts.upload_images", "renders.edit"}


@dataclass
class World:
    """Tenant A's objects, one of each kind a route can name."""

    ids: dict[str, str]  # route parameter -> tenant A's value
    markers: set[str]  # strings that would betray tenant A's data in an answer


def _view(app: Flask, endpoint: str) -> Any:
    return app.view_functions[endpoint]


def _required_roles(app: Flask, endpoint: str) -> tuple[str, ...] | None:
    view = _view(app, endpoint)
    while view is not None:
        roles = getattr(view, "required_roles", None)
        if roles is not None:
            return roles
        view = getattr(view, "__wrapped__", None)
    return None


def _routes(app: Flask) -> list[tuple[Rule, str]]:
    return sorted(((rule, method) for rule in app.url_map.iter_rules()
                   for method in sorted(rule.methods - {"HEAD", "OPTIONS"})),
                  key=lambda rm: (rm[0].rule, rm[1]))


def _path(rule: Rule, ids: dict[str, str]) -> str:
    missing = set(rule.arguments) - set(ids)
    assert not missing, (f"route {rule.rule} has parameters {sorted(missing)} this test has no foreign ids for: "
                         "add them to the `world` fixture")
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: ids[m.group(1)], rule.rule)


def _send(client: Any, method: str, path: str, endpoint: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if endpoint in MULTIPART_BODIES:
        kwargs["data"] = {"image": (_png_file(), "photo.png"), "instruction": f"make <{SECRET_NAME}> blue"}
        kwargs["content_type"] = "multipart/form-data"
    elif method in ("POST", "PATCH", "PUT"):
        kwargs["json"] = JSON_BODIES.get(endpoint, {})
    return client.open(path, method=method, **kwargs)


def _png_file() -> Any:
    import io

    return io.BytesIO(png_bytes())


@pytest.fixture
def world(acme: TenantClient, session_factory) -> World:
    concept = acme.post("/v1/concepts", json={"name": SECRET_NAME, "facts": FACTS})
    assert concept.status_code == 201, concept.json
    concept_id = concept.json["id"]
    upload = acme.post(f"/v1/concepts/{concept_id}/images", data={"image": (_png_file(), "a.png")},
                       content_type="multipart/form-data")
    assert upload.status_code == 201, upload.json
    image_id = upload.json["images"][0]["id"]
    version_id = add_version(session_factory, acme.tenant_id, concept_id)
    render = acme.post(f"/v1/concepts/{concept_id}/generate", json={"prompt": f"<{SECRET_NAME}> at the beach"})
    assert render.status_code == 202, render.json
    batch = acme.post("/v1/batches", json={"prompts": ["{c} on the sand"], "concepts": [SECRET_NAME]})
    assert batch.status_code in (201, 202), batch.json
    with session_factory() as session:
        endpoint = WebhookEndpoint(tenant_id=acme.tenant_id, url="https://hooks.acme.example/omni",
                                   events=["job.succeeded"])
        session.add(endpoint)
        session.flush()
        delivery = WebhookDelivery(tenant_id=acme.tenant_id, endpoint_id=endpoint.id, event="job.succeeded",
                                   payload={"type": "job.succeeded", "data": {"secret": SECRET_NAME}})
        session.add(delivery)
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == acme.tenant_id)).one()
        user = session.scalars(select(User).where(User.tenant_id == acme.tenant_id)).one()
        session.commit()
        image_key = next(i["object_key"] for i in [_image_row(session, image_id)])
        ids = {"concept_id": concept_id, "image_id": image_id, "version_id": str(version_id),
               "job_id": render.json["job_id"], "render_id": render.json["id"], "batch_id": batch.json["id"],
               "webhook_id": str(endpoint.id), "delivery_id": str(delivery.id), "key_id": str(key.id),
               "user_id": str(user.id), "key": image_key, "filename": "nothing-here.txt"}
        markers = {v for k, v in ids.items() if k != "filename"} | {SECRET_NAME, key.prefix, user.email,
                                                                     str(acme.tenant_id)}
    return World(ids, markers)


def _image_row(session, image_id: str) -> dict[str, str]:
    from api.models import ConceptImage

    row = session.get(ConceptImage, uuid.UUID(image_id))
    return {"object_key": row.object_key}


def _assert_no_leak(response: Any, world: World, what: str, sent: str = "") -> None:
    """None of tenant A's markers in the answer, except what the caller itself sent (an error may
    echo the id or name it was given; that tells the caller nothing it did not know)."""
    text = response.get_data(as_text=True)
    leaked = sorted(m for m in world.markers if m in text and m not in sent)
    assert not leaked, f"{what} answered {response.status_code} with tenant A's {leaked}"


def test_every_route_with_another_tenants_ids_is_404_and_leaks_nothing(app, world, globex):
    """Tenant B (a tenant admin, so role checks pass) names tenant A's objects on every route."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {globex.api_key}"}
    walked = 0
    for rule, method in _routes(app):
        path = _path(rule, world.ids)
        response = _send(client, method, path, rule.endpoint, headers)
        what = f"{method} {rule.rule}"
        assert response.status_code < 500, f"{what}: {response.status_code}"
        _assert_no_leak(response, world, what, sent=path + str(JSON_BODIES.get(rule.endpoint, "")))
        if rule.endpoint == "objects.download":
            assert response.status_code == 403, what  # no signature: the key alone opens nothing
        elif rule.arguments or rule.endpoint.startswith("dashboard.") and rule.endpoint not in PUBLIC:
            # Ids of another tenant look exactly like missing ones; the dashboard is not B's at all.
            assert response.status_code == 404, f"{what}: {response.status_code} {response.get_data(as_text=True)}"
        walked += 1
    assert walked >= 50


def test_bodies_naming_another_tenants_objects_are_refused(app, world, globex):
    """Id-free routes whose body names objects: A's user, A's concept by name."""
    key = globex.post("/v1/keys", json={"name": "stolen", "user_id": world.ids["user_id"]})
    assert key.status_code == 404 and key.json["error"]["field"] == "user"
    for path, body in (("/v1/batches", JSON_BODIES["batches.create"]),
                       ("/v1/renders/generate", JSON_BODIES["renders.generate_many"])):
        response = globex.post(path, json=body)
        assert response.status_code in (400, 404), (path, response.json)
        _assert_no_leak(response, world, path, sent=str(body))


def _non_public(app: Flask) -> list[tuple[Rule, str]]:
    return [(rule, method) for rule, method in _routes(app) if rule.endpoint not in PUBLIC]


def _assert_refused_without_credentials(app: Flask, world: World, headers: dict[str, str], label: str) -> int:
    client = app.test_client()
    checked = 0
    for rule, method in _non_public(app):
        response = _send(client, method, _path(rule, world.ids), rule.endpoint, headers)
        what = f"{label}: {method} {rule.rule}"
        _assert_no_leak(response, world, what)
        if rule.endpoint in DASHBOARD_LOGIN_REDIRECT:
            assert response.status_code == 303 and response.headers["Location"] == "/admin/login", what
        elif rule.endpoint.startswith("dashboard."):
            assert response.status_code == 404, f"{what}: {response.status_code}"
        else:
            assert response.status_code == 401, f"{what}: {response.status_code}"
            assert response.json["error"]["field"] == "Authorization", what
        checked += 1
    return checked


def test_public_routes_are_exactly_the_documented_ones(app, world):
    from api.app import PUBLIC_ENDPOINTS

    # The app's own list of key-less endpoints is this file's, less the dashboard's login form.
    assert set(PUBLIC_ENDPOINTS) == {e for e in PUBLIC if not e.startswith("dashboard.")}
    client = app.test_client()
    for rule, method in _routes(app):
        if rule.endpoint not in PUBLIC:
            continue
        response = _send(client, method, _path(rule, world.ids), rule.endpoint, {})
        assert response.status_code in PUBLIC[rule.endpoint], (rule.rule, response.status_code)
        _assert_no_leak(response, world, rule.rule)


def test_every_route_without_a_key_is_401(app, world):
    assert _assert_refused_without_credentials(app, world, {}, "no key") >= 45


MALFORMED = [
    "Bearer ", "Bearer op_", "Bearer op__", "Bearer op_zzzzzzzz_secret", "Bearer op_0123456_short-prefix",
    "Basic b3A6c2VjcmV0", "Bearer " + "op_0123abcd_" + "x" * 5000, "Bearer op_0123abcd_ünïcödé",
    "Token op_0123abcd_abc", "bearer\top_0123abcd_abc",
]


@pytest.mark.parametrize("authorization", MALFORMED)
def test_every_route_with_a_malformed_key_is_401(app, world, authorization):
    assert _assert_refused_without_credentials(app, world, {"Authorization": authorization}, authorization[:20]) >= 45


def test_another_tenants_key_prefix_with_a_wrong_secret_is_401(app, world, acme):
    forged = acme.api_key.rsplit("_", 1)[0] + "_" + "A" * 43
    assert _assert_refused_without_credentials(app, world, {"X-API-Key": forged}, "forged") >= 45


def test_a_revoked_key_stops_on_every_route_at_once(app, world, acme):
    created = acme.post("/v1/keys", json={"name": "ci"})
    assert created.status_code == 201
    second = TenantClient(acme.client, acme.tenant_id, created.json["key"])
    assert second.get("/v1/concepts").status_code == 200
    revoked = acme.client.delete(f"/v1/keys/{created.json['id']}", headers={"Authorization": f"Bearer {acme.api_key}"})
    assert revoked.status_code == 200 and revoked.json["revoked_at"]
    # The very next request, on every route, is refused (no cache, no grace period).
    headers = {"Authorization": f"Bearer {second.api_key}"}
    assert _assert_refused_without_credentials(app, world, headers, "revoked") >= 45
    assert acme.get("/v1/concepts").status_code == 200  # the admin's own key is untouched


def test_members_get_404_on_every_admin_route(app, world, acme):
    created = acme.post("/v1/users", json={"email": "member@acme.example", "role": "member"})
    assert created.status_code == 201, created.json
    member_key = created.json["api_key"]["key"]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {member_key}"}
    admin_only = [(rule, method) for rule, method in _routes(app)
                  if _required_roles(app, rule.endpoint) is not None
                  or (rule.endpoint.startswith("dashboard.") and rule.endpoint not in PUBLIC)]
    endpoints = {rule.endpoint for rule, _ in admin_only}
    # The tenant-admin surface and the whole dashboard are found by introspection, not listed.
    assert {"accounts.list_keys", "accounts.create_key", "accounts.revoke_key", "accounts.list_users",
            "accounts.create_user", "dashboard.overview", "dashboard.cancel"} <= endpoints
    for rule, method in admin_only:
        assert _required_roles(app, rule.endpoint) in (None, (TENANT_ADMIN,))
        # Tenant A's own ids: a member of A still may not touch them here.
        response = _send(client, method, _path(rule, world.ids), rule.endpoint, headers)
        assert response.status_code == 404, (method, rule.rule, response.status_code)
    # Nothing the member tried was done: still one key for the admin, one for the member.
    keys = acme.get("/v1/keys").json["keys"]
    assert len(keys) == 2 and all(k["revoked_at"] is None for k in keys)


def test_last_used_at_is_written_at_most_once_a_minute_and_revocation_still_read_each_time(acme, session_factory):
    """Auth's hot path: no write per request (a read is one SELECT), yet the key's last use stays
    within a minute of the truth and a revoked key is refused on its next request."""
    from datetime import timedelta

    from api.auth import LAST_USED_RESOLUTION
    from api.models import utcnow

    def last_used() -> Any:
        with session_factory() as session:
            return session.scalars(select(ApiKey.last_used_at).where(ApiKey.tenant_id == acme.tenant_id)).one()

    assert acme.get("/v1/me").status_code == 200
    first = last_used()
    assert first is not None and abs((utcnow() - first).total_seconds()) < 30
    assert acme.get("/v1/me").status_code == 200
    assert last_used() == first  # within the minute: not rewritten
    with session_factory() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == acme.tenant_id)).one()
        key.last_used_at = first - LAST_USED_RESOLUTION - timedelta(seconds=1)
        session.commit()
    assert acme.get("/v1/me").status_code == 200
    assert last_used() > first - timedelta(seconds=1)  # older than the resolution: written again
    with session_factory() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == acme.tenant_id)).one()
        key.revoked_at = utcnow()
        session.commit()
    assert acme.get("/v1/me").status_code == 401
