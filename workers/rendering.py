"""The render job: ask / generate / edit with the concept's current tokens, on the backbone this
process loaded once; generation runs explicit knowledge recaptioning and keeps its trace."""

from __future__ import annotations

import io
import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from api.jobs import service as jobs
from api.models import ConceptVersion, Job, Render
from api.renders.service import output_key

from .heartbeat import Heartbeat
from .runtime import WorkerRuntime

log = logging.getLogger(__name__)


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _render(rt: WorkerRuntime, session: Session, job: Job) -> dict[str, Any]:
    from PIL import Image

    from omnipersona.pipeline import OmniPipeline
    from omnipersona.sampler import SamplerConfig

    render = session.get(Render, uuid.UUID(job.payload["render_id"]))
    if render is None or render.tenant_id != job.tenant_id:
        raise LookupError(f"render {job.payload.get('render_id')} of job {job.id} is gone")
    version = session.get(ConceptVersion, render.version_id)
    if version is None or version.tenant_id != job.tenant_id:
        raise LookupError(f"concept version {render.version_id} is gone")
    source = None
    if render.input_object_key:
        source = Image.open(io.BytesIO(rt.store.get_bytes(render.input_object_key)), formats=["PNG"]).convert("RGB")
    pipe = OmniPipeline(rt.backbone())
    pipe.add_concept(rt.concept_tokens(version.id, version.object_prefix))
    result: dict[str, Any] = {"render_id": str(render.id), "kind": render.kind, "version_id": str(version.id)}
    if render.kind == "ask":
        render.answer = pipe.ask(render.text, source)
        result["answer"] = render.answer
    else:
        if render.kind == "generate":
            out = pipe.generate(render.text, seed=render.seed, sampler=SamplerConfig(num_steps=render.sample_steps))
        else:
            out = pipe.edit(source, render.text, seed=render.seed,
                            sampler=SamplerConfig.for_editing(num_steps=render.sample_steps))
        key = output_key(render.tenant_id, render.id)
        rt.store.put_bytes(key, _png(out.image), "image/png")
        render.output_object_key = key
        render.conditioned_prompt = out.prompt
        render.trace = out.trace.to_dict() if out.trace else None
        result |= {"image_key": key, "conditioned_prompt": out.prompt, "trace": render.trace}
    session.commit()
    return result


def run_render_job(rt: WorkerRuntime, job_id: uuid.UUID) -> str:
    with rt.session_factory() as session:
        job = jobs.claim(session, job_id, rt.settings.max_attempts)
        if job is None:
            return "skipped"
        try:
            with Heartbeat(rt.session_factory, job_id, rt.settings.heartbeat_seconds):
                result = _render(rt, session, job)
            jobs.succeed(session, job_id, result)
            return "succeeded"
        except Exception as exc:
            session.rollback()
            log.exception("render job %s failed", job_id)
            jobs.fail(session, job_id, f"{type(exc).__name__}: {exc}")
            return "failed"
