"""Per-process state of a worker: settings, database, object store, and the loaded backbone
(loaded once per process, on first use) with a cache of concept tokens by version."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_session_factory
from api.queue import Publisher
from api.settings import Settings
from api.storage import ObjectStore, make_store

if TYPE_CHECKING:
    from omnipersona.backbone import Backbone
    from omnipersona.tokens import ConceptTokens

log = logging.getLogger(__name__)

CONCEPT_CACHE_SIZE = 32


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: ObjectStore
    _backbones: dict[str, Backbone] = field(default_factory=dict)
    _concepts: OrderedDict[uuid.UUID, ConceptTokens] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _publisher: Publisher | None = None

    def publisher(self) -> Publisher:
        """Publishes retries of jobs (made on first use, in the process that runs the task)."""
        if self._publisher is None:
            from api.celery_config import make_celery
            from api.queue import CeleryPublisher

            self._publisher = CeleryPublisher(make_celery(self.settings))
        return self._publisher

    def backbone(self) -> Backbone:
        spec = self.settings.backbone
        with self._lock:
            if spec not in self._backbones:
                from omnipersona.backbone import load_backbone

                threads = os.environ.get("OMNI_TORCH_THREADS")
                if threads:
                    import torch

                    torch.set_num_threads(int(threads))
                log.info("loading backbone %s (once per worker process)", spec)
                backbone = load_backbone(spec)
                backbone.fingerprint()  # computed once here, not inside the first request
                self._backbones[spec] = backbone
            return self._backbones[spec]

    def concept_tokens(self, version_id: uuid.UUID, object_prefix: str) -> ConceptTokens:
        """Tokens of a concept version: downloaded and loaded once, then served from memory."""
        from omnipersona.artifacts import META_FILE, TOKENS_FILE, load_concept

        with self._lock:
            cached = self._concepts.get(version_id)
            if cached is not None:
                self._concepts.move_to_end(version_id)
                return cached
        folder = self.settings.work_dir / "versions" / str(version_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (TOKENS_FILE, META_FILE):
            (folder / name).write_bytes(self.store.get_bytes(f"{object_prefix}/{name}"))
        tokens = load_concept(folder, self.backbone().fingerprint())
        with self._lock:
            self._concepts[version_id] = tokens
            while len(self._concepts) > CONCEPT_CACHE_SIZE:
                self._concepts.popitem(last=False)
        return tokens

    def cached_concept_versions(self) -> list[uuid.UUID]:
        return list(self._concepts)

    def job_dir(self, job_id: uuid.UUID) -> Path:
        return self.settings.work_dir / "jobs" / str(job_id)


@cache
def runtime() -> WorkerRuntime:
    settings = Settings.from_env()
    settings.ensure_local_dirs()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return WorkerRuntime(settings, make_session_factory(make_engine(settings.database_url)), make_store(settings))
