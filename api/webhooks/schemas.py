"""Request and response shapes for webhook endpoints, the signing secret and deliveries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..concepts.schemas import iso
from ..models import WebhookDelivery, WebhookEndpoint

EventName = Literal["job.succeeded", "job.failed", "job.canceled", "batch.done"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL that receives the events")
    events: list[EventName] = Field(min_length=1, max_length=4, description="events to send to this URL")


class WebhookUpdate(BaseModel):
    """PATCH: the fields to change (at least one); a new URL is checked like a new endpoint's."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, min_length=1, max_length=2000, description="http(s) URL that receives the events")
    events: list[EventName] | None = Field(None, min_length=1, max_length=4, description="events to send")
    enabled: bool | None = Field(None, strict=True,  # "yes" or 1 is refused, not read as true
                                 description="false pauses deliveries to this URL (pending ones fail)")

    @field_validator("url", "events", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Leaving a field out keeps it; an explicit null would be ambiguous, so it is refused.
        if value is None:
            raise ValueError("may not be null; leave the field out to keep it")
        return value


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    created_at: str | None
    secret: str | None = Field(None, description="the tenant's signing secret, shown only when it was created "
                                                 "by this request (store it: it is never shown again)")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class SecretOut(BaseModel):
    secret: str = Field(description="whsec_<base64>: the new signing secret, shown once")
    previous_secret_valid_until: str | None = Field(
        None, description="until then deliveries carry a second signature made with the replaced secret "
                          "(OMNI_WEBHOOK_SECRET_GRACE_SECONDS); null when there was none or no grace period")


class DeliveryAttempt(BaseModel):
    attempt: int
    at: str
    status: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str = Field(description="the webhook-id header of every attempt")
    webhook_id: str
    event: str
    state: Literal["pending", "sending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    log: list[DeliveryAttempt]
    payload: dict[str, Any]
    created_at: str | None
    delivered_at: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
    total: int


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0)


def message_id(delivery: WebhookDelivery) -> str:
    return f"msg_{delivery.id.hex}"


def webhook_dict(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    return WebhookOut(id=str(endpoint.id), url=endpoint.url, events=list(endpoint.events), enabled=endpoint.enabled,
                      created_at=iso(endpoint.created_at), secret=secret).model_dump()




def delivery_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    return DeliveryOut(id=message_id(delivery), webhook_id=str(delivery.endpoint_id), event=delivery.event,
                       state=delivery.state, attempts=delivery.attempts, next_attempt_at=iso(delivery.next_attempt_at),
                       last_status=delivery.last_status, last_error=delivery.last_error,
                       log=[DeliveryAttempt(**entry) for entry in delivery.log], payload=delivery.payload,
                       created_at=iso(delivery.created_at), delivered_at=iso(delivery.delivered_at)).model_dump()
