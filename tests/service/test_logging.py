"""Structured logs: one JSON object per line, the request id honoured and echoed, the job id on a
worker's lines, and no API key anywhere in what is written."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from api.celery_config import TRAIN_TASK
from api.logging_setup import connect_celery_logging, job_context, make_handler


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The JSON handler on the root logger, writing into a buffer the test reads."""
    stream = io.StringIO()
    handler = make_handler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def records(stream: io.StringIO) -> list[dict]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def access_lines(stream: io.StringIO) -> list[dict]:
    return [r for r in records(stream) if r["logger"] == "omni.access"]


def test_request_id_is_honoured_echoed_and_logged(acme, log_stream):
    response = acme.get("/v1/jobs", headers={"X-Request-ID": "req-abc.123"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-abc.123"
    [line] = access_lines(log_stream)
    assert line["request_id"] == "req-abc.123"
    assert (line["method"], line["path"], line["endpoint"], line["status"]) == ("GET", "/v1/jobs", "/v1/jobs", 200)
    assert line["tenant_id"] == str(acme.tenant_id) and line["level"] == "INFO" and line["duration_ms"] >= 0


def test_a_missing_or_unsafe_request_id_is_replaced(acme, log_stream):
    fresh = acme.get("/v1/jobs")
    unsafe = acme.get("/v1/jobs", headers={"X-Request-ID": 'bad id", "level": "ERROR' + "x" * 200})
    ids = [fresh.headers["X-Request-ID"], unsafe.headers["X-Request-ID"]]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    assert [line["request_id"] for line in access_lines(log_stream)] == ids


def test_refused_requests_are_logged_with_their_id(app, log_stream):
    response = app.test_client().get("/v1/jobs", headers={"X-Request-ID": "no-key-1"})
    assert response.status_code == 401 and response.headers["X-Request-ID"] == "no-key-1"
    [line] = access_lines(log_stream)
    assert (line["status"], line["request_id"], line["tenant_id"]) == (401, "no-key-1", None)


def test_api_keys_never_reach_the_logs(acme, log_stream):
    key = acme.api_key
    assert acme.get("/v1/jobs").status_code == 200
    assert acme.client.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    in_url = acme.client.get(f"/v1/jobs?api_key={key}")  # refused, and the URL is not logged as sent
    assert in_url.status_code == 400
    wrong = key[:-4] + "abcd"
    assert acme.client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    logging.getLogger("omni.test").warning("a careless message quoting %s and Bearer %s", key, wrong)
    text = log_stream.getvalue()
    assert len(access_lines(log_stream)) == 4
    assert key not in text and wrong not in text
    assert key.split("_", 2)[2] not in text  # not even the secret part alone (it may hold "_" itself)
    assert records(log_stream)[-1]["message"] == "a careless message quoting [redacted] and Bearer [redacted]"


def test_worker_lines_carry_the_job_id(log_stream):
    job_id = str(uuid.uuid4())
    with job_context(job_id):
        logging.getLogger("workers.training").info("step %d", 1)
    logging.getLogger("workers.training").info("between jobs")
    first, second = records(log_stream)
    assert (first["job_id"], first["message"]) == (job_id, "step 1")
    assert "job_id" not in second


def test_celery_tasks_bind_their_job_id(log_stream):
    """The Celery signals that the worker processes use (workers/celery_app.py) tag each task's lines."""
    connect_celery_logging()
    app = Celery("omni-log-test", broker="memory://")

    @app.task(name=TRAIN_TASK)
    def train(job_id: str) -> str:
        logging.getLogger("workers.training").info("training")
        return job_id

    job_id = str(uuid.uuid4())
    assert train.apply(args=[job_id]).get() == job_id
    logging.getLogger("workers.training").info("after the task")
    lines = [r for r in records(log_stream) if r["logger"] == "workers.training"]
    assert [(r["message"], r.get("job_id")) for r in lines] == [("training", job_id), ("after the task", None)]
