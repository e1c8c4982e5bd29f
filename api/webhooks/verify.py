"""What a customer's receiver runs on each webhook (Standard Webhooks): check the signature over
`<webhook-id>.<webhook-timestamp>.<body>` with the tenant's `whsec_` secret, and refuse a timestamp
further than `tolerance` seconds from now, so a captured delivery replayed later is rejected even
though its signature is genuine. Within the tolerance, a receiver that remembers the `webhook-id`s
it has handled (it is stable across retries) also drops a quick replay.

Standard library only (no Flask, no database), so it can be copied into a receiver as it is:

    payload = verify_signature(secret, request.headers, request.get_data(), tolerance=300)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class InvalidWebhook(ValueError):
    """The request is not a genuine, fresh delivery; `reason` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():  # header names are case-insensitive
        if key.lower() == name:
            return value
    raise InvalidWebhook(f"missing {name} header")


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = DEFAULT_TOLERANCE_SECONDS,
                     now: float | None = None) -> dict[str, Any]:
    """The delivery's JSON payload when the signature matches and the timestamp is within
    `tolerance` seconds of `now` (either side: clocks differ); raises `InvalidWebhook` otherwise."""
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError as exc:
        raise InvalidWebhook("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidWebhook(f"webhook-timestamp is {int(current - timestamp)}s from now; tolerance {tolerance}s "
                             "(a replayed or badly delayed delivery)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise InvalidWebhook("the secret is not a whsec_ secret") from exc
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    # Several space-separated signatures may be sent (e.g. during a secret rotation); any may match.
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            matched = True
    if not matched:
        raise InvalidWebhook("no webhook-signature matches the body")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidWebhook("the body is not JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidWebhook("the body is not a JSON object")
    return payload
