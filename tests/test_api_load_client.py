"""bench/api_load.py's hand-rolled HTTP/1.1 client against a real loopback server: the load figures
are only as good as its reading of status codes and bodies on a kept-alive connection."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import load_bench_script


def _load_module():
    return load_bench_script("api_load")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    connections: list[int] = []

    def setup(self) -> None:
        super().setup()
        _Handler.connections.append(id(self.connection))

    def _answer(self, status: int, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/missing":
            self._answer(404, {"error": "no such job"})
        elif self.path == "/close":
            self._answer(200, {"bye": True}, close=True)
            self.close_connection = True
        else:
            self._answer(200, {"path": self.path, "auth": self.headers["Authorization"], "pad": "x" * 100_000})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(202, {"echo": json.loads(body)})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    _Handler.connections = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_client_reads_status_and_body_on_one_kept_alive_connection(server):
    client = _load_module().Client(server, "op_key")
    status, body = client.call("GET", "/v1/jobs/1")
    assert status == 200 and json.loads(body)["path"] == "/v1/jobs/1"
    assert json.loads(body)["auth"] == "Bearer op_key" and len(json.loads(body)["pad"]) == 100_000  # many recv()s
    assert client.call("GET", "/missing") == (404, json.dumps({"error": "no such job"}).encode())
    status, body = client.call("POST", "/v1/concepts/c/generate", {"prompt": "<c> at the beach", "seed": 3})
    assert status == 202 and json.loads(body) == {"echo": {"prompt": "<c> at the beach", "seed": 3}}
    assert len(_Handler.connections) == 1


def test_client_reconnects_after_the_server_closes(server):
    client = _load_module().Client(server, "op_key")
    assert client.call("GET", "/close")[0] == 200
    assert client.call("GET", "/v1/jobs/2")[0] == 200
    assert len(_Handler.connections) == 2


def test_server_cpu_counts_descendants_in_sessions_of_their_own():
    """The servers' CPU figure follows parent links: a grandchild that called setsid (as
    PostgreSQL's postmaster does) still counts."""
    import subprocess
    import sys
    import time

    api_load = _load_module()
    # the grandchild burns 0.6 CPU-seconds in a session of its own, then lingers briefly and exits
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(5)"
    spawn = (f"import subprocess, sys, time\n"
             f"subprocess.Popen([sys.executable, '-c', {burn!r}], start_new_session=True)\ntime.sleep(10)")
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 20
        while api_load.tree_cpu_seconds([parent.pid]) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        own = api_load.tree_cpu_seconds([parent.pid])
        assert 0.6 <= own < 1.5  # the grandchild's burn, plus two interpreters starting
        assert api_load.tree_cpu_seconds([]) == 0
    finally:
        parent.kill()
        parent.wait()
