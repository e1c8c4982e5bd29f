"""The schema, shared by `api/` and `workers/`. Alembic (`migrations/`) owns its evolution: the
tables exist only through migrations. Every tenant-owned table has a NOT NULL `tenant_id`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so that migrations can address them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED_STATES = ("succeeded", "failed", "canceled")
JOB_KINDS = ("train", "render")
RENDER_KINDS = ("ask", "generate", "edit")
CONCEPT_STATUSES = ("draft", "training", "ready", "failed")
# What counts against a tenant's `max_concurrent_jobs` (usage.service): unfinished train/render jobs
# outside batches (a running batch counts once instead). Written once, as SQL, so that the partial
# index on jobs and the quota count say the same thing and the planner can match the two.
QUOTA_JOB_KINDS = ("train", "render")
UNFINISHED_STATES = tuple(s for s in JOB_STATES if s not in FINISHED_STATES)


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


QUOTA_JOBS_PREDICATE = (f"kind IN ({_sql_list(QUOTA_JOB_KINDS)}) AND state IN ({_sql_list(UNFINISHED_STATES)}) "
                        "AND batch_id IS NULL")
VERSION_SOURCES = ("trained", "stopped", "mock")  # finished, "stop and keep", the `mock` recipe
SNAPSHOT_KINDS = ("preview", "saved")  # a sample image at a checkpoint, tokens saved on request
ROLES = ("member", "tenant_admin", "platform_admin")
CAPTION_STATES = ("pending", "suggested", "accepted", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Per-tenant limits; NULL means the settings' default (OMNI_MAX_CONCEPTS, ...).
    max_concepts: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default="tenant_admin")  # one of ROLES
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """Only the sha256 of the key is stored; `prefix` (visible in the key) finds the row."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="default")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Concept(Base):
    __tablename__ = "concepts"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    identifier: Mapped[str] = mapped_column(String(40))  # the token users write: <name>
    status: Mapped[str] = mapped_column(String(20), default="draft")
    current_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("concept_versions.id", use_alter=True, ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    images: Mapped[list[ConceptImage]] = relationship(order_by="ConceptImage.created_at", back_populates="concept")
    facts: Mapped[list[Fact]] = relationship(order_by="Fact.position", back_populates="concept")
    current_version: Mapped[ConceptVersion | None] = relationship(foreign_keys=[current_version_id])


class ConceptImage(Base):
    __tablename__ = "concept_images"
    __table_args__ = (UniqueConstraint("concept_id", "sha256"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    concept_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The model's suggested caption (workers/captioning.py), editable; training uses it once accepted.
    caption: Mapped[str | None] = mapped_column(Text)
    caption_state: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")

    concept: Mapped[Concept] = relationship(back_populates="images")


class Fact(Base):
    """A (question, answer) pair; `{c}` in either stands for the concept's identifier."""

    __tablename__ = "facts"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    concept_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(String(500))
    answer: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    concept: Mapped[Concept] = relationship(back_populates="facts")


class ConceptVersion(Base):
    """One trained set of concept tokens. A job makes at most one version of its concept, so a
    job delivered twice cannot make two."""

    __tablename__ = "concept_versions"
    __table_args__ = (UniqueConstraint("concept_id", "job_id"), UniqueConstraint("concept_id", "number"))
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    concept_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    object_prefix: Mapped[str] = mapped_column(String(500))  # holds tokens.safetensors + concept.json
    backbone: Mapped[str] = mapped_column(String(200))
    backbone_fingerprint: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The version whose tokens this one's training started from (warm start); None: from scratch.
    # No foreign key (see migration 0004): parent and child belong to one concept and go with it.
    parent_version_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source: Mapped[str] = mapped_column(String(20), default="trained", server_default="trained")  # VERSION_SOURCES


class Job(Base):
    """The truth about a unit of background work; the broker only carries its id."""

    __tablename__ = "jobs"
    # At most one unfinished training job per concept, even for two requests at the same moment.
    __table_args__ = (
        Index("uq_jobs_one_active_training", "concept_id", unique=True,
              postgresql_where=text("kind = 'train' AND state IN ('queued', 'running')"),
              sqlite_where=text("kind = 'train' AND state IN ('queued', 'running')")),
        # A status read counts the queued jobs ahead of it in its queue: a range of this index,
        # however many finished jobs the queue has behind it.
        Index("ix_jobs_queue_state_created", "queue", "state", "created_at", "id"),
        # Every job creation counts the tenant's quota jobs: entries of this index only, not every
        # job the tenant ever ran, nor a probe into renders per job (migration 0011).
        Index("ix_jobs_tenant_quota", "tenant_id", postgresql_where=text(QUOTA_JOBS_PREDICATE),
              sqlite_where=text(QUOTA_JOBS_PREDICATE)),
    )
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    concept_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    queue: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Training controls: the job this one retries; "save now" requests (a counter, so two requests
    # are two snapshots); "stop and keep" (with cancel_requested: stop, but record a version).
    retry_of_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # same concept's job; no key (migration 0004)
    save_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    keep_on_stop: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The batch this job is an item of (its render's batch too); set when the batch is created.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))


class Render(Base):
    """An ask / generate / edit request and its outcome (answer or image, and the trace)."""

    __tablename__ = "renders"
    # One render per batch item: a batch request retried or replayed cannot make two.
    __table_args__ = (Index("uq_renders_batch_item", "batch_id", "batch_index", unique=True),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    concept_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("concept_versions.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(String(1000))  # question, prompt or instruction
    seed: Mapped[int] = mapped_column(Integer, default=0)
    sample_steps: Mapped[int] = mapped_column(Integer, default=20)
    input_object_key: Mapped[str | None] = mapped_column(String(500))
    output_object_key: Mapped[str | None] = mapped_column(String(500))
    answer: Mapped[str | None] = mapped_column(Text)
    conditioned_prompt: Mapped[str | None] = mapped_column(Text)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Renders naming several concepts (tenant-level generate): [{concept_id, version_id, identifier}];
    # concept_id / version_id above hold the first one named.
    concepts: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    guidance: Mapped[float | None] = mapped_column(Float)
    size: Mapped[int | None] = mapped_column(Integer)  # output side in pixels; None: the backbone's own
    num_images: Mapped[int | None] = mapped_column(Integer)
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # [{key, seed, width, height}]
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    batch_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IdempotencyKey(Base):
    """A POST that created work, remembered under the client's `Idempotency-Key` so a retry gets
    the same answer instead of a second concept, upload or job."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and content
    response_status: Mapped[int | None] = mapped_column(Integer)  # None while the first request runs
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageRecord(Base):
    """Metered work per tenant (training steps, renders). A job is counted once per kind, even
    when its message is delivered twice (unique (job_id, kind))."""

    __tablename__ = "usage_records"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # no FK: usage outlives a deleted concept's jobs
    kind: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


BATCH_STATES = ("running", "done", "canceled")
WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.canceled", "batch.done")
DELIVERY_STATES = ("pending", "sending", "succeeded", "failed")


class Batch(Base):
    """Many generate renders from one request; each item is a `Render` with `batch_id` and its
    index. `done` once every item's job has finished (the manifest is then in the store)."""

    __tablename__ = "batches"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20), default="running", index=True)
    total: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the request as validated
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON)  # final items per state
    manifest_object_key: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookSecret(Base):
    """The tenant's signing secret (`whsec_...`). Kept in clear because signing needs it; shown to
    the tenant only when created or rotated."""

    __tablename__ = "webhook_secrets"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), unique=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The secret replaced by the last rotation: deliveries are signed with it too until
    # `previous_valid_until`, so receivers can switch to the new one without dropping events.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint (the outbox row, written in the transaction of the state change).
    Its id is the `webhook-id` the receiver sees on every attempt; `log` lists the attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrainingSnapshot(Base):
    """Something a running training left on the way: a preview image rendered from the tokens at a
    checkpoint, or the tokens themselves saved on request ("save now"). One per (job, kind, step),
    so a redelivered job cannot make two."""

    __tablename__ = "training_snapshots"
    __table_args__ = (UniqueConstraint("job_id", "kind", "step"),)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # one of SNAPSHOT_KINDS
    step: Mapped[int] = mapped_column(Integer)
    image_key: Mapped[str | None] = mapped_column(String(500))  # preview PNG
    tokens_prefix: Mapped[str | None] = mapped_column(String(500))  # saved tokens.safetensors + concept.json
    prompt: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
