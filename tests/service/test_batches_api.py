"""Batch rendering through the API on PostgreSQL: expansion (prompts x concepts, template x values),
limits and refusals that store nothing, progress and the per-item report, settling once with a
manifest listing every output and one `batch.done` event, cancel."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from api.batches import service as batches
from api.models import Batch, Job, Render, WebhookDelivery, WebhookEndpoint

from .conftest import HOME_FACT, add_version, create_concept, snapshot


def _finish_items(session_factory, batch_id: str, states: list[str], store) -> None:
    """What render workers do to each item: store its image and finish its job."""
    with session_factory() as session:
        renders = session.scalars(select(Render).where(Render.batch_id == uuid.UUID(batch_id))
                                  .order_by(Render.batch_index)).all()
        for render, state in zip(renders, states, strict=False):
            job = session.get(Job, render.job_id)
            job.state = state
            if state == "succeeded":
                key = f"{render.tenant_id}/renders/{render.id}/output.png"
                store.put_bytes(key, b"png", "image/png")
                render.output_object_key = key
                render.outputs = [{"key": key, "seed": render.seed, "width": 32, "height": 32}]
            elif state == "failed":
                job.error = "RuntimeError: out of memory"
        session.commit()


def test_prompts_times_concepts_make_one_render_job_each(acme, two_trained, broker, session_factory):
    response = acme.post("/v1/batches", json={"prompts": ["{c} at the beach", "{c} in the snow", "{c} with <maeve>"],
                                              "concepts": ["maeve", "<rex>"], "seed": 4, "steps": 2})
    assert response.status_code == 202, response.json
    batch = response.json
    assert (batch["state"], batch["total"], batch["progress"]) == ("running", 6, 0.0)
    assert batch["counts"] == {"queued": 6, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    items = acme.get(f"/v1/batches/{batch['id']}/items").json
    assert items["total"] == 6
    assert [i["text"] for i in items["items"]] == [
        "<maeve> at the beach", "<rex> at the beach", "<maeve> in the snow", "<rex> in the snow",
        "<maeve> with <maeve>", "<rex> with <maeve>"]
    sent = broker.take("render")
    assert sorted(m[1][0] for m in sent) == sorted(i["job_id"] for i in items["items"])
    with session_factory() as session:
        rex_and_maeve = session.scalars(select(Render).where(Render.batch_index == 5,
                                                             Render.batch_id == uuid.UUID(batch["id"]))).one()
        assert [c["identifier"] for c in rex_and_maeve.concepts] == ["<rex>", "<maeve>"]
        assert (rex_and_maeve.seed, rex_and_maeve.sample_steps) == (4, 2)
        jobs = session.scalars(select(Job).join(Render, Render.job_id == Job.id)
                               .where(Render.batch_id == uuid.UUID(batch["id"]))).all()
        assert all(j.published_at is not None and j.payload["batch_id"] == batch["id"] for j in jobs)


def test_template_with_values(acme, two_trained, broker):
    response = acme.post("/v1/batches", json={"template": "<maeve> with a {value}", "values": ["red ball", "blue cat"]})
    assert response.status_code == 202, response.json
    items = acme.get(f"/v1/batches/{response.json['id']}/items").json["items"]
    assert [i["text"] for i in items] == ["<maeve> with a red ball", "<maeve> with a blue cat"]
    assert len(broker.take("render")) == 2


@pytest.mark.parametrize("body, field", [
    ({"prompts": ["{c} here"] * 501, "concepts": ["maeve", "rex"]}, "prompts"),  # 1002 items
    ({"template": "<maeve> {value}", "values": ["x"] * 1001}, "values"),
    ({"prompts": ["{c} here", "no placeholder"], "concepts": ["maeve"]}, "prompts[1]"),
    ({"prompts": ["{c} here"], "concepts": ["maeve", "bruno"]}, "prompts[0]"),        # unknown concept
    ({"prompts": ["{c} here"], "concepts": ["maeve", "hidden"]}, "prompts[0]"),       # another tenant's
    ({"prompts": ["{c} <gen_2>"], "concepts": ["maeve"]}, "prompts[0]"),
    ({"prompts": ["{c} here"], "concepts": ["Not A Name"]}, "concepts[0]"),
    ({"template": "<maeve> with {value}", "values": ["ok", "a <und_1> thing"]}, "values[1]"),
    ({"template": "<maeve> with nothing", "values": ["ok"]}, "template"),
    ({"template": "<maeve> {value}"}, "values"),
    ({"prompts": ["{c}"], "concepts": ["maeve"], "template": "<maeve> {value}", "values": ["x"]}, "body"),
    ({"prompts": ["{c}"], "concepts": ["maeve"], "steps": 1000}, "steps"),
    ({"prompts": ["{c}"], "concepts": ["maeve"], "colour": 1}, "colour"),
])
def test_bad_batches_are_400_naming_the_field_and_store_nothing(acme, globex, two_trained, broker, session_factory,
                                                                store, body, field):
    create_concept(globex, "hidden", HOME_FACT)
    before = snapshot(session_factory, store)
    response = acme.post("/v1/batches", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert snapshot(session_factory, store) == before
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
    assert broker.take("render") == []


def test_a_batch_of_1000_items_is_accepted(acme, two_trained, broker, session_factory):
    response = acme.post("/v1/batches", json={"prompts": [f"{{c}} number {i}" for i in range(500)],
                                              "concepts": ["maeve", "rex"]})
    assert response.status_code == 202, response.json
    assert response.json["total"] == 1000
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Render)
                              .where(Render.batch_id == uuid.UUID(response.json["id"]))) == 1000
    assert len(broker.take("render")) == 1000


def test_settles_once_with_a_manifest_and_a_partial_failure_report(acme, two_trained, session_factory, store):
    with session_factory() as session:
        session.add(WebhookEndpoint(tenant_id=acme.tenant_id, url="http://example.com/h", events=["batch.done"]))
        session.commit()
    batch = acme.post("/v1/batches", json={"template": "<rex> with {value}", "values": ["a", "b", "c"]}).json
    batch_id = uuid.UUID(batch["id"])
    _finish_items(session_factory, batch["id"], ["succeeded", "failed"], store)
    with session_factory() as session:
        assert not batches.settle(session, store, batch_id)  # one item still queued
    progress = acme.get(f"/v1/batches/{batch['id']}").json
    assert progress["progress"] == pytest.approx(2 / 3, abs=1e-3) and progress["manifest_url"] is None
    _finish_items(session_factory, batch["id"], ["succeeded", "failed", "succeeded"], store)
    with session_factory() as session:
        assert batches.settle(session, store, batch_id)
        assert not batches.settle(session, store, batch_id)  # a second last item settles nothing
        events = session.scalars(select(WebhookDelivery)).all()
        assert [e.event for e in events] == ["batch.done"]
        assert events[0].payload["data"]["counts"]["failed"] == 1
    done = acme.get(f"/v1/batches/{batch['id']}").json
    assert done["state"] == "done" and done["progress"] == 1.0
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 1, "canceled": 0}
    manifest = json.loads(acme.client.get(done["manifest_url"]).data)
    assert manifest["state"] == "done" and [i["state"] for i in manifest["items"]] == ["succeeded", "failed",
                                                                                      "succeeded"]
    assert [len(i["outputs"]) for i in manifest["items"]] == [1, 0, 1]
    assert all(store.exists(o["key"]) for i in manifest["items"] for o in i["outputs"])
    assert manifest["items"][1]["error"] == "RuntimeError: out of memory"
    failed = acme.get(f"/v1/batches/{batch['id']}/items?state=failed").json
    assert failed["total"] == 1 and failed["items"][0]["index"] == 1 and failed["items"][0]["image_urls"] == []
    ok = acme.get(f"/v1/batches/{batch['id']}/items?state=succeeded").json["items"]
    assert [acme.client.get(i["image_urls"][0]).data for i in ok] == [b"png", b"png"]


def test_cancel_stops_queued_items_and_settles(acme, globex, two_trained, session_factory, store):
    batch = acme.post("/v1/batches", json={"template": "<maeve> with {value}", "values": ["a", "b", "c"]}).json
    with session_factory() as session:
        first = session.scalars(select(Render).where(Render.batch_id == uuid.UUID(batch["id"]),
                                                     Render.batch_index == 0)).one()
        session.get(Job, first.job_id).state = "running"
        session.commit()
    assert globex.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
    canceled = acme.post(f"/v1/batches/{batch['id']}/cancel")
    assert canceled.status_code == 202
    assert canceled.json["state"] == "running" and canceled.json["cancel_requested"] is True
    assert canceled.json["counts"] == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "canceled": 2}
    _finish_items(session_factory, batch["id"], ["succeeded"], store)
    with session_factory() as session:
        assert batches.settle(session, store, uuid.UUID(batch["id"]))
    final = acme.get(f"/v1/batches/{batch['id']}").json
    assert final["state"] == "canceled" and final["manifest_url"] is not None
    assert acme.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409
    assert globex.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert globex.get(f"/v1/batches/{batch['id']}/items").status_code == 404
    assert [b["id"] for b in acme.get("/v1/batches").json["batches"]] == [batch["id"]]
    assert globex.get("/v1/batches").json["batches"] == []


# -- the concurrent-job quota: a running batch takes one slot, whatever its size -----------------
def _set_job_limit(session_factory, tenant_id, limit: int) -> None:
    from api.models import Tenant

    with session_factory() as session:
        session.get(Tenant, tenant_id).max_concurrent_jobs = limit
        session.commit()


def test_a_batch_counts_as_one_job_towards_the_concurrency_quota(acme, two_trained, broker, session_factory, store):
    _set_job_limit(session_factory, acme.tenant_id, 2)
    body = {"template": "<maeve> in the {value}", "values": ["snow", "desert", "city", "forest", "night"]}
    first = acme.post("/v1/batches", json=body)
    assert first.status_code == 202 and first.json["total"] == 5  # 5 items > the limit of 2: still one slot
    single = acme.post(f"/v1/concepts/{two_trained['maeve']['id']}/generate", json={"prompt": "<maeve> at its home"})
    assert single.status_code == 202  # the second slot
    before = snapshot(session_factory, store)
    with session_factory() as session:
        batches_before = session.scalar(select(func.count()).select_from(Batch))
    for refused in (acme.post("/v1/batches", json=body),
                    acme.post(f"/v1/concepts/{two_trained['maeve']['id']}/generate",
                              json={"prompt": "<maeve> at home"})):
        assert refused.status_code == 429
        assert (refused.json["error"]["code"], refused.json["error"]["field"]) == ("quota_exceeded", "jobs")
    assert snapshot(session_factory, store) == before
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == batches_before
    # once the batch has settled its slot is free again
    _finish_items(session_factory, first.json["id"], ["succeeded"] * 5, store)
    with session_factory() as session:
        assert batches.settle(session, store, uuid.UUID(first.json["id"]))
    again = acme.post("/v1/batches", json=body)
    assert again.status_code == 202, again.json


def test_no_free_slot_refuses_a_batch_and_stores_nothing(acme, globex, two_trained, broker, session_factory, store):
    _set_job_limit(session_factory, acme.tenant_id, 0)
    before = snapshot(session_factory, store)
    refused = acme.post("/v1/batches", json={"prompts": ["{c} at the beach"], "concepts": ["maeve", "rex"]})
    assert refused.status_code == 429 and refused.json["error"]["code"] == "quota_exceeded"
    assert snapshot(session_factory, store) == before and broker.take("render") == []
    # another tenant's limit is its own
    concept = create_concept(globex, "maeve", HOME_FACT)
    add_version(session_factory, globex.tenant_id, concept["id"])
    assert globex.post("/v1/batches", json={"prompts": ["{c} at the beach"], "concepts": ["maeve"]}).status_code == 202
