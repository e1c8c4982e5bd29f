"""/v1/jobs and ask / generate / edit: queueing on the render queue, tenant isolation, bad input."""

from __future__ import annotations

import io
import uuid

import pytest

from api.models import Job, Render

from .conftest import add_version, create_concept, png_bytes, snapshot


@pytest.fixture
def trained(acme, session_factory):
    concept = create_concept(acme)
    add_version(session_factory, acme.tenant_id, concept["id"])
    return concept


def test_get_job_and_list_jobs(acme, globex, broker):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3}).json
    got = acme.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json["progress_history"] == [] and got.json["attempts"] == 0 and got.json["error"] is None
    assert [j["id"] for j in acme.get("/v1/jobs?state=queued").json["jobs"]] == [job["id"]]
    assert acme.get("/v1/jobs?state=running").json["jobs"] == []
    bad = acme.get("/v1/jobs?state=sleeping")
    assert bad.status_code == 400 and bad.json["error"]["field"] == "state"
    assert globex.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert globex.get("/v1/jobs").json["jobs"] == []


def test_cancel_a_queued_job_restores_the_concept(acme, globex, session_factory, store):
    concept = create_concept(acme)
    acme.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3}).json
    before = snapshot(session_factory, store)
    assert globex.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert snapshot(session_factory, store) == before
    canceled = acme.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json["state"] == "canceled"
    assert acme.get(f"/v1/concepts/{concept['id']}").json["status"] == "draft"
    again = acme.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json["error"]["field"] == "state"


def test_generate_queues_a_render_job(acme, trained, broker, session_factory):
    response = acme.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve> at its home", "seed": 3})
    assert response.status_code == 202, response.json
    render = response.json
    assert (render["kind"], render["state"], render["seed"], render["steps"]) == ("generate", "queued", 3, 20)
    assert render["image_url"] is None and render["trace"] is None
    assert broker.take("render") == [("workers.render", [render["job_id"]])]
    assert acme.get(f"/v1/renders/{render['id']}").json == render
    with session_factory() as session:
        job = session.get(Job, uuid.UUID(render["job_id"]))
        assert job.payload == {"render_id": render["id"], "kind": "generate"} and job.queue == "render"


def test_ask_with_photo_and_edit_store_the_input_under_the_tenant(acme, trained, broker, store):
    ask = acme.post(f"/v1/concepts/{trained['id']}/ask",
                    data={"question": "Is <maeve> in this image?", "image": (io.BytesIO(png_bytes()), "p.png")})
    assert ask.status_code == 202, ask.json
    edit = acme.post(f"/v1/concepts/{trained['id']}/edit",
                     data={"instruction": "remove <maeve>", "seed": "5", "steps": "4",
                           "image": (io.BytesIO(png_bytes()), "p.png")})
    assert edit.status_code == 202, edit.json
    assert (edit.json["seed"], edit.json["steps"]) == (5, 4)
    assert store.list_keys(f"{acme.tenant_id}/renders") == sorted(
        f"{acme.tenant_id}/renders/{r['id']}/input.png" for r in (ask.json, edit.json))
    assert [m[1][0] for m in broker.take("render")] == [ask.json["job_id"], edit.json["job_id"]]
    plain = acme.post(f"/v1/concepts/{trained['id']}/ask", json={"question": "What is the toy of <maeve>?"})
    assert plain.status_code == 202


