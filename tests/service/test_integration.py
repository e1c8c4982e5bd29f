"""The whole flow over HTTP against the production kind of components: PostgreSQL, a Redis broker,
an S3 server over HTTP (SeaweedFS) and real Celery worker processes on the `train` and `render`
queues, with the API served by gunicorn. Backbone `tiny`, few steps: about a minute."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from PIL import Image
from sqlalchemy import Engine

from api.admin import create_tenant, migrate
from api.client import OmniClient
from api.db import make_engine, make_session_factory, session_scope
from api.settings import Settings
from infra.local_stack import LocalStack

from .conftest import create_database, database_url, drop_database, png_bytes
from .servers import S3Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "maeve"
TRAIN_STEPS = 8
KILL_TEST_STEPS = 150
CHECKPOINT_EVERY = 4
JOB_TIMEOUT = 120.0


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    settings: Settings
    engine: Engine
    processes: LocalStack
    s3: S3Server
    bucket: str
    tenant_ids: dict[str, uuid.UUID] = field(default_factory=dict)

    def client(self, tenant: str) -> OmniClient:
        with session_scope(make_session_factory(self.engine)) as session:
            created, key = create_tenant(session, tenant)
            self.tenant_ids[tenant] = created.id
        return OmniClient(self.url, key)

    def s3_client(self) -> Any:  # boto3 clients are generated at run time
        return boto3.client("s3", endpoint_url=self.s3.endpoint_url, aws_access_key_id=self.s3.access_key,
                            aws_secret_access_key=self.s3.secret_key, region_name="us-east-1")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Stack]:
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        raise RuntimeError("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)") from exc
    db_name = create_database()
    workdir = tmp_path_factory.mktemp("stack")
    bucket = f"omni-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ) | {
        "OMNI_DATA_DIR": str(workdir / "data"),
        "DATABASE_URL": database_url(db_name),
        "BROKER_URL": f"redis://127.0.0.1:6379/{random.randint(1, 15)}",  # a db of its own, mostly
        "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_BUCKET": bucket,
        "S3_ACCESS_KEY_ID": s3_server.access_key, "S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "OMNI_BACKBONE": "tiny", "OMNI_HEARTBEAT_SECONDS": "1", "OMNI_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
        "OMNI_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        # The housekeeping worker's beat runs the reaper every 2 s; 8 s without a heartbeat
        # (beats are every second) means a dead worker.
        "OMNI_REAP_EVERY_SECONDS": "2", "OMNI_STALE_AFTER_SECONDS": "8",
    }
    settings = Settings.from_env(env)
    migrate(settings)
    engine = make_engine(settings.database_url)
    processes = LocalStack(env, workdir / "logs")
    try:
        url = processes.start_api()
        workers = [processes.start_worker("train"), processes.start_worker("render"),
                   processes.start_worker("housekeeping", beat_schedule=workdir / "celerybeat-schedule")]
        processes.wait_http(f"{url}/healthz", timeout=60)
        for worker in workers:
            processes.wait_log(worker, "ready.", timeout=90)
        yield Stack(url, env, settings, engine, processes, s3_server, bucket)
    finally:
        processes.stop()
        engine.dispose()
        drop_database(db_name)


def _photos() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((EXAMPLE / "photos").glob("*.png"))]


def _facts() -> list[tuple[str, str]]:
    return [tuple(f) for f in json.loads((EXAMPLE / "facts.json").read_text())]


def test_full_flow_over_http(stack: Stack, tiny):
    from omnipersona.artifacts import load_concept

    client = stack.client("acme")
    concept = client.create_concept("maeve", _facts())
    uploaded = client.upload_images(concept["id"], _photos())["images"]
    assert len(uploaded) == len(_photos())

    # bad input over HTTP: 400 naming the field, concept unchanged
    before = client.request("GET", f"/v1/concepts/{concept['id']}").body
    bad = client.request("POST", f"/v1/concepts/{concept['id']}/images", files=[("image", "x.png", b"junk")])
    assert bad.status == 400 and bad.body["error"]["field"] == "image[0]"
    assert client.request("GET", f"/v1/concepts/{concept['id']}").body == before

    job = client.train(concept["id"], TRAIN_STEPS)
    assert job["state"] == "queued" and job["queue"] == "train"
    job = client.wait_job(job["id"], JOB_TIMEOUT)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["progress"] == 1.0
    history = job["progress_history"]
    assert [e["step"] for e in history] == list(range(1, TRAIN_STEPS + 1))
    assert all(set(e["losses"]) >= {"ce", "gen", "total"} for e in history)

    # the stored checkpoint: in the S3 bucket under the tenant's prefix, loadable on this backbone
    trained = client.request("GET", f"/v1/concepts/{concept['id']}").body
    version = trained["current_version"]
    assert trained["status"] == "ready" and version["job_id"] == job["id"]
    assert version["backbone_fingerprint"] == tiny.fingerprint()
    prefix = job["result"]["object_prefix"]
    s3 = stack.s3_client()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)["Contents"])
    assert keys == [f"{prefix}/concept.json", f"{prefix}/tokens.safetensors"]
    tenant_prefix = prefix.split("/")[0]
    all_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket)["Contents"]]
    assert all(k.startswith(tenant_prefix + "/") for k in all_keys)
    folder = Path(stack.settings.data_dir) / "downloaded"
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (folder / key.rsplit("/", 1)[1]).write_bytes(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
    assert load_concept(folder, tiny.fingerprint()).name == "maeve"

    # ask / generate / edit on the render queue
    photo = _photos()[0][1]
    started = {
        "ask": client.ask(concept["id"], "is <maeve> in this image ?", photo),
        "generate": client.generate(concept["id"], "<maeve> at its home", seed=1, steps=3),
        "edit": client.edit(concept["id"], "remove <maeve>", photo, seed=2, steps=3),
    }
    done = {}
    for name, render in started.items():
        render_job = client.wait_job(render["job_id"], JOB_TIMEOUT)
        assert render_job["state"] == "succeeded", (name, render_job["error"])
        assert render_job["queue"] == "render"
        done[name] = client.render(render["id"])
    assert isinstance(done["ask"]["answer"], str) and done["ask"]["image_url"] is None
    trace = done["generate"]["trace"]
    assert set(trace) == {"request", "query", "answer", "prompt"} and trace["request"] == "<maeve> at its home"
    assert "<maeve>" in trace["prompt"] and done["generate"]["conditioned_prompt"] == trace["prompt"]
    for name in ("generate", "edit"):
        png = client.render_image(done[name]["id"])
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (tiny.config.image_size,) * 2
        key = f"{tenant_prefix}/renders/{done[name]['id']}/output.png"
        assert s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() == png

    # secrets stay out of every process's log
    stack.processes.check_alive()
    for proc in stack.processes.processes:
        log_text = proc.log_tail(10_000_000)
        assert client.api_key not in log_text and stack.s3.secret_key not in log_text, proc.name

    # another tenant sees none of it
    other = stack.client("globex")
    for path in (f"/v1/concepts/{concept['id']}", f"/v1/jobs/{job['id']}", f"/v1/renders/{done['edit']['id']}",
                 f"/v1/renders/{done['edit']['id']}/image"):
        assert other.request("GET", path).status == 404, path


def test_a_training_job_survives_its_worker_being_killed(stack: Stack):
    """SIGKILL the train worker mid-run: its heartbeat goes stale, the reaper (Celery beat on the
    housekeeping queue) puts the job back on the queue, a new worker claims it (attempt 2) and
    resumes from the last checkpoint, which it finds in the object store."""
    client = stack.client("initech")
    concept = client.create_concept("rex", [])
    client.upload_images(concept["id"], [("a.png", png_bytes((200, 10, 10))), ("b.png", png_bytes((10, 10, 200)))])
    job = client.train(concept["id"], KILL_TEST_STEPS)
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:  # wait until a checkpoint exists (every CHECKPOINT_EVERY steps) and a bit more
        current = client.job(job["id"])
        assert current["state"] in ("queued", "running"), current
        steps = [e["step"] for e in current["progress_history"]]
        if steps and steps[-1] >= CHECKPOINT_EVERY + 2:
            break
        assert time.monotonic() < deadline, "training did not progress"
        time.sleep(0.2)
    train_worker = next(p for p in stack.processes.processes if p.name == "worker-train" and p.alive())
    stack.processes.kill(train_worker)
    train_worker.popen.wait(timeout=10)
    stack.processes.processes.remove(train_worker)
    train_worker.log_file.close()
    # The replacement runs "on another host": the dead worker's local checkpoints are gone, and
    # only the copy mirrored to S3 remains.
    checkpoint_prefix = f"{stack.tenant_ids['initech']}/jobs/{job['id']}/checkpoint"
    s3_keys = [o["Key"] for o in stack.s3_client().list_objects_v2(Bucket=stack.bucket,
                                                                   Prefix=checkpoint_prefix)["Contents"]]
    assert f"{checkpoint_prefix}/latest" in s3_keys
    shutil.rmtree(stack.settings.work_dir / "jobs" / job["id"])
    # The housekeeping worker's periodic reaper notices the stale heartbeat and requeues the job.
    deadline = time.monotonic() + JOB_TIMEOUT
    while client.job(job["id"])["state"] != "queued":
        assert time.monotonic() < deadline, "the reaper did not requeue the job"
        time.sleep(0.5)
    assert "no heartbeat" in client.job(job["id"])["error"]
    replacement = stack.processes.start_worker("train")
    stack.processes.wait_log(replacement, "ready.", timeout=90)
    final = client.wait_job(job["id"], JOB_TIMEOUT)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempts"] == 2
    assert final["result"]["resumed_from"] >= CHECKPOINT_EVERY
    assert final["result"]["steps_done"] == KILL_TEST_STEPS
    assert stack.s3_client().list_objects_v2(Bucket=stack.bucket, Prefix=checkpoint_prefix).get("KeyCount") == 0
    assert client.request("GET", f"/v1/concepts/{concept['id']}").body["current_version"]["number"] == 1
