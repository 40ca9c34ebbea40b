"""Tariff storage on real SQLite and PostgreSQL: migrations, seed, database-level rules."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from app.store.db import make_engine, migrate
from app.tariffs.defaults import DEFAULT_TARIFF_PRICES
from app.tariffs.repository import TariffConflict, TariffNotFound, TariffRepository
from app.tariffs.schemas import TariffFields


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'faas.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    engine = make_engine(url)
    migrate(engine)
    return engine


def fields(name: str, **extra: object) -> TariffFields:
    return TariffFields.model_validate(
        {"name": name, "currency": "EUR", "price_cpu_second": "0.000000000000000001",
         "price_gib_second": "12345678901234567890.123456789012345678", "price_execution": 0,
         **extra}
    )  # fmt: skip


def test_seeded_default_and_exact_decimals(engine: Engine) -> None:
    tariffs = TariffRepository(engine)
    default = tariffs.resolve(None)
    assert default.name == "standard" and default.is_default and default.currency == "USD"
    assert default.price_cpu_second == Decimal(DEFAULT_TARIFF_PRICES["price_cpu_second"])
    created = tariffs.create(fields("exact"))
    again = tariffs.get(str(created.id))
    # 38 significant digits survive the round trip on both backends.
    assert again.price_gib_second == Decimal("12345678901234567890.123456789012345678")
    assert again.price_cpu_second == Decimal("0.000000000000000001")


def test_database_refuses_a_second_default(engine: Engine) -> None:
    now = datetime.now(UTC).isoformat()
    insert = text(
        "INSERT INTO tariffs (name, description, currency, price_cpu_second, price_gib_second,"
        " price_execution, price_second, free_cpu_seconds, free_gib_seconds, free_executions,"
        " is_default, created_at, updated_at) VALUES ('rogue', '', 'USD', 1, 1, 1, 1, 0, 0, 0,"
        " :yes, :now, :now)"
    )
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert, {"yes": True, "now": now})


def test_default_moves_atomically_and_cannot_vanish(engine: Engine) -> None:
    tariffs = TariffRepository(engine)
    pro = tariffs.create(fields("pro", is_default=True))
    assert [t.name for t in tariffs.list() if t.is_default] == ["pro"]
    with pytest.raises(TariffConflict) as unset:
        tariffs.update("pro", {"is_default": False})
    assert unset.value.field == "is_default"
    with pytest.raises(TariffConflict) as delete:
        tariffs.delete(str(pro.id))
    assert delete.value.field == "is_default"
    tariffs.update("standard", {"is_default": True})
    assert [t.name for t in tariffs.list() if t.is_default] == ["standard"]


def test_soft_delete_keeps_the_row_and_frees_the_name(engine: Engine) -> None:
    tariffs = TariffRepository(engine)
    old = tariffs.create(fields("promo"))
    with pytest.raises(TariffConflict):
        tariffs.create(fields("promo"))
    tariffs.delete("promo")
    with pytest.raises(TariffNotFound):
        tariffs.get("promo")
    kept = tariffs.get(str(old.id))
    assert kept.deleted_at is not None and kept.name == "promo"
    assert "promo" not in [t.name for t in tariffs.list()]
    assert "promo" in [t.name for t in tariffs.list(include_deleted=True)]
    assert tariffs.create(fields("promo")).id != old.id
    with pytest.raises(TariffNotFound):
        tariffs.update(str(old.id), {"description": "x"})
