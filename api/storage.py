"""Object stores: S3 (boto3; any S3-compatible endpoint) and a local folder, one interface.

Keys are always `<tenant_id>/...` (see `tenant_key`), so one tenant's objects never share a
prefix with another's."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from .settings import Settings

_KEY_PART = re.compile(r"^[A-Za-z0-9._-]+$")


class ObjectNotFound(KeyError):
    """No object under that key."""


def tenant_key(tenant_id: uuid.UUID | str, *parts: str) -> str:
    """`<tenant>/<part>/...`; parts are single path components (no '/', no '..')."""
    for part in parts:
        if not _KEY_PART.match(part) or part in (".", ".."):
            raise ValueError(f"object key part {part!r} is not a plain name")
    return "/".join([str(tenant_id), *parts])


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A URL that fetches the object without an API key until `expires_in` seconds from now.
        The local store's is a path (`/v1/objects/...`) for the API to make absolute."""
        ...


LOCAL_OBJECTS_PATH = "/v1/objects/"


def _load_or_create_signing_key(path: Path) -> bytes:
    """One key per store folder, shared by every process that serves it (gunicorn workers): the
    first process writes it (link: all or nothing), the others read it."""
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip().encode()


class LocalStore:
    """A folder; writes go to a temporary file first, then an atomic rename. Download URLs are
    HMAC-signed with an expiry and served by the API (`api/versions/objects.py`)."""

    def __init__(self, root: str | Path, signing_key: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signing_key = (signing_key.encode() if signing_key
                             else _load_or_create_signing_key(self.root.with_name(f".{self.root.name}-signing-key")))

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presigned_url(self, key: str, expires_in: int) -> str:
        self._path(key)  # refuses keys outside the store
        expires = int(time.time()) + expires_in
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{LOCAL_OBJECTS_PATH}{quote(key)}?{query}"

    def check_signature(self, key: str, expires: str, signature: str, now: float | None = None) -> bool:
        """True when `signature` was made by `presigned_url` for this key and has not expired."""
        try:
            expires_at = int(expires)
        except ValueError:
            return False
        if expires_at < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._signature(key, expires_at), signature)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".upload-"))


class S3Store:
    """One bucket on an S3-compatible server; created on first use if missing."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, region: str = "us-east-1", create_bucket: bool = True) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            # SigV4 everywhere: presigned URLs would otherwise be SigV2, which many servers refuse.
            config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3},
                          s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def presigned_url(self, key: str, expires_in: int) -> str:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=expires_in)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(keys)


def make_store(settings: Settings) -> ObjectStore:
    if settings.uses_s3:
        assert settings.s3_bucket is not None
        return S3Store(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_access_key_id,
                       settings.s3_secret_access_key, settings.s3_region)
    assert settings.local_store_dir is not None
    return LocalStore(settings.local_store_dir, settings.store_signing_key)
