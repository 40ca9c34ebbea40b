"""Tenant API keys: issued by the admin, shown once, stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from app.store.models import ApiKeyRow

KEY_PREFIX = "faas_"  # recognisable in logs and by secret scanners
_PREFIX_SHOWN = 12


def new_secret() -> str:
    """256 random bits: a fast hash is enough, nobody can brute-force the preimage."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and len(token) <= 128


class ApiKeyView(BaseModel):
    """A key as listed: never the secret."""

    id: str
    email: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class IssuedKey(ApiKeyView):
    key: str  # the secret, returned once at issue time


class ApiKeyNotFound(LookupError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"api key {key_id} not found")


def _view(row: ApiKeyRow) -> ApiKeyView:
    return ApiKeyView.model_validate(row, from_attributes=True)


class ApiKeyRepository:
    def __init__(self, engine: Engine) -> None:
        if engine is None:
            raise ValueError("engine is required")
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def issue(self, email: str, name: str = "") -> IssuedKey:
        secret = new_secret()
        row = ApiKeyRow(
            id=str(uuid.uuid4()), email=email, name=name, prefix=secret[:_PREFIX_SHOWN],
            secret_sha256=secret_hash(secret), created_at=datetime.now(UTC), revoked_at=None,
        )  # fmt: skip
        with self._sessions.begin() as session:
            session.add(row)
        return IssuedKey(**_view(row).model_dump(), key=secret)

    def list(self, email: str) -> list[ApiKeyView]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.email == email)
                .order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
            )
            return [_view(row) for row in rows]

    def revoke(self, email: str, key_id: str) -> ApiKeyView:
        """Revoke one of the tenant's keys; revoking a revoked key changes nothing."""
        with self._sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.email != email:
                raise ApiKeyNotFound(key_id)
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return _view(row)

    def tenant_of(self, secret: str) -> str | None:
        """The email a live key belongs to, or None (unknown or revoked)."""
        if not looks_like_key(secret):
            return None
        with self._sessions() as session:
            return session.scalar(
                select(ApiKeyRow.email).where(
                    ApiKeyRow.secret_sha256 == secret_hash(secret), ApiKeyRow.revoked_at.is_(None)
                )
            )
