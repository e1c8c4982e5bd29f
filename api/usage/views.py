"""/v1/usage: the tenant's metered usage (training steps, renders, captions) over a date range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from ..context import principal, session
from ..errors import ApiError
from ..spec import documented, parse_model
from . import service
from .schemas import UsageOut, UsageQuery

bp = Blueprint("usage", __name__, url_prefix="/v1/usage")

MAX_RANGE_DAYS = 366


@bp.get("")
@documented(response=UsageOut, query=UsageQuery, errors=(400, 401, 429))
def usage() -> ResponseReturnValue:
    query = parse_model(UsageQuery, request.args.to_dict(), root="query")
    end = query.end or datetime.now(UTC).date()
    start = query.start or end - timedelta(days=29)
    if start > end:
        raise ApiError("start", "must not be after end")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise ApiError("start", f"the range may span at most {MAX_RANGE_DAYS} days")
    tenant_id = principal().tenant_id
    body = service.usage_between(session(), tenant_id, start, end)
    body["limits"] = service.tenant_limits(session(), tenant_id).as_dict()
    return jsonify(body)
