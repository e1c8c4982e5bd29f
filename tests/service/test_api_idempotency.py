"""`Idempotency-Key`: a retried POST gets the first answer and creates nothing new."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from api.models import Batch, ConceptImage, Job, Render, utcnow

from .conftest import add_version, create_concept, png_bytes, snapshot


def test_retry_replays_the_first_answer(acme, session_factory, store, broker):
    headers = {"Idempotency-Key": "create-maeve-1"}
    first = acme.post("/v1/concepts", json={"name": "maeve"}, headers=headers)
    assert first.status_code == 201
    before = snapshot(session_factory, store)
    again = acme.post("/v1/concepts", json={"name": "maeve"}, headers=headers)
    assert again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert snapshot(session_factory, store) == before
    other = acme.post("/v1/concepts", json={"name": "other"}, headers=headers)
    assert other.status_code == 409 and other.json["error"]["field"] == "Idempotency-Key"
    assert snapshot(session_factory, store) == before


def test_training_retry_queues_one_job(acme, broker):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    headers = {"Idempotency-Key": "train-1"}
    first = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 4}, headers=headers)
    again = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 4}, headers=headers)
    assert first.status_code == again.status_code == 202 and first.json["id"] == again.json["id"]
    assert broker.take("train") == [("workers.train", [first.json["id"]])]


def test_multipart_retry_matches_on_content_not_boundary(acme, session_factory, store, broker):
    concept = create_concept(acme)
    add_version(session_factory, acme.tenant_id, concept["id"])
    headers = {"Idempotency-Key": "edit-1"}

    def edit() -> TestResponse:
        return acme.post(f"/v1/concepts/{concept['id']}/edit", headers=headers,
                         data={"instruction": "remove <maeve>", "image": (io.BytesIO(png_bytes()), "p.png")})

    first, again = edit(), edit()
    assert first.status_code == again.status_code == 202 and first.json == again.json
    assert len(broker.take("render")) == 1


def test_a_failed_request_releases_its_key(acme, session_factory, store):
    headers = {"Idempotency-Key": "k"}
    bad = acme.post("/v1/concepts", json={"name": "Not Valid"}, headers=headers)
    assert bad.status_code == 400
    fixed = acme.post("/v1/concepts", json={"name": "maeve"}, headers=headers)
    assert fixed.status_code == 201


def test_keys_are_per_tenant_and_bounded(acme, globex):
    headers = {"Idempotency-Key": "same"}
    assert acme.post("/v1/concepts", json={"name": "maeve"}, headers=headers).status_code == 201
    assert globex.post("/v1/concepts", json={"name": "maeve"}, headers=headers).status_code == 201
    too_long = acme.post("/v1/concepts", json={"name": "x"}, headers={"Idempotency-Key": "k" * 300})
    assert too_long.status_code == 400 and too_long.json["error"]["field"] == "Idempotency-Key"


# -- every job-creating POST, family by family --------------------------------------------------
def _rows(session_factory) -> dict[str, int]:
    with session_factory() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m))
                for m in (ConceptImage, Job, Render, Batch)}


def _check_replay_and_conflict(session_factory, send: Callable[[str], TestResponse],
                               send_other: Callable[[str], TestResponse], status: int, key: str) -> dict:
    """`send(key)` twice makes one thing (the second answer is the first, replayed); the same key on
    another request is 409 naming the header and makes nothing."""
    first = send(key)
    assert first.status_code == status, first.json
    after_first = _rows(session_factory)
    again = send(key)
    assert again.status_code == status and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    other = send_other(key)
    assert other.status_code == 409, other.json
    assert other.json["error"] == {"code": "conflict", "field": "Idempotency-Key",
                                   "message": "this key was used for a different request"}
    assert _rows(session_factory) == after_first
    return first.json


def _photo(name: str = "a.png", color=(200, 30, 30)) -> dict:
    return {"image": (io.BytesIO(png_bytes(color)), name)}


def test_uploads(acme, session_factory, broker):
    concept = create_concept(acme)
    path = f"/v1/concepts/{concept['id']}/images"
    before = _rows(session_factory)["concept_images"]
    _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post(path, data=_photo(), headers={"Idempotency-Key": key}),
        lambda key: acme.post(path, data=_photo(color=(10, 200, 10)), headers={"Idempotency-Key": key}),
        201, "upload-1")
    assert _rows(session_factory)["concept_images"] == before + 1


def test_train(acme, session_factory, broker):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data=_photo())
    path = f"/v1/concepts/{concept['id']}/train"
    before = _rows(session_factory)["jobs"]
    _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post(path, json={"steps": 4}, headers={"Idempotency-Key": key}),
        lambda key: acme.post(path, json={"steps": 5}, headers={"Idempotency-Key": key}),
        202, "train-2")
    assert _rows(session_factory)["jobs"] == before + 1


def _training_job(acme, session_factory, state: str) -> str:
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data=_photo())
    job_id = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 50}).json["id"]
    with session_factory() as session:
        job = session.get(Job, uuid.UUID(job_id))
        job.state = state
        job.started_at = utcnow()
        if state == "failed":
            job.finished_at = utcnow()
            job.error = "RuntimeError: boom"
        session.commit()
    return job_id


def test_save_now_counts_a_retried_request_once(acme, session_factory, broker):
    path = f"/v1/jobs/{_training_job(acme, session_factory, 'running')}"
    first = _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post(f"{path}/save", headers={"Idempotency-Key": key}),
        lambda key: acme.post(f"{path}/stop", headers={"Idempotency-Key": key}),  # another route
        202, "save-1")
    assert first["save_requests"] == 1
    assert acme.get(path).json["save_requests"] == 1 and acme.get(path).json["cancel_requested"] is False
    # a new key is a new request
    assert acme.post(f"{path}/save", headers={"Idempotency-Key": "save-2"}).json["save_requests"] == 2


def test_stop_and_keep(acme, session_factory, broker):
    path = f"/v1/jobs/{_training_job(acme, session_factory, 'running')}"
    first = _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post(f"{path}/stop", headers={"Idempotency-Key": key}),
        lambda key: acme.post(f"{path}/save", headers={"Idempotency-Key": key}),
        202, "stop-1")
    assert (first["cancel_requested"], first["keep_on_stop"]) == (True, True)
    assert acme.get(path).json["save_requests"] == 0


def test_retry_makes_one_new_job(acme, session_factory, broker):
    job_id = _training_job(acme, session_factory, "failed")
    before = _rows(session_factory)["jobs"]
    first = _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post(f"/v1/jobs/{job_id}/retry", headers={"Idempotency-Key": key}),
        lambda key: acme.post(f"/v1/jobs/{job_id}/retry", json={"x": 1}, headers={"Idempotency-Key": key}),
        202, "retry-1")
    assert _rows(session_factory)["jobs"] == before + 1 and first["retry_of"] == job_id
    assert [name for name, _ in broker.take("train")] == ["workers.train", "workers.train"]  # train, retry


@pytest.mark.parametrize("kind", ["ask", "generate", "edit"])
def test_renders_on_a_concept(acme, session_factory, broker, kind):
    concept = create_concept(acme)
    add_version(session_factory, acme.tenant_id, concept["id"])
    path = f"/v1/concepts/{concept['id']}/{kind}"
    bodies = {"ask": ({"question": "what is the home of <maeve> ?"}, {"question": "what is the toy of <maeve> ?"}),
              "generate": ({"prompt": "<maeve> at its home", "seed": 1}, {"prompt": "<maeve> at its home", "seed": 2})}

    def send(key: str, variant: int) -> TestResponse:
        headers = {"Idempotency-Key": key}
        if kind == "edit":
            instruction = ["remove <maeve>", "recolour <maeve>"][variant]
            return acme.post(path, headers=headers, data={"instruction": instruction, **_photo()})
        return acme.post(path, json=bodies[kind][variant], headers=headers)

    before = _rows(session_factory)["renders"]
    _check_replay_and_conflict(session_factory, lambda key: send(key, 0), lambda key: send(key, 1), 202, f"{kind}-1")
    assert _rows(session_factory)["renders"] == before + 1
    assert len(broker.take("render")) == 1


def test_tenant_level_generate(acme, session_factory, broker):
    for name in ("maeve", "rex"):
        concept = acme.post("/v1/concepts", json={"name": name, "facts": []}).json
        add_version(session_factory, acme.tenant_id, concept["id"])
    body = {"prompt": "<maeve> with <rex> at the beach", "seed": 0}
    before = _rows(session_factory)["renders"]
    _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post("/v1/renders/generate", json=body, headers={"Idempotency-Key": key}),
        lambda key: acme.post("/v1/renders/generate", json=body | {"seed": 1}, headers={"Idempotency-Key": key}),
        202, "many-1")
    assert _rows(session_factory)["renders"] == before + 1


def test_batches(acme, session_factory, broker):
    concept = acme.post("/v1/concepts", json={"name": "maeve", "facts": []}).json
    add_version(session_factory, acme.tenant_id, concept["id"])
    body = {"template": "<maeve> in the {value}", "values": ["snow", "desert", "city"], "steps": 2}
    before = _rows(session_factory)
    _check_replay_and_conflict(
        session_factory,
        lambda key: acme.post("/v1/batches", json=body, headers={"Idempotency-Key": key}),
        lambda key: acme.post("/v1/batches", json=body | {"values": ["snow"]}, headers={"Idempotency-Key": key}),
        202, "batch-1")
    after = _rows(session_factory)
    assert (after["batches"] - before["batches"], after["renders"] - before["renders"]) == (1, 3)
    assert len(broker.take("render")) == 3
