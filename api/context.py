"""Per-app services and per-request state: the session (one per request, closed at teardown), the
authenticated principal, the JSON body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from .auth import Principal
from .errors import ApiError
from .queue import Publisher
from .settings import Settings
from .storage import ObjectStore

EXTENSION = "omnipersona"


@dataclass
class Services:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: ObjectStore
    publisher: Publisher


def services() -> Services:
    return current_app.extensions[EXTENSION]


def session() -> Session:
    if "db_session" not in g:
        g.db_session = services().session_factory()
    return g.db_session


def principal() -> Principal:
    return g.principal


def json_body() -> Any:
    """The parsed JSON body; None when there is none; a 400 naming `body` when it is not JSON."""
    if not request.get_data(cache=True):
        return None
    try:
        return json.loads(request.get_data(cache=True))
    except ValueError as exc:
        raise ApiError("body", "not valid JSON") from exc
