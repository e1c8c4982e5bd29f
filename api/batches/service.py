"""Batch rendering: expand a request into items (every item checked before anything is written),
store one render + one render job per item, publish them to the render queue (fanned out over the
render workers), and settle the batch once every item's job has finished: the manifest listing
every output goes to the store and `batch.done` is recorded in the same transaction that marks the
batch finished. Each item runs once even if its message is delivered twice (the job claim), and
the batch is settled once even if two last items finish together (a conditional UPDATE)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..celery_config import QUEUE_BY_KIND
from ..errors import ApiError, Conflict
from ..models import FINISHED_STATES, Batch, Job, Render, utcnow
from ..queue import Publisher
from ..renders.schemas import concept_names_in
from ..renders.service import concept_refs, resolve_concepts
from ..settings import Settings
from ..storage import ObjectStore, tenant_key
from ..text_rules import NAME_RE, check_text
from ..usage.service import check_job_quota
from ..webhooks.service import emit_event
from .schemas import ITEM_STATES, BatchCreate

CONCEPT_PLACEHOLDER = "{c}"
VALUE_PLACEHOLDER = "{value}"


@dataclass(frozen=True)
class BatchItemSpec:
    text: str
    names: list[str]
    field: str  # where a problem with this item is reported


def manifest_key(tenant_id: uuid.UUID, batch_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "batches", str(batch_id), "manifest.json")


def _concept_name(raw: str, field: str) -> str:
    name = raw.strip()
    if name.startswith("<") and name.endswith(">"):
        name = name[1:-1]
    if not NAME_RE.match(name):
        raise ApiError(field, "must be a concept name (maeve) or identifier (<maeve>)")
    return name


def expand_items(body: BatchCreate, max_items: int) -> list[BatchItemSpec]:
    """Every item's text, checked like a single generate's prompt (nothing is written yet)."""
    grid = body.prompts is not None or body.concepts is not None
    templated = body.template is not None or body.values is not None
    if grid == templated:
        raise ApiError("body", "send either prompts and concepts, or template and values")
    items: list[BatchItemSpec] = []
    if grid:
        if body.prompts is None or body.concepts is None:
            raise ApiError("concepts" if body.concepts is None else "prompts", "prompts and concepts go together")
        if len(body.prompts) * len(body.concepts) > max_items:
            raise ApiError("prompts", f"prompts x concepts is {len(body.prompts) * len(body.concepts)} items; "
                                      f"at most {max_items}")
        names = [_concept_name(c, f"concepts[{j}]") for j, c in enumerate(body.concepts)]
        for i, prompt in enumerate(body.prompts):
            field = f"prompts[{i}]"
            if CONCEPT_PLACEHOLDER not in prompt:
                raise ApiError(field, "must write the concept as {c}")
            for name in names:
                text, mentioned = concept_names_in(prompt.replace(CONCEPT_PLACEHOLDER, f"<{name}>"), field)
                items.append(BatchItemSpec(text, mentioned, field))
    else:
        if body.template is None or body.values is None:
            raise ApiError("values" if body.values is None else "template", "template and values go together")
        if len(body.values) > max_items:
            raise ApiError("values", f"at most {max_items} items")
        if body.template.count(VALUE_PLACEHOLDER) != 1:
            raise ApiError("template", "must contain {value} once")
        concept_names_in(body.template.replace(VALUE_PLACEHOLDER, "x"), "template")
        for i, value in enumerate(body.values):
            field = f"values[{i}]"
            value = check_text(value, field, max_chars=200)
            if "<" in value or ">" in value or "{" in value:
                raise ApiError(field, "may not contain '<', '>' or '{'")
            text, mentioned = concept_names_in(body.template.replace(VALUE_PLACEHOLDER, value), field)
            items.append(BatchItemSpec(text, mentioned, field))
    return items


def create_batch(session: Session, publisher: Publisher, settings: Settings, tenant_id: uuid.UUID,
                 body: BatchCreate) -> Batch:
    items = expand_items(body, settings.max_batch_items)
    steps = settings.default_sample_steps if body.steps is None else body.steps
    if steps > settings.max_sample_steps:
        raise ApiError("steps", f"must be an integer from 1 to {settings.max_sample_steps}")
    if body.size is not None and body.size > settings.max_render_size:
        raise ApiError("size", f"must be at most {settings.max_render_size}")
    all_names = list(dict.fromkeys(n for item in items for n in item.names))
    first_field = {n: next(item.field for item in items if n in item.names) for n in all_names}
    concepts = {}
    for name in all_names:  # one query per distinct concept (few), each error naming its first item
        concepts[name] = resolve_concepts(session, tenant_id, [name], first_field[name])[0]
    # One quota decision for the whole batch: it takes one slot of max_concurrent_jobs (429 when
    # none is free), and its items do not count one by one (see usage.service.unfinished_work).
    check_job_quota(session, tenant_id, "render", settings)

    batch = Batch(id=uuid.uuid4(), tenant_id=tenant_id, state="running", total=len(items), cancel_requested=False,
                  spec=body.model_dump(exclude_none=True) | {"steps": steps})
    session.add(batch)
    jobs: list[Job] = []
    for index, item in enumerate(items):
        named = [concepts[n] for n in item.names]
        render_id = uuid.uuid4()
        # Jobs are built here, not by jobs.create_job, so that one batch is one quota decision.
        job = Job(id=uuid.uuid4(), tenant_id=tenant_id, kind="render", queue=QUEUE_BY_KIND["render"],
                  concept_id=named[0].id, state="queued", progress=0.0, progress_history=[], attempts=0,
                  cancel_requested=False, batch_id=batch.id,
                  payload={"render_id": str(render_id), "kind": "generate", "batch_id": str(batch.id)})
        render = Render(id=render_id, tenant_id=tenant_id, concept_id=named[0].id,
                        version_id=named[0].current_version_id, job_id=job.id, kind="generate", text=item.text,
                        seed=body.seed, sample_steps=steps, guidance=body.guidance, size=body.size, num_images=1,
                        concepts=concept_refs(named), batch_id=batch.id, batch_index=index)
        session.add(job)
        session.add(render)
        jobs.append(job)
    session.commit()
    published = [job.id for job in jobs if publisher.publish(job.id, "render", job.queue)]
    if published:  # the reaper publishes the rest later
        session.execute(update(Job).where(Job.id.in_(published)).values(published_at=utcnow()))
        session.commit()
    return batch


def item_counts(session: Session, batch: Batch) -> dict[str, int]:
    rows = session.execute(
        select(Job.state, func.count()).join(Render, Render.job_id == Job.id)
        .where(Render.batch_id == batch.id, Render.tenant_id == batch.tenant_id).group_by(Job.state)
    ).all()
    counts = dict.fromkeys(ITEM_STATES, 0)
    counts.update({state: n for state, n in rows})
    return counts


def item_rows(session: Session, batch: Batch, state: str | None = None, offset: int = 0,
              limit: int | None = None) -> tuple[list[tuple[Render, Job]], int]:
    where = [Render.batch_id == batch.id, Render.tenant_id == batch.tenant_id]
    if state is not None:
        where.append(Job.state == state)
    base = select(Render, Job).join(Job, Render.job_id == Job.id).where(*where)
    total = session.scalar(select(func.count()).select_from(base.subquery()))
    rows = session.execute(base.order_by(Render.batch_index).offset(offset).limit(limit)).all()
    return [(render, job) for render, job in rows], total or 0


def manifest(session: Session, batch: Batch, counts: dict[str, int], state: str) -> dict[str, Any]:
    rows, _ = item_rows(session, batch)
    return {
        "batch_id": str(batch.id), "state": state, "total": batch.total, "counts": counts, "spec": batch.spec,
        "items": [{"index": r.batch_index, "render_id": str(r.id), "job_id": str(j.id), "text": r.text,
                   "concepts": [c["identifier"] for c in (r.concepts or [])], "state": j.state, "error": j.error,
                   "outputs": r.outputs or []} for r, j in rows],
    }


def settle(session: Session, store: ObjectStore, batch_id: uuid.UUID) -> bool:
    """Finishes the batch if none of its items is queued or running; True if this call did."""
    session.rollback()  # a fresh snapshot: the item that just finished was committed by its worker
    batch = session.get(Batch, batch_id)
    if batch is None or batch.state != "running":
        return False
    counts = item_counts(session, batch)
    if counts["queued"] or counts["running"]:
        session.rollback()
        return False
    state = "canceled" if batch.cancel_requested else "done"
    key = manifest_key(batch.tenant_id, batch.id)
    # Written before the row says `done`, so a finished batch always has its manifest; two
    # settlers write the same content.
    store.put_bytes(key, json.dumps(manifest(session, batch, counts, state), indent=1).encode(), "application/json")
    result = session.execute(
        update(Batch).where(Batch.id == batch.id, Batch.state == "running")
        .values(state=state, counts=counts, manifest_object_key=key, finished_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    emit_event(session, batch.tenant_id, "batch.done",
               {"batch_id": str(batch.id), "state": state, "total": batch.total, "counts": counts,
                "manifest_key": key})
    session.commit()
    session.refresh(batch)
    return True


def cancel(session: Session, store: ObjectStore, batch: Batch) -> Batch:
    """Queued items are canceled now; running ones finish; the batch settles when none is left."""
    if batch.state != "running":
        raise Conflict("state", f"batch is already {batch.state}")
    batch.cancel_requested = True
    item_jobs = select(Render.job_id).where(Render.batch_id == batch.id, Render.tenant_id == batch.tenant_id)
    session.execute(
        update(Job).where(Job.id.in_(item_jobs), Job.state == "queued")
        .values(state="canceled", cancel_requested=True, finished_at=utcnow())
    )
    session.execute(update(Job).where(Job.id.in_(item_jobs), Job.state.not_in(FINISHED_STATES))
                    .values(cancel_requested=True))
    session.commit()
    settle(session, store, batch.id)
    session.refresh(batch)
    return batch
