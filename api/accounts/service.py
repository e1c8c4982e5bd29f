"""Users and API keys of a tenant. A key's plaintext exists only in the answer that creates it."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..auth import PLATFORM_ADMIN, Principal
from ..errors import ApiError, Conflict
from ..keys import generate_key
from ..models import ApiKey, User, utcnow
from ..scoping import get_scoped


def new_key(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, name: str) -> tuple[ApiKey, str]:
    """A key row (hash and prefix only) and the plaintext, which the caller shows once."""
    generated = generate_key()
    key = ApiKey(tenant_id=tenant_id, user_id=user_id, prefix=generated.prefix, key_hash=generated.key_hash,
                 name=name)
    session.add(key)
    session.flush()
    return key, generated.plaintext


def list_users(session: Session, tenant_id: uuid.UUID) -> list[User]:
    return list(session.scalars(select(User).where(User.tenant_id == tenant_id).order_by(User.created_at, User.id)))


def create_user(session: Session, caller: Principal, email: str, role: str,
                key_name: str) -> tuple[User, ApiKey, str]:
    # Only a platform admin may make another: a tenant admin's power ends at its own tenant.
    if role == PLATFORM_ADMIN and caller.role != PLATFORM_ADMIN:
        raise ApiError("role", "only a platform admin may grant platform_admin", status=403, code="forbidden")
    email = email.strip().lower()
    if session.scalars(select(User.id).where(User.tenant_id == caller.tenant_id, User.email == email)).first():
        raise Conflict("email", f"a user with email {email!r} already exists")
    user = User(tenant_id=caller.tenant_id, email=email, role=role)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create with the same email
        session.rollback()
        raise Conflict("email", f"a user with email {email!r} already exists") from exc
    key, plaintext = new_key(session, caller.tenant_id, user.id, key_name)
    session.commit()
    return user, key, plaintext


def list_keys(session: Session, tenant_id: uuid.UUID) -> list[ApiKey]:
    return list(session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)))


def create_key(session: Session, caller: Principal, name: str,
               user_id: uuid.UUID | None) -> tuple[ApiKey, str]:
    user = get_scoped(session, User, user_id or caller.user_id, caller.tenant_id, "user")
    key, plaintext = new_key(session, caller.tenant_id, user.id, name)
    session.commit()
    return key, plaintext


def revoke_key(session: Session, tenant_id: uuid.UUID, key_id: str) -> ApiKey:
    key = get_scoped(session, ApiKey, key_id, tenant_id, "key")
    if key.revoked_at is None:  # revoking twice keeps the first time
        key.revoked_at = utcnow()
        session.commit()
    return key
