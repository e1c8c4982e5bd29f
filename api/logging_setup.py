"""Structured logs: one JSON object per line on stderr, for the web processes and the workers.

Every record carries the request id (from the client's `X-Request-ID` header when it is sane,
else a fresh one, echoed on the response) or, in a worker, the id of the job being run, so one
request or one job can be followed across processes. Secrets stay out: the web tier logs the
path without its query string and never a header, and the formatter masks anything shaped like
an API key or a bearer credential in case a message carries one by accident.

`OMNI_LOG_LEVEL` (default INFO) sets the level; `OMNI_LOG_FORMAT=text` keeps the plain format
(for reading logs in a terminal during development).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from .celery_config import TASK_BY_KIND

request_id_var: ContextVar[str | None] = ContextVar("omni_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("omni_job_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed back and written to logs, so only short, plain ids are taken.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# `op_<8 hex>_<secret>` keys (api/keys.py) and any bearer / basic credential.
SECRET_PATTERNS = (
    re.compile(r"op_[0-9a-fA-F]{8}_[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"),
)
MASK = "[redacted]"
HANDLER_MARK = "_omni_json_handler"
# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

access_log = logging.getLogger("omni.access")
JOB_TASKS = frozenset(TASK_BY_KIND.values())  # tasks whose first argument is a job id
_celery_connected = False


def redact(text: str) -> str:
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(MASK, text)
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return redact(value) if isinstance(value, str) else value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id / job_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        job_id = job_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if job_id:
            entry["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in entry:
                entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exception"] = redact("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(entry, ensure_ascii=False)


class RedactingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of the record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def make_handler(stream: Any = None, *, json_format: bool = True) -> logging.Handler:
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(JsonFormatter() if json_format else RedactingTextFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, HANDLER_MARK, True)
    return handler


def configure_logging(environ: dict[str, str] | None = None) -> None:
    """Install the JSON handler on the root logger, once per process (later calls do nothing).
    Handlers installed by others (pytest's capture, gunicorn's own loggers) are left alone."""
    env = os.environ if environ is None else environ
    root = logging.getLogger()
    if any(getattr(h, HANDLER_MARK, False) for h in root.handlers):
        return
    root.addHandler(make_handler(json_format=env.get("OMNI_LOG_FORMAT", "json").lower() != "text"))
    root.setLevel(env.get("OMNI_LOG_LEVEL", "INFO").upper())


def request_id_from_header(raw: str | None) -> str:
    if raw and REQUEST_ID_RE.match(raw):
        return raw
    return uuid.uuid4().hex


def init_request_logging(app: Flask) -> None:
    """Request ids in and out, and one access line per request (method, route, status, time)."""

    def _bind_request_id() -> None:
        g.request_id = request_id_from_header(request.headers.get(REQUEST_ID_HEADER))
        g.request_started = time.perf_counter()
        g.request_id_token = request_id_var.set(g.request_id)

    # First among the before-request hooks, so a request refused by authentication has its id too.
    app.before_request_funcs.setdefault(None, []).insert(0, _bind_request_id)

    @app.after_request
    def _log_request(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a request that failed before the first hook ran
            return response
        response.headers[REQUEST_ID_HEADER] = request_id
        principal = g.get("principal")
        access_log.info(
            "%s %s %s", request.method, request.path, response.status_code,
            extra={"method": request.method, "path": request.path,  # the path only: no query string
                   "endpoint": request.url_rule.rule if request.url_rule else None,
                   "status": response.status_code,
                   "duration_ms": round((time.perf_counter() - g.request_started) * 1000, 2),
                   "tenant_id": str(principal.tenant_id) if principal is not None else None},
        )
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                request_id_var.reset(token)
            except ValueError:  # torn down in another context than it was bound in
                request_id_var.set(None)


@contextmanager
def job_context(job_id: str | uuid.UUID | None) -> Iterator[None]:
    """Tag every log record inside with the job's id (used around each Celery task)."""
    token = job_id_var.set(str(job_id) if job_id is not None else None)
    try:
        yield
    finally:
        job_id_var.reset(token)


def connect_celery_logging() -> None:
    """In Celery worker and beat processes: JSON logs instead of Celery's own format (the
    `setup_logging` signal replaces Celery's logging setup; `--loglevel` still applies), and the
    job id (every task's first argument) bound for the duration of each task."""
    global _celery_connected
    if _celery_connected:
        return
    _celery_connected = True
    from celery import signals

    @signals.setup_logging.connect(weak=False)
    def _setup(loglevel: int | str | None = None, **_: Any) -> None:
        configure_logging()
        if loglevel:
            logging.getLogger().setLevel(loglevel)

    tokens: dict[str, Any] = {}

    @signals.task_prerun.connect(weak=False)
    def _bind(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) not in JOB_TASKS or not args:  # reaper, webhook deliveries
            return
        tokens[task_id or ""] = job_id_var.set(str(args[0]))

    @signals.task_postrun.connect(weak=False)
    def _unbind(task_id: str | None = None, **_: Any) -> None:
        token = tokens.pop(task_id or "", None)
        if token is not None:
            job_id_var.reset(token)
