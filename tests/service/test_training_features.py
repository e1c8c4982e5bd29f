"""Training features over the API on PostgreSQL: recipe overrides and their bounds, warm start,
cancel / stop-and-keep / save-now / retry, progress ETA and queue position, versions with metrics
and presigned checkpoint downloads (local store here; S3 in test_presigned_urls.py), snapshots."""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from api.models import Concept, ConceptVersion, Job, TrainingSnapshot, utcnow

from .conftest import add_version, create_concept, png_bytes, snapshot


def _concept_with_photo(tc, name: str = "maeve") -> dict:
    if name == "maeve":
        concept = create_concept(tc, name)
    else:  # the shared facts name <maeve>
        concept = tc.post("/v1/concepts", json={"name": name, "facts": []}).json
    response = tc.post(f"/v1/concepts/{concept['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    assert response.status_code == 201
    return concept


def _set_job(session_factory, job_id: str, **values) -> None:
    with session_factory() as session:
        job = session.get(Job, uuid.UUID(job_id))
        for name, value in values.items():
            setattr(job, name, value)
        session.commit()


@pytest.mark.parametrize("body, field", [
    ({"steps": 5001}, "steps"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 65}, "batch_size"),
    ({"batch_size": "8"}, "batch_size"),
    ({"loss_weights": {"gen": 10.5}}, "loss_weights.gen"),
    ({"loss_weights": {"ce": -1}}, "loss_weights.ce"),
    ({"loss_weights": {"ce": 0, "gen": 0, "edit": 0}}, "loss_weights"),
    ({"loss_weights": {"style": 1}}, "loss_weights.style"),
    ({"seed": -1}, "seed"),
    ({"lr": 0.1}, "lr"),
    ({"recipe": "turbo"}, "recipe"),
    ({"recipe": "mock", "steps": 10}, "steps"),
])
def test_recipe_overrides_out_of_bounds_are_refused_naming_the_field(acme, session_factory, store, broker,
                                                                     body, field):
    concept = _concept_with_photo(acme)
    before = snapshot(session_factory, store)
    response = acme.post(f"/v1/concepts/{concept['id']}/train", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before
    assert broker.take("train") == []


def test_recipe_overrides_reach_the_job_and_mock_is_a_recipe(acme, broker):
    concept = _concept_with_photo(acme)
    body = {"steps": 40, "batch_size": 4, "loss_weights": {"gen": 2.5, "edit": 0}, "seed": 7}
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json=body)
    assert job.status_code == 202
    assert job.json["payload"] == {"recipe": "default", "steps": 40, "batch_size": 4, "seed": 7, "warm_start": True,
                                   "loss_weights": {"gen": 2.5, "edit": 0.0}, "backbone": "tiny"}
    assert job.json["progress_detail"] == {"step": 0, "total_steps": 40, "losses": {}, "eta_seconds": None}
    assert broker.take("train") == [("workers.train", [job.json["id"]])]
    other = _concept_with_photo(acme, "rex")
    mock = acme.post(f"/v1/concepts/{other['id']}/train", json={"recipe": "mock"}).json
    assert mock["payload"]["recipe"] == "mock" and mock["payload"]["steps"] == 2 and mock["payload"]["batch_size"] == 1


def test_training_again_warm_starts_from_the_current_version(acme, session_factory):
    concept = _concept_with_photo(acme)
    version_id = add_version(session_factory, acme.tenant_id, concept["id"])
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3}).json
    assert job["payload"]["init_version_id"] == str(version_id)
    acme.post(f"/v1/jobs/{job['id']}/cancel")
    fresh = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3, "warm_start": False}).json
    assert "init_version_id" not in fresh["payload"]


