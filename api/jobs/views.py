"""/v1/jobs: get one (with its progress history), list, cancel."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ..context import principal, session
from ..errors import ApiError
from ..models import JOB_STATES, Job
from ..scoping import get_scoped
from . import service
from .schemas import job_dict

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.get("/<job_id>")
def get(job_id: str) -> ResponseReturnValue:
    return jsonify(job_dict(get_scoped(session(), Job, job_id, principal().tenant_id, "job")))


@bp.get("")
def list_() -> ResponseReturnValue:
    query = select(Job).where(Job.tenant_id == principal().tenant_id).order_by(Job.created_at.desc()).limit(100)
    state = request.args.get("state")
    if state is not None:
        if state not in JOB_STATES:
            raise ApiError("state", f"must be one of {', '.join(JOB_STATES)}")
        query = query.where(Job.state == state)
    return jsonify({"jobs": [job_dict(j) for j in session().scalars(query)]})


@bp.post("/<job_id>/cancel")
def cancel(job_id: str) -> ResponseReturnValue:
    job = get_scoped(session(), Job, job_id, principal().tenant_id, "job")
    return jsonify(job_dict(service.request_cancel(session(), job))), 202
