"""The dashboard's inputs: the job list's filters (query string). Empty form fields mean "any"."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class JobFilter(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other query parameters (notices) are not filters

    state: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None
    queue: str | None = Field(default=None, max_length=40)
    kind: str | None = Field(default=None, max_length=20)
    tenant: str | None = Field(default=None, max_length=100)

    @field_validator("state", "queue", "kind", "tenant", mode="before")
    @classmethod
    def _blank_is_any(cls, value: object) -> object:
        return None if value == "" else value

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v}
