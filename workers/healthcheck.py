"""Container health check of a worker: exits 0 when a Celery node on this host (`<queue>@<host>`,
as the worker commands name it) answers a ping over the broker, else 1.
`python -m workers.healthcheck` (the worker image's HEALTHCHECK, k8s exec probes)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable

PING_TIMEOUT_SECONDS = 10.0


def local_node_answered(replies: Iterable[dict[str, object]], host: str) -> bool:
    """Whether a node named `*@host` is among the ping replies (one dict per answering node)."""
    return any(name.rpartition("@")[2] == host for reply in replies for name in reply)


def main() -> int:
    from api.celery_config import make_celery
    from api.settings import Settings

    # Only the Celery config, not workers.celery_app: a probe must not import the ML stack.
    app = make_celery(Settings.from_env())
    host = socket.gethostname()
    try:
        replies = app.control.ping(timeout=PING_TIMEOUT_SECONDS) or []
    except Exception as exc:  # the broker is down: this worker cannot take jobs either
        print(f"unhealthy: broker unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    if local_node_answered(replies, host):
        return 0
    print(f"unhealthy: no Celery node @{host} answered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
