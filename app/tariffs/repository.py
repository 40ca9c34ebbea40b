"""Tariff storage. Every write first bumps the ``tariffs`` lock row, which serialises
writers on SQLite and PostgreSQL alike; the partial unique indexes are the backstop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.store.models import LockRow, TariffRow
from app.tariffs.schemas import TariffFields, TariffView


class TariffNotFound(LookupError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"tariff {ref!r} not found")


class TariffConflict(Exception):
    """The change would break a rule (unique name, exactly one default)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _view(row: TariffRow) -> TariffView:
    return TariffView.model_validate(row, from_attributes=True)


class TariffRepository:
    def __init__(self, engine: Engine) -> None:
        if engine is None:
            raise ValueError("engine is required")
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                session.execute(
                    update(LockRow)
                    .where(LockRow.name == "tariffs")
                    .values(version=LockRow.version + 1)
                )
                yield session
        except IntegrityError as exc:  # only reachable if a writer skipped the lock row
            raise TariffConflict("name", "violates a uniqueness rule") from exc

    @staticmethod
    def _find(session: Session, ref: str, *, live_only: bool) -> TariffRow:
        query = select(TariffRow)
        # ASCII digits only ("²".isdigit() is true) and within the id column (32-bit on
        # PostgreSQL), so a hostile ref is "not found" instead of an overflow in the driver.
        if ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) < 2**31:
            query = query.where(TariffRow.id == int(ref))
        else:
            query = query.where(TariffRow.name == ref, TariffRow.deleted_at.is_(None))
        row = session.scalars(query).first()
        if row is None or (live_only and row.deleted_at is not None):
            raise TariffNotFound(ref)
        return row

    @staticmethod
    def _check_name_free(session: Session, name: str, own_id: int | None = None) -> None:
        query = select(TariffRow.id).where(TariffRow.name == name, TariffRow.deleted_at.is_(None))
        other = session.scalar(query)
        if other is not None and other != own_id:
            raise TariffConflict("name", f"a tariff named {name!r} already exists")

    @staticmethod
    def _make_default(session: Session, row: TariffRow) -> None:
        session.execute(
            update(TariffRow)
            .where(TariffRow.is_default.is_(True), TariffRow.id != row.id)
            .values(is_default=False)
        )
        session.flush()  # the old default is demoted before the new one is set
        row.is_default = True

    def create(self, data: TariffFields) -> TariffView:
        now = datetime.now(UTC)
        with self._writing() as session:
            self._check_name_free(session, data.name)
            row = TariffRow(
                **data.model_dump(exclude={"is_default"}),
                is_default=False,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            if data.is_default:
                self._make_default(session, row)
            return _view(row)

    def update(self, ref: str, changes: dict[str, Any]) -> TariffView:
        """Apply ``changes`` (a full body for PUT, the given fields for PATCH)."""
        with self._writing() as session:
            row = self._find(session, ref, live_only=True)
            if "name" in changes:
                self._check_name_free(session, changes["name"], row.id)
            wants_default = changes.pop("is_default", None)
            if row.is_default and wants_default is False:
                raise TariffConflict(
                    "is_default",
                    "there must always be a default tariff: make another tariff the default",
                )
            for field, value in changes.items():
                setattr(row, field, value)
            if wants_default and not row.is_default:
                self._make_default(session, row)
            row.updated_at = datetime.now(UTC)
            session.flush()
            return _view(row)

    def delete(self, ref: str) -> None:
        """Soft delete: the row stays so invoices priced with it remain explainable."""
        with self._writing() as session:
            row = self._find(session, ref, live_only=True)
            if row.is_default:
                raise TariffConflict(
                    "is_default", "the default tariff cannot be deleted: make another the default"
                )
            row.deleted_at = row.updated_at = datetime.now(UTC)

    def get(self, ref: str) -> TariffView:
        """By id (deleted ones too, for old invoices) or by live name."""
        with self._sessions() as session:
            return _view(self._find(session, ref, live_only=False))

    def list(self, include_deleted: bool = False) -> list[TariffView]:
        query = select(TariffRow).order_by(TariffRow.id)
        if not include_deleted:
            query = query.where(TariffRow.deleted_at.is_(None))
        with self._sessions() as session:
            return [_view(row) for row in session.scalars(query)]

    def resolve(self, ref: str | None) -> TariffView:
        """The live tariff a new run is priced with: the named one or the default."""
        with self._sessions() as session:
            if ref is not None:
                return _view(self._find(session, ref, live_only=True))
            row = session.scalars(select(TariffRow).where(TariffRow.is_default.is_(True))).first()
            if row is None:
                raise TariffNotFound("(default)")
            return _view(row)
