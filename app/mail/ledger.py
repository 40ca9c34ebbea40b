"""Which invoice emails went out: the notifier decides to send by claiming a row here.

``claim`` inserts (invoice id, version) as ``sending`` in one statement; the primary key
makes a second claimant lose. After the SMTP server accepted the message the row becomes
``sent`` — before the Kafka offset is committed — so a redelivered event is skipped. The
one window left is a crash between SMTP acceptance and that write: the row stays
``sending`` and the next claim re-sends (at-least-once there, never silently lost).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from app.store.models import SentMailRow


class MailLedger:
    def __init__(self, engine: Engine) -> None:
        if engine is None:
            raise ValueError("engine is required")
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def claim(self, invoice_id: str, version: int, message_id: str) -> bool:
        """True when this caller should send; False when it was already sent or given up."""
        now = datetime.now(UTC)
        try:
            with self._sessions.begin() as session:
                session.add(
                    SentMailRow(
                        invoice_id=invoice_id,
                        version=version,
                        status="sending",
                        attempts=0,
                        message_id=message_id,
                        updated_at=now,
                    )
                )
            return True
        except IntegrityError:
            return self.status(invoice_id, version) == "sending"

    def status(self, invoice_id: str, version: int) -> str | None:
        with self._sessions() as session:
            return session.scalar(
                select(SentMailRow.status).where(
                    SentMailRow.invoice_id == invoice_id, SentMailRow.version == version
                )
            )

    def _set(self, invoice_id: str, version: int, **values: object) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(SentMailRow)
                .where(SentMailRow.invoice_id == invoice_id, SentMailRow.version == version)
                .values(updated_at=datetime.now(UTC), **values)
            )

    def mark_sent(self, invoice_id: str, version: int, attempts: int) -> None:
        self._set(invoice_id, version, status="sent", attempts=attempts, last_error=None)

    def mark_failed(self, invoice_id: str, version: int, attempts: int, error: str) -> None:
        self._set(invoice_id, version, status="failed", attempts=attempts, last_error=error[:2000])
