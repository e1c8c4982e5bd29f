"""The render job: ask / generate / edit with the concept's current tokens, on the backbone this
process loaded once; generation runs explicit knowledge recaptioning and keeps its trace."""

from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session

from api.batches import service as batches
from api.db import retry_on_disconnect
from api.jobs import service as jobs
from api.models import ConceptVersion, Job, Render
from api.renders.service import output_key

from .faults import settle_failure, takeover_seconds
from .heartbeat import Heartbeat
from .runtime import WorkerRuntime

log = logging.getLogger(__name__)


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _versions(session: Session, render: Render) -> list[ConceptVersion]:
    """Every concept version the render conditions on (several for a prompt naming several)."""
    ids = [uuid.UUID(ref["version_id"]) for ref in render.concepts] if render.concepts else [render.version_id]
    versions = []
    for version_id in ids:
        version = session.get(ConceptVersion, version_id)
        if version is None or version.tenant_id != render.tenant_id:
            raise LookupError(f"concept version {version_id} is gone")
        versions.append(version)
    return versions


def _render(rt: WorkerRuntime, session: Session, job: Job) -> dict[str, Any]:
    from PIL import Image

    from omnipersona.pipeline import GenerateRequest, OmniPipeline
    from omnipersona.sampler import SamplerConfig

    started = time.monotonic()
    timings: dict[str, float] = {}
    render = session.get(Render, uuid.UUID(job.payload["render_id"]))
    if render is None or render.tenant_id != job.tenant_id:
        raise LookupError(f"render {job.payload.get('render_id')} of job {job.id} is gone")
    source = None
    if render.input_object_key:
        source = Image.open(io.BytesIO(rt.store.get_bytes(render.input_object_key)), formats=["PNG"]).convert("RGB")
    # A fresh pipeline per render: two tenants' concepts with the same name never share a bank.
    pipe = OmniPipeline(rt.backbone())
    for version in _versions(session, render):
        pipe.add_concept(rt.concept_tokens(version.id, version.object_prefix))
    timings["load_s"] = time.monotonic() - started
    result: dict[str, Any] = {"render_id": str(render.id), "kind": render.kind, "version_id": str(render.version_id)}
    guidance = {} if render.guidance is None else {"cfg_text": render.guidance}
    if render.kind == "ask":
        mark = time.monotonic()
        render.answer = pipe.ask(render.text, source)
        timings["answer_s"] = time.monotonic() - mark
        result["answer"] = render.answer
    else:
        if render.kind == "generate":
            mark = time.monotonic()
            trace = pipe.recaption_request(render.text) if pipe.recaption else None
            prompt = trace.prompt if trace else render.text
            timings["recaption_s"] = time.monotonic() - mark
            sampler = SamplerConfig(num_steps=render.sample_steps, **guidance)
            requests = [GenerateRequest(prompt, render.seed + i, sampler) for i in range(render.num_images or 1)]
            mark = time.monotonic()
            outs = pipe.generate_batch(requests, recaption=False)
            timings["sample_s"] = time.monotonic() - mark
            for out in outs:
                out.trace = trace
        else:
            mark = time.monotonic()
            outs = [pipe.edit(source, render.text, seed=render.seed,
                              sampler=SamplerConfig.for_editing(num_steps=render.sample_steps, **guidance))]
            timings["sample_s"] = time.monotonic() - mark
        mark = time.monotonic()
        outputs = []
        for i, out in enumerate(outs):
            image = out.image if render.size is None else out.image.resize((render.size, render.size),
                                                                          Image.Resampling.LANCZOS)
            key = output_key(render.tenant_id, render.id, i)
            rt.store.put_bytes(key, _png(image), "image/png")
            outputs.append({"key": key, "seed": out.seed, "width": image.width, "height": image.height})
        timings["store_s"] = time.monotonic() - mark
        render.output_object_key = outputs[0]["key"]
        render.outputs = outputs
        render.conditioned_prompt = outs[0].prompt
        render.trace = outs[0].trace.to_dict() if outs[0].trace else None
        result |= {"image_key": outputs[0]["key"], "image_keys": [o["key"] for o in outputs],
                   "conditioned_prompt": outs[0].prompt, "trace": render.trace}
    timings["total_s"] = time.monotonic() - started
    render.timings = {k: round(v, 4) for k, v in timings.items()}
    result["timings"] = render.timings
    session.commit()
    return result


def run_render_job(rt: WorkerRuntime, job_id: uuid.UUID) -> str:
    db_wait = rt.settings.db_retry_seconds
    with rt.session_factory() as session:
        job = retry_on_disconnect(session, lambda: jobs.claim(
            session, job_id, rt.settings.max_attempts, takeover_after=takeover_seconds(rt.settings)),
            seconds=db_wait)
        if job is None:
            # Not ours to run (finished, canceled, or failed by claim after its last attempt); a
            # batch item among those may have been the last one its batch waited for.
            row = session.get(Job, job_id)
            if row is not None and row.batch_id is not None:
                batches.settle(session, rt.store, row.batch_id)
            return "skipped"
        # Read before running: after a rollback the row is expired and may be unreachable.
        attempt, batch_id = job.attempts, job.batch_id
        try:
            with Heartbeat(rt.session_factory, job_id, rt.settings.heartbeat_seconds):
                result = retry_on_disconnect(session, lambda: _render(rt, session, job), seconds=db_wait)
            retry_on_disconnect(session, lambda: jobs.succeed(session, job_id, result), seconds=db_wait)
            return "succeeded"
        except Exception as exc:
            session.rollback()
            log.exception("render job %s attempt %d failed", job_id, attempt)
            return settle_failure(rt, session, job_id, attempt, exc)
        finally:
            if batch_id is not None:
                # The item is finished (or was already): the last one writes the manifest.
                retry_on_disconnect(session, lambda: batches.settle(session, rt.store, batch_id),
                                    seconds=db_wait)