def test_cancel_stop_and_save_follow_the_job_state(acme, globex, session_factory):
    concept = _concept_with_photo(acme)
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 50}).json
    path = f"/v1/jobs/{job['id']}"
    for action in ("cancel", "stop", "save", "retry"):
        assert globex.post(f"{path}/{action}").status_code == 404
    saved = acme.post(f"{path}/save")  # nothing to save before it runs
    assert saved.status_code == 409 and saved.json["error"]["field"] == "state"
    assert acme.post(f"{path}/retry").status_code == 409  # queued: nothing to retry
    _set_job(session_factory, job["id"], state="running", started_at=utcnow())
    for expected in (1, 2):
        saved = acme.post(f"{path}/save")
        assert saved.status_code == 202 and saved.json["save_requests"] == expected
    stopped = acme.post(f"{path}/stop")
    assert stopped.status_code == 202
    assert (stopped.json["state"], stopped.json["cancel_requested"], stopped.json["keep_on_stop"]) == \
        ("running", True, True)
    canceled = acme.post(f"{path}/cancel")  # a cancel after "stop and keep" discards after all
    assert canceled.status_code == 202 and canceled.json["keep_on_stop"] is False
    _set_job(session_factory, job["id"], state="canceled", finished_at=utcnow())
    for action in ("cancel", "stop", "save"):
        again = acme.post(f"{path}/{action}")
        assert again.status_code == 409, action


def test_stop_and_keep_on_a_queued_job_cancels_it(acme, session_factory):
    concept = _concept_with_photo(acme)
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 5}).json
    stopped = acme.post(f"/v1/jobs/{job['id']}/stop")
    assert stopped.status_code == 202 and stopped.json["state"] == "canceled"
    assert acme.get(f"/v1/concepts/{concept['id']}").json["status"] == "draft"


def test_retry_a_failed_training_makes_a_new_job_with_the_same_recipe(acme, session_factory, broker):
    concept = _concept_with_photo(acme)
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 9, "seed": 3}).json
    broker.take("train")
    _set_job(session_factory, job["id"], state="failed", error="RuntimeError: boom", finished_at=utcnow())
    with session_factory() as session:
        session.get(Concept, uuid.UUID(concept["id"])).status = "failed"
        session.commit()
    retried = acme.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202, retried.json
    new = retried.json
    assert new["id"] != job["id"] and new["retry_of"] == job["id"] and new["state"] == "queued"
    assert new["payload"] == job["payload"] and new["attempts"] == 0
    assert broker.take("train") == [("workers.train", [new["id"]])]
    assert acme.get(f"/v1/concepts/{concept['id']}").json["status"] == "training"
    # the concept now has an unfinished training: a second retry is refused
    again = acme.post(f"/v1/jobs/{job['id']}/retry")
    assert again.status_code == 409 and again.json["error"]["field"] == "concept"
    assert acme.get(f"/v1/jobs/{job['id']}").json["state"] == "failed"  # the old job is kept as it was


def test_retry_a_failed_render_requeues_it(acme, session_factory, broker):
    concept = _concept_with_photo(acme)
    add_version(session_factory, acme.tenant_id, concept["id"])
    render = acme.post(f"/v1/concepts/{concept['id']}/generate", json={"prompt": "<maeve> at its home"}).json
    broker.take("render")
    _set_job(session_factory, render["job_id"], state="failed", error="boom", attempts=3, finished_at=utcnow())
    retried = acme.post(f"/v1/jobs/{render['job_id']}/retry")
    assert retried.status_code == 202
    assert (retried.json["id"], retried.json["state"], retried.json["attempts"], retried.json["error"]) == \
        (render["job_id"], "queued", 0, None)
    assert broker.take("render") == [("workers.render", [render["job_id"]])]


def test_progress_has_step_total_losses_and_an_eta(acme, session_factory):
    concept = _concept_with_photo(acme)
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 100}).json
    start = utcnow()
    history = [{"step": s, "steps": 100, "at": (start + timedelta(seconds=s / 2)).isoformat(),
                "losses": {"ce": 1.0 / s, "gen": 0.5, "total": 1.0 / s + 0.5}} for s in (10, 20, 30, 40)]
    _set_job(session_factory, job["id"], state="running", started_at=start, progress=0.4, progress_history=history)
    detail = acme.get(f"/v1/jobs/{job['id']}").json["progress_detail"]
    # 30 steps in 15 s: 0.5 s a step, 60 steps left
    assert detail == {"step": 40, "total_steps": 100, "losses": history[-1]["losses"], "eta_seconds": 30.0}


