"""`Idempotency-Key`: a retried POST gets the first answer and creates nothing new."""

from __future__ import annotations

import io

from werkzeug.test import TestResponse

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
    assert other.status_code == 422 and other.json["error"]["field"] == "Idempotency-Key"
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
