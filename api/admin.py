"""Admin CLI.

    python -m api.admin migrate                 # alembic upgrade heads
    python -m api.admin create-tenant NAME      # prints the tenant's first API key, once
                        [--platform-admin]      # its first user is a platform admin (the operators' tenant)
    python -m api.admin set-limits TENANT [--max-concepts N] [--max-concurrent-jobs N] [--requests-per-minute N]
    python -m api.admin create-key TENANT       # another key for an existing tenant
    python -m api.admin revoke-key PREFIX
    python -m api.admin queue                   # jobs per queue and state
    python -m api.admin reap                    # one reaper pass (the beat schedule runs it too)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import make_engine, make_session_factory, session_scope
from .keys import generate_key
from .models import ApiKey, Tenant, User, utcnow
from .settings import Settings
from .text_rules import NAME_RE
from .usage.service import tenant_limits

if TYPE_CHECKING:
    from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


class AdminError(Exception):
    pass


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration for this database, without Alembic's own logging setup."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["skip_logging_config"] = True
    return config


def migrate(settings: Settings) -> None:
    from alembic import command

    settings.ensure_local_dirs()
    command.upgrade(alembic_config(settings.database_url), "heads")  # feature branches of the schema merge later


def _new_key(session: Session, tenant: Tenant, user: User, name: str) -> str:
    key = generate_key()
    session.add(ApiKey(tenant_id=tenant.id, user_id=user.id, prefix=key.prefix, key_hash=key.key_hash, name=name))
    return key.plaintext


def create_tenant(session: Session, name: str, email: str | None = None,
                  role: str = "tenant_admin") -> tuple[Tenant, str]:
    if not NAME_RE.match(name):
        raise AdminError(f"tenant name must match {NAME_RE.pattern}")
    if session.scalars(select(Tenant).where(Tenant.name == name)).first():
        raise AdminError(f"tenant {name!r} already exists (use create-key for another key)")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    user = User(tenant_id=tenant.id, email=email or f"owner@{name}.invalid", role=role)
    session.add(user)
    session.flush()
    return tenant, _new_key(session, tenant, user, "default")


def create_key(session: Session, tenant_name: str, key_name: str = "default") -> str:
    tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).first()
    if tenant is None:
        raise AdminError(f"no tenant {tenant_name!r}")
    user = session.scalars(select(User).where(User.tenant_id == tenant.id).order_by(User.created_at)).first()
    if user is None:
        raise AdminError(f"tenant {tenant_name!r} has no user")
    return _new_key(session, tenant, user, key_name)


LIMIT_NAMES = ("max_concepts", "max_concurrent_jobs", "requests_per_minute")


def set_limits(session: Session, tenant_name: str, **limits: int | None) -> dict[str, int]:
    """Stores the given limits on the tenant row (a negative value resets one to the settings'
    default); returns the limits now in force."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).first()
    if tenant is None:
        raise AdminError(f"no tenant {tenant_name!r}")
    for name, value in limits.items():
        if name not in LIMIT_NAMES:
            raise AdminError(f"unknown limit {name!r}")
        if value is not None:
            setattr(tenant, name, None if value < 0 else value)
    session.flush()
    return tenant_limits(session, tenant.id, Settings.from_env()).as_dict()


def revoke_key(session: Session, prefix: str) -> None:
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if key is None:
        raise AdminError(f"no API key with prefix {prefix!r}")
    key.revoked_at = utcnow()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.admin", description="OmniPersona admin commands")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the Alembic migrations (alembic upgrade heads)")
    p = sub.add_parser("create-tenant", help="create a tenant with an owner user; prints its API key once")
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--platform-admin", action="store_true", help="the first user is a platform admin")
    p = sub.add_parser("set-limits", help="per-tenant limits (-1 resets one to the default); prints them")
    p.add_argument("tenant")
    for limit in LIMIT_NAMES:
        p.add_argument("--" + limit.replace("_", "-"), type=int)
    p = sub.add_parser("create-key", help="a new API key for a tenant; printed once")
    p.add_argument("tenant")
    p.add_argument("--name", default="default")
    p = sub.add_parser("revoke-key", help="revoke the API key with this prefix")
    p.add_argument("prefix")
    sub.add_parser("queue", help="jobs per queue and state")
    sub.add_parser("reap", help="one pass of the stale-job reaper")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.command == "migrate":
            migrate(settings)
            return 0
        factory = make_session_factory(make_engine(settings.database_url))
        with session_scope(factory) as session:
            if args.command == "create-tenant":
                role = "platform_admin" if args.platform_admin else "tenant_admin"
                _, plaintext = create_tenant(session, args.name, args.email, role)
                print(plaintext)
            elif args.command == "set-limits":
                chosen = {name: getattr(args, name) for name in LIMIT_NAMES}
                print(json.dumps(set_limits(session, args.tenant, **chosen), sort_keys=True))
            elif args.command == "create-key":
                print(create_key(session, args.tenant, args.name))
            elif args.command == "revoke-key":
                revoke_key(session, args.prefix)
            elif args.command == "queue":
                from .jobs.service import queue_depth

                print(json.dumps(queue_depth(session), indent=2, sort_keys=True))
            elif args.command == "reap":
                from .celery_config import make_celery
                from .jobs.service import reap
                from .queue import CeleryPublisher

                report = reap(session, CeleryPublisher(make_celery(settings)),
                              stale_after_seconds=settings.stale_after_seconds, max_attempts=settings.max_attempts,
                              requeue_queued_after_seconds=settings.requeue_queued_after_seconds)
                print(json.dumps({k: [str(i) for i in v] for k, v in vars(report).items()}))
    except AdminError as exc:
        print(f"api.admin: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
