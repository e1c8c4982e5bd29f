"""The train job in-process (SQLite made by the migrations, local store, `tiny` backbone): warm
start into version 2 with its parent, previews at checkpoints, "save now", "stop and keep", the
mock recipe, and a recipe's overrides reaching the trainer."""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from api.concepts import service as concepts
from api.concepts.schemas import ConceptCreate
from api.jobs import service as jobs
from api.models import Concept, ConceptVersion, Job, TrainingSnapshot
from workers.runtime import WorkerRuntime
from workers.training import run_train_job

from .conftest import MemoryBroker, png_bytes
from .worker_setup import new_tenant, worker_runtime


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    return worker_runtime(tmp_path_factory.mktemp("train-worker"), OMNI_CHECKPOINT_EVERY="3",
                          OMNI_PREVIEW_SAMPLE_STEPS="2")


@pytest.fixture(scope="module")
def tenant_id(rt: WorkerRuntime) -> uuid.UUID:
    return new_tenant(rt, "trainers")


def _concept(rt: WorkerRuntime, tenant_id: uuid.UUID, name: str, photos: int = 2) -> uuid.UUID:
    with rt.session_factory() as session:
        concept = concepts.create_concept(session, tenant_id, ConceptCreate(name, []))
        uploads = [concepts.Upload(f"{i}.png", png_bytes((50 * i, 120, 30))) for i in range(photos)]
        concepts.add_images(session, rt.store, concept, uploads, max_pixels=10**6, max_images=20)
        return concept.id


def _train(rt: WorkerRuntime, concept_id: uuid.UUID, recipe: dict) -> uuid.UUID:
    with rt.session_factory() as session:
        concept = session.get(Concept, concept_id)
        return concepts.start_training(session, MemoryBroker().publisher, concept, recipe["steps"], "tiny", recipe).id


def _versions(rt: WorkerRuntime, concept_id: uuid.UUID) -> list[ConceptVersion]:
    with rt.session_factory() as session:
        return list(session.scalars(select(ConceptVersion).where(ConceptVersion.concept_id == concept_id)
                                    .order_by(ConceptVersion.number)))


def _snapshots(rt: WorkerRuntime, job_id: uuid.UUID) -> list[TrainingSnapshot]:
    with rt.session_factory() as session:
        return list(session.scalars(select(TrainingSnapshot).where(TrainingSnapshot.job_id == job_id)
                                    .order_by(TrainingSnapshot.kind, TrainingSnapshot.step)))


def _tokens(rt: WorkerRuntime, prefix: str, folder: Path):
    from omnipersona.artifacts import load_concept

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokens.safetensors", "concept.json"):
        (folder / name).write_bytes(rt.store.get_bytes(f"{prefix}/{name}"))
    return load_concept(folder, rt.backbone().fingerprint())


def test_mock_then_warm_started_training_makes_version_2_with_previews(rt, tenant_id, tmp_path, monkeypatch):
    from PIL import Image

    import omnipersona.trainer as trainer

    concept_id = _concept(rt, tenant_id, "maeve")
    mock_job = _train(rt, concept_id, {"recipe": "mock", "steps": 2, "batch_size": 1, "warm_start": True})
    started = time.monotonic()
    assert run_train_job(rt, mock_job) == "succeeded"
    assert time.monotonic() - started < 30
    (v1,) = _versions(rt, concept_id)
    assert (v1.number, v1.source, v1.parent_version_id, v1.metrics["steps"]) == (1, "mock", None, 2)
    assert _snapshots(rt, mock_job) == []  # the mock recipe renders no previews
    v1_tokens = _tokens(rt, v1.object_prefix, tmp_path / "v1")

    seen = {}
    real_train = trainer.train_concept

    def spy(*args, **kwargs):  # what the worker hands the trainer
        seen["init"], seen["recipe"] = kwargs["init"], args[3]
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_concept", spy)
    recipe = {"recipe": "default", "steps": 7, "batch_size": 2, "seed": 5, "loss_weights": {"edit": 0.0},
              "warm_start": True}
    job_id = _train(rt, concept_id, recipe)
    assert run_train_job(rt, job_id) == "succeeded"
    assert seen["init"].embeddings.equal(v1_tokens.embeddings)  # warm start from version 1's tokens
    assert (seen["recipe"].steps, seen["recipe"].batch_size, seen["recipe"].seed) == (7, 2, 5)
    assert (seen["recipe"].loss_weights.edit, seen["recipe"].loss_weights.gen) == (0.0, 1.0)
    v1_again, v2 = _versions(rt, concept_id)
    assert (v2.number, v2.source, v2.parent_version_id) == (2, "trained", v1.id)
    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        concept = session.get(Concept, concept_id)
    assert concept.current_version_id == v2.id and job.result["warm_started_from"] == str(v1.id)
    # previews at the checkpoints (every 3 steps) before the end: steps 3 and 6
    previews = _snapshots(rt, job_id)
    assert [(p.kind, p.step, p.prompt) for p in previews] == [("preview", 3, "<maeve>"), ("preview", 6, "<maeve>")]
    size = rt.backbone().config.image_size
    for preview in previews:
        assert preview.image_key.startswith(f"{tenant_id}/concepts/{concept_id}/training/{job_id}/previews/")
        image = Image.open(io.BytesIO(rt.store.get_bytes(preview.image_key)))
        assert image.format == "PNG" and image.size == (size, size)
    assert not _tokens(rt, v2.object_prefix, tmp_path / "v2").embeddings.equal(v1_tokens.embeddings)


