"""Requests per minute per API key, a fixed one-minute window: over the tenant's
`requests_per_minute` a request is answered 429 with `Retry-After` (seconds to the next window).

Counters live in Redis when there is one (`OMNI_REDIS_URL`, else the broker when it is Redis), so
every web process shares them; on the embedded defaults (no Redis) each process counts on its own,
which limits a key to that rate per process. If Redis cannot be reached the request is let through
(a logged warning): rate limiting must not take the API down with it."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from flask import Flask, Response, current_app, g, jsonify

from .context import session
from .errors import ApiError
from .settings import Settings
from .usage.service import tenant_limits

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
EXTENSION = "omnipersona_ratelimit"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__("Authorization", f"over {limit} requests per minute for this API key; retry in "
                                          f"{retry_after}s")
        self.retry_after = retry_after


class Counter(Protocol):
    def hit(self, key: str, window: int) -> int:
        """Count one request of `key` in `window`; the count so far, this one included."""
        ...


class MemoryCounter:
    """One process's counts; windows older than the current one are dropped as time moves on."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._window = -1

    def hit(self, key: str, window: int) -> int:
        with self._lock:
            if window != self._window:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
                self._window = window
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
            return count


class RedisCounter:
    """INCR of `ratelimit:<key>:<window>`, expiring after two windows (shared by all processes)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    def hit(self, key: str, window: int) -> int:
        name = f"ratelimit:{key}:{window}"
        pipe = self.client.pipeline()
        pipe.incr(name)
        pipe.expire(name, 2 * WINDOW_SECONDS)
        count, _ = pipe.execute()
        return int(count)


def redis_url_for(settings: Settings) -> str | None:
    if settings.redis_url:
        return settings.redis_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return None


def make_counter(settings: Settings) -> Counter:
    url = redis_url_for(settings)
    return RedisCounter(url) if url else MemoryCounter()


class RateLimiter:
    def __init__(self, counter: Counter, clock: Callable[[], float] = time.time) -> None:
        self.counter = counter
        self.clock = clock

    def check(self, key_id: uuid.UUID, limit: int) -> None:
        """Raises `RateLimited` when this request is over `limit` in the current minute."""
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        try:
            count = self.counter.hit(str(key_id), window)
        except Exception as exc:  # the counter store is down: serve rather than fail every request
            log.warning("rate-limit counter unavailable (%s); request let through", type(exc).__name__)
            return
        if count > limit:
            retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
            raise RateLimited(limit, retry_after)


def install_rate_limiter(app: Flask, limiter: RateLimiter | None = None) -> None:
    """Counts every authenticated request (register after authentication's before_request)."""
    from .context import services

    def limiter_of() -> RateLimiter:
        if EXTENSION not in current_app.extensions:
            current_app.extensions[EXTENSION] = limiter or RateLimiter(make_counter(services().settings))
        return current_app.extensions[EXTENSION]

    @app.before_request
    def _rate_limit() -> None:
        who = g.get("principal")
        if who is None:  # public routes
            return
        limit = tenant_limits(session(), who.tenant_id, services().settings).requests_per_minute
        limiter_of().check(who.key_id, limit)

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.to_dict()), exc.status, {"Retry-After": str(exc.retry_after)}
