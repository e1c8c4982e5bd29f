"""The train job: claim, train the concept's tokens with progress and heartbeat, upload the
checkpoint, record the version. Safe to run twice for the same job (claim, unique version per
(concept, job), deterministic object keys) and resumable after a lost worker (checkpoints).

On the way: preview samples rendered from the tokens at checkpoints, "save now" (the tokens saved
as a snapshot of the job), "stop and keep" (stop early, record a version from the tokens so far).
A concept with a version warm-starts from it, and the new version records it as its parent. The
`mock` recipe trains a couple of steps on batch 1: a real artifact in seconds."""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.db import retry_on_disconnect
from api.jobs import service as jobs
from api.models import Concept, ConceptVersion, Job, TrainingSnapshot, utcnow
from api.storage import ObjectStore, tenant_key

from .captioning import accepted_captions
from .drain import drain_requested, requeue_for_drain
from .faults import settle_failure, takeover_seconds
from .heartbeat import Heartbeat
from .runtime import WorkerRuntime

if TYPE_CHECKING:
    from omnipersona.backbone import Backbone
    from omnipersona.tokens import ConceptTokens

log = logging.getLogger(__name__)

HISTORY_POINTS = 50  # progress-history entries kept per job (plus the last step)
PROGRESS_WRITE_SECONDS = 1.0


