"""`GET /v1/objects/<key>?expires=&signature=`: what the local store's presigned URLs point at
(S3 serves its own). No API key: the HMAC signature over key and expiry is the permission, as in
an S3 presigned URL; a wrong, altered or expired signature answers 403 like S3 does."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, Field

from ..context import services
from ..errors import ApiError, NotFound
from ..spec import documented
from ..storage import LocalStore, ObjectNotFound

bp = Blueprint("objects", __name__, url_prefix="/v1/objects")

PUBLIC_ENDPOINTS = {"objects.download"}


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class SignedQuery(BaseModel):
    """The two query parameters of a presigned URL, as the API gave it out."""

    expires: str | None = Field(None, description="Unix time after which the URL no longer works")
    signature: str | None = Field(None, description="HMAC over the key and `expires`")


@bp.get("/<path:key>")
@documented(media_type="*/*", query=SignedQuery, errors=(403, 404))
def download(key: str) -> ResponseReturnValue:
    store = services().store
    if not isinstance(store, LocalStore):  # S3 URLs go to the S3 endpoint itself
        raise NotFound("key", "no such object")
    expires, signature = request.args.get("expires", ""), request.args.get("signature", "")
    try:
        valid = store.check_signature(key, expires, signature)
    except ValueError:
        valid = False
    if not valid:
        raise Forbidden("signature", "the signature is invalid or has expired")
    try:
        data = store.get_bytes(key)
    except (ObjectNotFound, ValueError) as exc:
        raise NotFound("key", "no such object") from exc
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, content_type=content_type,
                    headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})
