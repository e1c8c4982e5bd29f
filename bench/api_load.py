"""Bounded HTTP load on the API: job creation and job status reads with concurrent clients.

Starts everything it measures on 127.0.0.1 and stops it afterwards: a private PostgreSQL cluster
(initdb in a temporary folder, a free port; run as the `postgres` user when this script runs as
root), a private Redis (broker and rate-limit counters), the schema, one tenant with a trained
concept, and gunicorn (`--workers 2` by default). Then, for `--seconds` (default 20), `--readers`
threads loop `GET /v1/jobs/<id>` over jobs made beforehand and `--creators` threads loop
`POST /v1/concepts/<id>/generate` (each a new render job, recorded and published to Redis; no
worker runs them). Each client keeps one HTTP/1.1 keep-alive connection, as an SDK would (a minimal raw-socket
client: see `Client`).

Prints requests/s, p50, p99 and errors per kind; exits 1 unless status reads reach
`--min-reads-per-second` (500) with p99 under `--max-p99-ms` (100) and no request failed.

    nice -n 10 python bench/api_load.py --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra.local_stack import free_port  # noqa: E402


@dataclass
class Processes:
    """What this script started, each in its own process group, stopped in reverse order."""

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> subprocess.Popen:
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.started.append((name, popen))
        return popen

    def check(self, log_dir: Path) -> None:
        for name, popen in self.started:
            if popen.poll() is not None:
                tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {popen.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, popen in reversed(self.started):
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    popen.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def tree_cpu_seconds(root_pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their live descendants (from /proc).
    Found by parent links, not by process group: PostgreSQL's postmaster starts a session of its
    own, so counting our process groups left every PostgreSQL backend out."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)  # fields after the name: state ppid pgrp ... utime(11) stime(12)
        parent[pid], cpu[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [p for p in root_pids if p in cpu]
    while todo:
        pid = todo.pop()
        total += cpu[pid]
        todo += children.get(pid, [])
    return total / tick


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; run its binaries as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(procs: Processes, work: Path, log_dir: Path) -> str:
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if not initdb or not postgres:
        raise RuntimeError("initdb/postgres not found on PATH")
    data = work / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = free_port()
    procs.spawn("postgres", _as_postgres([postgres, "-D", str(data), "-p", str(port), "-k", str(work),
                                          "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100"]),
                log_dir, cwd=work)
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        procs.check(log_dir)
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2,
                                 autocommit=True) as conn:
                conn.execute("CREATE DATABASE omni_load")
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/omni_load"
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def start_redis(procs: Processes, log_dir: Path) -> str:
    port = free_port()
    procs.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                          "--appendonly", "no"], log_dir)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        procs.check(log_dir)
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def seed_tenant(env: dict[str, str]) -> tuple[str, str]:
    """The schema, a tenant whose limits let the load through (the load is the point, not the
    quota), and a concept with a version so renders can be requested. Returns (API key, concept id)."""
    from api.admin import create_tenant, migrate, set_limits
    from api.db import make_engine, make_session_factory
    from api.models import Concept, ConceptVersion, Job
    from api.settings import Settings

    settings = Settings.from_env(env)
    migrate(settings)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        tenant, key = create_tenant(session, "loadtest")
        set_limits(session, "loadtest", requests_per_minute=10_000_000, max_concurrent_jobs=10_000_000)
        concept = Concept(tenant_id=tenant.id, name="bench", identifier="<bench>", status="ready")
        session.add(concept)
        session.flush()
        job = Job(tenant_id=tenant.id, concept_id=concept.id, kind="train", queue="train", state="succeeded",
                  payload={"steps": 1})
        session.add(job)
        session.flush()
        version = ConceptVersion(tenant_id=tenant.id, concept_id=concept.id, job_id=job.id, number=1,
                                 object_prefix=f"{tenant.id}/concepts/{concept.id}/versions/{job.id}",
                                 backbone="tiny", backbone_fingerprint="0" * 32, metrics={})
        session.add(version)
        session.flush()
        concept.current_version_id = version.id
        session.commit()
        concept_id = str(concept.id)
    engine.dispose()
    return key, concept_id


@contextmanager
def service(workers: int, threads: int, keep_logs: Path | None) -> Iterator[tuple[int, str, str, list[int]]]:
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="omni-load-"))
    log_dir = keep_logs or work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        database_url = start_postgres(procs, work, log_dir)
        broker_url = start_redis(procs, log_dir)
        env = {**os.environ, "DATABASE_URL": database_url, "BROKER_URL": broker_url,
               "OMNI_DATA_DIR": str(work / "data"), "OMNI_SECRET_KEY": uuid.uuid4().hex,
               "PYTHONPATH": str(REPO)}
        key, concept_id = seed_tenant(env)
        port = free_port()
        procs.spawn("gunicorn", [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads",
                                 str(threads), "--bind", f"127.0.0.1:{port}", "--timeout", "60", "api.wsgi:app"],
                    log_dir, env)
        deadline = time.monotonic() + 60
        while True:
            procs.check(log_dir)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not answer /healthz within 60 s")
            time.sleep(0.3)
        yield port, key, concept_id, [popen.pid for _, popen in procs.started]
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects after an error.

    A minimal client on a raw socket: requests are formatted by hand and responses parsed by
    status line and Content-Length only. `http.client` parses every response's headers with the
    email package, which on this 2-core machine cost the load generator more CPU than the
    servers spend on a status read, so the measurement was of the client as much as the API."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.head = (f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        return sock

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        request = (f"{method} {path} HTTP/1.1\r\n".encode() + self.head
                   + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        try:
            if self.sock is None:
                self.sock = self._connect()
            self.sock.sendall(request)
            return self._response()
        except (OSError, ValueError):
            self.close()
            raise

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv_more()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
        if b"content-length" not in headers:  # every API answer has one; anything else is a failure
            raise ValueError(f"response without Content-Length (status {status})")
        length = int(headers[b"content-length"])
        while len(rest) < length:
            rest += self._recv_more()
        body, self.buffer = rest[:length], rest[length:]
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def _recv_more(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


def create_render(client: Client, concept_id: str, seed: int) -> tuple[int, bytes]:
    return client.call("POST", f"/v1/concepts/{concept_id}/generate",
                       {"prompt": "<bench> at the beach", "seed": seed, "steps": 1})


def run_load(port: int, key: str, concept_id: str, seconds: float, readers: int, creators: int,
             seed_jobs: int, server_pids: list[int]) -> tuple[dict[str, Samples], float, float]:
    """Per kind samples, and the CPU seconds the servers (gunicorn, PostgreSQL, Redis) and this
    client process spent during the measured window."""
    setup = Client(port, key)
    job_ids: list[str] = []
    for i in range(seed_jobs):  # jobs to read, made through the API (and a warm-up of both workers)
        status, body = create_render(setup, concept_id, i)
        if status != 202:
            raise RuntimeError(f"creating a render answered {status}: {body[:300]!r}")
        job_ids.append(json.loads(body)["job_id"])
    results = {"status read": Samples(), "job creation": Samples()}
    lock = threading.Lock()
    start = time.monotonic() + 0.5  # every thread starts together
    stop = start + seconds

    def loop(kind: str, index: int) -> None:
        client = Client(port, key)
        rng = random.Random(index)
        local = Samples()
        seed = 1_000_000 * (index + 1)
        while time.monotonic() < start:
            time.sleep(0.001)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                if kind == "status read":
                    status, _ = client.call("GET", f"/v1/jobs/{rng.choice(job_ids)}")
                    ok = status == 200
                else:
                    seed += 1
                    status, _ = create_render(client, concept_id, seed)
                    ok = status == 202
            except (OSError, ValueError):
                status, ok = -1, False
            elapsed = time.perf_counter() - t0
            local.statuses[status] = local.statuses.get(status, 0) + 1
            if ok:
                local.latencies.append(elapsed)
            else:
                local.errors += 1
        with lock:
            merged = results[kind]
            merged.latencies += local.latencies
            merged.errors += local.errors
            for status, n in local.statuses.items():
                merged.statuses[status] = merged.statuses.get(status, 0) + n

    threads = [threading.Thread(target=loop, args=("status read", i)) for i in range(readers)]
    threads += [threading.Thread(target=loop, args=("job creation", readers + i)) for i in range(creators)]
    while time.monotonic() < start - 0.3:
        time.sleep(0.01)
    servers_before, client_before = tree_cpu_seconds(server_pids), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, tree_cpu_seconds(server_pids) - servers_before, time.process_time() - client_before


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the measured load")
    parser.add_argument("--readers", type=int, default=8, help="client threads reading job status")
    parser.add_argument("--creators", type=int, default=2, help="client threads creating render jobs")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--seed-jobs", type=int, default=50, help="jobs made before the load, to be read")
    parser.add_argument("--min-reads-per-second", type=float, default=500.0)
    parser.add_argument("--max-p99-ms", type=float, default=100.0)
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 600:
        parser.error("--seconds must be in (0, 600]")

    with service(args.workers, args.threads, args.logs) as (port, key, concept_id, pids):
        results, server_cpu, client_cpu = run_load(port, key, concept_id, args.seconds, args.readers,
                                                   args.creators, args.seed_jobs, pids)

    print(f"API load: {args.seconds:.0f} s, gunicorn {args.workers} workers x {args.threads} threads, "
          f"{args.readers} readers + {args.creators} creators, PostgreSQL + Redis on 127.0.0.1, "
          f"{os.cpu_count()} CPUs, load average before the end {os.getloadavg()[0]:.2f}")
    print("| kind | requests | requests/s | p50 ms | p99 ms | errors | statuses |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind, s in results.items():
        count = len(s.latencies) + s.errors
        print(f"| {kind} | {count} | {len(s.latencies) / args.seconds:.0f} | "
              f"{percentile(s.latencies, 50) * 1000:.1f} | {percentile(s.latencies, 99) * 1000:.1f} | {s.errors} | "
              f"{dict(sorted(s.statuses.items()))} |")
    served = sum(len(r.latencies) + r.errors for r in results.values())
    print(f"CPU during the load: servers {server_cpu:.1f} s ({1000 * server_cpu / max(1, served):.1f} ms per request, "
          f"gunicorn + PostgreSQL + Redis), client {client_cpu:.1f} s; machine-wide "
          f"{args.seconds * (os.cpu_count() or 1):.0f} CPU-seconds were available")
    reads = results["status read"]
    reads_per_s = len(reads.latencies) / args.seconds
    p99_ms = percentile(reads.latencies, 99) * 1000
    errors = sum(s.errors for s in results.values())
    met = reads_per_s >= args.min_reads_per_second and p99_ms < args.max_p99_ms and errors == 0
    print(f"target: status reads >= {args.min_reads_per_second:.0f}/s with p99 < {args.max_p99_ms:.0f} ms and "
          f"0 errors: {'met' if met else 'MISSED'} ({reads_per_s:.0f}/s, p99 {p99_ms:.1f} ms, {errors} errors)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
