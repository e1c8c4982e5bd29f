"""`python -m api.admin`: migrate, create-tenant (prints the key once), create-key, revoke-key,
queue; errors exit 2 with one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from api.db import make_engine, make_session_factory
from api.models import ApiKey, Tenant
from api.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def admin(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ) | {"OMNI_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "api.admin", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


def test_admin_cli_flow(tmp_path):
    assert admin(tmp_path, "migrate").returncode == 0
    created = admin(tmp_path, "create-tenant", "acme")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("op_") and key not in created.stderr
    again = admin(tmp_path, "create-tenant", "acme")
    assert again.returncode == 2 and again.stderr.startswith("api.admin: error:") and again.stdout == ""
    bad = admin(tmp_path, "create-tenant", "Bad Name")
    assert bad.returncode == 2
    second = admin(tmp_path, "create-key", "acme").stdout.strip()
    assert second.startswith("op_") and second != key
    assert admin(tmp_path, "revoke-key", key.split("_")[1]).returncode == 0
    assert admin(tmp_path, "revoke-key", "nosuchpf").returncode == 2
    queue = admin(tmp_path, "queue")
    assert queue.returncode == 0 and json.loads(queue.stdout) == {}

    factory = make_session_factory(make_engine(Settings.from_env({"OMNI_DATA_DIR": str(tmp_path)}).database_url))
    with factory() as session:
        assert [t.name for t in session.scalars(select(Tenant))] == ["acme"]
        keys = {k.prefix: k for k in session.scalars(select(ApiKey))}
    assert keys[key.split("_")[1]].revoked_at is not None
    assert keys[second.split("_")[1]].revoked_at is None
    assert keys[second.split("_")[1]].key_hash == hashlib.sha256(second.encode()).hexdigest()
