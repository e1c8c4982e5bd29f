"""The schema exists through the migrations (on SQLite and PostgreSQL) and matches the models; the
API's copies of the library's name rules stay equal to the library's."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from api.admin import migrate
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
