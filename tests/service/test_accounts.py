"""Users, roles and API keys over HTTP; the per-key rate limit (429 + Retry-After) in-process and
on Redis; the admin CLI's platform-admin tenant and per-tenant limits."""

from __future__ import annotations

import uuid

import pytest
import redis
from sqlalchemy import select

from api.admin import create_tenant, set_limits
from api.auth import require_role
from api.keys import hash_key
from api.models import ApiKey, Tenant, User
from api.ratelimit import EXTENSION as RATE_EXTENSION
from api.ratelimit import MemoryCounter, RateLimited, RateLimiter, RedisCounter

from .conftest import TenantClient


def as_key(tc: TenantClient, key: str) -> TenantClient:
    return TenantClient(tc.client, tc.tenant_id, key)


def delete(tc: TenantClient, path: str):
    return tc.client.delete(path, headers={"Authorization": f"Bearer {tc.api_key}"})


def test_first_user_of_a_tenant_is_its_admin(acme):
    me = acme.get("/v1/me")
    assert me.status_code == 200
    assert me.json["role"] == "tenant_admin"
    assert me.json["tenant_name"] == "acme"
    assert me.json["key_prefix"] == acme.api_key.split("_")[1]
    assert me.json["limits"] == {"max_concepts": 100, "max_concurrent_jobs": 20, "requests_per_minute": 600}


def test_admin_creates_a_member_whose_key_works_once_shown_and_is_stored_hashed(acme, session_factory):
    response = acme.post("/v1/users", json={"email": "Bob@Acme.example", "role": "member"})
    assert response.status_code == 201, response.json
    created = response.json
    assert created["email"] == "bob@acme.example" and created["role"] == "member"
    plaintext = created["api_key"]["key"]
    assert plaintext.startswith(f"op_{created['api_key']['prefix']}_")
    with session_factory() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.prefix == created["api_key"]["prefix"])).one()
        assert row.key_hash == hash_key(plaintext) and plaintext not in (row.key_hash, row.name)
        assert session.get(User, row.user_id).role == "member"
    bob = as_key(acme, plaintext)
    assert bob.get("/v1/me").json["role"] == "member"
    # Listing never shows a key again.
    listed = acme.get("/v1/keys").json["keys"]
    assert len(listed) == 2 and all("key" not in k for k in listed)
    assert acme.post("/v1/users", json={"email": "bob@acme.example"}).status_code == 409


@pytest.mark.parametrize(("method", "path"), [("get", "/v1/users"), ("post", "/v1/users"), ("get", "/v1/keys"),
                                              ("post", "/v1/keys"), ("delete", "/v1/keys/{key}")])
def test_members_get_404_on_admin_routes(acme, method, path):
    member = as_key(acme, acme.post("/v1/users", json={"email": "m@acme.example"}).json["api_key"]["key"])
    key_id = acme.get("/v1/keys").json["keys"][0]["id"]
    url = path.format(key=key_id)
    if method == "delete":
        response = delete(member, url)
    else:
        response = getattr(member, method)(url, **({"json": {"email": "x@acme.example"}} if method == "post" else {}))
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert len(acme.get("/v1/keys").json["keys"]) == 2  # nothing made or revoked


def test_only_a_platform_admin_grants_platform_admin(acme, session_factory, app):
    refused = acme.post("/v1/users", json={"email": "root@acme.example", "role": "platform_admin"})
    assert refused.status_code == 403 and refused.json["error"]["field"] == "role"
    with session_factory() as session:
        _, key = create_tenant(session, "operators", role="platform_admin")
        session.commit()
    operator = TenantClient(app.test_client(), uuid.uuid4(), key)
    assert operator.get("/v1/me").json["role"] == "platform_admin"
    assert operator.get("/v1/users").status_code == 200  # a platform admin passes tenant-admin routes
    made = operator.post("/v1/users", json={"email": "ops2@operators.example", "role": "platform_admin"})
    assert made.status_code == 201 and made.json["role"] == "platform_admin"


