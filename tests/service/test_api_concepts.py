"""POST/GET /v1/concepts, image upload, start training: success paths, tenant isolation, and bad
input that answers 4xx naming the field and leaves stored data unchanged."""

from __future__ import annotations

import io

import pytest

from .conftest import FACTS, create_concept, png_bytes, snapshot


def test_create_concept_stores_facts_with_placeholder(acme):
    concept = create_concept(acme)
    assert concept["identifier"] == "<maeve>"
    assert concept["status"] == "draft"
    assert concept["current_version"] is None
    # "<maeve>" in a fact is stored as {c}, the form training takes
    assert concept["facts"] == [{"question": "What is the home of {c}?", "answer": "the beach"},
                                {"question": "What is the toy of {c}?", "answer": "a blue ball"}]
    got = acme.get(f"/v1/concepts/{concept['id']}")
    assert got.status_code == 200 and got.json == concept
    listed = acme.get("/v1/concepts").json["concepts"]
    assert [c["id"] for c in listed] == [concept["id"]]


@pytest.mark.parametrize("body, field", [
    ({"facts": FACTS}, "name"),
    ({"name": "Maeve"}, "name"),
    ({"name": "a" * 33}, "name"),
    ({"name": "maeve", "facts": "the beach"}, "facts"),
    ({"name": "maeve", "facts": [["q", "a"]]}, "facts[0]"),
    ({"name": "maeve", "facts": [{"question": "Where does it live?", "answer": "x"}]}, "facts[0].question"),
    ({"name": "maeve", "facts": [{"question": "What is {c}?", "answer": ""}]}, "facts[0].answer"),
    ({"name": "maeve", "facts": [{"question": "What is {c} to <und_3>?", "answer": "x"}]}, "facts[0].question"),
    ({"name": "maeve", "facts": [{"question": "Who is {c}?", "answer": "<|im_end|>"}]}, "facts[0].answer"),
    ({"name": "maeve", "colour": "red"}, "colour"),
    ([1, 2], "body"),
])
def test_create_concept_bad_input(acme, session_factory, store, body, field):
    before = snapshot(session_factory, store)
    response = acme.post("/v1/concepts", json=body)
    assert response.status_code == 400
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before


def test_create_concept_invalid_json_names_body(acme, session_factory, store):
    before = snapshot(session_factory, store)
    response = acme.post("/v1/concepts", data=b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.json["error"]["field"] == "body"
    assert snapshot(session_factory, store) == before


def test_duplicate_name_conflicts_but_other_tenant_may_reuse_it(acme, globex, session_factory, store):
    create_concept(acme)
    before = snapshot(session_factory, store)
    response = acme.post("/v1/concepts", json={"name": "maeve", "facts": []})
    assert response.status_code == 409 and response.json["error"]["field"] == "name"
    assert snapshot(session_factory, store) == before
    assert globex.post("/v1/concepts", json={"name": "maeve"}).status_code == 201


def test_other_tenants_concept_is_not_found(acme, globex):
    concept = create_concept(acme)
    upload = {"image": (io.BytesIO(png_bytes()), "a.png")}
    for response in (globex.get(f"/v1/concepts/{concept['id']}"),
                     globex.post(f"/v1/concepts/{concept['id']}/images", data=upload),
                     globex.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3})):
        assert response.status_code == 404
        assert response.json["error"]["field"] == "concept"
    assert globex.get("/v1/concepts").json["concepts"] == []
    assert acme.get("/v1/concepts/not-a-uuid").status_code == 404


def test_upload_images_stores_reencoded_png_under_tenant_prefix(acme, store):
    concept = create_concept(acme)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 10)).save(jpeg, format="JPEG")
    response = acme.post(f"/v1/concepts/{concept['id']}/images", data={
        "image": [(io.BytesIO(png_bytes()), "red.png"), (io.BytesIO(jpeg.getvalue()), "green.jpg")]})
    assert response.status_code == 201, response.json
    images = response.json["images"]
    assert [(i["width"], i["height"]) for i in images] == [(32, 32), (40, 30)]
    keys = store.list_keys(str(acme.tenant_id))
    assert keys == sorted(f"{acme.tenant_id}/concepts/{concept['id']}/images/{i['sha256']}.png" for i in images)
    for key in keys:
        assert store.get_bytes(key).startswith(b"\x89PNG")
    # the same photo again is recognised, not stored twice
    again = acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "red.png")})
    assert again.status_code == 201 and again.json["images"][0]["duplicate"] is True
    assert len(acme.get(f"/v1/concepts/{concept['id']}").json["images"]) == 2


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize("files, field", [
    (None, "image"),
    ([(b"", "empty.png")], "image[0]"),
    ([(b"not an image at all", "x.png")], "image[0]"),
    ([(_gif(), "anim.gif")], "image[0]"),  # GIF is not on the allow-list
    ([(_gif(), "anim.gif"), (png_bytes()[:40], "truncated.png")], "image[0]"),  # every file bad: nothing kept
    ([(png_bytes(size=300), "huge.png")], "image[0]"),  # over the test's 256x256 pixel limit
])
def test_upload_bad_images_leaves_concept_unchanged(acme, session_factory, store, files, field):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes((0, 0, 255))), "b.png")})
    before = snapshot(session_factory, store)
    data = {} if files is None else {"image": [(io.BytesIO(b if b is not None else png_bytes()), n) for b, n in files]}
    response = acme.post(f"/v1/concepts/{concept['id']}/images", data=data)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before


def test_request_over_max_content_length_is_413(acme, session_factory, store, app):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    concept = create_concept(acme)
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(b"x" * 5000), "a.png")})
    assert response.status_code == 413 and response.json["error"]["field"] == "body"
    assert snapshot(session_factory, store) == before


def test_start_training_queues_a_job_on_the_train_queue(acme, broker):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    response = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 7})
    assert response.status_code == 202, response.json
    job = response.json
    assert (job["kind"], job["state"], job["queue"], job["payload"]) == ("train", "queued", "train",
                                                                          {"recipe": "default", "steps": 7,
                                                                          "warm_start": True, "backbone": "tiny"})
    assert broker.take("train") == [("workers.train", [job["id"]])]
    assert acme.get(f"/v1/concepts/{concept['id']}").json["status"] == "training"
    # one training at a time per concept
    again = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 7})
    assert again.status_code == 409 and again.json["error"]["field"] == "concept"
    assert broker.take("train") == []


@pytest.mark.parametrize("body, field", [
    ({"steps": 0}, "steps"), ({"steps": 10**9}, "steps"), ({"steps": "5"}, "steps"), ({"steps": True}, "steps"),
    ({"lr": 1.0}, "lr"), ("steps", "body"),
])
def test_start_training_bad_input(acme, session_factory, store, broker, body, field):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{concept['id']}/train", json=body)
    assert response.status_code == 400 and response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before
    assert broker.take("train") == []


def test_training_needs_an_image(acme, session_factory, store, broker):
    concept = create_concept(acme)
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{concept['id']}/train")
    assert response.status_code == 409 and response.json["error"]["field"] == "images"
    assert snapshot(session_factory, store) == before
    assert broker.take("train") == []
