"""Engine and session factory. SQLite (the embedded default) is shared by the API and two worker
processes: WAL mode and a busy timeout let them write without 'database is locked' errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a worker keeps retrying a statement while the database is unreachable (a restart, a
# fail-over) before the error counts as the job's own.
DB_RETRY_SECONDS = 60.0


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, **kwargs)
    _ping_connections_that_sat_idle(engine)
    return engine


# A pooled connection used within the last second is handed out as is; one that sat idle longer
# is pinged first. SQLAlchemy's `pool_pre_ping` pings on every checkout: a round trip in seven of
# a status poll, for connections that answered a moment ago. A server restart while the pool sat
# idle still costs no request (the ping finds the dead connection and the pool replaces it); a
# connection cut while in use fails that one statement, and SQLAlchemy then invalidates the whole
# pool, so the next checkouts reconnect (workers retry such statements: `retry_on_disconnect`).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_connections_that_sat_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")  # None: connected just now
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the server went away while the connection sat in the pool
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("ping failed")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on error (workers, CLI)."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_disconnect(exc: BaseException) -> bool:
    """The database went away (restart, network): worth retrying on a fresh connection. Anything
    else (a constraint, a bad statement) is not."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    try:
        import psycopg
    except ImportError:  # SQLite-only installs
        return False
    # psycopg raises OperationalError for refused / reset connections and AdminShutdown (a
    # subclass) when the server is shutting down.
    return isinstance(exc.orig, psycopg.OperationalError | psycopg.InterfaceError)


def retry_on_disconnect(session: Session, fn: Callable[[], T], *, seconds: float = DB_RETRY_SECONDS,
                        first_wait: float = 0.2, max_wait: float = 2.0) -> T:
    """Run `fn` (statements on `session`, committed inside it); while the database is unreachable,
    roll back and run it again with growing waits, for at most `seconds`. The pool, invalidated
    by the disconnect, hands out a new connection once the server is back. `fn` must be safe
    to repeat: a commit lost with its connection may have happened (conditional UPDATEs are)."""
    deadline = time.monotonic() + seconds
    wait = first_wait
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not is_disconnect(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1fs", type(exc.orig).__name__, wait)
            try:
                session.rollback()
            except DBAPIError:
                pass  # the connection is gone; the session discards it
            time.sleep(wait)
            wait = min(max_wait, wait * 2)