def test_bad_user_and_key_bodies_name_the_field(acme):
    bad = acme.post("/v1/users", json={"email": "not-an-email"})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "email"
    bad = acme.post("/v1/users", json={"email": "a@b.c", "role": "owner"})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "role"
    bad = acme.post("/v1/keys", json={"name": ""})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "name"
    assert acme.post("/v1/keys", json={"user_id": str(uuid.uuid4())}).status_code == 404
    assert len(acme.get("/v1/keys").json["keys"]) == 1


def test_revoked_key_stops_working_and_other_tenants_keys_are_404(acme, globex):
    created = acme.post("/v1/keys", json={"name": "ci"})
    assert created.status_code == 201
    ci = as_key(acme, created.json["key"])
    assert ci.get("/v1/concepts").status_code == 200
    globex_key_id = globex.get("/v1/keys").json["keys"][0]["id"]
    assert delete(acme, f"/v1/keys/{globex_key_id}").status_code == 404
    assert globex.get("/v1/concepts").status_code == 200  # untouched
    revoked = delete(acme, f"/v1/keys/{created.json['id']}")
    assert revoked.status_code == 200 and revoked.json["revoked_at"] is not None
    assert ci.get("/v1/concepts").status_code == 401
    assert acme.get("/v1/concepts").status_code == 200


def test_requests_over_the_tenants_rate_get_429_with_retry_after(app, acme, globex, session_factory):
    now = [600.0 + 15.2]
    app.extensions[RATE_EXTENSION] = RateLimiter(MemoryCounter(), clock=lambda: now[0])
    with session_factory() as session:
        session.get(Tenant, acme.tenant_id).requests_per_minute = 3
        session.commit()
    assert [acme.get("/v1/concepts").status_code for _ in range(3)] == [200, 200, 200]
    limited = acme.get("/v1/concepts")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "45"
    assert limited.json["error"]["code"] == "rate_limited"
    assert globex.get("/v1/concepts").status_code == 200  # another tenant's key counts apart
    now[0] = 660.0  # the next minute
    assert acme.get("/v1/concepts").status_code == 200


def test_fixed_window_limiter_resets_each_minute():
    now = [120.0]
    limiter = RateLimiter(MemoryCounter(), clock=lambda: now[0])
    key = uuid.uuid4()
    limiter.check(key, 2)
    limiter.check(key, 2)
    now[0] = 150.5
    with pytest.raises(RateLimited) as caught:
        limiter.check(key, 2)
    assert caught.value.retry_after == 30
    limiter.check(uuid.uuid4(), 2)  # another key has its own count
    now[0] = 180.0
    limiter.check(key, 2)  # a new window


def test_redis_counter_is_shared_between_limiters():
    url = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(url).flushdb()
    now = [6000.0]
    first = RateLimiter(RedisCounter(url), clock=lambda: now[0])
    second = RateLimiter(RedisCounter(url), clock=lambda: now[0])  # another web process
    key = uuid.uuid4()
    first.check(key, 2)
    second.check(key, 2)
    with pytest.raises(RateLimited):
        first.check(key, 2)
    assert 0 < redis.Redis.from_url(url).ttl(f"ratelimit:{key}:100") <= 120


def test_unreachable_redis_lets_requests_through():
    limiter = RateLimiter(RedisCounter("redis://127.0.0.1:1/0"))
    limiter.check(uuid.uuid4(), 0)  # would be over the limit; the store being down must not fail it


def test_set_limits_cli_function(acme, session_factory):
    with session_factory() as session:
        assert set_limits(session, "acme", max_concepts=3, requests_per_minute=None)["max_concepts"] == 3
        assert set_limits(session, "acme", max_concepts=-1)["max_concepts"] == 100
        session.commit()


def test_require_role_rejects_unknown_roles():
    with pytest.raises(ValueError):
        require_role("owner")
