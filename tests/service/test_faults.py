"""Nothing is lost under real failures (issue 6). One stack of real processes for the module:
gunicorn, Celery workers on the train, render and housekeeping (+ beat, the reaper every 2 s)
queues, and PRIVATE servers this module may stop and restart without touching anyone else's: a
Redis broker, a PostgreSQL cluster (initdb in a temp dir, run as the `postgres` user) and a
SeaweedFS S3 endpoint, each on its own loopback port. Backbone `tiny`, a few dozen steps; every
wait is bounded. The faults: a killed train pool process (redelivered, resumed from its
checkpoint), a broker down at submit time, a PostgreSQL restart mid-job, the same task delivered
three times, a frozen (SIGSTOPped) worker, a render pool process killed mid-batch, and the S3
endpoint gone (retries with backoff, then a clear failure)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, func, select

from api.admin import create_tenant, migrate
from api.client import OmniClient
from api.db import make_engine, make_session_factory, session_scope
from api.models import ConceptVersion, Job, Render, UsageRecord
from api.settings import Settings
from infra.local_stack import LocalStack, ManagedProcess

from .conftest import png_bytes
from .servers import S3Server, free_ports, start_seaweedfs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKPOINT_EVERY = 4
HEARTBEAT_SECONDS = 1
STALE_AFTER_SECONDS = 20  # well above a redelivery's takeover (new pool process + 2 beats + 1 s): the two stay apart
REAP_EVERY_SECONDS = 2
RETRY_BACKOFF_SECONDS = 1
WAIT = 120.0  # the bound of every wait on a job
KILL_STEPS = 300  # tiny trains tens of steps a second: enough left to kill mid-run
LONG_STEPS = 400


# -- private servers ---------------------------------------------------------------------------

def _run_as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing (apt-get install postgresql)")
    return str(found[-1])


@dataclass
class PrivatePostgres:
    """A throwaway cluster: trust auth, loopback only, its socket in its own folder."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(_run_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
                                         "-o", options, "-w", "-t", "30", *args]),
                       check=True, timeout=timeout, capture_output=True)

    @classmethod
    def create(cls) -> PrivatePostgres:
        root = Path(tempfile.mkdtemp(prefix="omni-faults-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = cls(root, free_ports(1)[0])
        subprocess.run(_run_as_postgres([_pg_bin("initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres",
                                         "--no-sync"]), check=True, timeout=120, capture_output=True)
        server._ctl("start")
        return server

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def destroy(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PrivateRedis:
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                assert self.process.poll() is None, self.log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "private redis did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


# -- the stack ---------------------------------------------------------------------------------

@dataclass
class FaultStack:
    url: str
    settings: Settings
    engine: Engine
    processes: LocalStack
    redis: PrivateRedis
    postgres: PrivatePostgres
    s3: S3Server
    s3_dir: Path
    bucket: str
    tenants: dict[str, uuid.UUID] = field(default_factory=dict)

    def client(self, tenant: str) -> OmniClient:
        with session_scope(make_session_factory(self.engine)) as session:
            created, key = create_tenant(session, tenant)
            self.tenants[tenant] = created.id
        return OmniClient(self.url, key, timeout=15)

    def s3_client(self) -> Any:  # boto3 clients are generated at run time
        return boto3.client("s3", endpoint_url=self.s3.endpoint_url, aws_access_key_id=self.s3.access_key,
                            aws_secret_access_key=self.s3.secret_key, region_name="us-east-1")

    def s3_keys(self, prefix: str) -> list[str]:
        listed = self.s3_client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def worker(self, queue: str) -> ManagedProcess:
        return next(p for p in self.processes.processes if p.name == f"worker-{queue}" and p.alive())

    def count(self, model: Any, *where: Any) -> int:
        with make_session_factory(self.engine)() as session:
            return session.scalar(select(func.count()).select_from(model).where(*where))

    def job_row(self, job_id: str) -> Job:
        with make_session_factory(self.engine)() as session:
            return session.get(Job, uuid.UUID(job_id))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    workdir = tmp_path_factory.mktemp("faults")
    postgres = PrivatePostgres.create()
    private_redis = PrivateRedis(free_ports(1)[0], workdir / "redis.log")
    s3_dir = workdir / "s3"
    s3 = None
    processes = None
    engine = None
    fault_stack = None
    try:
        private_redis.start()
        s3 = start_seaweedfs(s3_dir)
        bucket = f"omni-faults-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ) | {
            "OMNI_DATA_DIR": str(workdir / "data"), "DATABASE_URL": postgres.url, "BROKER_URL": private_redis.url,
            "S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": bucket,
            "S3_ACCESS_KEY_ID": s3.access_key, "S3_SECRET_ACCESS_KEY": s3.secret_key,
            "OMNI_BACKBONE": "tiny", "OMNI_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "OMNI_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS), "OMNI_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
            "OMNI_STALE_AFTER_SECONDS": str(STALE_AFTER_SECONDS), "OMNI_REAP_EVERY_SECONDS": str(REAP_EVERY_SECONDS),
            "OMNI_RETRY_BACKOFF_SECONDS": str(RETRY_BACKOFF_SECONDS),
            "OMNI_PREVIEW_EVERY": "1000000",  # no preview samples: they only cost time here
            "OMNI_LOG_FORMAT": "text",
        }
        settings = Settings.from_env(env)
        migrate(settings)
        engine = make_engine(settings.database_url)
        processes = LocalStack(env, workdir / "logs")
        url = processes.start_api()
        workers = [processes.start_worker("train"), processes.start_worker("render"),
                   processes.start_worker("housekeeping", beat_schedule=workdir / "celerybeat-schedule")]
        processes.wait_http(f"{url}/healthz", timeout=60)
        for worker in workers:
            processes.wait_log(worker, "ready.", timeout=90)
        fault_stack = FaultStack(url, settings, engine, processes, private_redis, postgres, s3, s3_dir, bucket)
        yield fault_stack
    finally:
        if processes is not None:
            processes.stop()
        if engine is not None:
            engine.dispose()
        if fault_stack is not None:
            fault_stack.s3.stop()  # the S3 test restarts it: stop the one running now
        elif s3 is not None:
            s3.stop()
        private_redis.stop()
        postgres.destroy()


# -- helpers -----------------------------------------------------------------------------------

def _wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT, every: float = 0.2) -> Any:
    """Poll until `check()` returns something truthy; connection errors and 5xx answers (a server
    restarting) count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OSError, ConnectionError) as exc:  # urllib's URLError is an OSError
            found, last = None, exc
        else:
            last = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({last!r})"
        time.sleep(every)


def _job(client: OmniClient, job_id: str) -> dict[str, Any] | None:
    response = client.request("GET", f"/v1/jobs/{job_id}")
    return response.body if response.status == 200 else None


def _finished(client: OmniClient, job_id: str, timeout: float = WAIT) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = _job(client, job_id)
        return job if job and job["state"] in ("succeeded", "failed", "canceled") else None

    return _wait_for(f"job {job_id} to finish", done, timeout)


def _reached_step(client: OmniClient, job_id: str, step: int) -> dict[str, Any]:
    def there() -> dict[str, Any] | None:
        job = _job(client, job_id)
        assert job is None or job["state"] in ("queued", "running"), job
        steps = [e["step"] for e in (job or {}).get("progress_history", [])]
        return job if steps and steps[-1] >= step else None

    return _wait_for(f"job {job_id} to reach step {step}", there)


def _concept(client: OmniClient, name: str) -> str:
    concept = client.create_concept(name, [])
    client.upload_images(concept["id"], [("a.png", png_bytes((200, 10, 10))), ("b.png", png_bytes((10, 10, 200)))])
    return concept["id"]


def _train(client: OmniClient, concept_id: str, steps: int) -> str:
    response = client.request("POST", f"/v1/concepts/{concept_id}/train", json_body={"steps": steps, "batch_size": 2})
    assert response.status == 202, response.body
    return response.body["id"]


def _versions(client: OmniClient, concept_id: str) -> list[dict[str, Any]]:
    return client.request("GET", f"/v1/concepts/{concept_id}/versions").body["versions"]


def _pool_children(proc: ManagedProcess) -> list[int]:
    """The prefork pool processes of a Celery worker (its main process's children)."""
    pid = proc.popen.pid
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(c) for c in text]
    return children


def _assert_resumed_at(history: list[dict[str, Any]], since: datetime, resumed_from: int, total: int) -> None:
    """The new attempt's entries are the ones stamped after the fault; its first one is the first
    history point (every `total // 50` steps) after the checkpoint it resumed from, not step 1."""
    every = max(1, total // 50)
    after = [e["step"] for e in history if datetime.fromisoformat(e["at"]) > since]
    assert after and resumed_from < after[0] <= resumed_from + every, (resumed_from, after[:3])
    assert after == sorted(after) and after[-1] == total


def _log_text(proc: ManagedProcess) -> str:
    return proc.log_tail(50_000_000)


# -- the faults --------------------------------------------------------------------------------

def test_killed_train_pool_process_is_redelivered_and_resumes_from_its_checkpoint(stack: FaultStack):
    """SIGKILL the pool process running a training (the worker's main process lives): Celery
    rejects the unacknowledged message (acks_late + reject_on_worker_lost) and a new pool process
    gets it at once; it sees the job's heartbeat silent, takes the job over as attempt 2 and
    resumes from the last checkpoint, well before the reaper's stale window."""
    client = stack.client("initech")
    concept_id = _concept(client, "rex")
    job_id = _train(client, concept_id, KILL_STEPS)
    _reached_step(client, job_id, CHECKPOINT_EVERY + 2)
    worker = stack.worker("train")
    (pool,) = _pool_children(worker)
    killed_at = datetime.now(UTC)
    os.kill(pool, signal.SIGKILL)

    final = _finished(client, job_id)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempts"] == 2
    resumed = final["result"]["resumed_from"]
    assert resumed >= CHECKPOINT_EVERY and resumed % CHECKPOINT_EVERY == 0
    _assert_resumed_at(final["progress_history"], killed_at, resumed, KILL_STEPS)
    assert final["result"]["steps_done"] == KILL_STEPS
    row = stack.job_row(job_id)
    # Attempt 2 began from the redelivered message, long before the heartbeat could go stale.
    assert (row.started_at - killed_at).total_seconds() < STALE_AFTER_SECONDS
    assert f"job {job_id} taken over from a silent attempt 1" in _log_text(worker)
    assert worker.alive() and _pool_children(worker) != [pool]
    versions = _versions(client, concept_id)
    assert [(v["number"], v["job_id"]) for v in versions] == [(1, job_id)]
    assert stack.count(UsageRecord, UsageRecord.job_id == uuid.UUID(job_id)) == 1


def test_same_task_delivered_three_times_makes_one_version_one_output_and_one_usage(stack: FaultStack):
    client = stack.client("hooli")
    concept_id = _concept(client, "maeve")
    job_id = _train(client, concept_id, 6)
    render_job = None
    extra = Celery("faults-duplicates", broker=stack.redis.url)
    for _ in range(2):  # the API published it once; two more deliveries of the same id
        extra.send_task("workers.train", args=[job_id], queue="train")
    final = _finished(client, job_id)
    assert final["state"] == "succeeded" and final["attempts"] == 1, final

    render = client.generate(concept_id, "<maeve> at its home", seed=3, steps=2)
    render_job = render["job_id"]
    for _ in range(2):
        extra.send_task("workers.render", args=[render_job], queue="render")
    done = _finished(client, render_job)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    # every extra message was consumed (and skipped) before we count
    _wait_for("the extra messages to be consumed", lambda: redis.Redis.from_url(stack.redis.url).llen("train") == 0
              and redis.Redis.from_url(stack.redis.url).llen("render") == 0, timeout=30)
    time.sleep(1.0)

    tenant = stack.tenants["hooli"]
    assert [v["job_id"] for v in _versions(client, concept_id)] == [job_id]
    prefix = final["result"]["object_prefix"]
    assert stack.s3_keys(prefix + "/") == [f"{prefix}/concept.json", f"{prefix}/tokens.safetensors"]
    assert stack.s3_keys(f"{tenant}/renders/") == [f"{tenant}/renders/{render['id']}/output.png"]
    assert stack.count(Render, Render.tenant_id == tenant) == 1
    usage = client.request("GET", "/v1/usage").body["totals"]
    assert usage == {"renders": 1, "training_steps": 6}
    extra.close()


def test_broker_down_at_submit_the_job_is_recorded_then_runs_when_it_returns(stack: FaultStack):
    client = stack.client("globex")
    concept_id = _concept(client, "sprocket")
    stack.redis.stop()
    try:
        started = time.monotonic()
        response = client.request("POST", f"/v1/concepts/{concept_id}/train", json_body={"recipe": "mock"})
        assert response.status == 202, response.body
        assert time.monotonic() - started < 10
        job_id = response.body["id"]
        row = stack.job_row(job_id)
        assert (row.state, row.published_at, row.attempts) == ("queued", None, 0)
        time.sleep(2 * REAP_EVERY_SECONDS)  # nothing can run it while the broker is away
        assert _job(client, job_id)["state"] == "queued"
    finally:
        stack.redis.start()
    # Workers and beat reconnect; the reaper publishes the never-published job; it runs.
    final = _finished(client, job_id, timeout=90)
    assert final["state"] == "succeeded" and final["attempts"] == 1, final
    assert stack.job_row(job_id).published_at is not None
    assert [v["source"] for v in _versions(client, concept_id)] == ["mock"]


def test_postgres_restart_while_jobs_run_workers_and_api_recover(stack: FaultStack):
    client = stack.client("umbrella")
    concept_id = _concept(client, "bolt")
    job_id = _train(client, concept_id, LONG_STEPS)
    _reached_step(client, job_id, 3)
    stack.postgres.restart()  # every open connection of the API and the workers is cut
    restarted_at = time.monotonic()
    restarted_when = datetime.now(UTC)
    final = _finished(client, job_id)
    assert final["state"] == "succeeded", final["error"]
    assert stack.job_row(job_id).finished_at > restarted_when  # it was still training through the restart
    assert final["attempts"] == 1  # recovered in place: no retry, no reaper
    assert final["result"]["steps_done"] == LONG_STEPS
    assert [v["job_id"] for v in _versions(client, concept_id)] == [job_id]
    # A render submitted after the restart runs on the render worker's reconnected pool.
    render = client.generate(concept_id, "<bolt> at its home", seed=1, steps=2)
    done = _finished(client, render["job_id"])
    assert done["state"] == "succeeded", done["error"]
    assert time.monotonic() - restarted_at < WAIT


def test_frozen_worker_is_reaped_within_bounds_and_its_job_finishes_once(stack: FaultStack):
    """SIGSTOP the whole train worker: its heartbeat stops, the reaper requeues the job within the
    stale window plus one beat interval; thawed, the old attempt sees the job is no longer its own
    and steps aside, and the same worker runs the job again as attempt 2 from its checkpoint."""
    client = stack.client("soylent")
    concept_id = _concept(client, "ivy")
    job_id = _train(client, concept_id, LONG_STEPS)
    _reached_step(client, job_id, CHECKPOINT_EVERY + 1)
    worker = stack.worker("train")
    stack.processes.kill(worker, signal.SIGSTOP)
    frozen_at = time.monotonic()
    frozen_when = datetime.now(UTC)
    try:
        requeued = _wait_for("the reaper to requeue the job",
                             lambda: (_job(client, job_id) or {}).get("state") == "queued",
                             timeout=STALE_AFTER_SECONDS + 4 * REAP_EVERY_SECONDS + 10)
        assert requeued
        assert time.monotonic() - frozen_at <= STALE_AFTER_SECONDS + HEARTBEAT_SECONDS + 3 * REAP_EVERY_SECONDS + 5
        assert "no heartbeat" in _job(client, job_id)["error"]
    finally:
        stack.processes.kill(worker, signal.SIGCONT)
    final = _finished(client, job_id)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempts"] == 2
    assert final["result"]["resumed_from"] >= CHECKPOINT_EVERY
    _assert_resumed_at(final["progress_history"], frozen_when, final["result"]["resumed_from"], LONG_STEPS)
    assert f"train job {job_id} was taken over" in _log_text(worker)
    assert [v["job_id"] for v in _versions(client, concept_id)] == [job_id]
    assert stack.count(UsageRecord, UsageRecord.job_id == uuid.UUID(job_id)) == 1


def test_render_pool_process_killed_mid_batch_every_item_exactly_once(stack: FaultStack):
    client = stack.client("cyberdyne")
    concept_id = _concept(client, "t800")
    assert _finished(client, _train(client, concept_id, 2))["state"] == "succeeded"
    items = 6
    response = client.request("POST", "/v1/batches", json_body={
        "template": "<t800> on a {value} day", "values": [f"v{i}" for i in range(items)], "steps": 6})
    assert response.status == 202, response.body
    batch_id = response.body["id"]

    def one_done_one_running() -> bool:
        counts = client.request("GET", f"/v1/batches/{batch_id}").body["counts"]
        return counts["succeeded"] >= 1 and counts["running"] == 1

    _wait_for("an item running after one succeeded", one_done_one_running, every=0.05)
    worker = stack.worker("render")
    (pool,) = _pool_children(worker)
    os.kill(pool, signal.SIGKILL)

    def settled() -> dict[str, Any] | None:
        batch = client.request("GET", f"/v1/batches/{batch_id}").body
        return batch if batch["state"] != "running" else None

    batch = _wait_for("the batch to settle", settled)
    assert batch["state"] == "done" and batch["counts"]["succeeded"] == items, batch
    listed = client.request("GET", f"/v1/batches/{batch_id}/items?limit=100").body["items"]
    assert sorted(i["index"] for i in listed) == list(range(items))
    assert all(i["state"] == "succeeded" for i in listed)
    attempts = sorted(_job(client, i["job_id"])["attempts"] for i in listed)
    assert attempts == [1] * (items - 1) + [2]  # the killed item ran again, once; the others once
    tenant = stack.tenants["cyberdyne"]
    assert stack.s3_keys(f"{tenant}/renders/") == sorted(f"{tenant}/renders/{i['render_id']}/output.png"
                                                         for i in listed)
    usage = client.request("GET", "/v1/usage").body["totals"]
    assert usage["renders"] == items


def test_s3_unreachable_retries_with_backoff_then_fails_clearly_with_no_version(stack: FaultStack):
    client = stack.client("vandelay")
    concept_id = _concept(client, "latex")
    job_id = _train(client, concept_id, 200)
    _reached_step(client, job_id, 2)
    ports = stack.s3.ports
    stack.s3.stop()
    try:
        final = _finished(client, job_id)
        assert final["state"] == "failed"
        assert final["attempts"] == stack.settings.max_attempts == 3
        assert final["error"].startswith("gave up after 3 attempts: object store unreachable: "), final["error"]
        assert "EndpointConnectionError" in final["error"]
        log_text = _log_text(stack.worker("train"))
        for attempt in (1, 2):  # backoff doubles: 1 s, then 2 s
            delay = RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)
            assert f"job {job_id} attempt {attempt} hit an outage; retrying in {delay}s" in log_text
        assert _versions(client, concept_id) == []
        concept = client.request("GET", f"/v1/concepts/{concept_id}").body
        assert concept["status"] == "failed" and concept["current_version"] is None
        assert stack.count(ConceptVersion, ConceptVersion.job_id == uuid.UUID(job_id)) == 0
    finally:
        stack.s3 = start_seaweedfs(stack.s3_dir, ports=ports)
    tenant = stack.tenants["vandelay"]
    assert stack.s3_keys(f"{tenant}/concepts/{concept_id}/versions/") == []
