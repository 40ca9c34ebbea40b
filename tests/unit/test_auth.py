"""Who a request is (pure logic over a key lookup): admin, tenant, trusted local caller."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from app.api.auth import Authenticator, Caller
from app.store.api_keys import KEY_PREFIX, looks_like_key, new_secret, secret_hash

pytestmark = pytest.mark.hostile

ADMIN = "admin-token"


class Keys:
    """An in-memory key lookup (the SQL one is tested in tests/integration)."""

    def __init__(self, **by_secret: str) -> None:
        self.by_secret, self.asked = by_secret, 0

    def tenant_of(self, secret: str) -> str | None:
        self.asked += 1
        return self.by_secret.get(secret)


def auth(trust_anonymous: bool) -> Authenticator:
    return Authenticator(ADMIN, Keys(faas_a="a@example.com"), trust_anonymous=trust_anonymous)


async def test_local_mode_trusts_no_credentials_production_refuses_them() -> None:
    assert await auth(True).identify(None) == Caller("local")
    with pytest.raises(HTTPException) as refused:
        await auth(False).identify(None)
    assert refused.value.status_code == 401
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("trust_anonymous", [True, False])
async def test_presented_credentials_are_always_checked(trust_anonymous: bool) -> None:
    who = auth(trust_anonymous)
    assert await who.identify(f"Bearer {ADMIN}") == Caller("admin")
    assert await who.identify("bearer faas_a") == Caller("tenant", "a@example.com")
    for header in ("Bearer faas_revoked", f"Bearer {ADMIN}x", "Basic YTpi", "Bearer ", "Bearer"):
        with pytest.raises(HTTPException) as refused:
            await who.identify(header)
        assert refused.value.status_code == 401, header
        assert (refused.value.headers or {})["WWW-Authenticate"].startswith("Bearer error="), header


def test_a_tenant_acts_only_for_itself() -> None:
    assert Caller("tenant", "a@example.com").may_act_for("a@example.com")
    assert not Caller("tenant", "a@example.com").may_act_for("b@example.com")
    assert not Caller("tenant", "a@example.com").may_act_for("A@example.com")
    assert Caller("admin").may_act_for("b@example.com")
    assert Caller("local").may_act_for("b@example.com")


def test_keys_are_random_prefixed_and_hashed() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith(KEY_PREFIX) and len(first) >= 45
    assert looks_like_key(first) and not looks_like_key("admin-token")
    assert secret_hash(first) != secret_hash(second) and len(secret_hash(first)) == 64


def test_an_authenticator_needs_a_token_and_a_lookup() -> None:
    with pytest.raises(ValueError):
        Authenticator("", Keys(), trust_anonymous=True)


def test_local_mode_refuses_to_listen_beyond_loopback() -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    assert Settings(mode="local", http={"host": "127.0.0.1"}).mode == "local"
    with pytest.raises(ValidationError, match="loopback"):
        Settings(mode="local", http={"host": "0.0.0.0"})
    served = Settings(
        mode="production", http={"host": "0.0.0.0"}, admin_token="t", meter={"secret": "s"}
    )
    assert served.http.host == "0.0.0.0"
