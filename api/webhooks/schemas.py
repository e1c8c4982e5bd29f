"""Request and response shapes for webhook endpoints, the signing secret and deliveries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.schemas import iso
from ..models import WebhookDelivery, WebhookEndpoint

EventName = Literal["job.succeeded", "job.failed", "job.canceled", "batch.done"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL that receives the events")
    events: list[EventName] = Field(min_length=1, max_length=4, description="events to send to this URL")


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
