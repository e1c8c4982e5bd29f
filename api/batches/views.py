"""/v1/batches: create (up to OMNI_MAX_BATCH_ITEMS generate items), list, progress, per-item
report, cancel."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ..context import principal, services, session
from ..idempotency import idempotent
from ..models import Batch
from ..renders.service import absolute_url, image_links
from ..scoping import get_scoped
from ..spec import documented, parse_body, parse_model
from . import service
from .schemas import BatchCreate, BatchItemList, BatchItemQuery, BatchList, BatchOut, batch_dict, item_dict

bp = Blueprint("batches", __name__)


def _out(batch: Batch) -> dict:
    settings = services().settings
    url = None
    if batch.manifest_object_key and batch.state != "running":
        url = absolute_url(services().store.presigned_url(batch.manifest_object_key, settings.presigned_url_seconds))
    return batch_dict(batch, service.item_counts(session(), batch), url)


@bp.post("/v1/batches")
@documented(request=BatchCreate, response=BatchOut, status=202, errors=(400, 401, 409, 422, 429))
@idempotent
def create() -> ResponseReturnValue:
    body = parse_body(BatchCreate)
    batch = service.create_batch(session(), services().publisher, services().settings, principal().tenant_id, body)
    return jsonify(_out(batch)), 202


@bp.get("/v1/batches")
@documented(response=BatchList, errors=(401,))
def list_batches() -> ResponseReturnValue:
    rows = session().scalars(select(Batch).where(Batch.tenant_id == principal().tenant_id)
                             .order_by(Batch.created_at.desc()).limit(100)).all()
    return jsonify({"batches": [_out(b) for b in rows]})


@bp.get("/v1/batches/<batch_id>")
@documented(response=BatchOut, errors=(401, 404))
def get(batch_id: str) -> ResponseReturnValue:
    batch = get_scoped(session(), Batch, batch_id, principal().tenant_id, "batch")
    return jsonify(_out(batch))


@bp.get("/v1/batches/<batch_id>/items")
@documented(response=BatchItemList, query=BatchItemQuery, errors=(400, 401, 404))
def items(batch_id: str) -> ResponseReturnValue:
    query = parse_model(BatchItemQuery, request.args.to_dict(), root="query")
    batch = get_scoped(session(), Batch, batch_id, principal().tenant_id, "batch")
    rows, total = service.item_rows(session(), batch, query.state, query.offset, query.limit)
    expires_in = services().settings.presigned_url_seconds
    out = [item_dict(r, j, [link["url"] for link in image_links(services().store, r, expires_in)]) for r, j in rows]
    return jsonify({"items": out, "total": total})


@bp.post("/v1/batches/<batch_id>/cancel")
@documented(response=BatchOut, status=202, errors=(401, 404, 409))
def cancel(batch_id: str) -> ResponseReturnValue:
    batch = get_scoped(session(), Batch, batch_id, principal().tenant_id, "batch")
    batch = service.cancel(session(), services().store, batch)
    return jsonify(_out(batch)), 202
