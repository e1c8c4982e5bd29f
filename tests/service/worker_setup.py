"""An in-process worker runtime for the worker tests: embedded settings (SQLite, local store, the
`tiny` backbone) in a folder of their own, migrated, and a tenant in it."""

from __future__ import annotations

import uuid
from pathlib import Path

from api.admin import create_tenant, migrate
from api.db import make_engine, make_session_factory
from api.settings import Settings
from api.storage import LocalStore
from workers.runtime import WorkerRuntime


def worker_runtime(folder: Path, **env: str) -> WorkerRuntime:
    """`env` adds or overrides OMNI_* settings (e.g. OMNI_CHECKPOINT_EVERY="2")."""
    settings = Settings.from_env({"OMNI_DATA_DIR": str(folder), "BROKER_URL": "memory://", "OMNI_BACKBONE": "tiny",
                                  "OMNI_HEARTBEAT_SECONDS": "1", **env})
    migrate(settings)
    return WorkerRuntime(settings, make_session_factory(make_engine(settings.database_url)),
                         LocalStore(settings.local_store_dir))


def new_tenant(rt: WorkerRuntime, name: str) -> uuid.UUID:
    with rt.session_factory() as session:
        tenant, _ = create_tenant(session, name)
        session.commit()
        return tenant.id
