"""Presigned download URLs from both stores: S3 (SeaweedFS checks the SigV4 signature and its
expiry) and the local store (HMAC over key and expiry, checked by the API's object route)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest

from api.storage import LocalStore, S3Store, tenant_key

from .servers import S3Server


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_s3_presigned_url_works_until_it_expires(s3_server: S3Server):
    store = S3Store(f"presign-{uuid.uuid4().hex[:8]}", s3_server.endpoint_url, s3_server.access_key,
                    s3_server.secret_key)
    key = tenant_key(uuid.uuid4(), "concepts", "c1", "versions", "j1", "tokens.safetensors")
    store.put_bytes(key, b"checkpoint bytes")
    url = store.presigned_url(key, 2)
    assert url.startswith(s3_server.endpoint_url) and "X-Amz-Signature=" in url and "X-Amz-Expires=2" in url
    assert _fetch(url) == (200, b"checkpoint bytes")
    forged = url.replace("X-Amz-Expires=2", "X-Amz-Expires=3600")
    assert _fetch(forged)[0] == 403  # the expiry is part of what is signed
    time.sleep(3.5)
    status, body = _fetch(url)
    assert status == 403 and b"checkpoint bytes" not in body


def test_local_store_signatures_bind_key_and_expiry(tmp_path):
    store = LocalStore(tmp_path / "objects")
    key = tenant_key(uuid.uuid4(), "concepts", "c1", "versions", "j1", "concept.json")
    url = store.presigned_url(key, 60)
    path, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    assert path == f"/v1/objects/{key}"
    now = time.time()
    assert store.check_signature(key, params["expires"], params["signature"], now=now)
    assert not store.check_signature(key, params["expires"], params["signature"], now=now + 61)
    assert not store.check_signature(key + "x", params["expires"], params["signature"], now=now)
    assert not store.check_signature(key, str(int(params["expires"]) + 1), params["signature"], now=now)
    # another process serving the same folder shares the key (gunicorn workers); another folder does not
    assert LocalStore(tmp_path / "objects").check_signature(key, params["expires"], params["signature"])
    assert not LocalStore(tmp_path / "elsewhere").check_signature(key, params["expires"], params["signature"])
    with pytest.raises(ValueError):
        store.presigned_url("../outside", 60)
