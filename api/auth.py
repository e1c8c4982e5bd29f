"""Authentication by API key in a header (`Authorization: Bearer <key>` or `X-API-Key`), never the
query string. Revocation is checked on every request. The key itself is never logged."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from flask import g, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .errors import ApiError, NotFound, Unauthorized
from .keys import key_matches, parse_prefix
from .models import ROLES, ApiKey, Tenant, User, utcnow

MEMBER, TENANT_ADMIN, PLATFORM_ADMIN = ROLES
LAST_USED_RESOLUTION = timedelta(seconds=60)  # api_keys.last_used_at is written at most this often
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    tenant_id: UUID
    user_id: UUID
    key_id: UUID
    role: str = MEMBER  # of the key's user: member | tenant_admin | platform_admin

    def has_role(self, *roles: str) -> bool:
        """A platform admin may do whatever any role may; the other roles only what they are named for."""
        return self.role == PLATFORM_ADMIN or self.role in roles


# Built once (every request runs it). The tenant row comes along so the rate limiter's look-up of
# its limits needs no round trip.
_KEY_BY_PREFIX = (select(ApiKey, User.role, Tenant).join(User, User.id == ApiKey.user_id)
                  .join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.prefix == bindparam("prefix")))


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
    row = session.execute(_KEY_BY_PREFIX, {"prefix": prefix}).first() if prefix else None
    if row is None or row[0].revoked_at is not None or not key_matches(presented, row[0].key_hash):
        raise Unauthorized("Authorization", "invalid or revoked API key")
    key, role, tenant = row
    # The session's identity map holds rows weakly: kept referenced for the request, the tenant
    # is what the rate limiter's session.get(Tenant) finds without a second round trip.
    g.tenant = tenant
    # A write and a commit on every request would cost more than the read it guards; the time is
    # kept to the minute. Revocation is still read on every request above.
    now = utcnow()
    if key.last_used_at is None or now - _aware(key.last_used_at) >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    return Principal(key.tenant_id, key.user_id, key.id, role)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite drops the zone


def current_principal() -> Principal:
    return g.principal


def require_role(*roles: str) -> Callable[[F], F]:
    """A view only these roles (and platform admins) may use. Anyone else gets 404, as for a route
    that does not exist, so the admin surface is not advertised to members."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    def wrap(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not current_principal().has_role(*roles):
                raise NotFound("path", "no such route")
            return view(*args, **kwargs)

        guarded.required_roles = roles  # type: ignore[attr-defined]  # lets tests find every admin-only route
        return guarded  # type: ignore[return-value]

    return wrap
