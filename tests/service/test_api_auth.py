"""API keys: header only, hashed at rest, revocation checked on every request."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from api.admin import create_key, revoke_key
from api.keys import generate_key, key_matches, parse_prefix
from api.models import ApiKey


def test_key_format_and_hash():
    key = generate_key()
    assert key.plaintext.startswith(f"op_{key.prefix}_") and len(key.plaintext) > 40
    assert parse_prefix(key.plaintext) == key.prefix
    assert key.key_hash == hashlib.sha256(key.plaintext.encode()).hexdigest()
    assert key_matches(key.plaintext, key.key_hash)
    assert not key_matches(key.plaintext + "x", key.key_hash)
    assert parse_prefix("op_short_x") is None and parse_prefix("bearer") is None


def test_only_the_hash_is_stored(acme, session_factory):
    with session_factory() as session:
        rows = session.scalars(select(ApiKey).where(ApiKey.tenant_id == acme.tenant_id)).all()
    assert len(rows) == 1
    assert rows[0].key_hash == hashlib.sha256(acme.api_key.encode()).hexdigest()
    assert acme.api_key not in {rows[0].key_hash, rows[0].prefix, rows[0].name}
    assert acme.api_key.split("_")[1] == rows[0].prefix


def test_missing_wrong_and_query_string_keys_are_refused(acme, app):
    client = app.test_client()
    assert client.get("/v1/concepts").status_code == 401
    assert client.get("/v1/concepts", headers={"Authorization": "Bearer op_00000000_nope"}).status_code == 401
    forged = acme.api_key[:-2] + ("aa" if not acme.api_key.endswith("aa") else "bb")
    assert client.get("/v1/concepts", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    response = client.get(f"/v1/concepts?api_key={acme.api_key}")
    assert response.status_code == 400 and response.json["error"]["field"] == "api_key"
    assert client.get("/v1/concepts", headers={"X-API-Key": acme.api_key}).status_code == 200
    assert client.get("/healthz").json["ok"] is True  # the one public route


def test_revoked_key_stops_working_and_a_new_key_works(acme, session_factory, app):
    assert acme.get("/v1/concepts").status_code == 200
    with session_factory() as session:
        new_key = create_key(session, "acme", "ci")
        revoke_key(session, parse_prefix(acme.api_key))
        session.commit()
    response = acme.get("/v1/concepts")
    assert response.status_code == 401 and response.json["error"]["field"] == "Authorization"
    assert app.test_client().get("/v1/concepts", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
