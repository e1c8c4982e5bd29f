"""`GET /v1/openapi.json`: the OpenAPI 3.1 document of the `/v1` API, generated from the code.

Nothing here is written by hand per route: the paths come from the app's URL map, and each
operation from the `RouteSpec` its view carries (`api/spec.py: @documented`): the pydantic models
of its body, query and response, its success status and the errors it can answer. What every
route of a kind can answer is added here once, where it is decided:

- authenticated routes: 401 (missing, invalid or revoked key), 429 (per-key rate limit or a
  quota; `Retry-After` when it is the rate limit), 400 (a key sent in the URL instead of a header);
- routes that take a body: 400 (not JSON / not a form) and 413 (over `MAX_CONTENT_LENGTH`);
- routes that honour `Idempotency-Key`: the header itself, 400 (bad key), 409 (the first request
  with the key is still running) and 422 (the key was used for a different request).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from http import HTTPStatus
from typing import Any, Literal

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from .errors import ErrorResponse
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import MARK as IDEMPOTENT_MARK
from .idempotency import MAX_KEY_CHARS
from .spec import RouteSpec, documented, route_spec

API_PREFIX = "/v1/"
REF_TEMPLATE = "#/components/schemas/{model}"
METHODS = ("get", "post", "put", "patch", "delete")
AUTH_ERRORS = (400, 401, 429)
BODY_ERRORS = (400, 413)
IDEMPOTENCY_ERRORS = (400, 409, 422)
CONFIG_PUBLIC_ENDPOINTS = "OMNI_PUBLIC_ENDPOINTS"  # endpoints served without an API key
RULE_ARGUMENT_RE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")

bp = Blueprint("openapi", __name__, url_prefix="/v1")
PUBLIC_ENDPOINTS = {"openapi.document"}

Mode = Literal["validation", "serialization"]


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document (its fields are described by the OpenAPI specification itself)."""

    model_config = {"extra": "allow"}
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


