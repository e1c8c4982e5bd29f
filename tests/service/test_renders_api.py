"""Renders through the API on PostgreSQL: a tenant-level generate whose prompt names several of the
tenant's concepts, the refusals (unknown or another tenant's identifier, reserved tokens, bounds)
that store nothing, and the stored images answered with presigned URLs."""

from __future__ import annotations

import uuid

import pytest

from api.models import Job, Render

from .conftest import HOME_FACT, create_concept, snapshot


def test_generate_naming_two_concepts_queues_one_render_on_both_versions(acme, two_trained, broker,
                                                                          session_factory):
    response = acme.post("/v1/renders/generate", json={"prompt": "<rex> and <maeve> at the beach", "seed": 7,
                                                       "steps": 3, "guidance": 2.5, "size": 48, "num_images": 2})
    assert response.status_code == 202, response.json
    render = response.json
    assert [c["identifier"] for c in render["concepts"]] == ["<rex>", "<maeve>"]
    assert [c["version_id"] for c in render["concepts"]] == [two_trained["rex"]["version_id"],
                                                             two_trained["maeve"]["version_id"]]
    assert render["concept_id"] == two_trained["rex"]["id"]
    assert (render["seed"], render["steps"], render["guidance"], render["size"], render["num_images"]) == (
        7, 3, 2.5, 48, 2)
    assert render["state"] == "queued" and render["images"] == []
    assert broker.take("render") == [("workers.render", [render["job_id"]])]
    assert acme.get(f"/v1/renders/{render['id']}").json == render


@pytest.mark.parametrize("body, field", [
    ({"prompt": "<maeve> and <bruno>"}, "prompt"),           # not a concept of this tenant
    ({"prompt": "<maeve> and <hidden>"}, "prompt"),          # another tenant's concept
    ({"prompt": "a dog at the beach"}, "prompt"),            # names no concept
    ({"prompt": "<maeve> <gen_1:maeve>"}, "prompt"),         # reserved token
    ({"prompt": "<maeve> <und_3>"}, "prompt"),
    ({"prompt": "<maeve> <|im_start|>"}, "prompt"),          # special token
    ({"prompt": "<maeve> a > b"}, "prompt"),
    ({"prompt": "<maeve>", "seed": -1}, "seed"),
    ({"prompt": "<maeve>", "steps": 1000}, "steps"),
    ({"prompt": "<maeve>", "guidance": 0.5}, "guidance"),
    ({"prompt": "<maeve>", "size": 8}, "size"),
    ({"prompt": "<maeve>", "size": 5000}, "size"),
    ({"prompt": "<maeve>", "num_images": 5}, "num_images"),
    ({"prompt": "<maeve>", "cfg": 2}, "cfg"),
])
def test_bad_generate_is_400_naming_the_field_and_stores_nothing(acme, globex, two_trained, broker, session_factory,
                                                                 store, body, field):
    create_concept(globex, "hidden", HOME_FACT)
    before = snapshot(session_factory, store)
    response = acme.post("/v1/renders/generate", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before
    assert broker.take("render") == []


def test_generate_with_an_untrained_concept_is_409(acme, two_trained, session_factory, store):
    create_concept(acme, "fresh", HOME_FACT)
    before = snapshot(session_factory, store)
    response = acme.post("/v1/renders/generate", json={"prompt": "<maeve> with <fresh>"})
    assert response.status_code == 409 and response.json["error"]["field"] == "prompt"
    assert snapshot(session_factory, store) == before


def test_stored_images_are_answered_with_presigned_urls(acme, globex, two_trained, session_factory, store):
    render = acme.post("/v1/renders/generate", json={"prompt": "<maeve> and <rex>", "num_images": 2}).json
    keys = [f"{acme.tenant_id}/renders/{render['id']}/{name}" for name in ("output.png", "output_1.png")]
    for i, key in enumerate(keys):
        store.put_bytes(key, f"png {i}".encode(), "image/png")
    with session_factory() as session:
        row = session.get(Render, uuid.UUID(render["id"]))
        row.output_object_key = keys[0]
        row.outputs = [{"key": k, "seed": i, "width": 32, "height": 32} for i, k in enumerate(keys)]
        row.timings = {"sample_s": 0.5, "total_s": 0.7}
        session.get(Job, uuid.UUID(render["job_id"])).state = "succeeded"
        session.commit()
    got = acme.get(f"/v1/renders/{render['id']}").json
    assert got["state"] == "succeeded" and got["timings"] == {"sample_s": 0.5, "total_s": 0.7}
    assert [i["seed"] for i in got["images"]] == [0, 1]
    for i, image in enumerate(got["images"]):
        assert image["expires_in"] > 0
        fetched = acme.client.get(image["url"])  # no API key: the signature is the permission
        assert fetched.status_code == 200 and fetched.data == f"png {i}".encode()
    assert globex.get(f"/v1/renders/{render['id']}").status_code == 404


def test_generate_is_idempotent(acme, two_trained, broker, session_factory):
    headers = {"Idempotency-Key": "gen-1"}
    first = acme.post("/v1/renders/generate", json={"prompt": "<maeve> and <rex>"}, headers=headers)
    again = acme.post("/v1/renders/generate", json={"prompt": "<maeve> and <rex>"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == first.json["id"]
    assert len(broker.take("render")) == 1
