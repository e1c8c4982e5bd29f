"""/admin: the operators' dashboard. Anyone may see the login form; everything else needs a platform
admin (a session cookie from the form, or a bearer key). Another role gets 404, as if there were
no dashboard; nobody logged in is sent to the form. POST buttons carry the session's CSRF token."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from flask import Blueprint, current_app, redirect, render_template, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from ..context import services, session
from ..errors import ApiError, NotFound
from ..spec import validation_error
from . import auth
from . import service as dashboard
from .schemas import JobFilter

bp = Blueprint("dashboard", __name__, url_prefix="/admin", template_folder="templates")

NOTICES = {"canceled": "Job {job} canceled.", "cancel_requested": "Job {job} will stop at its next step.",
           "retried": "Retry queued as job {job}."}


def _lifetime() -> int:
    return services().settings.admin_session_seconds


def _viewer() -> auth.AdminViewer | None:
    return auth.current_viewer(current_app, session(), _lifetime())


def _admin() -> auth.AdminViewer:
    """The platform admin making this request; 404 for anyone else (the dashboard is not advertised)."""
    viewer = _viewer()
    if viewer is None or not viewer.is_platform_admin:
        raise NotFound("path", "no such page")
    return viewer


def _admin_post() -> auth.AdminViewer:
    viewer = _admin()
    if not auth.csrf_ok(viewer):
        raise ApiError(auth.CSRF_FIELD, "the form is stale or came from another site; reload the page", status=403,
                       code="csrf")
    return viewer


def _safe_next(default: str) -> str:
    """Where to go after a button: only a path inside the dashboard (no open redirect)."""
    target = request.form.get("next", "")
    if target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def _with_notice(target: str, notice: str, job_id: uuid.UUID) -> str:
    separator = "&" if "?" in target else "?"
    return f"{target}{separator}{urlencode({'notice': notice, 'job': str(job_id)})}"


def _notice() -> str | None:
    template = NOTICES.get(request.args.get("notice", ""))
    try:
        job = uuid.UUID(request.args.get("job", ""))
    except ValueError:
        return None
    return template.format(job=job) if template else None


@bp.errorhandler(ApiError)
def _error_page(exc: ApiError) -> ResponseReturnValue:
    return render_template("dashboard/error.html", status=exc.status, message=exc.message, viewer=None), exc.status


@bp.errorhandler(HTTPException)
def _http_error_page(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    return render_template("dashboard/error.html", status=status, message=exc.description, viewer=None), status


@bp.get("/login")
def login_form() -> ResponseReturnValue:
    return render_template("dashboard/login.html", error=None, viewer=None)


@bp.post("/login")
def login() -> ResponseReturnValue:
    presented = request.form.get("api_key", "").strip()
    viewer = auth.viewer_for_key(session(), presented) if presented else None
    if viewer is None:
        return render_template("dashboard/login.html", error="Unknown or revoked API key.", viewer=None), 401
    if not viewer.is_platform_admin:
        raise NotFound("path", "no such page")
    response = redirect("/admin", code=303)
    auth.start_session(current_app, response, viewer, _lifetime())
    return response


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    _admin_post()
    response = redirect("/admin/login", code=303)
    auth.end_session(response)
    return response


@bp.get("")
def overview() -> ResponseReturnValue:
    viewer = _viewer()
    if viewer is None:
        return redirect("/admin/login", code=303)
    if not viewer.is_platform_admin:
        raise NotFound("path", "no such page")
    db = session()
    settings = services().settings
    workers, workers_note = dashboard.workers_seen(services().publisher)
    return render_template(
        "dashboard/overview.html", viewer=viewer, notice=_notice(),
        depth=dashboard.jobs.queue_depth(db), states=dashboard.jobs_by_state(db),
        running=dashboard.running_jobs(db), failures=dashboard.recent_failures(db),
        workers=workers, workers_note=workers_note,
        heartbeating=dashboard.heartbeating_jobs(db, settings.stale_after_seconds),
        stale_after=settings.stale_after_seconds, usage=dashboard.usage_by_tenant(db),
        next_path="/admin",
    )


@bp.get("/jobs")
def job_list() -> ResponseReturnValue:
    viewer = _admin()
    try:
        flt = JobFilter.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error(exc, "query") from exc
    db = session()
    return render_template(
        "dashboard/jobs.html", viewer=viewer, notice=_notice(), flt=flt, jobs=dashboard.filtered_jobs(db, flt),
        states=dashboard.models.JOB_STATES, queues=dashboard.queue_names(db), tenants=dashboard.tenant_names(db),
        limit=dashboard.JOBS_PAGE, next_path="/admin/jobs?" + urlencode(flt.as_query()),
    )


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> ResponseReturnValue:
    _admin_post()
    job = dashboard.cancel_job(session(), dashboard.get_job(session(), job_id))
    notice = "canceled" if job.state == "canceled" else "cancel_requested"
    return redirect(_with_notice(_safe_next("/admin/jobs"), notice, job.id), code=303)


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> ResponseReturnValue:
    _admin_post()
    job = dashboard.retry_job(session(), services().publisher, dashboard.get_job(session(), job_id))
    return redirect(_with_notice(_safe_next("/admin/jobs"), "retried", job.id), code=303)