def api_rules(app: Flask) -> Iterator[tuple[Rule, str]]:
    """(rule, lower-case method) of every /v1 route, in a stable order."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if not rule.rule.startswith(API_PREFIX):
            continue
        for method in sorted(rule.methods or ()):
            if method.lower() in METHODS:
                yield rule, method.lower()


def undocumented_routes(app: Flask) -> list[str]:
    """'METHOD /path' of every /v1 route whose view has no `RouteSpec` (each one is a bug)."""
    return [f"{method.upper()} {rule.rule}" for rule, method in api_rules(app)
            if route_spec(app.view_functions[rule.endpoint]) is None]


def is_idempotent(view: Any) -> bool:
    while view is not None:
        if getattr(view, IDEMPOTENT_MARK, False):
            return True
        view = getattr(view, "__wrapped__", None)
    return False


def openapi_path(rule: Rule) -> str:
    return RULE_ARGUMENT_RE.sub(r"{\1}", rule.rule)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: `X | None` becomes `X`."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    kept = [option for option in options if option != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(kept) == 1:
        return rest | kept[0]
    return rest | {"anyOf": kept}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": HTTPStatus(status).phrase,
        "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="ErrorResponse")}}},
    }
    if status == 429:
        response["headers"] = {"Retry-After": {"description": "with code rate_limited: seconds to the next window",
                                               "schema": {"type": "integer", "minimum": 1}}}
    return response


def _summary(view: Any, spec: RouteSpec) -> str:
    if spec.summary:
        return spec.summary
    while getattr(view, "__wrapped__", None) is not None and not view.__doc__:
        view = view.__wrapped__
    doc = (view.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else view.__name__.replace("_", " ").strip()


class _Schemas:
    """Every model the document names, turned into components at the end in one pass (so two
    models that share a class name get distinct, qualified component names)."""

    def __init__(self) -> None:
        self.models: dict[tuple[type[BaseModel], Mode], None] = {(ErrorResponse, "serialization"): None}

    def ref(self, model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        self.models[(model, mode)] = None
        return {"$ref": f"__model__:{id(model)}:{mode}"}  # replaced once the names are known

    def query_schema(self, model: type[BaseModel]) -> dict[str, Any]:
        return model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")

    def resolve(self, document: dict[str, Any]) -> dict[str, Any]:
        keys, top = models_json_schema(list(self.models), ref_template=REF_TEMPLATE)
        names = {f"__model__:{id(model)}:{mode}": found["$ref"] for (model, mode), found in keys.items()}
        document["components"]["schemas"] = top.get("$defs", {})
        return _replace_refs(document, names)


def _replace_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"] in names:
            return {"$ref": names[node["$ref"]]}
        return {k: _replace_refs(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, names) for v in node]
    return node


def _parameters(rule: Rule, spec: RouteSpec, idempotent: bool, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in RULE_ARGUMENT_RE.findall(rule.rule)
    ]
    if spec.query is not None:
        query = schemas.query_schema(spec.query)
        if "$defs" in query:
            raise ValueError(f"{spec.query.__name__}: query parameters must be plain values, not models")
        required = set(query.get("required", ()))
        for name, schema in query.get("properties", {}).items():
            parameter = {"name": name, "in": "query", "required": name in required, "schema": _without_null(schema)}
            if "description" in schema:
                parameter["description"] = schema["description"]
            parameters.append(parameter)
    if idempotent:
        parameters.append({
            "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
            "description": "the same key with the same request replays the first answer; with another request: 422",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": "^[!-~]+$"},
        })
    return parameters


MULTIPART_TYPES = {
    "file": {"type": "string", "format": "binary"},
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "string": {"type": "string"},
}


def _request_body(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any] | None:
    content: dict[str, Any] = {}
    required = False
    if spec.request is not None:
        content["application/json"] = {"schema": schemas.ref(spec.request, "validation")}
        required = bool(spec.request.model_json_schema().get("required"))
    if spec.multipart:
        unknown = {kind for kind in spec.multipart.values() if kind not in MULTIPART_TYPES}
        if unknown:
            raise ValueError(f"multipart field kinds must be one of {sorted(MULTIPART_TYPES)}, not {sorted(unknown)}")
        form: dict[str, Any] = {"type": "object",
                                "properties": {name: MULTIPART_TYPES[kind] for name, kind in spec.multipart.items()}}
        if spec.multipart_required:
            form["required"] = list(spec.multipart_required)
        content["multipart/form-data"] = {"schema": form}
        required = required or bool(spec.multipart_required)
    if not content:
        return None
    return {"required": required, "content": content}


def _success_response(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {"description": HTTPStatus(spec.status).phrase}
    if spec.response is not None:
        response["content"] = {"application/json": {"schema": schemas.ref(spec.response, "serialization")}}
    elif spec.media_type != "application/json":
        response["content"] = {spec.media_type: {"schema": {"type": "string", "format": "binary"}}}
    return response


def operation(rule: Rule, view: Any, spec: RouteSpec, public: bool, schemas: _Schemas) -> dict[str, Any]:
    idempotent = is_idempotent(view)
    body = _request_body(spec, schemas)
    errors = set(spec.errors)
    if not public:
        errors.update(AUTH_ERRORS)
    if body is not None:
        errors.update(BODY_ERRORS)
    if idempotent:
        errors.update(IDEMPOTENCY_ERRORS)
    found = {status for status in errors if not 400 <= status < 500}
    if found or not 200 <= spec.status < 300:
        raise ValueError(f"{rule.endpoint}: success must be 2xx and errors 4xx (got {spec.status}, {sorted(found)})")
    out: dict[str, Any] = {
        "operationId": rule.endpoint,
        "summary": _summary(view, spec),
        "tags": [rule.endpoint.split(".")[0]],
        "parameters": _parameters(rule, spec, idempotent, schemas),
        "responses": {str(spec.status): _success_response(spec, schemas)}
        | {str(status): _error_response(status) for status in sorted(errors)},
    }
    if body is not None:
        out["requestBody"] = body
    if public:
        out["security"] = []
    return out


def build_document(app: Flask, public_endpoints: Collection[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented /v1 route of `app`."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for rule, method in api_rules(app):
        view = app.view_functions[rule.endpoint]
        spec = route_spec(view)
        if spec is None:
            continue  # listed by undocumented_routes, which the tests require to be empty
        public = rule.endpoint in public_endpoints
        paths.setdefault(openapi_path(rule), {})[method] = operation(rule, view, spec, public, schemas)
    document = {
        "openapi": "3.1.0",
        "info": {"title": "OmniPersona API", "version": "1",
                 "description": "Teach the model your concepts from a few photos and facts, then ask about, draw "
                                "and edit them. Errors are JSON: {\"error\": {\"code\", \"field\", \"message\"}}."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: Authorization: Bearer op_..."},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                             "description": "the same API key in X-API-Key"},
        }},
        "security": [{"bearer": []}, {"apiKeyHeader": []}],
    }
    return schemas.resolve(document)


@bp.get("/openapi.json")
@documented(response=OpenApiDocument)
def document() -> ResponseReturnValue:
    """This document: every /v1 route, generated from the code."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    cached = app.extensions.get("omnipersona_openapi")
    if cached is None:  # routes do not change after startup
        cached = build_document(app, app.config.get(CONFIG_PUBLIC_ENDPOINTS, PUBLIC_ENDPOINTS))
        app.extensions["omnipersona_openapi"] = cached
    return jsonify(cached)
