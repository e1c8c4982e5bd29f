"""What each route takes and gives, declared next to the view so the OpenAPI document can be
generated from the code itself (`GET /v1/openapi.json`).

Request bodies and responses are pydantic models that live in each blueprint's `schemas.py`.
`parse_body` validates a JSON body against its model and turns the first problem into an
`ApiError` naming the field, so the same model both checks the input and documents it.

    @bp.post("/v1/webhooks")
    @documented(request=WebhookCreate, response=WebhookOut, status=201, errors=(400, 404))
    def create() -> ResponseReturnValue:
        body = parse_body(WebhookCreate)
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .context import json_body
from .errors import ApiError

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTRIBUTE = "__openapi__"


@dataclass(frozen=True)
class RouteSpec:
    request: type[BaseModel] | None = None  # JSON body
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None  # query-string parameters, one field each
    multipart: dict[str, str] = field(default_factory=dict)  # form field -> "file" | "files" | "string"
    multipart_required: tuple[str, ...] = ()  # form fields the request must carry
    media_type: str = "application/json"  # of the success response; other types are bytes (an image)
    summary: str | None = None


def documented(**spec: Any) -> Callable[[F], F]:
    """Attach a `RouteSpec` to a view (place it under the route decorator)."""

    def mark(view: F) -> F:
        setattr(view, SPEC_ATTRIBUTE, RouteSpec(**spec))
        return view

    return mark


def route_spec(view: Callable[..., Any]) -> RouteSpec | None:
    while view is not None:
        found = getattr(view, SPEC_ATTRIBUTE, None)
        if found is not None:
            return found
        view = getattr(view, "__wrapped__", None)  # through functools.wraps decorators
    return None


def validation_error(exc: ValidationError, root: str = "body") -> ApiError:
    """The first pydantic error as an `ApiError` whose field is the dotted location."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or root
    message = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return ApiError(loc, message)


def parse_model(model: type[M], data: Any, root: str = "body") -> M:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(root, "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, root) from exc


def parse_body(model: type[M]) -> M:
    """The request's JSON body validated against `model` (400 naming the field otherwise)."""
    return parse_model(model, json_body())
