"""Users and API keys of a tenant (`/v1/users`, `/v1/keys`, `/v1/me`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models import ApiKey, User

Role = Literal["member", "tenant_admin", "platform_admin"]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")
    role: Role = "member"
    key_name: str = Field("default", min_length=1, max_length=100, description="name of the user's first API key")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("default", min_length=1, max_length=100)
    user_id: uuid.UUID | None = Field(None, description="whose key; default: the caller's own user")


class KeyOut(BaseModel):
    id: uuid.UUID
    prefix: str = Field(description="the 8 hex characters after `op_` in the key, to recognise it")
    name: str
    user_id: uuid.UUID
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(id=key.id, prefix=key.prefix, name=key.name, user_id=key.user_id, created_at=key.created_at,
                   last_used_at=key.last_used_at, revoked_at=key.revoked_at)


class NewKeyOut(KeyOut):
    key: str = Field(description="the API key itself: shown this once, only its hash is kept")


class KeyList(BaseModel):
    keys: list[KeyOut]


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(id=user.id, email=user.email, role=user.role, created_at=user.created_at)


class NewUserOut(UserOut):
    api_key: NewKeyOut


class UserList(BaseModel):
    users: list[UserOut]


class MeOut(BaseModel):
    tenant_id: uuid.UUID
    tenant_name: str
    user_id: uuid.UUID
    email: str
    role: str
    key_prefix: str
    limits: dict[str, int]
