"""Prometheus metrics at `GET /metrics` (text exposition format).

Two sources:
- HTTP requests, counted in the web process that served them: `omni_http_requests_total` and
  `omni_http_request_duration_seconds` by method, route template and status. Under gunicorn
  (several processes) set `PROMETHEUS_MULTIPROC_DIR` to an empty folder shared by the web
  processes: each writes its counts there and any one of them answers for all.
- The jobs table, read at scrape time, so the figures are the same whichever process (or host)
  answers and include work done by the Celery workers: jobs by queue / kind / state, queue depth,
  job durations (started to finished) and render latency (request to result).

Access: open by default (scraped from inside the deployment's network); when `OMNI_METRICS_TOKEN`
is set, a scrape must send `Authorization: Bearer <token>` or gets 401.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import ColumnElement, case, func, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from .celery_config import QUEUE_BY_KIND
from .context import session
from .errors import Unauthorized
from .models import JOB_STATES, Job, Render

HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
RENDER_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED_ROUTE = "<unmatched>"  # 404s without a route: one label value, not one per probed path

# Not registered in the global registry: each scrape builds its own (see `render_metrics`).
HTTP_REQUESTS = Counter("omni_http_requests", "HTTP requests answered, by method, route and status",
                        ["method", "endpoint", "status"], registry=None)
HTTP_LATENCY = Histogram("omni_http_request_duration_seconds", "Time to answer an HTTP request",
                         ["method", "endpoint"], buckets=HTTP_LATENCY_BUCKETS, registry=None)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def _seconds_between(session: Session, start: InstrumentedAttribute[Any],
                     end: InstrumentedAttribute[Any]) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0  # SQLite keeps ISO strings


def _bucket_index(value: ColumnElement[float], buckets: Sequence[float]) -> ColumnElement[int]:
    # Literal bounds, so PostgreSQL sees the same expression in SELECT and GROUP BY.
    return case(*[(value <= literal_column(repr(float(b))), literal_column(str(i))) for i, b in enumerate(buckets)],
                else_=literal_column(str(len(buckets))))


def _histogram(session: Session, name: str, documentation: str, labels: Sequence[str],
               label_columns: Sequence[ColumnElement[Any]], value: ColumnElement[float],
               where: Sequence[ColumnElement[bool]], buckets: Sequence[float],
               join: tuple[Any, Any] | None = None) -> HistogramMetricFamily:
    """A cumulative histogram computed by the database: one row per (labels, bucket)."""
    index = _bucket_index(value, buckets)
    query = select(*label_columns, index, func.count(), func.sum(value)).where(*where)
    if join is not None:
        query = query.join(*join)
    counts: dict[tuple[str, ...], list[int]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for row in session.execute(query.group_by(*label_columns, index)):
        key = tuple(str(v) for v in row[:len(label_columns)])
        slot, count, total = int(row[-3]), int(row[-2]), float(row[-1] or 0.0)
        counts.setdefault(key, [0] * (len(buckets) + 1))[slot] += count
        sums[key] = sums.get(key, 0.0) + total
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    bounds = [*(repr(float(b)) for b in buckets), "+Inf"]
    for key, per_slot in sorted(counts.items()):
        running, cumulative = 0, []
        for bound, count in zip(bounds, per_slot, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(list(key), cumulative, sums[key])
    return family


def job_metrics(session: Session) -> Iterator[Metric]:
    """What the jobs table says now: counts by state, queue depth, durations, render latency."""
    jobs = GaugeMetricFamily("omni_jobs", "Jobs in the jobs table by queue, kind and state",
                             labels=["queue", "kind", "state"])
    depth = {queue: 0 for queue in QUEUE_BY_KIND.values()}
    for queue, kind, state, count in session.execute(
            select(Job.queue, Job.kind, Job.state, func.count()).group_by(Job.queue, Job.kind, Job.state)):
        jobs.add_metric([queue, kind, state], count)
        if state == "queued":
            depth[queue] = depth.get(queue, 0) + count
    yield jobs
    queue_depth = GaugeMetricFamily("omni_queue_depth", "Queued jobs waiting for a worker, per queue",
                                    labels=["queue"])
    for queue, count in sorted(depth.items()):
        queue_depth.add_metric([queue], count)
    yield queue_depth
    yield _histogram(
        session, "omni_job_duration_seconds", "Run time of finished jobs (claimed to finished)",
        ["kind", "state"], [Job.kind, Job.state], _seconds_between(session, Job.started_at, Job.finished_at),
        [Job.started_at.is_not(None), Job.finished_at.is_not(None), Job.state.in_(JOB_STATES)],
        JOB_DURATION_BUCKETS)
    yield _histogram(
        session, "omni_render_latency_seconds", "Time from a render request to its result (succeeded renders)",
        ["render_kind"], [Render.kind], _seconds_between(session, Job.created_at, Job.finished_at),
        [Job.state == "succeeded", Job.finished_at.is_not(None)], RENDER_LATENCY_BUCKETS,
        join=(Render, Render.job_id == Job.id))


class _Snapshot:
    """A collector over metrics computed once for this scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def render_metrics(db_session: Session) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(HTTP_REQUESTS)
        registry.register(HTTP_LATENCY)
    up = GaugeMetricFamily("omni_metrics_database_up", "1 when the jobs table could be read for this scrape")
    try:
        database = list(job_metrics(db_session))
        up.add_metric([], 1)
    except Exception:  # the request metrics are still worth serving while the database is down
        db_session.rollback()
        database = []
        up.add_metric([], 0)
    registry.register(_Snapshot([*database, up]))
    return generate_latest(registry)


def _check_scrape_token(token: str | None) -> None:
    if not token:
        return
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise Unauthorized("Authorization", "metrics need Authorization: Bearer <OMNI_METRICS_TOKEN>")


def init_metrics(app: Flask, *, token: str | None = None) -> None:
    """Count every request and serve `/metrics` (exempt from API-key auth: see the module doc)."""

    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    # First among the before-request hooks, so requests refused by authentication are timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
            HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
            HTTP_LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - started)
        return response

    def metrics() -> Response:
        _check_scrape_token(token)
        return Response(render_metrics(session()), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics, methods=["GET"])
