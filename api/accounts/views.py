"""/v1/me (anyone), /v1/users and /v1/keys (tenant admins; members get 404 as for no such route)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from ..auth import TENANT_ADMIN, require_role
from ..context import principal, session
from ..models import ApiKey, Tenant, User
from ..spec import documented, parse_body
from ..usage.service import tenant_limits
from . import service
from .schemas import KeyCreate, KeyList, KeyOut, MeOut, NewKeyOut, NewUserOut, UserCreate, UserList, UserOut

bp = Blueprint("accounts", __name__, url_prefix="/v1")


def _out(model: KeyOut | UserOut | MeOut) -> dict:
    return model.model_dump(mode="json")


@bp.get("/me")
@documented(response=MeOut, errors=(401, 429))
def me() -> ResponseReturnValue:
    who = principal()
    user = session().get(User, who.user_id)
    tenant = session().get(Tenant, who.tenant_id)
    key = session().get(ApiKey, who.key_id)
    return jsonify(_out(MeOut(tenant_id=who.tenant_id, tenant_name=tenant.name, user_id=who.user_id, email=user.email,
                              role=who.role, key_prefix=key.prefix,
                              limits=tenant_limits(session(), who.tenant_id).as_dict())))


@bp.get("/users")
@require_role(TENANT_ADMIN)
@documented(response=UserList, errors=(401, 404, 429))
def list_users() -> ResponseReturnValue:
    return jsonify({"users": [_out(UserOut.of(u)) for u in service.list_users(session(), principal().tenant_id)]})


@bp.post("/users")
@require_role(TENANT_ADMIN)
@documented(request=UserCreate, response=NewUserOut, status=201, errors=(400, 401, 403, 404, 409, 429))
def create_user() -> ResponseReturnValue:
    body = parse_body(UserCreate)
    user, key, plaintext = service.create_user(session(), principal(), body.email, body.role, body.key_name)
    out = NewUserOut(**UserOut.of(user).model_dump(), api_key=NewKeyOut(**KeyOut.of(key).model_dump(), key=plaintext))
    return jsonify(_out(out)), 201


@bp.get("/keys")
@require_role(TENANT_ADMIN)
@documented(response=KeyList, errors=(401, 404, 429))
def list_keys() -> ResponseReturnValue:
    return jsonify({"keys": [_out(KeyOut.of(k)) for k in service.list_keys(session(), principal().tenant_id)]})


@bp.post("/keys")
@require_role(TENANT_ADMIN)
@documented(request=KeyCreate, response=NewKeyOut, status=201, errors=(400, 401, 404, 429))
def create_key() -> ResponseReturnValue:
    body = parse_body(KeyCreate)
    key, plaintext = service.create_key(session(), principal(), body.name, body.user_id)
    return jsonify(_out(NewKeyOut(**KeyOut.of(key).model_dump(), key=plaintext))), 201


@bp.delete("/keys/<key_id>")
@require_role(TENANT_ADMIN)
@documented(response=KeyOut, errors=(401, 404, 429))
def revoke_key(key_id: str) -> ResponseReturnValue:
    return jsonify(_out(KeyOut.of(service.revoke_key(session(), principal().tenant_id, key_id))))
