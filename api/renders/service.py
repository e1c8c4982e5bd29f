"""Starting an ask / generate / edit: validate, store the input photo, queue a render job. A
tenant-level generate resolves every `<name>` of its prompt to one of the tenant's trained concepts."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urljoin

from flask import has_request_context, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ApiError, Conflict
from ..images import clean_image
from ..jobs import service as jobs
from ..models import Concept, Job, Render
from ..queue import Publisher
from ..scoping import get_scoped
from ..storage import ObjectStore, tenant_key
from .schemas import RenderCreate


def input_key(tenant_id: uuid.UUID, render_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "renders", str(render_id), "input.png")


def output_key(tenant_id: uuid.UUID, render_id: uuid.UUID, index: int = 0) -> str:
    """The first image keeps the name `output.png`; further images of the same render are numbered."""
    name = "output.png" if index == 0 else f"output_{index}.png"
    return tenant_key(tenant_id, "renders", str(render_id), name)


def resolve_concepts(session: Session, tenant_id: uuid.UUID, names: list[str], field: str) -> list[Concept]:
    """The tenant's concepts named in a prompt, in the prompt's order; another tenant's name is as
    unknown as a missing one (400 naming `field`)."""
    rows = session.scalars(select(Concept).where(Concept.tenant_id == tenant_id, Concept.name.in_(names))).all()
    by_name = {c.name: c for c in rows}
    for name in names:
        concept = by_name.get(name)
        if concept is None:
            raise ApiError(field, f"<{name}> is not one of your concepts")
        if concept.current_version_id is None:
            raise Conflict(field, f"<{name}> has no trained version yet: train it first")
    return [by_name[n] for n in names]


def concept_refs(concepts: list[Concept]) -> list[dict[str, str]]:
    return [{"concept_id": str(c.id), "version_id": str(c.current_version_id), "identifier": c.identifier}
            for c in concepts]


def start_generate(session: Session, publisher: Publisher, tenant_id: uuid.UUID, concepts: list[Concept],
                   spec: RenderCreate) -> tuple[Render, Job]:
    """A generate that may name several concepts (all trained, all the tenant's: resolve_concepts)."""
    first = concepts[0]
    render_id = uuid.uuid4()
    job = jobs.create_job(session, tenant_id, "render", first.id, {"render_id": str(render_id), "kind": "generate"})
    render = Render(id=render_id, tenant_id=tenant_id, concept_id=first.id, version_id=first.current_version_id,
                    job_id=job.id, kind="generate", text=spec.text, seed=spec.seed, sample_steps=spec.sample_steps,
                    guidance=spec.guidance, size=spec.size, num_images=spec.num_images,
                    concepts=concept_refs(concepts))
    session.add(render)
    session.commit()
    jobs.publish(session, job, publisher)
    return render, job


def absolute_url(url: str) -> str:
    """The local store's presigned URLs are paths on this API; S3's are absolute already."""
    if url.startswith("/") and has_request_context():
        return urljoin(request.host_url, url)
    return url


def image_links(store: ObjectStore, render: Render, expires_in: int) -> list[dict[str, Any]]:
    outputs = render.outputs or []
    if not outputs and render.output_object_key:  # renders stored before `outputs` existed
        outputs = [{"key": render.output_object_key, "seed": render.seed, "width": 0, "height": 0}]
    return [{"url": absolute_url(store.presigned_url(o["key"], expires_in)), "expires_in": expires_in,
             "seed": o["seed"], "width": o["width"], "height": o["height"]} for o in outputs]


def start_render(session: Session, store: ObjectStore, publisher: Publisher, concept: Concept,
                 spec: RenderCreate, *, max_pixels: int) -> tuple[Render, Job]:
    if concept.current_version_id is None:
        raise Conflict("concept", f"{concept.identifier} has no trained version yet: train it first")
    clean = clean_image(spec.image, "image", max_pixels) if spec.image is not None else None
    render_id = uuid.uuid4()
    job = jobs.create_job(session, concept.tenant_id, "render", concept.id,
                          {"render_id": str(render_id), "kind": spec.kind})
    render = Render(id=render_id, tenant_id=concept.tenant_id, concept_id=concept.id,
                    version_id=concept.current_version_id, job_id=job.id, kind=spec.kind, text=spec.text,
                    seed=spec.seed, sample_steps=spec.sample_steps, guidance=spec.guidance, size=spec.size,
                    concepts=concept_refs([concept]))
    if clean is not None:
        render.input_object_key = input_key(concept.tenant_id, render_id)
        store.put_bytes(render.input_object_key, clean.png, "image/png")
    session.add(render)
    try:
        session.commit()
    except Exception:
        session.rollback()
        if render.input_object_key:
            store.delete(render.input_object_key)
        raise
    jobs.publish(session, job, publisher)
    return render, job


def get_render(session: Session, tenant_id: uuid.UUID, render_id: str) -> tuple[Render, Job]:
    render = get_scoped(session, Render, render_id, tenant_id, "render")
    job = get_scoped(session, Job, render.job_id, tenant_id, "job")
    return render, job