def test_queue_position_and_eta_from_recent_durations(acme, session_factory):
    names = ["maeve", "rex", "tom", "kit"]
    concepts = [_concept_with_photo(acme, n) for n in names]
    # two finished trainings: 100 steps in 50 s and 300 steps in 150 s -> 0.5 s a step
    now = utcnow()
    with session_factory() as session:
        for steps, seconds in ((100, 50), (300, 150)):
            session.add(Job(tenant_id=acme.tenant_id, concept_id=uuid.UUID(concepts[0]["id"]), kind="train",
                            queue="train", state="succeeded", payload={"steps": steps},
                            started_at=now - timedelta(seconds=seconds + 60), finished_at=now - timedelta(seconds=60)))
        session.commit()
    jobs = [acme.post(f"/v1/concepts/{c['id']}/train", json={"steps": 20 * (i + 1)}).json
            for i, c in enumerate(concepts)]
    _set_job(session_factory, jobs[0]["id"], state="running", started_at=now, progress=0.5)  # 20 steps, half done
    running = acme.get(f"/v1/jobs/{jobs[0]['id']}").json
    assert running["queue_position"] is None
    positions = [acme.get(f"/v1/jobs/{j['id']}").json["queue_position"] for j in jobs[1:]]
    assert [(p["position"], p["ahead"], p["running"]) for p in positions] == [(1, 0, 1), (2, 1, 1), (3, 2, 1)]
    # 5 s left on the running job, then 40 and 60 steps at 0.5 s a step
    assert [p["eta_seconds"] for p in positions] == [5.0, 25.0, 55.0]


def _versions(session_factory, tenant_id, concept_id: str, count: int) -> list[uuid.UUID]:
    ids = []
    with session_factory() as session:
        parent = None
        for number in range(1, count + 1):
            job = Job(tenant_id=tenant_id, concept_id=uuid.UUID(concept_id), kind="train", queue="train",
                      state="succeeded", payload={"steps": 10})
            session.add(job)
            session.flush()
            prefix = f"{tenant_id}/concepts/{concept_id}/versions/{job.id}"
            version = ConceptVersion(tenant_id=tenant_id, concept_id=uuid.UUID(concept_id), job_id=job.id,
                                     number=number, object_prefix=prefix,
                                     backbone="tiny", backbone_fingerprint="f" * 32,
                                     metrics={"final_total": 1.0 / number, "steps": 10}, parent_version_id=parent,
                                     source="trained" if number == 1 else "stopped")
            session.add(version)
            session.flush()
            parent = version.id
            ids.append(version.id)
        session.get(Concept, uuid.UUID(concept_id)).current_version_id = parent
        session.commit()
    return ids


def test_versions_are_listed_with_metrics_and_lineage(acme, globex, session_factory):
    concept = _concept_with_photo(acme)
    v1, v2 = _versions(session_factory, acme.tenant_id, concept["id"], 2)
    listed = acme.get(f"/v1/concepts/{concept['id']}/versions")
    assert listed.status_code == 200
    versions = listed.json["versions"]
    assert [(v["number"], v["current"], v["source"]) for v in versions] == [(2, True, "stopped"), (1, False, "trained")]
    assert versions[0]["parent_version_id"] == str(v1) and versions[1]["parent_version_id"] is None
    assert versions[0]["metrics"] == {"final_total": 0.5, "steps": 10}
    one = acme.get(f"/v1/concepts/{concept['id']}/versions/{v2}")
    assert one.status_code == 200 and one.json == versions[0]
    assert globex.get(f"/v1/concepts/{concept['id']}/versions").status_code == 404
    assert globex.get(f"/v1/concepts/{concept['id']}/versions/{v2}").status_code == 404
    other = _concept_with_photo(acme, "rex")  # a version asked for through another concept
    assert acme.get(f"/v1/concepts/{other['id']}/versions/{v2}").status_code == 404
    assert acme.get(f"/v1/concepts/{concept['id']}/versions/not-a-uuid").status_code == 404