def _run_in_thread(rt: WorkerRuntime, job_id: uuid.UUID) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_train_job(rt, job_id)))
    worker.start()
    return worker, outcome


def _wait(condition, worker: threading.Thread, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)


def _job(rt: WorkerRuntime, job_id: uuid.UUID) -> Job:
    with rt.session_factory() as session:
        return session.get(Job, job_id)


def test_save_now_then_stop_and_keep(rt, tenant_id, tmp_path):
    concept_id = _concept(rt, tenant_id, "rex")
    job_id = _train(rt, concept_id, {"recipe": "default", "steps": 5000, "warm_start": True})
    worker, outcome = _run_in_thread(rt, job_id)
    _wait(lambda: _job(rt, job_id).progress_history, worker)
    with rt.session_factory() as session:
        jobs.request_save(session, session.get(Job, job_id))
    _wait(lambda: any(s.kind == "saved" for s in _snapshots(rt, job_id)), worker)
    saved = next(s for s in _snapshots(rt, job_id) if s.kind == "saved")
    assert saved.step >= 1 and set(saved.metrics) == {"step", "losses"} and saved.metrics["losses"]["total"] > 0
    assert _tokens(rt, saved.tokens_prefix, tmp_path / "saved").name == "rex"
    with rt.session_factory() as session:
        jobs.request_stop_and_keep(session, session.get(Job, job_id))
    worker.join(timeout=60)
    assert outcome == ["succeeded"]
    job = _job(rt, job_id)
    (version,) = _versions(rt, concept_id)
    assert job.state == "succeeded" and job.result["stopped_early"] is True
    assert saved.step <= job.result["steps_done"] < 5000
    assert (version.source, version.number, version.metrics["steps"]) == ("stopped", 1, job.result["steps_done"])
    assert _tokens(rt, version.object_prefix, tmp_path / "kept").name == "rex"
    with rt.session_factory() as session:
        assert session.get(Concept, concept_id).status == "ready"
    assert not rt.job_dir(job_id).exists() and rt.store.list_keys(f"{tenant_id}/jobs/{job_id}") == []


def test_cancel_keeps_no_version_and_retry_trains_again(rt, tenant_id):
    concept_id = _concept(rt, tenant_id, "kit")
    job_id = _train(rt, concept_id, {"recipe": "default", "steps": 5000, "warm_start": True})
    worker, outcome = _run_in_thread(rt, job_id)
    _wait(lambda: _job(rt, job_id).progress_history, worker)
    with rt.session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
    worker.join(timeout=60)
    assert outcome == ["canceled"] and _versions(rt, concept_id) == []
    broker = MemoryBroker()
    with rt.session_factory() as session:
        retried = jobs.retry_job(session, session.get(Job, job_id), broker.publisher)
        session.execute(  # a shorter run than the original, to keep the test quick
            Job.__table__.update().where(Job.id == retried.id).values(payload={**retried.payload, "steps": 3}))
        session.commit()
    assert broker.take("train") == [("workers.train", [str(retried.id)])]
    assert run_train_job(rt, retried.id) == "succeeded"
    (version,) = _versions(rt, concept_id)
    assert version.job_id == retried.id and _job(rt, retried.id).retry_of_id == job_id