@pytest.mark.parametrize("kind, kwargs, field", [
    ("generate", {"json": {"prompt": "a dog at the beach"}}, "prompt"),  # does not name the concept
    ("generate", {"json": {"prompt": "<maeve> and <rex>"}}, "prompt"),
    ("generate", {"json": {"prompt": "<maeve> <gen_1>"}}, "prompt"),
    ("generate", {"json": {"prompt": "<maeve> " + "x" * 600}}, "prompt"),
    ("generate", {"json": {"prompt": "<maeve>", "seed": -1}}, "seed"),
    ("generate", {"json": {"prompt": "<maeve>", "steps": 1000}}, "steps"),
    ("generate", {"json": {"prompt": "<maeve>", "cfg": 2}}, "cfg"),
    ("generate", {"data": {"prompt": "<maeve>", "image": (io.BytesIO(png_bytes()), "p.png")}}, "image"),
    ("ask", {"json": {}}, "question"),
    ("ask", {"json": {"question": "Is <maeve> here?", "seed": 1}}, "seed"),
    ("ask", {"data": {"question": "Is <maeve> here?", "image": (io.BytesIO(b"junk"), "p.png")}}, "image"),
    ("edit", {"json": {"instruction": "remove <maeve>"}}, "image"),
    ("edit", {"data": {"instruction": "remove <maeve>", "steps": "many",
                       "image": (io.BytesIO(png_bytes()), "p.png")}}, "steps"),
    ("edit", {"data": {"instruction": "remove <maeve>", "image": (io.BytesIO(b"GIF89a"), "p.gif")}}, "image"),
])
def test_render_bad_input_is_400_and_stores_nothing(acme, trained, broker, session_factory, store, kind, kwargs, field):
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{trained['id']}/{kind}", **kwargs)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before
    assert broker.take("render") == []


def test_render_needs_a_trained_concept(acme, session_factory, store, broker):
    concept = create_concept(acme)
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{concept['id']}/generate", json={"prompt": "<maeve> at home"})
    assert response.status_code == 409 and response.json["error"]["field"] == "concept"
    assert snapshot(session_factory, store) == before


def test_renders_of_another_tenant_are_not_found(acme, globex, trained, session_factory, store):
    render = acme.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve> at home"}).json
    before = snapshot(session_factory, store)
    assert globex.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve>"}).status_code == 404
    assert globex.get(f"/v1/renders/{render['id']}").status_code == 404
    assert globex.get(f"/v1/renders/{render['id']}/image").status_code == 404
    assert snapshot(session_factory, store) == before


def test_render_image_is_served_once_stored(acme, trained, session_factory, store):
    render = acme.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve> at home"}).json
    missing = acme.get(f"/v1/renders/{render['id']}/image")
    assert missing.status_code == 404 and missing.json["error"]["field"] == "image"
    key = f"{acme.tenant_id}/renders/{render['id']}/output.png"
    store.put_bytes(key, png_bytes((1, 2, 3)))
    with session_factory() as session:
        session.get(Render, uuid.UUID(render["id"])).output_object_key = key
        session.commit()
    assert acme.get(f"/v1/renders/{render['id']}").json["image_url"] == f"/v1/renders/{render['id']}/image"
    image = acme.get(f"/v1/renders/{render['id']}/image")
    assert image.status_code == 200 and image.mimetype == "image/png" and image.data == png_bytes((1, 2, 3))


def test_a_status_read_costs_three_statements(acme, trained, pg_engine):
    """The hot path the load benchmark measures (docs/reliability.md, Load): auth, the job and the
    queue counts; the queue's recent durations come from the app's cache after the first read. A
    fourth statement here is a regression that costs about a quarter of the reads a server answers."""
    from sqlalchemy import event

    job_id = acme.post(f"/v1/concepts/{trained['id']}/generate", json={"prompt": "<maeve>"}).json["job_id"]
    # the first read stamps the key's last use (once a minute) and fills the durations cache
    assert acme.get(f"/v1/jobs/{job_id}").status_code == 200
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            statements.append(statement)

    event.listen(pg_engine, "before_cursor_execute", record)
    try:
        got = acme.get(f"/v1/jobs/{job_id}")
    finally:
        event.remove(pg_engine, "before_cursor_execute", record)
    assert got.status_code == 200 and got.json["state"] == "queued" and got.json["queue_position"]["position"] == 1
    assert len(statements) == 3, statements
