"""The train job: claim, train the concept's tokens with progress and heartbeat, upload the
checkpoint, record the version. Safe to run twice for the same job (claim, unique version per
(concept, job), deterministic object keys) and resumable after a lost worker (checkpoints)."""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.jobs import service as jobs
from api.models import Concept, ConceptVersion, Job, utcnow
from api.storage import ObjectStore, tenant_key

from .heartbeat import Heartbeat
from .runtime import WorkerRuntime

log = logging.getLogger(__name__)

HISTORY_POINTS = 50  # progress-history entries kept per job (plus the last step)
PROGRESS_WRITE_SECONDS = 1.0


class ProgressRecorder:
    """Collects loss parts per step; writes progress (and a thinned history) to the job row at
    most once per `PROGRESS_WRITE_SECONDS`, and always at the last step."""

    def __init__(self, session: Session, job_id: uuid.UUID, total: int) -> None:
        self.session = session
        self.job_id = job_id
        self.every = max(1, total // HISTORY_POINTS)
        self.pending: list[dict[str, Any]] = []
        self.last_write = 0.0

    def __call__(self, step: int, total: int, parts: dict[str, float]) -> None:
        if step % self.every == 0 or step == total:
            entry = {"step": step, "steps": total, "at": utcnow().isoformat(),
                     "losses": {k: round(float(v), 6) for k, v in parts.items()}}
            self.pending.append(entry)
        now = time.monotonic()
        if step == total or now - self.last_write >= PROGRESS_WRITE_SECONDS:
            jobs.record_progress(self.session, self.job_id, step / total, self.pending)
            self.pending = []
            self.last_write = now


class CheckpointMirror:
    """Mirrors the trainer's resumable checkpoints (`<tag>/state.safetensors`, `<tag>/meta.json`, then
    the `latest` marker) to the object store, so a job re-claimed on another host resumes too.
    The marker is uploaded last: a store copy with a marker is complete."""

    FILES = ("state.safetensors", "meta.json")
    MARKER = "latest"

    def __init__(self, store: ObjectStore, local_dir: Path, prefix: str) -> None:
        self.store = store
        self.local_dir = local_dir
        self.prefix = prefix
        self.synced_tag: str | None = None

    def restore(self) -> str | None:
        """Download the store's checkpoint when this host has none; returns its tag."""
        if (self.local_dir / self.MARKER).is_file() or not self.store.exists(f"{self.prefix}/{self.MARKER}"):
            return None
        tag = self.store.get_bytes(f"{self.prefix}/{self.MARKER}").decode().strip()
        (self.local_dir / tag).mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            (self.local_dir / tag / name).write_bytes(self.store.get_bytes(f"{self.prefix}/{tag}/{name}"))
        (self.local_dir / self.MARKER).write_text(tag)
        self.synced_tag = tag
        return tag

    def sync(self) -> None:
        marker = self.local_dir / self.MARKER
        if not marker.is_file():
            return
        tag = marker.read_text().strip()
        if tag == self.synced_tag:
            return
        for name in self.FILES:
            self.store.put_bytes(f"{self.prefix}/{tag}/{name}", (self.local_dir / tag / name).read_bytes())
        self.store.put_bytes(f"{self.prefix}/{self.MARKER}", tag.encode())
        self.synced_tag = tag

    def remove(self) -> None:
        """Best effort: a leftover checkpoint wastes space but must not fail a finished job."""
        try:
            for key in self.store.list_keys(self.prefix + "/"):
                self.store.delete(key)
        except Exception as exc:
            log.warning("could not remove checkpoint copies under %s: %s", self.prefix, type(exc).__name__)


def checkpoint_prefix(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "jobs", str(job_id), "checkpoint")


def version_prefix(tenant_id: uuid.UUID, concept_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "concepts", str(concept_id), "versions", str(job_id))


def _load_inputs(rt: WorkerRuntime, session: Session, job: Job) -> tuple[Concept, list[Any], list[tuple[str, str]]]:
    from PIL import Image

    concept = session.get(Concept, job.concept_id)
    if concept is None or concept.tenant_id != job.tenant_id:
        raise LookupError(f"concept {job.concept_id} of job {job.id} is gone")
    images = [Image.open(io.BytesIO(rt.store.get_bytes(img.object_key)), formats=["PNG"]).convert("RGB")
              for img in concept.images]
    facts = [(f.question, f.answer) for f in concept.facts]
    return concept, images, facts


def _record_version(session: Session, job: Job, concept: Concept, prefix: str, fingerprint: str,
                    metrics: dict[str, Any], backbone: str) -> ConceptVersion:
    version = session.scalars(
        select(ConceptVersion).where(ConceptVersion.concept_id == concept.id, ConceptVersion.job_id == job.id)
    ).first()
    if version is None:
        number = (session.scalar(select(func.max(ConceptVersion.number))
                                 .where(ConceptVersion.concept_id == concept.id)) or 0) + 1
        version = ConceptVersion(tenant_id=job.tenant_id, concept_id=concept.id, job_id=job.id, number=number,
                                 object_prefix=prefix, backbone=backbone, backbone_fingerprint=fingerprint,
                                 metrics=metrics)
        session.add(version)
        session.flush()
    concept.current_version_id = version.id
    concept.status = "ready"
    session.commit()
    return version


def run_train_job(rt: WorkerRuntime, job_id: uuid.UUID) -> str:
    """Returns the job's final state (or 'skipped' when another delivery owns it)."""
    from omnipersona.artifacts import save_concept
    from omnipersona.data import ConceptData
    from omnipersona.trainer import TrainRecipe, train_concept

    settings = rt.settings
    with rt.session_factory() as session:
        job = jobs.claim(session, job_id, settings.max_attempts)
        if job is None:
            return "skipped"
        try:
            with Heartbeat(rt.session_factory, job_id, settings.heartbeat_seconds):
                concept, images, facts = _load_inputs(rt, session, job)
                backbone = rt.backbone()
                recipe = TrainRecipe(steps=int(job.payload["steps"]), checkpoint_every=settings.checkpoint_every)
                checkpoint_dir = rt.job_dir(job_id) / "checkpoint"
                mirror = CheckpointMirror(rt.store, checkpoint_dir, checkpoint_prefix(job.tenant_id, job_id))
                mirror.restore()
                recorder = ProgressRecorder(session, job_id, recipe.steps)

                def progress(step: int, total: int, parts: dict[str, float]) -> None:
                    recorder(step, total, parts)
                    mirror.sync()  # the trainer saved the previous step's checkpoint, if due

                with rt.session_factory() as stop_session:
                    result = train_concept(
                        backbone, ConceptData(images=images, facts=facts), concept.name, recipe,
                        progress=progress,
                        should_stop=lambda: jobs.cancel_requested(stop_session, job_id),
                        checkpoint_dir=checkpoint_dir,
                    )
                if result.stopped:
                    session.refresh(job)
                    if job.state != "running":
                        # The reaper gave the job to another attempt (this worker looked dead): leave
                        # the row and the checkpoints to it.
                        log.warning("train job %s was taken over (state %s); stopping", job_id, job.state)
                        return "released"
                    jobs.mark_canceled(session, job_id)
                    jobs.settle_concept_after(session, job)
                    shutil.rmtree(rt.job_dir(job_id), ignore_errors=True)
                    mirror.remove()
                    return "canceled"
                prefix = version_prefix(job.tenant_id, concept.id, job_id)
                fingerprint = backbone.fingerprint()
                metrics = result.metrics
                with tempfile.TemporaryDirectory(prefix="omni-version-") as tmp:
                    folder = save_concept(result.concept, Path(tmp), fingerprint, metrics=metrics,
                                          recipe=recipe.to_dict())
                    # concept.json goes last: a version folder with it is complete.
                    for name in ("tokens.safetensors", "concept.json"):
                        rt.store.put_bytes(f"{prefix}/{name}", (folder / name).read_bytes())
                version = _record_version(session, job, concept, prefix, fingerprint, metrics, settings.backbone)
                # Before `succeed`: a client that sees the job done sees no leftovers.
                shutil.rmtree(rt.job_dir(job_id), ignore_errors=True)
                mirror.remove()
                jobs.succeed(session, job_id, {
                    "version_id": str(version.id), "version_number": version.number, "object_prefix": prefix,
                    "backbone": settings.backbone, "backbone_fingerprint": fingerprint, "metrics": metrics,
                    "steps_done": result.steps_done, "resumed_from": result.resumed_from,
                    "train_seconds": round(result.seconds, 2),
                })
                return "succeeded"
        except Exception as exc:
            session.rollback()
            log.exception("train job %s failed", job_id)
            jobs.fail(session, job_id, f"{type(exc).__name__}: {exc}")
            fresh = session.get(Job, job_id)
            if fresh is not None:
                _mark_concept_failed(session, fresh)
            return "failed"


def _mark_concept_failed(session: Session, job: Job) -> None:
    concept = session.get(Concept, job.concept_id)
    if concept is not None and concept.status == "training":
        concept.status = "ready" if concept.current_version_id else "failed"
        session.commit()
