"""Tenant API keys on real SQLite and PostgreSQL (migration 0004)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from app.store.api_keys import KEY_PREFIX, ApiKeyNotFound, ApiKeyRepository, secret_hash
from app.store.db import make_engine, migrate

pytestmark = [pytest.mark.integration, pytest.mark.hostile]


@pytest.fixture(params=["sqlite", "postgresql"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> ApiKeyRepository:
    url = (
        f"sqlite:///{tmp_path / 'faas.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = make_engine(url)
    migrate(engine)
    request.addfinalizer(engine.dispose)
    return ApiKeyRepository(engine)


def test_issue_stores_only_a_hash_and_the_key_authenticates_its_tenant(
    keys: ApiKeyRepository,
) -> None:
    issued = keys.issue("a@example.com", "laptop")
    assert issued.key.startswith(KEY_PREFIX) and len(issued.key) >= 40
    assert issued.key.startswith(issued.prefix) and len(issued.prefix) < len(issued.key) // 2
    assert keys.tenant_of(issued.key) == "a@example.com"
    assert keys.tenant_of(issued.key + "x") is None
    assert keys.tenant_of("not-a-key") is None
    engine = keys._sessions.kw["bind"]
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert issued.key not in {str(v) for v in stored.values()}  # the secret is nowhere
    assert stored["secret_sha256"] == secret_hash(issued.key)


def test_list_never_shows_secrets_and_revoke_is_per_tenant(keys: ApiKeyRepository) -> None:
    first, second = keys.issue("a@example.com"), keys.issue("a@example.com", "ci")
    other = keys.issue("b@example.com")
    listed = keys.list("a@example.com")
    assert {k.id for k in listed} == {first.id, second.id}
    assert all("key" not in k.model_dump() for k in listed)
    with pytest.raises(ApiKeyNotFound):
        keys.revoke("a@example.com", other.id)  # not a's key: b's stays live
    assert keys.tenant_of(other.key) == "b@example.com"
    revoked = keys.revoke("a@example.com", first.id)
    assert revoked.revoked_at is not None
    assert keys.revoke("a@example.com", first.id).revoked_at == revoked.revoked_at
    assert keys.tenant_of(first.key) is None
    assert keys.tenant_of(second.key) == "a@example.com"
