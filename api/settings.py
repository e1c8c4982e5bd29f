"""Configuration from environment variables, with embedded defaults that need no servers:
an SQLite file, the kombu SQLAlchemy broker on another SQLite file, a local object-store folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The backbone the workers load when OMNI_BACKBONE is unset: `toy`, the committed backbone
# pretrained on the toy world (the bundled example concept is from that world). Tests pin `tiny`.
DEFAULT_BACKBONE = "toy"


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def normalise_database_url(url: str) -> str:
    """`postgres://` and `postgresql://` (as hosting providers hand them out) use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    broker_url: str
    backbone: str = DEFAULT_BACKBONE
    # Object store: S3 when a bucket is named, else a local folder.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_region: str = "us-east-1"
    local_store_dir: Path | None = None
    # Training and rendering.
    default_train_steps: int = 100
    max_train_steps: int = 5000
    checkpoint_every: int = 25
    default_sample_steps: int = 20
    max_sample_steps: int = 100
    # Jobs.
    heartbeat_seconds: int = 10
    stale_after_seconds: int = 120
    max_attempts: int = 3
    requeue_queued_after_seconds: int = 300
    reap_every_seconds: int = 30
    task_soft_time_limit: int = 3 * 3600
    task_time_limit: int = 3 * 3600 + 300
    # Uploads.
    max_content_length: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images_per_concept: int = 100
    max_facts: int = 50
    # Operators: the admin dashboard's session cookie and the /metrics scrape token.
    secret_key: str | None = field(default=None, repr=False)  # unset: generated per process
    admin_session_seconds: int = 8 * 3600
    metrics_token: str | None = field(default=None, repr=False)  # unset: /metrics is open
    # Renders, batches and webhooks.
    max_render_size: int = 1024
    max_batch_items: int = 1000
    presigned_url_seconds: int = 3600
    webhooks_allow_private: bool = False  # loopback / private / link-local targets (tests, on-prem)
    webhook_max_attempts: int = 8
    webhook_timeout_seconds: int = 10
    webhook_relay_seconds: int = 5
    webhook_backoff_seconds: int = 10  # first retry; doubles per attempt, at most 6 h
    webhook_secret_grace_seconds: int = 24 * 3600  # the old secret still signs this long after a rotation
    max_image_bytes: int = 10 * 1024 * 1024  # per uploaded file
    min_images_to_train: int = 1
    # Per-tenant limits (a tenant row's own value, when set, wins) and the rate-limit counter store.
    max_concepts: int = 100
    max_concurrent_jobs: int = 20
    requests_per_minute: int = 600
    redis_url: str | None = None  # rate-limit counters; else the broker when it is Redis; else in-process
    # Training recipes, previews, downloads.
    max_train_batch_size: int = 64
    max_loss_weight: float = 10.0
    preview_every: int = 0  # steps between preview samples; 0: at every checkpoint (checkpoint_every)
    preview_sample_steps: int = 8
    mock_train_steps: int = 2  # the `mock` recipe: a real, barely trained artifact in seconds
    max_presigned_url_seconds: int = 7 * 24 * 3600  # S3's own limit for SigV4 URLs
    store_signing_key: str | None = field(default=None, repr=False)  # local store's download URLs
    # Faults: first backoff before a job that hit an unreachable store/database runs again (doubles
    # per attempt); how long workers retry a statement while the database is down.
    retry_backoff_seconds: int = 10
    db_retry_seconds: int = 60

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket)

    @property
    def work_dir(self) -> Path:
        """Worker scratch space (resumable training checkpoints, downloaded inputs)."""
        return self.data_dir / "work"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("OMNI_DATA_DIR") or Path.cwd() / "build" / "service").resolve()
        database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'omni.sqlite3'}"
        broker_url = env.get("BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.sqlite3'}"
        return cls(
            data_dir=data_dir,
            database_url=normalise_database_url(database_url),
            broker_url=broker_url,
            backbone=env.get("OMNI_BACKBONE") or DEFAULT_BACKBONE,
            s3_bucket=env.get("S3_BUCKET") or None,
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            s3_access_key_id=env.get("S3_ACCESS_KEY_ID") or None,
            s3_secret_access_key=env.get("S3_SECRET_ACCESS_KEY") or None,
            s3_region=env.get("S3_REGION") or "us-east-1",
            local_store_dir=Path(env.get("OMNI_STORE_DIR") or data_dir / "objects").resolve(),
            default_train_steps=_int(env, "OMNI_TRAIN_STEPS", 100),
            max_train_steps=_int(env, "OMNI_MAX_TRAIN_STEPS", 5000),
            checkpoint_every=_int(env, "OMNI_CHECKPOINT_EVERY", 25),
            default_sample_steps=_int(env, "OMNI_SAMPLE_STEPS", 20),
            max_sample_steps=_int(env, "OMNI_MAX_SAMPLE_STEPS", 100),
            heartbeat_seconds=_int(env, "OMNI_HEARTBEAT_SECONDS", 10),
            stale_after_seconds=_int(env, "OMNI_STALE_AFTER_SECONDS", 120),
            max_attempts=_int(env, "OMNI_MAX_ATTEMPTS", 3),
            requeue_queued_after_seconds=_int(env, "OMNI_REQUEUE_QUEUED_AFTER_SECONDS", 300),
            reap_every_seconds=_int(env, "OMNI_REAP_EVERY_SECONDS", 30),
            max_content_length=_int(env, "OMNI_MAX_CONTENT_LENGTH", 32 * 1024 * 1024),
            max_image_pixels=_int(env, "OMNI_MAX_IMAGE_PIXELS", 4096 * 4096),
            secret_key=env.get("OMNI_SECRET_KEY") or None,
            admin_session_seconds=_int(env, "OMNI_ADMIN_SESSION_SECONDS", 8 * 3600),
            metrics_token=env.get("OMNI_METRICS_TOKEN") or None,
            max_render_size=_int(env, "OMNI_MAX_RENDER_SIZE", 1024),
            max_batch_items=_int(env, "OMNI_MAX_BATCH_ITEMS", 1000),
            presigned_url_seconds=_int(env, "OMNI_PRESIGNED_URL_SECONDS", 3600),
            webhooks_allow_private=env.get("OMNI_WEBHOOKS_ALLOW_PRIVATE", "").lower() in ("1", "true", "yes"),
            webhook_max_attempts=_int(env, "OMNI_WEBHOOK_MAX_ATTEMPTS", 8),
            webhook_timeout_seconds=_int(env, "OMNI_WEBHOOK_TIMEOUT_SECONDS", 10),
            webhook_relay_seconds=_int(env, "OMNI_WEBHOOK_RELAY_SECONDS", 5),
            webhook_backoff_seconds=_int(env, "OMNI_WEBHOOK_BACKOFF_SECONDS", 10),
            webhook_secret_grace_seconds=_int(env, "OMNI_WEBHOOK_SECRET_GRACE_SECONDS", 24 * 3600),
            max_images_per_concept=_int(env, "OMNI_MAX_IMAGES_PER_CONCEPT", 100),
            max_image_bytes=_int(env, "OMNI_MAX_IMAGE_BYTES", 10 * 1024 * 1024),
            min_images_to_train=_int(env, "OMNI_MIN_TRAIN_IMAGES", 1),
            max_concepts=_int(env, "OMNI_MAX_CONCEPTS", 100),
            max_concurrent_jobs=_int(env, "OMNI_MAX_CONCURRENT_JOBS", 20),
            requests_per_minute=_int(env, "OMNI_REQUESTS_PER_MINUTE", 600),
            redis_url=env.get("OMNI_REDIS_URL") or None,
            max_train_batch_size=_int(env, "OMNI_MAX_TRAIN_BATCH_SIZE", 64),
            max_loss_weight=float(env.get("OMNI_MAX_LOSS_WEIGHT") or 10.0),
            preview_every=_int(env, "OMNI_PREVIEW_EVERY", 0),
            preview_sample_steps=_int(env, "OMNI_PREVIEW_SAMPLE_STEPS", 8),
            mock_train_steps=_int(env, "OMNI_MOCK_TRAIN_STEPS", 2),
            max_presigned_url_seconds=_int(env, "OMNI_MAX_PRESIGNED_URL_SECONDS", 7 * 24 * 3600),
            store_signing_key=env.get("OMNI_STORE_SIGNING_KEY") or None,
            retry_backoff_seconds=_int(env, "OMNI_RETRY_BACKOFF_SECONDS", 10),
            db_retry_seconds=_int(env, "OMNI_DB_RETRY_SECONDS", 60),
        )

    def ensure_local_dirs(self) -> None:
        """The embedded defaults keep their files under `data_dir`; create it on first use."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.uses_s3 and self.local_store_dir is not None:
            self.local_store_dir.mkdir(parents=True, exist_ok=True)
