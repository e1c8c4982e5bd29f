"""Draining a worker on SIGTERM (workers/drain.py): the running training stops at its next step,
its checkpoint reaches the object store, the job goes back on the train queue without spending an
attempt, and the next worker resumes it from that step; a cancel asked meanwhile still wins. And
the signal path itself: the main process forwards SIGTERM to pool children, whose handler only
raises the drain flag (a second SIGTERM kills)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from sqlalchemy import select, update

import omnipersona.trainer as trainer
from api.admin import create_tenant
from api.concepts import service as concepts
from api.concepts.schemas import ConceptCreate
from api.models import Concept, ConceptVersion, Job
from workers import drain
from workers.healthcheck import local_node_answered
from workers.runtime import WorkerRuntime
from workers.training import checkpoint_prefix, run_train_job

from .conftest import MemoryBroker, png_bytes
from .worker_setup import worker_runtime

REAL_TRAIN_CONCEPT = trainer.train_concept


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    return worker_runtime(tmp_path_factory.mktemp("drain"), OMNI_CHECKPOINT_EVERY="3", OMNI_PREVIEW_EVERY="100")


@pytest.fixture
def broker(rt: WorkerRuntime) -> MemoryBroker:
    memory = MemoryBroker()
    rt._publisher = memory.publisher  # requeues land where the test reads them
    return memory


@pytest.fixture(autouse=True)
def no_drain_left_over():
    drain.clear_drain()
    yield
    drain.clear_drain()


def _train_job(rt: WorkerRuntime, name: str, steps: int) -> tuple[uuid.UUID, uuid.UUID]:
    with rt.session_factory() as session:
        tenant, _ = create_tenant(session, f"drain_{name}")
        session.commit()
        concept = concepts.create_concept(session, tenant.id, ConceptCreate(name, []))
        uploads = [concepts.Upload(f"{i}.png", png_bytes((60 * i, 90, 40))) for i in range(2)]
        concepts.add_images(session, rt.store, concept, uploads, max_pixels=10**6, max_images=20)
        concept_id = concept.id
    with rt.session_factory() as session:
        recipe = {"recipe": "default", "steps": steps, "batch_size": 1}
        job = concepts.start_training(session, MemoryBroker().publisher, session.get(Concept, concept_id), steps,
                                      "tiny", recipe)
        return concept_id, job.id


def _sigterm_after_step(monkeypatch: pytest.MonkeyPatch, at_step: int, also=lambda: None) -> None:
    """The worker gets SIGTERM right after training step `at_step` (as the signal handler would)."""
    real_train = trainer.train_concept

    def train_until_sigterm(*args, **kwargs):
        worker_after_step = kwargs["after_step"]

        def after_step(step, tokens):
            worker_after_step(step, tokens)
            if step == at_step:
                also()
                drain.request_drain()

        return real_train(*args, **{**kwargs, "after_step": after_step})

    monkeypatch.setattr(trainer, "train_concept", train_until_sigterm)


def test_drained_training_is_requeued_with_its_checkpoint_and_resumes_there(rt, broker, monkeypatch):
    concept_id, job_id = _train_job(rt, "drained", steps=8)
    assert broker.take("train") == [("workers.train", [str(job_id)])]  # the API's own message
    _sigterm_after_step(monkeypatch, at_step=4)

    assert run_train_job(rt, job_id) == "drained"

    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.attempts, job.published_at is not None) == ("queued", 0, True)
        assert session.scalars(select(ConceptVersion).where(ConceptVersion.concept_id == concept_id)).all() == []
        tenant_id = job.tenant_id
    assert broker.take("train") == [("workers.train", [str(job_id)])]
    # The step it stopped at (4, between the periodic checkpoints at 3 and 6) is in the store.
    prefix = checkpoint_prefix(tenant_id, job_id)
    tag = rt.store.get_bytes(f"{prefix}/latest").decode().strip()
    assert tag.endswith("4") and rt.store.exists(f"{prefix}/{tag}/state.safetensors")

    # Another worker (no local copy: its scratch is gone with the pod) picks the message up.
    monkeypatch.setattr(trainer, "train_concept", REAL_TRAIN_CONCEPT)
    drain.clear_drain()
    shutil.rmtree(rt.job_dir(job_id), ignore_errors=True)
    assert run_train_job(rt, job_id) == "succeeded"
    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        versions = session.scalars(select(ConceptVersion).where(ConceptVersion.concept_id == concept_id)).all()
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert (job.result["resumed_from"], job.result["steps_done"]) == (4, 8)
    assert len(versions) == 1 and versions[0].metrics["steps"] == 8
    assert not rt.store.exists(f"{prefix}/latest")  # checkpoint copies removed once done


def test_cancel_asked_during_a_drain_still_cancels(rt, broker, monkeypatch):
    concept_id, job_id = _train_job(rt, "canceled", steps=6)
    broker.take("train")  # the API's own message

    def ask_cancel() -> None:
        with rt.session_factory() as session:
            session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            session.commit()

    _sigterm_after_step(monkeypatch, at_step=2, also=ask_cancel)
    assert run_train_job(rt, job_id) == "canceled"
    with rt.session_factory() as session:
        assert session.get(Job, job_id).state == "canceled"
        assert session.get(Concept, concept_id).current_version_id is None
    assert broker.take("train") == []


CHILD = textwrap.dedent("""
    import sys, time
    from workers import drain
    drain.install_child_handler()
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (sys.argv[1] == "ignore" or not drain.drain_requested()):
        time.sleep(0.02)
    print("drained" if drain.drain_requested() else "timeout", flush=True)
""")


def _child(mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_warm_shutdown_forwards_sigterm_and_the_child_only_raises_the_flag():
    proc = _child("wait")
    drain.forward_drain(how="Warm", children=lambda: [proc.pid])
    out, _ = proc.communicate(timeout=20)
    assert (proc.returncode, out.strip()) == (0, "drained")  # alive until its job let go
    assert drain.drain_requested()  # the main process too (solo / threads pools)


def test_second_sigterm_kills_the_child_and_cold_shutdown_forwards_nothing():
    sent: list[int] = []
    drain.forward_drain(how="Cold", children=lambda: sent.append(1) or [])
    assert sent == [] and not drain.drain_requested()

    proc = _child("ignore")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # two signals at once may reach Python's handler as one
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM


def test_healthcheck_accepts_only_a_node_on_this_host():
    replies = [{"train@pod-a": {"ok": "pong"}}, {"render@pod-b": {"ok": "pong"}}]
    assert local_node_answered(replies, "pod-a")
    assert local_node_answered(replies, "pod-b")
    assert not local_node_answered(replies, "pod-c")
    assert not local_node_answered([], "pod-a")
