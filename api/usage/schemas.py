"""GET /v1/usage: query and answer."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: date | None = Field(None, description="first UTC day included (YYYY-MM-DD); default: 29 days before end")
    end: date | None = Field(None, description="last UTC day included (YYYY-MM-DD); default: today")


class UsageDay(BaseModel):
    date: date
    kind: str = Field(description="training_steps | renders | captions | <kind>_jobs")
    quantity: int


class UsageOut(BaseModel):
    start: date
    end: date
    totals: dict[str, int]
    days: list[UsageDay]
    limits: dict[str, int] = Field(description="the tenant's max_concepts, max_concurrent_jobs, requests_per_minute")