class ProgressRecorder:
    """Collects loss parts per step; writes progress (and a thinned history) to the job row at
    most once per `PROGRESS_WRITE_SECONDS`, and always at the last step."""

    def __init__(self, session: Session, job_id: uuid.UUID, total: int, attempt: int | None = None,
                 db_retry_seconds: float = 60.0) -> None:
        self.session = session
        self.job_id = job_id
        self.attempt = attempt
        self.db_retry_seconds = db_retry_seconds
        self.every = max(1, total // HISTORY_POINTS)
        self.pending: list[dict[str, Any]] = []
        self.last_write = 0.0
        self.last_parts: dict[str, float] = {}

    def __call__(self, step: int, total: int, parts: dict[str, float]) -> None:
        self.last_parts = {k: round(float(v), 6) for k, v in parts.items()}
        if step % self.every == 0 or step == total:
            entry = {"step": step, "steps": total, "at": utcnow().isoformat(),
                     "losses": {k: round(float(v), 6) for k, v in parts.items()}}
            self.pending.append(entry)
        now = time.monotonic()
        if step == total or now - self.last_write >= PROGRESS_WRITE_SECONDS:
            # Training outlives a database restart: the write waits for the server to come back.
            retry_on_disconnect(self.session, lambda: jobs.record_progress(
                self.session, self.job_id, step / total, self.pending, self.attempt), seconds=self.db_retry_seconds)
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


def snapshot_prefix(tenant_id: uuid.UUID, concept_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """Previews and saved tokens live under the concept (deleted with it), beside its versions."""
    return tenant_key(tenant_id, "concepts", str(concept_id), "training", str(job_id))


class TrainingControls:
    """What the API asked of a running training, read from the job row once per step: stop
    (cancel, "stop and keep", or the job taken over by another attempt) and "save now"."""

    def __init__(self, session_factory: sessionmaker[Session], job_id: uuid.UUID, saves_seen: int,
                 attempt: int | None = None, db_retry_seconds: float = 60.0) -> None:
        self.session = session_factory()
        self.job_id = job_id
        self.saves_seen = saves_seen  # requests made before this attempt started died with the last one
        self.save_pending = False
        self.attempt = attempt
        self.db_retry_seconds = db_retry_seconds

    def _read(self) -> Any:
        row = self.session.execute(select(Job.cancel_requested, Job.state, Job.save_requests, Job.attempts)
                                   .where(Job.id == self.job_id)).first()
        self.session.rollback()  # end the read transaction so the next poll sees new commits
        return row

    def should_stop(self) -> bool:
        if drain_requested():  # the worker got SIGTERM: checkpoint and requeue (workers/drain.py)
            return True
        row = retry_on_disconnect(self.session, self._read, seconds=self.db_retry_seconds)
        if row is None:
            return True
        if (row.save_requests or 0) > self.saves_seen:
            self.saves_seen = row.save_requests
            self.save_pending = True
        taken_over = self.attempt is not None and row.attempts != self.attempt
        return bool(row.cancel_requested) or row.state != "running" or taken_over

    def close(self) -> None:
        self.session.close()


def _frozen_copy(tokens: ConceptTokens) -> ConceptTokens:
    from omnipersona.tokens import ConceptTokens

    copy = ConceptTokens(tokens.name, tokens.embeddings.shape[1], tokens.n_und, tokens.n_gen, tokens.method)
    copy.load_state_dict({k: v.detach().clone() for k, v in tokens.state_dict().items()})
    copy.requires_grad_(False)
    return copy


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _add_snapshot(session: Session, snapshot: TrainingSnapshot) -> None:
    """One row per (job, kind, step): a redelivered job repeating a step keeps the first."""
    exists = session.scalar(select(TrainingSnapshot.id).where(
        TrainingSnapshot.job_id == snapshot.job_id, TrainingSnapshot.kind == snapshot.kind,
        TrainingSnapshot.step == snapshot.step))
    if exists is not None:
        return
    session.add(snapshot)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()


class SnapshotWriter:
    """Preview samples at every `preview_every` steps, and tokens saved when asked ("save now")."""

    def __init__(self, rt: WorkerRuntime, session: Session, job: Job, concept: Concept, backbone: Backbone,
                 preview_every: int) -> None:
        self.rt, self.session, self.job, self.concept, self.backbone = rt, session, job, concept, backbone
        self.preview_every = preview_every
        self.prefix = snapshot_prefix(job.tenant_id, concept.id, job.id)

    def preview(self, step: int, tokens: ConceptTokens) -> None:
        """A generation from the concept's tokens at this step (fixed seed, so steps compare). A
        failed preview is logged and training goes on."""
        from omnipersona.pipeline import OmniPipeline
        from omnipersona.sampler import SamplerConfig

        try:
            pipe = OmniPipeline(self.backbone, recaption=False)
            pipe.add_concept(_frozen_copy(tokens))
            prompt = self.concept.identifier
            out = pipe.generate(prompt, seed=0, sampler=SamplerConfig(num_steps=self.rt.settings.preview_sample_steps))
            key = f"{self.prefix}/previews/step_{step:07d}.png"
            self.rt.store.put_bytes(key, _png(out.image), "image/png")
            _add_snapshot(self.session, TrainingSnapshot(tenant_id=self.job.tenant_id, job_id=self.job.id,
                                                         kind="preview", step=step, image_key=key, prompt=prompt,
                                                         metrics={}))
        except Exception as exc:
            self.session.rollback()
            log.warning("preview of job %s at step %d failed: %s: %s", self.job.id, step, type(exc).__name__, exc)

    def save(self, step: int, tokens: ConceptTokens, losses: dict[str, float]) -> None:
        from omnipersona.artifacts import save_concept

        prefix = f"{self.prefix}/saved/step_{step:07d}"
        metrics = {"step": step, "losses": losses}
        with tempfile.TemporaryDirectory(prefix="omni-save-") as tmp:
            folder = save_concept(_frozen_copy(tokens), Path(tmp), self.backbone.fingerprint(), metrics=metrics)
            for name in ("tokens.safetensors", "concept.json"):  # concept.json last: complete
                self.rt.store.put_bytes(f"{prefix}/{name}", (folder / name).read_bytes())
        _add_snapshot(self.session, TrainingSnapshot(tenant_id=self.job.tenant_id, job_id=self.job.id, kind="saved",
                                                     step=step, tokens_prefix=prefix, metrics=metrics))


def _load_inputs(rt: WorkerRuntime, session: Session, job: Job) -> tuple[Concept, list[Any], list[tuple[str, str]]]:
    from PIL import Image

    concept = session.get(Concept, job.concept_id)
    if concept is None or concept.tenant_id != job.tenant_id:
        raise LookupError(f"concept {job.concept_id} of job {job.id} is gone")
    images = [Image.open(io.BytesIO(rt.store.get_bytes(img.object_key)), formats=["PNG"]).convert("RGB")
              for img in concept.images]
    facts = [(f.question, f.answer) for f in concept.facts]
    return concept, images, facts


def _warm_start(rt: WorkerRuntime, session: Session, job: Job) -> tuple[ConceptTokens | None, str | None]:
    """The tokens of the version named in the payload (the concept's current one when the job was
    made), and that version's id; (None, None) for a fresh start. Tokens trained on another
    backbone cannot start this one: the job then starts fresh and says so in its result."""
    from omnipersona.artifacts import ConceptMismatchError

    raw = job.payload.get("init_version_id")
    if not raw:
        return None, None
    version = session.get(ConceptVersion, uuid.UUID(raw))
    if version is None or version.tenant_id != job.tenant_id or version.concept_id != job.concept_id:
        return None, None
    try:
        return rt.concept_tokens(version.id, version.object_prefix), str(version.id)
    except ConceptMismatchError as exc:
        log.warning("job %s starts fresh: %s", job.id, exc)
        return None, None


def _recipe(job: Job, checkpoint_every: int) -> Any:
    from omnipersona.losses import LossWeights
    from omnipersona.trainer import TrainRecipe

    payload = job.payload
    if payload.get("recipe") == "mock":
        return TrainRecipe(steps=int(payload["steps"]), batch_size=1, checkpoint_every=0)
    recipe = TrainRecipe(steps=int(payload["steps"]), checkpoint_every=checkpoint_every)
    if payload.get("batch_size"):
        recipe.batch_size = int(payload["batch_size"])
    if payload.get("seed") is not None:
        recipe.seed = int(payload["seed"])
    if payload.get("loss_weights"):
        recipe.loss_weights = LossWeights(**{**vars(LossWeights()), **payload["loss_weights"]})
    return recipe


def _record_version(session: Session, job: Job, concept: Concept, prefix: str, fingerprint: str,
                    metrics: dict[str, Any], backbone: str, parent_version_id: str | None = None,
                    source: str = "trained") -> ConceptVersion:
    version = session.scalars(
        select(ConceptVersion).where(ConceptVersion.concept_id == concept.id, ConceptVersion.job_id == job.id)
    ).first()
    if version is None:
        number = (session.scalar(select(func.max(ConceptVersion.number))
                                 .where(ConceptVersion.concept_id == concept.id)) or 0) + 1
        version = ConceptVersion(tenant_id=job.tenant_id, concept_id=concept.id, job_id=job.id, number=number,
                                 object_prefix=prefix, backbone=backbone, backbone_fingerprint=fingerprint,
                                 metrics=metrics, source=source,
                                 parent_version_id=uuid.UUID(parent_version_id) if parent_version_id else None)
        session.add(version)
        session.flush()
    concept.current_version_id = version.id
    concept.status = "ready"
    session.commit()
    return version


def _upload_version(rt: WorkerRuntime, prefix: str, tokens: ConceptTokens, fingerprint: str,
                    metrics: dict[str, Any], recipe: dict[str, Any]) -> None:
    from omnipersona.artifacts import save_concept

    with tempfile.TemporaryDirectory(prefix="omni-version-") as tmp:
        folder = save_concept(tokens, Path(tmp), fingerprint, metrics=metrics, recipe=recipe)
        # concept.json goes last: a version folder with it is complete.
        for name in ("tokens.safetensors", "concept.json"):
            rt.store.put_bytes(f"{prefix}/{name}", (folder / name).read_bytes())


def run_train_job(rt: WorkerRuntime, job_id: uuid.UUID) -> str:
    """Returns the job's final state (or 'skipped' when another delivery owns it)."""
    settings = rt.settings
    db_wait = settings.db_retry_seconds
    with rt.session_factory() as session:
        job = retry_on_disconnect(session, lambda: jobs.claim(
            session, job_id, settings.max_attempts, takeover_after=takeover_seconds(settings)), seconds=db_wait)
        if job is None:
            return "skipped"
        attempt = job.attempts
        controls = TrainingControls(rt.session_factory, job_id, job.save_requests or 0, attempt, db_wait)
        try:
            with Heartbeat(rt.session_factory, job_id, settings.heartbeat_seconds):
                # Imported once the job is claimed and beating: torch takes seconds to import in a
                # fresh pool process, and a redelivered job should be taken over before that.
                from omnipersona.data import ConceptData
                from omnipersona.trainer import train_concept

                concept, images, facts = _load_inputs(rt, session, job)
                backbone = rt.backbone()
                mock = job.payload.get("recipe") == "mock"
                recipe = _recipe(job, settings.checkpoint_every)
                init, parent_version_id = _warm_start(rt, session, job)
                checkpoint_dir = rt.job_dir(job_id) / "checkpoint"
                mirror = CheckpointMirror(rt.store, checkpoint_dir, checkpoint_prefix(job.tenant_id, job_id))
                mirror.restore()
                recorder = ProgressRecorder(session, job_id, recipe.steps, attempt, db_wait)
                preview_every = 0 if mock else (settings.preview_every or settings.checkpoint_every)
                snapshots = SnapshotWriter(rt, session, job, concept, backbone, preview_every)

                def progress(step: int, total: int, parts: dict[str, float]) -> None:
                    recorder(step, total, parts)
                    mirror.sync()  # the trainer saved the previous step's checkpoint, if due

                def after_step(step: int, tokens: ConceptTokens) -> None:
                    if controls.save_pending:
                        controls.save_pending = False
                        snapshots.save(step, tokens, recorder.last_parts)
                    if preview_every and step % preview_every == 0 and step < recipe.steps:
                        snapshots.preview(step, tokens)

                data = ConceptData(images=images, facts=facts, captions=accepted_captions(concept))
                result = train_concept(
                    backbone, data, concept.name, recipe, init=init,
                    progress=progress, should_stop=controls.should_stop, checkpoint_dir=checkpoint_dir,
                    after_step=after_step,
                )
                source = "mock" if mock else "trained"
                if result.stopped:
                    retry_on_disconnect(session, lambda: session.refresh(job), seconds=db_wait)
                    if job.state != "running" or job.attempts != attempt:
                        # The reaper or a redelivery gave the job to another attempt (this worker
                        # looked dead): leave the row and the checkpoints to it.
                        log.warning("train job %s was taken over (state %s, attempt %d); stopping",
                                    job_id, job.state, job.attempts)
                        return "released"
                    if drain_requested() and not job.cancel_requested and not job.keep_on_stop:
                        mirror.sync()  # the trainer checkpointed the step it stopped at
                        requeued = retry_on_disconnect(session, lambda: requeue_for_drain(
                            session, job, rt.publisher(), attempt=attempt), seconds=db_wait)
                        if requeued:
                            return "drained"
                        retry_on_disconnect(session, lambda: session.refresh(job), seconds=db_wait)
                    if not job.keep_on_stop or result.steps_done == 0:
                        jobs.mark_canceled(session, job_id)
                        jobs.settle_concept_after(session, job)
                        shutil.rmtree(rt.job_dir(job_id), ignore_errors=True)
                        mirror.remove()
                        return "canceled"
                    source = "stopped"  # "stop and keep": a version from the tokens so far
                prefix = version_prefix(job.tenant_id, concept.id, job_id)
                fingerprint = backbone.fingerprint()
                metrics = result.metrics
                _upload_version(rt, prefix, result.concept, fingerprint, metrics, recipe.to_dict())
                version = retry_on_disconnect(session, lambda: _record_version(
                    session, job, concept, prefix, fingerprint, metrics, settings.backbone, parent_version_id,
                    source), seconds=db_wait)
                # Before `succeed`: a client that sees the job done sees no leftovers.
                shutil.rmtree(rt.job_dir(job_id), ignore_errors=True)
                mirror.remove()
                outcome = {
                    "version_id": str(version.id), "version_number": version.number, "object_prefix": prefix,
                    "backbone": settings.backbone, "backbone_fingerprint": fingerprint, "metrics": metrics,
                    "steps_done": result.steps_done, "resumed_from": result.resumed_from,
                    "train_seconds": round(result.seconds, 2), "warm_started_from": parent_version_id,
                    "stopped_early": source == "stopped", "recipe": job.payload.get("recipe", "default"),
                }
                retry_on_disconnect(session, lambda: jobs.succeed(session, job_id, outcome), seconds=db_wait)
                return "succeeded"
        except Exception as exc:
            session.rollback()
            log.exception("train job %s attempt %d failed", job_id, attempt)
            state = settle_failure(rt, session, job_id, attempt, exc)
            if state == "failed":
                fresh = retry_on_disconnect(session, lambda: session.get(Job, job_id), seconds=db_wait)
                if fresh is not None:
                    retry_on_disconnect(session, lambda: _mark_concept_failed(session, fresh), seconds=db_wait)
            return state
        finally:
            controls.close()


def _mark_concept_failed(session: Session, job: Job) -> None:
    concept = session.get(Concept, job.concept_id)
    if concept is not None and concept.status == "training":
        concept.status = "ready" if concept.current_version_id else "failed"
        session.commit()
