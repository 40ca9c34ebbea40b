"""Hostile references on real SQLite and PostgreSQL: "not found", never a driver overflow
(huge ids, non-ASCII digits). Found by probing after the fuzzer: random strings rarely
happen to be all digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.store.api_keys import ApiKeyRepository
from app.store.db import make_engine, migrate
from app.store.runs import RunRepository
from app.tariffs.repository import TariffNotFound, TariffRepository

pytestmark = [pytest.mark.integration, pytest.mark.hostile]
# NUL never gets this far: the HTTP input guard refuses it (PostgreSQL text cannot hold it).
HOSTILE = ["2147483648", "9" * 30, "1" + "0" * 5000, "²", "٣", "-1", "1e3", " 1", "%00"]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = (
        f"sqlite:///{tmp_path / 'faas.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = make_engine(url)
    migrate(engine)
    request.addfinalizer(engine.dispose)
    return engine


@pytest.mark.parametrize("ref", HOSTILE)
def test_a_hostile_tariff_ref_is_not_found(engine: Engine, ref: str) -> None:
    tariffs = TariffRepository(engine)
    for lookup in (tariffs.get, tariffs.resolve, lambda r: tariffs.update(r, {"description": "x"})):
        with pytest.raises(TariffNotFound):
            lookup(ref)
    assert tariffs.get("1").name == "standard"  # a real id still works


def test_hostile_run_ids_and_keys_find_nothing(engine: Engine) -> None:
    runs, keys = RunRepository(engine), ApiKeyRepository(engine)
    for value in HOSTILE:
        assert runs.get(value) is None
        assert keys.tenant_of(value) is None
        assert keys.tenant_of(f"faas_{value}") is None
