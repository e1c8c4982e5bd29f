"""The worker job functions in-process, on the embedded defaults (SQLite made by the migrations,
local object store) and the `tiny` backbone: training writes progress, uploads the checkpoint and
records the version; rendering stores the image and the recaptioning trace; failures say why."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from api.concepts import service as concepts
from api.concepts.schemas import ConceptCreate
from api.jobs import service as jobs
from api.models import Concept, ConceptVersion, Job, Render
from api.renders import service as renders
from api.renders.schemas import RenderCreate
from workers.rendering import run_render_job
from workers.runtime import WorkerRuntime
from workers.training import run_train_job

from .conftest import MemoryBroker, png_bytes
from .worker_setup import new_tenant, worker_runtime

STEPS = 6


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    return worker_runtime(tmp_path_factory.mktemp("worker"), OMNI_CHECKPOINT_EVERY="2")


@pytest.fixture(scope="module")
def tenant_id(rt: WorkerRuntime) -> uuid.UUID:
    return new_tenant(rt, "workers")


def _concept_with_photos(rt: WorkerRuntime, tenant_id: uuid.UUID, name: str) -> uuid.UUID:
    with rt.session_factory() as session:
        concept = concepts.create_concept(session, tenant_id, ConceptCreate(name, [("What is the home of {c}?",
                                                                                    "the beach")]))
        uploads = [concepts.Upload(f"{i}.png", png_bytes((40 * i, 100, 200 - 30 * i))) for i in range(3)]
        concepts.add_images(session, rt.store, concept, uploads, max_pixels=10**6, max_images=10)
        return concept.id


def _start_training(rt: WorkerRuntime, concept_id: uuid.UUID) -> uuid.UUID:
    with rt.session_factory() as session:
        concept = session.get(Concept, concept_id)
        return concepts.start_training(session, MemoryBroker().publisher, concept, STEPS, "tiny").id


@pytest.fixture(scope="module")
def trained(rt: WorkerRuntime, tenant_id: uuid.UUID) -> dict:
    concept_id = _concept_with_photos(rt, tenant_id, "maeve")
    job_id = _start_training(rt, concept_id)
    state = run_train_job(rt, job_id)
    return {"concept_id": concept_id, "job_id": job_id, "state": state}


def test_training_records_progress_version_and_checkpoint(rt, trained, tmp_path):
    from omnipersona.artifacts import load_concept

    assert trained["state"] == "succeeded"
    with rt.session_factory() as session:
        job = session.get(Job, trained["job_id"])
        concept = session.get(Concept, trained["concept_id"])
        versions = session.scalars(select(ConceptVersion).where(ConceptVersion.concept_id == concept.id)).all()
    assert (job.state, job.attempts, job.progress, job.error) == ("succeeded", 1, 1.0, None)
    assert [e["step"] for e in job.progress_history] == list(range(1, STEPS + 1))
    assert all(e["steps"] == STEPS and e["losses"]["total"] > 0 for e in job.progress_history)
    assert job.heartbeat_at is not None and job.finished_at is not None
    assert len(versions) == 1
    version = versions[0]
    assert concept.status == "ready" and concept.current_version_id == version.id
    assert version.backbone_fingerprint == rt.backbone().fingerprint() and version.metrics["steps"] == STEPS
    assert job.result["version_id"] == str(version.id)
    keys = rt.store.list_keys(version.object_prefix)
    assert keys == [f"{version.object_prefix}/concept.json", f"{version.object_prefix}/tokens.safetensors"]
    assert version.object_prefix.startswith(f"{concept.tenant_id}/concepts/{concept.id}/versions/")
    for key in keys:
        (tmp_path / Path(key).name).write_bytes(rt.store.get_bytes(key))
    tokens = load_concept(tmp_path, rt.backbone().fingerprint())
    assert tokens.name == "maeve"
    assert not rt.job_dir(trained["job_id"]).exists()  # the resumable checkpoint is cleaned up
    assert rt.store.list_keys(f"{concept.tenant_id}/jobs") == []  # and its copy in the store


def test_a_second_delivery_of_a_finished_job_does_nothing(rt, trained):
    assert run_train_job(rt, trained["job_id"]) == "skipped"
    with rt.session_factory() as session:
        count = len(session.scalars(select(ConceptVersion)
                                    .where(ConceptVersion.concept_id == trained["concept_id"])).all())
    assert count == 1


def _render(rt: WorkerRuntime, concept_id: uuid.UUID, spec: RenderCreate) -> tuple[Render, Job]:
    with rt.session_factory() as session:
        concept = session.get(Concept, concept_id)
        render, job = renders.start_render(session, rt.store, MemoryBroker().publisher, concept, spec,
                                           max_pixels=10**6)
    assert run_render_job(rt, job.id) == "succeeded"
    with rt.session_factory() as session:
        return session.get(Render, render.id), session.get(Job, job.id)


def test_generate_stores_image_and_recaptioning_trace(rt, trained):
    from PIL import Image

    render, job = _render(rt, trained["concept_id"], RenderCreate("generate", "<maeve> at its home", 0, 2, None))
    assert job.state == "succeeded" and job.result["trace"] == render.trace
    assert set(render.trace) == {"request", "query", "answer", "prompt"}
    assert render.trace["request"] == "<maeve> at its home" and "<maeve>" in render.trace["prompt"]
    assert render.conditioned_prompt == render.trace["prompt"]
    image = Image.open(io.BytesIO(rt.store.get_bytes(render.output_object_key)))
    size = rt.backbone().config.image_size
    assert image.format == "PNG" and image.size == (size, size)


def test_ask_and_edit_reuse_the_loaded_backbone_and_cached_tokens(rt, trained):
    backbone = rt.backbone()
    ask, _ = _render(rt, trained["concept_id"], RenderCreate("ask", "Is <maeve> in this image?", 0, 2, png_bytes()))
    assert isinstance(ask.answer, str) and ask.output_object_key is None
    edit, _ = _render(rt, trained["concept_id"], RenderCreate("edit", "remove <maeve>", 1, 2, png_bytes()))
    assert rt.store.exists(edit.output_object_key) and edit.trace is None
    assert rt.backbone() is backbone and len(rt._backbones) == 1
    assert edit.version_id in rt.cached_concept_versions()


def test_cancel_requested_stops_training_without_a_version(rt, tenant_id):
    concept_id = _concept_with_photos(rt, tenant_id, "cancelme")
    job_id = _start_training(rt, concept_id)
    with rt.session_factory() as session:
        session.get(Job, job_id).cancel_requested = True  # the API sets this for a running job
        session.commit()
    assert run_train_job(rt, job_id) == "canceled"
    with rt.session_factory() as session:
        assert session.get(Job, job_id).state == "canceled"
        concept = session.get(Concept, concept_id)
        assert concept.status == "draft" and concept.current_version_id is None


def test_a_failed_job_records_why(rt, tenant_id):
    concept_id = _concept_with_photos(rt, tenant_id, "broken")
    with rt.session_factory() as session:
        lost = session.get(Concept, concept_id).images[0].object_key
    rt.store.delete(lost)  # a photo vanished from the object store
    job_id = _start_training(rt, concept_id)
    assert run_train_job(rt, job_id) == "failed"
    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and job.error.startswith("ObjectNotFound") and lost in job.error
        assert session.get(Concept, concept_id).status == "failed"
        assert jobs.claim(session, job_id, 3) is None


def test_a_job_taken_over_by_the_reaper_is_released_not_canceled(rt, tenant_id):
    """The reaper requeues a job whose worker looked dead; if that worker was alive after all, it
    stops at its next step and leaves the row and the checkpoints to the next attempt."""
    import threading
    import time

    concept_id = _concept_with_photos(rt, tenant_id, "slowpoke")
    with rt.session_factory() as session:
        concept = session.get(Concept, concept_id)
        job_id = concepts.start_training(session, MemoryBroker().publisher, concept, 5000, "tiny").id
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_train_job(rt, job_id)))
    worker.start()
    deadline = time.monotonic() + 60
    with rt.session_factory() as session:
        while not session.get(Job, job_id).progress_history:  # training has started
            assert time.monotonic() < deadline and worker.is_alive()
            session.expire_all()
            time.sleep(0.05)
        broker = MemoryBroker()
        report = jobs.reap(session, broker.publisher, stale_after_seconds=0, max_attempts=3,
                           requeue_queued_after_seconds=300)
    assert report.requeued == [job_id]
    worker.join(timeout=60)
    assert outcome == ["released"]
    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.attempts) == ("queued", 1) and "no heartbeat" in job.error
        assert session.get(Concept, concept_id).current_version_id is None
    assert broker.take("train") == [("workers.train", [str(job_id)])]
