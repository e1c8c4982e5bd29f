"""`create_app`: the Flask application factory. Everything it needs (settings, session factory,
object store, job publisher) can be passed in; missing pieces are built from the settings."""

from __future__ import annotations

from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from .accounts.views import bp as accounts_bp
from .auth import authenticate
from .batches.views import bp as batches_bp
from .celery_config import make_celery
from .concepts.views import bp as concepts_bp
from .context import EXTENSION, Services, session
from .dashboard import auth as dashboard_auth
from .dashboard.views import bp as dashboard_bp
from .db import make_engine, make_session_factory
from .errors import register_error_handlers
from .jobs.views import bp as jobs_bp
from .logging_setup import init_request_logging
from .metrics import init_metrics
from .openapi import CONFIG_PUBLIC_ENDPOINTS
from .openapi import PUBLIC_ENDPOINTS as OPENAPI_ENDPOINTS
from .openapi import bp as openapi_bp
from .queue import CeleryPublisher, Publisher
from .ratelimit import install_rate_limiter
from .renders.views import bp as renders_bp
from .settings import Settings
from .storage import ObjectStore, make_store
from .usage.views import bp as usage_bp
from .versions.objects import PUBLIC_ENDPOINTS as OBJECT_ENDPOINTS
from .versions.objects import bp as objects_bp
from .versions.views import bp as versions_bp
from .webhooks.views import bp as webhooks_bp

PUBLIC_ENDPOINTS = {"healthz", "metrics"}  # /metrics checks its own token (OMNI_METRICS_TOKEN)
PUBLIC_ENDPOINTS |= OBJECT_ENDPOINTS  # presigned object URLs carry their own signature
PUBLIC_ENDPOINTS |= OPENAPI_ENDPOINTS  # the API's description is public
# The dashboard authenticates by its own session cookie (browsers cannot send a bearer header).
SELF_AUTHENTICATED_BLUEPRINTS = {"dashboard"}


def create_app(settings: Settings | None = None, *, session_factory: sessionmaker[Session] | None = None,
               store: ObjectStore | None = None, publisher: Publisher | None = None) -> Flask:
    settings = settings or Settings.from_env()
    settings.ensure_local_dirs()
    app = Flask("omnipersona_api")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.config[CONFIG_PUBLIC_ENDPOINTS] = frozenset(PUBLIC_ENDPOINTS)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        session_factory=session_factory or make_session_factory(make_engine(settings.database_url)),
        store=store or make_store(settings),
        publisher=publisher or CeleryPublisher(make_celery(settings)),
    )
    register_error_handlers(app)

    @app.before_request
    def _authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None \
                or request.blueprint in SELF_AUTHENTICATED_BLUEPRINTS:
            return
        g.principal = authenticate(session())

    install_rate_limiter(app)  # after authentication: requests are counted per key

    @app.teardown_request
    def _close_session(_exc: BaseException | None) -> None:
        db_session = g.pop("db_session", None)
        if db_session is not None:
            db_session.close()  # rolls back whatever a failed request left uncommitted

    init_request_logging(app)
    init_metrics(app, token=settings.metrics_token)
    dashboard_auth.init_secret(app, settings.secret_key)

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        session().execute(text("SELECT 1"))
        return jsonify({"ok": True, "backbone": settings.backbone})

    for bp in (concepts_bp, jobs_bp, renders_bp):
        app.register_blueprint(bp)
    app.register_blueprint(usage_bp)
    app.register_blueprint(versions_bp)
    app.register_blueprint(objects_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(accounts_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(openapi_bp)
    return app
