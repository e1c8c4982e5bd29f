"""`Idempotency-Key` on POSTs that create work (IETF httpapi idempotency-key draft semantics):
the first request's answer is stored and replayed for a retry with the same key and the same
content; the same key with other content (another body, or another route) is 409, as is a retry
while the first is still running (the product's contract: a reused key never makes new work).
A request that fails (4xx/5xx) releases its key, so the client can fix it and try again."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from .context import principal, session
from .errors import ApiError, Conflict
from .models import IdempotencyKey

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
MARK = "__idempotent__"  # on wrapped views, so the OpenAPI document can list the header


def request_fingerprint() -> str:
    """Method, path and content; a multipart body counts by its fields and file hashes (the
    boundary differs between retries)."""
    h = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    if request.mimetype == "multipart/form-data":
        # A part may come without a name (None): sort as text so any form fingerprints, not a 500.
        h.update(json.dumps(sorted(request.form.items(multi=True), key=lambda kv: (str(kv[0]), kv[1]))).encode())
        for name, storage in sorted(request.files.items(multi=True), key=lambda item: str(item[0])):
            data = storage.read()
            storage.seek(0)
            h.update(f"{name}:{storage.filename}:{hashlib.sha256(data).hexdigest()}\n".encode())
    else:
        h.update(request.get_data(cache=True))
    return h.hexdigest()


def idempotent(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not key or len(key) > MAX_KEY_CHARS:
            raise ApiError(HEADER, f"must be 1 to {MAX_KEY_CHARS} characters")
        tenant_id = principal().tenant_id
        fingerprint = request_fingerprint()
        db = session()
        row = db.scalars(select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id,
                                                      IdempotencyKey.key == key)).first()
        if row is None:
            row = IdempotencyKey(tenant_id=tenant_id, key=key, request_fingerprint=fingerprint)
            db.add(row)
            try:
                db.commit()
            except IntegrityError as exc:  # the same key arrived twice at once
                db.rollback()
                raise Conflict(HEADER, "a request with this key is still being processed") from exc
        elif row.request_fingerprint != fingerprint:
            raise Conflict(HEADER, "this key was used for a different request")
        elif row.response_status is None:
            raise Conflict(HEADER, "a request with this key is still being processed")
        else:
            response = jsonify(row.response_body)
            response.status_code = row.response_status
            response.headers["Idempotent-Replayed"] = "true"
            return response
        try:
            body, status = view(*args, **kwargs)
        except BaseException:
            db.rollback()
            db.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
            db.commit()
            raise
        row.response_status = status
        row.response_body = body.get_json()
        db.commit()
        return body, status

    setattr(wrapper, MARK, True)
    return wrapper
