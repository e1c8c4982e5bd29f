"""Errors as JSON: `{"error": {"code", "field", "message"}}` with a 4xx status. Views and services
raise `ApiError`; nothing is written when one is raised before the commit."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable kind: invalid, not_found, conflict, unauthorized, ...")
    field: str | None = Field(description="the request field, header or query parameter at fault, if one is")
    message: str


class ErrorResponse(BaseModel):
    """The body of every 4xx answer."""

    error: ErrorDetail


class ApiError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, field: str | None, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "field": self.field, "message": self.message}}


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        field = "body" if exc.code == 413 else None
        body = {"error": {"code": (exc.name or "error").lower().replace(" ", "_"), "field": field,
                          "message": exc.description}}
        return jsonify(body), exc.code or 500
