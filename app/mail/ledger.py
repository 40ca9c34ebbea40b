"""Which invoice emails went out: the notifier decides to send by claiming a row here.

One row per (invoice id, version). ``claim`` inserts it as ``sending``: the primary key
makes the decision and its record one statement, so a second claimant loses. Once the
SMTP server has accepted the message the row becomes ``sent`` — before the Kafka offset
is committed — so any redelivery of the event is skipped: killing the notifier between
sending and committing sends nothing twice and loses nothing.

The one window left is a crash after the server accepted the message and before the
``sent`` write. The row then stays ``sending``; it cannot be known whether the mail left,
so the next claim takes it over and sends again (at-least-once there, never lost). The
re-send carries the same Message-ID, so it is recognisable as a duplicate.

``failed`` (given up, dead-lettered) can be claimed again too: replaying the dead letter
onto the topic once the relay works is how an operator re-sends it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import ColumnElement, CursorResult, Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.store.models import SentMailRow

log = logging.getLogger(__name__)
Status = Literal["sending", "sent", "failed"]
_MAX_ERROR = 2000


@dataclass(frozen=True)
class SentMail:
    invoice_id: str
    version: int
    status: Status
    attempts: int  # SMTP attempts over all claims, the successful one included
    last_error: str | None
    message_id: str
    updated_at: datetime


class MailLedger:
    def __init__(self, engine: Engine) -> None:
        if engine is None:
            raise ValueError("engine is required")
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def claim(self, invoice_id: str, version: int, message_id: str) -> bool:
        """True when this caller should send now; False when it was already sent."""
        now = datetime.now(UTC)
        row = SentMailRow(
            invoice_id=invoice_id, version=version, status="sending", attempts=0,
            message_id=message_id, updated_at=now,
        )  # fmt: skip
        try:
            with self._sessions.begin() as session:
                session.add(row)
            return True
        except IntegrityError:
            pass  # claimed before: decide on what that claim left behind
        with self._sessions.begin() as session:
            previous = self._get(session, invoice_id, version)
            if previous is None or previous.status == "sent":
                return False
            # Kafka hands a partition to one consumer at a time, so a ``sending`` row seen
            # here is left over from an attempt that is over. The condition only keeps a
            # row that turned ``sent`` meanwhile (a zombie consumer finishing) from reopening.
            taken = cast(
                CursorResult[Any],
                session.execute(
                    update(SentMailRow)
                    .where(*self._key(invoice_id, version), SentMailRow.status == previous.status)
                    .values(status="sending", message_id=message_id, updated_at=now)
                ),
            )
        if taken.rowcount != 1:
            return False
        if previous.status == "sending":
            log.warning(
                "re-sending invoice %s v%s: an earlier attempt stopped before it was recorded "
                "(attempts %d, last error %r); if that one was delivered this is a duplicate "
                "with the same Message-ID",
                invoice_id, version, previous.attempts, previous.last_error,
            )  # fmt: skip
        return True

    def record_error(self, invoice_id: str, version: int, error: str) -> None:
        """One failed SMTP attempt: counted, and its error kept for inspection."""
        self._set(
            invoice_id, version, attempts=SentMailRow.attempts + 1, last_error=error[:_MAX_ERROR]
        )

    def mark_sent(self, invoice_id: str, version: int) -> None:
        """The SMTP server accepted the message (the attempt that did it is counted)."""
        self._set(invoice_id, version, status="sent", attempts=SentMailRow.attempts + 1)

    def mark_failed(self, invoice_id: str, version: int, error: str) -> None:
        """Given up; the event goes to the dead-letter topic."""
        self._set(invoice_id, version, status="failed", last_error=error[:_MAX_ERROR])

    def get(self, invoice_id: str, version: int) -> SentMail | None:
        with self._sessions() as session:
            return self._get(session, invoice_id, version)

    def status(self, invoice_id: str, version: int) -> Status | None:
        entry = self.get(invoice_id, version)
        return None if entry is None else entry.status

    def attempts(self, invoice_id: str, version: int) -> int:
        entry = self.get(invoice_id, version)
        return 0 if entry is None else entry.attempts

    @staticmethod
    def _key(invoice_id: str, version: int) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        return SentMailRow.invoice_id == invoice_id, SentMailRow.version == version

    def _get(self, session: Session, invoice_id: str, version: int) -> SentMail | None:
        row = session.scalar(select(SentMailRow).where(*self._key(invoice_id, version)))
        if row is None:
            return None
        return SentMail(
            row.invoice_id, row.version, cast(Status, row.status), row.attempts,
            row.last_error, row.message_id, row.updated_at,
        )  # fmt: skip

    def _set(self, invoice_id: str, version: int, **values: object) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(SentMailRow)
                .where(*self._key(invoice_id, version))
                .values(updated_at=datetime.now(UTC), **values)
            )
