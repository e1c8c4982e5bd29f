"""Render and batch jobs in-process on SQLite + the local store + the `tiny` backbone: a prompt
naming two concepts conditions on both (the image changes when only the second one's tokens do),
several images at a requested size with timings, each job and each batch item runs once under
double delivery, and the last item settles the batch with its manifest and one `batch.done`."""

from __future__ import annotations

import io
import json
import uuid

import pytest
import torch
from PIL import Image
from sqlalchemy import select

from api.batches import service as batches
from api.batches.schemas import BatchCreate
from api.concepts import service as concepts
from api.concepts.schemas import ConceptCreate
from api.models import Batch, Concept, ConceptVersion, Job, Render, WebhookDelivery, WebhookEndpoint
from api.renders import service as renders
from api.renders.schemas import RenderCreate
from workers.rendering import run_render_job
from workers.runtime import WorkerRuntime

from .conftest import MemoryBroker
from .worker_setup import new_tenant, worker_runtime


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    return worker_runtime(tmp_path_factory.mktemp("render-worker"))


@pytest.fixture(scope="module")
def tenant_id(rt: WorkerRuntime) -> uuid.UUID:
    return new_tenant(rt, "renderers")


def _version(rt: WorkerRuntime, tenant_id: uuid.UUID, concept_id: uuid.UUID, name: str, seed: int,
             number: int) -> uuid.UUID:
    """A trained version as the train worker leaves it (tokens in the store, rows in the db), with
    seeded token rows instead of a training run."""
    from omnipersona.artifacts import META_FILE, TOKENS_FILE, save_concept
    from omnipersona.tokens import ConceptTokens

    backbone = rt.backbone()
    tokens = ConceptTokens(name, backbone.config.hidden_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tokens.embeddings.copy_(torch.randn(tokens.embeddings.shape, generator=g))
        tokens.head_rows.copy_(torch.randn(tokens.head_rows.shape, generator=g))
    folder = rt.settings.work_dir / "made" / f"{name}-{seed}"
    save_concept(tokens, folder, backbone.fingerprint())
    with rt.session_factory() as session:
        job = Job(tenant_id=tenant_id, concept_id=concept_id, kind="train", queue="train", state="succeeded",
                  payload={})
        session.add(job)
        session.flush()
        prefix = f"{tenant_id}/concepts/{concept_id}/versions/{job.id}"
        for file in (TOKENS_FILE, META_FILE):
            rt.store.put_bytes(f"{prefix}/{file}", (folder / file).read_bytes())
        version = ConceptVersion(tenant_id=tenant_id, concept_id=concept_id, job_id=job.id, number=number,
                                 object_prefix=prefix, backbone="tiny", backbone_fingerprint=backbone.fingerprint(),
                                 metrics={})
        session.add(version)
        session.flush()
        concept = session.get(Concept, concept_id)
        concept.current_version_id, concept.status = version.id, "ready"
        session.commit()
        return version.id


@pytest.fixture(scope="module")
def pair(rt: WorkerRuntime, tenant_id: uuid.UUID) -> dict[str, uuid.UUID]:
    ids = {}
    for i, name in enumerate(("maeve", "rex")):
        with rt.session_factory() as session:
            concept = concepts.create_concept(session, tenant_id,
                                              ConceptCreate(name, [("What is the home of {c}?", "the beach")]))
            ids[name] = concept.id
        _version(rt, tenant_id, concept.id, name, seed=10 + i, number=1)
    return ids


def _generate(rt: WorkerRuntime, tenant_id: uuid.UUID, names: list[str], text: str,
              **kw: object) -> tuple[uuid.UUID, uuid.UUID]:
    with rt.session_factory() as session:
        found = renders.resolve_concepts(session, tenant_id, names, "prompt")
        spec = RenderCreate("generate", text, kw.get("seed", 0), kw.get("steps", 3), None, kw.get("guidance"),
                            kw.get("size"), kw.get("num_images", 1))
        render, job = renders.start_generate(session, MemoryBroker().publisher, tenant_id, found, spec)
        return render.id, job.id


def _pixels(rt: WorkerRuntime, key: str) -> bytes:
    return Image.open(io.BytesIO(rt.store.get_bytes(key))).convert("RGB").tobytes()


def test_two_concepts_several_images_at_a_size_once(rt, tenant_id, pair):
    render_id, job_id = _generate(rt, tenant_id, ["maeve", "rex"], "<maeve> and <rex> at the beach",
                                  num_images=2, size=24, guidance=2.0, seed=5)
    assert run_render_job(rt, job_id) == "succeeded"
    with rt.session_factory() as session:
        render = session.get(Render, render_id)
        assert session.get(Job, job_id).state == "succeeded"
        assert [o["seed"] for o in render.outputs] == [5, 6]
        keys = [o["key"] for o in render.outputs]
        assert keys == [f"{tenant_id}/renders/{render_id}/output.png", f"{tenant_id}/renders/{render_id}/output_1.png"]
        assert set(render.timings) == {"load_s", "recaption_s", "sample_s", "store_s", "total_s"}
        assert render.trace is not None and render.trace["request"] == "<maeve> and <rex> at the beach"
    images = [Image.open(io.BytesIO(rt.store.get_bytes(k))) for k in keys]
    assert [im.size for im in images] == [(24, 24), (24, 24)]
    assert images[0].tobytes() != images[1].tobytes()  # two seeds, two images
    before = {k: rt.store.get_bytes(k) for k in rt.store.list_keys(f"{tenant_id}/renders/{render_id}")}
    assert run_render_job(rt, job_id) == "skipped"  # the same message delivered again
    assert {k: rt.store.get_bytes(k) for k in rt.store.list_keys(f"{tenant_id}/renders/{render_id}")} == before


def test_the_second_concepts_tokens_condition_the_image(rt, tenant_id, pair):
    def render_once() -> bytes:
        _, job_id = _generate(rt, tenant_id, ["maeve", "rex"], "<maeve> and <rex> at the beach", seed=1)
        assert run_render_job(rt, job_id) == "succeeded"
        with rt.session_factory() as session:
            render = session.scalars(select(Render).where(Render.job_id == job_id)).one()
            return _pixels(rt, render.output_object_key)

    first, same = render_once(), render_once()
    assert first == same  # deterministic for one seed and one set of tokens
    _version(rt, tenant_id, pair["rex"], "rex", seed=99, number=2)  # only rex's tokens change
    changed = render_once()
    diff = sum(abs(a - b) for a, b in zip(first, changed, strict=True)) / len(first)
    assert diff > 1.0, diff


def test_batch_items_run_once_and_the_last_settles_with_a_manifest(rt, tenant_id, pair):
    with rt.session_factory() as session:
        session.add(WebhookEndpoint(tenant_id=tenant_id, url="http://example.com/h",
                                    events=["batch.done", "job.succeeded"]))
        session.commit()
        batch = batches.create_batch(session, MemoryBroker().publisher, rt.settings, tenant_id,
                                     BatchCreate(template="<rex> with a {value}", values=["red ball", "blue cat"],
                                                 steps=2))
        batch_id = batch.id
        job_ids = [r.job_id for r in session.scalars(select(Render).where(Render.batch_id == batch_id)
                                                     .order_by(Render.batch_index))]
    assert run_render_job(rt, job_ids[0]) == "succeeded"
    assert run_render_job(rt, job_ids[0]) == "skipped"  # delivered twice: still one item
    with rt.session_factory() as session:
        assert session.get(Batch, batch_id).state == "running"
    assert run_render_job(rt, job_ids[1]) == "succeeded"
    assert run_render_job(rt, job_ids[1]) == "skipped"
    with rt.session_factory() as session:
        batch = session.get(Batch, batch_id)
        assert batch.state == "done" and batch.counts["succeeded"] == 2
        manifest = json.loads(rt.store.get_bytes(batch.manifest_object_key))
        events = session.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id,
                                                               WebhookDelivery.event == "batch.done")).all()
        assert len(events) == 1 and events[0].payload["data"]["batch_id"] == str(batch_id)
        # Batch items send no job.* events of their own.
        assert session.scalars(select(WebhookDelivery).where(WebhookDelivery.event.like("job.%"))).all() == []
    assert [i["text"] for i in manifest["items"]] == ["<rex> with a red ball", "<rex> with a blue cat"]
    assert all(len(i["outputs"]) == 1 and rt.store.exists(i["outputs"][0]["key"]) for i in manifest["items"])
