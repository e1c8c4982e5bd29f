"""The one tenant-scoped getter every handler and task uses: a row of another tenant is
indistinguishable from a missing one (404)."""

from __future__ import annotations

import functools
import uuid
from typing import Any, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .errors import NotFound

T = TypeVar("T")


def parse_id(raw: str | uuid.UUID, resource: str) -> uuid.UUID:
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise NotFound(resource, f"no {resource} {raw}") from exc


@functools.cache
def _scoped_select(model: type, for_update: bool) -> Any:
    """One statement per model, built once: every request runs one."""
    query = select(model).where(model.id == bindparam("oid"), model.tenant_id == bindparam("tenant_id"))  # type: ignore[attr-defined]
    return query.with_for_update() if for_update else query


def get_scoped(session: Session, model: type[T], object_id: str | uuid.UUID, tenant_id: uuid.UUID,
               resource: str, *, for_update: bool = False) -> T:
    oid = parse_id(object_id, resource)
    row = session.scalars(_scoped_select(model, for_update), {"oid": oid, "tenant_id": tenant_id}).first()
    if row is None:
        raise NotFound(resource, f"no {resource} {object_id}")
    return row
