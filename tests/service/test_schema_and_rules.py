"""The schema exists through the migrations (on SQLite and PostgreSQL) and matches the models; the
API's copies of the library's name rules stay equal to the library's."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from api.admin import alembic_config, migrate
from api.db import make_engine
from api.models import Base
from api.settings import Settings
from api.text_rules import NAME_RE, RESERVED_RE

# Every table the models declare (each feature branch adds its own), plus Alembic's bookkeeping.
TABLES = set(Base.metadata.tables) | {"alembic_version"}


def _no_drift(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_migrations_build_the_schema_on_sqlite(tmp_path):
    settings = Settings.from_env({"OMNI_DATA_DIR": str(tmp_path)})
    migrate(settings)
    migrate(settings)  # idempotent
    engine = make_engine(settings.database_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    assert _no_drift(engine) == []


def test_migrations_match_the_models_on_postgres(pg_engine):
    assert set(inspect(pg_engine).get_table_names()) == TABLES
    assert _no_drift(pg_engine) == []
    for table in TABLES - {"tenants", "alembic_version"}:
        columns = {c["name"]: c for c in inspect(pg_engine).get_columns(table)}
        assert columns["tenant_id"]["nullable"] is False, table


def test_migration_0011_marks_the_jobs_of_existing_batches():
    """Batch items made before jobs had `batch_id` must still stay out of the quota count."""
    from .conftest import create_database, database_url, drop_database

    name = create_database()
    url = database_url(name)
    config = alembic_config(url)
    engine = None
    try:
        command.upgrade(config, "0010")
        engine = make_engine(url)
        t, c, v, b, train, item, lone = (uuid.uuid4() for _ in range(7))
        job = ("INSERT INTO jobs (id, tenant_id, concept_id, kind, queue, state, progress, progress_history, "
               "attempts, cancel_requested, payload, created_at) VALUES (:j, :t, :c, :kind, :kind, :state, 0, '[]', "
               "0, false, '{}', now())")
        render = ("INSERT INTO renders (id, tenant_id, concept_id, version_id, job_id, kind, text, seed, sample_steps, "
                  "concepts, guidance, size, num_images, batch_id, batch_index, created_at) VALUES (:r, :t, :c, :v, "
                  ":j, 'generate', 'a', 0, 1, '[]', 1, 32, 1, :b, :i, now())")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES (:t, 't', now())"), {"t": t})
            conn.execute(text("INSERT INTO concepts (id, tenant_id, name, identifier, status, created_at, updated_at) "
                              "VALUES (:c, :t, 'c', '<c>', 'ready', now(), now())"), {"c": c, "t": t})
            conn.execute(text(job), {"j": train, "t": t, "c": c, "kind": "train", "state": "succeeded"})
            conn.execute(text("INSERT INTO concept_versions (id, tenant_id, concept_id, job_id, number, object_prefix, "
                              "backbone, backbone_fingerprint, metrics, created_at) VALUES (:v, :t, :c, :j, 1, 'x', "
                              "'tiny', '0', '{}', now())"), {"v": v, "t": t, "c": c, "j": train})
            conn.execute(text("INSERT INTO batches (id, tenant_id, state, total, spec, cancel_requested, created_at) "
                              "VALUES (:b, :t, 'running', 1, '{}', false, now())"), {"b": b, "t": t})
            for j, batch, index in ((item, b, 0), (lone, None, None)):
                conn.execute(text(job), {"j": j, "t": t, "c": c, "kind": "render", "state": "queued"})
                conn.execute(text(render), {"r": uuid.uuid4(), "t": t, "c": c, "v": v, "j": j, "b": batch, "i": index})
        command.upgrade(config, "0011")
        with engine.connect() as conn:
            marked = dict(conn.execute(text("SELECT id, batch_id FROM jobs")).all())
        assert marked == {train: None, item: b, lone: None}
    finally:
        if engine is not None:
            engine.dispose()
        drop_database(name)


def test_api_name_rules_equal_the_library_rules():
    from omnipersona import tokens

    assert NAME_RE.pattern == tokens.NAME_RE.pattern
    assert RESERVED_RE.pattern == tokens.RESERVED_RE.pattern


def test_api_and_its_schema_never_import_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, api.app, api.wsgi, api.admin, api.client; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('omnipersona')]; print(bad)")
    env = {"OMNI_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
