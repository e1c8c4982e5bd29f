"""Authentication by API key in a header (`Authorization: Bearer <key>` or `X-API-Key`), never the
query string. Revocation is checked on every request. The key itself is never logged."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ApiError, Unauthorized
from .keys import key_matches, parse_prefix
from .models import ApiKey, utcnow


@dataclass(frozen=True)
class Principal:
    tenant_id: UUID
    user_id: UUID
    key_id: UUID


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def authenticate(session: Session) -> Principal:
    if "api_key" in request.args:
        raise ApiError("api_key", "API keys go in the Authorization header, never in the URL")
    presented = _presented_key()
    if not presented:
        raise Unauthorized("Authorization", "missing API key (Authorization: Bearer <key>)")
    prefix = parse_prefix(presented)
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first() if prefix else None
    if key is None or key.revoked_at is not None or not key_matches(presented, key.key_hash):
        raise Unauthorized("Authorization", "invalid or revoked API key")
    key.last_used_at = utcnow()
    session.commit()
    return Principal(key.tenant_id, key.user_id, key.id)


def current_principal() -> Principal:
    return g.principal
