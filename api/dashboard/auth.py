"""Who is looking at the dashboard. Browsers cannot send a bearer header, so a platform admin logs
in once with an API key (checked as `api/auth.py` checks it: prefix, constant-time hash compare,
revocation) and gets a cookie holding the key's id and a CSRF token, signed with
`OMNI_SECRET_KEY` and stamped with its issue time: HttpOnly, SameSite=Strict, path /admin, and
refused once older than `OMNI_ADMIN_SESSION_SECONDS`. The key is looked up again on every request,
so revoking it, or taking the role away, ends the session at once. The key itself is never stored
in the cookie. Scripts may send `Authorization: Bearer <key>` instead of the cookie."""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass

from flask import Flask, Response, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..keys import key_matches, parse_prefix
from ..models import ApiKey, User

PLATFORM_ADMIN = "platform_admin"
COOKIE_NAME = "omni_admin"
COOKIE_PATH = "/admin"
SALT = "omni-admin-session"
CSRF_FIELD = "csrf_token"
SECRET_EXTENSION = "omni_admin_secret"

# One per process when OMNI_SECRET_KEY is unset: sessions then end when the process restarts and
# are not shared between gunicorn workers, hence the setting for any real deployment.
_PROCESS_SECRET = secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AdminViewer:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: str
    csrf_token: str | None  # None when authenticated by header (no cookie, no CSRF exposure)

    @property
    def is_platform_admin(self) -> bool:
        return self.role == PLATFORM_ADMIN


def init_secret(app: Flask, secret_key: str | None) -> None:
    app.extensions[SECRET_EXTENSION] = secret_key or _PROCESS_SECRET


def _serializer(app: Flask) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(app.extensions[SECRET_EXTENSION], salt=SALT)


def viewer_for_key(session: Session, presented: str) -> AdminViewer | None:
    """The owner of a presented API key, or None for an unknown, wrong or revoked key."""
    prefix = parse_prefix(presented)
    if prefix is None:
        return None
    row = session.execute(select(ApiKey, User.role).join(User, User.id == ApiKey.user_id)
                          .where(ApiKey.prefix == prefix)).first()
    if row is None or row[0].revoked_at is not None or not key_matches(presented, row[0].key_hash):
        return None
    key, role = row
    return AdminViewer(key.id, key.tenant_id, key.user_id, role, None)


def _viewer_for_key_id(session: Session, key_id: uuid.UUID, csrf_token: str) -> AdminViewer | None:
    row = session.execute(select(ApiKey, User.role).join(User, User.id == ApiKey.user_id)
                          .where(ApiKey.id == key_id)).first()
    if row is None or row[0].revoked_at is not None:
        return None
    key, role = row
    return AdminViewer(key.id, key.tenant_id, key.user_id, role, csrf_token)


def current_viewer(app: Flask, session: Session, max_age_seconds: int) -> AdminViewer | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return viewer_for_key(session, header[7:].strip())
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return None
    try:
        data = _serializer(app).loads(raw, max_age=max_age_seconds)
        key_id = uuid.UUID(data["key_id"])
        csrf_token = str(data["csrf"])
    except (SignatureExpired, BadSignature, KeyError, TypeError, ValueError):
        return None
    return _viewer_for_key_id(session, key_id, csrf_token)


def start_session(app: Flask, response: Response, viewer: AdminViewer, max_age_seconds: int) -> None:
    token = _serializer(app).dumps({"key_id": str(viewer.key_id), "csrf": secrets.token_urlsafe(24)})
    response.set_cookie(COOKIE_NAME, token, max_age=max_age_seconds, path=COOKIE_PATH, httponly=True,
                        samesite="Strict", secure=request.is_secure)


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="Strict",
                           secure=request.is_secure)


def csrf_ok(viewer: AdminViewer) -> bool:
    """A POST from the cookie session must carry the session's token in a form field. Header-
    authenticated requests need none: a browser never attaches that header on its own."""
    if viewer.csrf_token is None:
        return True
    presented = request.form.get(CSRF_FIELD, "")
    return hmac.compare_digest(presented.encode(), viewer.csrf_token.encode())
