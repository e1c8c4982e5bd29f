"""Starting an ask / generate / edit: validate, store the input photo, queue a render job."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from ..errors import Conflict
from ..images import clean_image
from ..jobs import service as jobs
from ..models import Concept, Job, Render
from ..queue import Publisher
from ..scoping import get_scoped
from ..storage import ObjectStore, tenant_key
from .schemas import RenderCreate


def input_key(tenant_id: uuid.UUID, render_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "renders", str(render_id), "input.png")


def output_key(tenant_id: uuid.UUID, render_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "renders", str(render_id), "output.png")


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
                    seed=spec.seed, sample_steps=spec.sample_steps)
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