def test_a_version_checkpoint_downloads_by_presigned_url_until_it_expires(acme, globex, session_factory, store, app):
    concept = _concept_with_photo(acme)
    (version_id,) = _versions(session_factory, acme.tenant_id, concept["id"], 1)
    with session_factory() as session:
        prefix = session.get(ConceptVersion, version_id).object_prefix
    store.put_bytes(f"{prefix}/tokens.safetensors", b"tokens-bytes")
    store.put_bytes(f"{prefix}/concept.json", b'{"name": "maeve"}')
    path = f"/v1/concepts/{concept['id']}/versions/{version_id}/download"
    for bad in ("0", "604801", "soon"):
        refused = acme.get(f"{path}?expires_in={bad}")
        assert refused.status_code == 400 and refused.json["error"]["field"] == "expires_in", bad
    assert globex.get(path).status_code == 404
    answer = acme.get(f"{path}?expires_in=2")
    assert answer.status_code == 200 and answer.json["expires_in"] == 2
    urls = {f["name"]: f["url"] for f in answer.json["files"]}
    assert set(urls) == {"tokens.safetensors", "concept.json"}
    anonymous = app.test_client()  # no API key: the URL itself is the permission
    url = urlsplit(urls["tokens.safetensors"])
    got = anonymous.get(f"{url.path}?{url.query}")
    assert got.status_code == 200 and got.data == b"tokens-bytes"
    tampered = anonymous.get(f"{url.path}?{url.query.replace('expires=', 'expires=9')}")
    assert tampered.status_code == 403
    other_key = anonymous.get(f"{urlsplit(urls['concept.json']).path}?{url.query}")  # another file, same signature
    assert other_key.status_code == 403
    time.sleep(3.1)
    expired = anonymous.get(f"{url.path}?{url.query}")
    assert expired.status_code == 403 and expired.json["error"]["field"] == "signature"


def test_snapshots_are_listed_on_the_job_with_working_urls(acme, globex, session_factory, store, app):
    concept = _concept_with_photo(acme)
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 10}).json
    prefix = f"{acme.tenant_id}/concepts/{concept['id']}/training/{job['id']}"
    store.put_bytes(f"{prefix}/previews/step_0000005.png", png_bytes((1, 2, 3)), "image/png")
    store.put_bytes(f"{prefix}/saved/step_0000007/tokens.safetensors", b"t")
    store.put_bytes(f"{prefix}/saved/step_0000007/concept.json", b"{}")
    with session_factory() as session:
        session.add(TrainingSnapshot(tenant_id=acme.tenant_id, job_id=uuid.UUID(job["id"]), kind="preview", step=5,
                                     image_key=f"{prefix}/previews/step_0000005.png", prompt="<maeve>", metrics={}))
        session.add(TrainingSnapshot(tenant_id=acme.tenant_id, job_id=uuid.UUID(job["id"]), kind="saved", step=7,
                                     tokens_prefix=f"{prefix}/saved/step_0000007", metrics={"step": 7}))
        session.commit()
    got = acme.get(f"/v1/jobs/{job['id']}").json["snapshots"]
    assert [(s["kind"], s["step"]) for s in got] == [("preview", 5), ("saved", 7)]
    assert set(got[0]["urls"]) == {"preview.png"} and set(got[1]["urls"]) == {"tokens.safetensors", "concept.json"}
    url = urlsplit(got[0]["urls"]["preview.png"])
    image = app.test_client().get(f"{url.path}?{url.query}")
    assert image.status_code == 200 and image.data == png_bytes((1, 2, 3)) and image.mimetype == "image/png"
    listed = acme.get(f"/v1/jobs/{job['id']}/snapshots?expires_in=60").json["snapshots"]
    assert [s["id"] for s in listed] == [s["id"] for s in got]
    assert globex.get(f"/v1/jobs/{job['id']}/snapshots").status_code == 404
    with session_factory() as session:
        assert len(session.scalars(select(TrainingSnapshot)).all()) == 2
