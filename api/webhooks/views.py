"""Webhook endpoints (register, list, get, update, delete), the signing secret (rotate, with a grace
period for the old one) and the delivery log."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from ..concepts.schemas import iso
from ..context import principal, services, session
from ..errors import ApiError, NotFound
from ..models import WebhookDelivery, WebhookEndpoint
from ..scoping import get_scoped
from ..spec import documented, parse_body, parse_model
from . import service
from .schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryQuery,
    SecretOut,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
    delivery_dict,
    webhook_dict,
)

bp = Blueprint("webhooks", __name__)


@bp.post("/v1/webhooks")
@documented(request=WebhookCreate, response=WebhookOut, status=201, errors=(400, 401))
def create() -> ResponseReturnValue:
    body = parse_body(WebhookCreate)
    endpoint, secret = service.create_endpoint(session(), services().settings, principal().tenant_id, body.url,
                                               list(body.events))
    return jsonify(webhook_dict(endpoint, secret)), 201


@bp.get("/v1/webhooks")
@documented(response=WebhookList, errors=(401,))
def list_webhooks() -> ResponseReturnValue:
    rows = session().scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == principal().tenant_id)
                             .order_by(WebhookEndpoint.created_at)).all()
    return jsonify({"webhooks": [webhook_dict(e) for e in rows]})


@bp.get("/v1/webhooks/<webhook_id>")
@documented(response=WebhookOut, errors=(401, 404))
def get(webhook_id: str) -> ResponseReturnValue:
    endpoint = get_scoped(session(), WebhookEndpoint, webhook_id, principal().tenant_id, "webhook")
    return jsonify(webhook_dict(endpoint))


@bp.patch("/v1/webhooks/<webhook_id>")
@documented(request=WebhookUpdate, response=WebhookOut, errors=(400, 401, 404))
def update(webhook_id: str) -> ResponseReturnValue:
    # Looked up first: another tenant's id is 404 whatever the body holds.
    endpoint = get_scoped(session(), WebhookEndpoint, webhook_id, principal().tenant_id, "webhook")
    body = parse_body(WebhookUpdate)
    if not body.model_fields_set:
        raise ApiError("body", "send at least one of url, events, enabled")
    events = list(body.events) if body.events is not None else None
    endpoint = service.update_endpoint(session(), services().settings, endpoint, body.url, events, body.enabled)
    return jsonify(webhook_dict(endpoint))


@bp.delete("/v1/webhooks/<webhook_id>")
@documented(status=204, errors=(401, 404))
def delete(webhook_id: str) -> ResponseReturnValue:
    db = session()
    endpoint = get_scoped(db, WebhookEndpoint, webhook_id, principal().tenant_id, "webhook")
    db.delete(endpoint)  # its deliveries go with it (ON DELETE CASCADE)
    db.commit()
    return "", 204


@bp.post("/v1/webhooks/secret/rotate")
@documented(response=SecretOut, errors=(401,))
def rotate_secret() -> ResponseReturnValue:
    db = session()
    row = service.rotate_secret(db, principal().tenant_id, services().settings.webhook_secret_grace_seconds)
    db.commit()
    previous_until = iso(row.previous_valid_until) if row.previous_secret else None
    return jsonify(SecretOut(secret=row.secret, previous_secret_valid_until=previous_until).model_dump())


@bp.get("/v1/webhooks/<webhook_id>/deliveries")
@documented(response=DeliveryList, query=DeliveryQuery, errors=(400, 401, 404))
def deliveries(webhook_id: str) -> ResponseReturnValue:
    query = parse_model(DeliveryQuery, request.args.to_dict(), root="query")
    db = session()
    endpoint = get_scoped(db, WebhookEndpoint, webhook_id, principal().tenant_id, "webhook")
    where = (WebhookDelivery.tenant_id == endpoint.tenant_id, WebhookDelivery.endpoint_id == endpoint.id)
    total = db.scalar(select(func.count()).select_from(WebhookDelivery).where(*where))
    rows = db.scalars(select(WebhookDelivery).where(*where).order_by(WebhookDelivery.created_at.desc())
                      .offset(query.offset).limit(query.limit)).all()
    return jsonify({"deliveries": [delivery_dict(d) for d in rows], "total": total})


@bp.get("/v1/webhooks/<webhook_id>/deliveries/<delivery_id>")
@documented(response=DeliveryOut, errors=(401, 404))
def delivery(webhook_id: str, delivery_id: str) -> ResponseReturnValue:
    db = session()
    endpoint = get_scoped(db, WebhookEndpoint, webhook_id, principal().tenant_id, "webhook")
    row = get_scoped(db, WebhookDelivery, delivery_id.removeprefix("msg_"), principal().tenant_id, "delivery")
    if row.endpoint_id != endpoint.id:
        raise NotFound("delivery", f"no delivery {delivery_id}")
    return jsonify(delivery_dict(row))
