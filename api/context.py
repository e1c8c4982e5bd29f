"""Per-app services and per-request state: the session (one per request, closed at teardown), the
authenticated principal, the JSON body."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, g, has_request_context, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .auth import Principal
from .errors import ApiError
from .jobs.service import QueueStats
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
    queue_stats: QueueStats = field(default_factory=QueueStats)  # status reads' ETA inputs
    _reads_engine: tuple[Engine, Engine] | None = field(default=None, repr=False)  # (bind, its autocommit copy)

    def read_session(self) -> Session:
        """A session for a request that only reads: on the same pool, without a transaction
        (autocommit), so psycopg sends no BEGIN and the pool no ROLLBACK, two of a status poll's
        round trips. A write such a request makes (a key's last use, once a minute) commits on its
        own. A factory bound to a connection already in a transaction (test fixtures) stays in it."""
        bind = self.session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            return self.session_factory()
        if self._reads_engine is None or self._reads_engine[0] is not bind:
            self._reads_engine = (bind, bind.execution_options(isolation_level="AUTOCOMMIT"))  # same pool
        return self.session_factory(bind=self._reads_engine[1])


def services() -> Services:
    return current_app.extensions[EXTENSION]


READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session() -> Session:
    """The request's database session, opened on first use and closed when the request ends;
    reads (`READ_ONLY_METHODS`) get `Services.read_session`."""
    if "db_session" not in g:
        reads = has_request_context() and request.method in READ_ONLY_METHODS
        g.db_session = services().read_session() if reads else services().session_factory()
    return g.db_session


def principal() -> Principal:
    return g.principal


MAX_JSON_DEPTH = 32  # no request schema nests deeper than a few levels


def _check_json_shape(data: Any) -> None:
    """Refuses what the schemas would choke on: nesting deeper than `MAX_JSON_DEPTH` and NUL
    characters (PostgreSQL text cannot hold them). Iterative, so depth costs no stack."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ApiError("body", "strings may not contain NUL characters")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ApiError("body", f"nested deeper than {MAX_JSON_DEPTH} levels")
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items)


def json_body() -> Any:
    """The parsed JSON body; None when there is none; a 400 naming `body` when it is not JSON, is
    nested absurdly deep, or holds NUL characters."""
    if not request.get_data(cache=True):
        return None
    try:
        data = json.loads(request.get_data(cache=True))
    except RecursionError as exc:  # the decoder's own stack limit: thousands of `[`
        raise ApiError("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:
        raise ApiError("body", "not valid JSON") from exc
    _check_json_shape(data)
    return data
