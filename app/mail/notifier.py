"""Notifier: ``faas.invoices`` → one email per invoice version.

Consumer group ``faas-notifier``, no auto-commit. For each event: render, claim it in the
ledger (already sent → skip), send with bounded retries and exponential backoff, mark it
sent. A record that does not parse or render, and an invoice the relay refuses for good
or still fails after ``max_attempts``, goes to ``<invoices topic>.dlq`` (and the ledger
says ``failed``) so the partition moves on. Offsets are committed after the batch's
effects are durable; see ``app.mail.ledger`` for what a crash at each point does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import aiosmtplib
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from app.events import EventPublisher
from app.invoices import InvoiceEvent
from app.loops import RestartingLoop
from app.mail.ledger import MailLedger
from app.mail.render import render_invoice_email
from app.settings import KafkaSettings, SmtpSettings

log = logging.getLogger(__name__)
GROUP = "faas-notifier"
Outcome = Literal["sent", "duplicate", "failed", "interrupted"]


class Mailer(Protocol):
    """Hands a message to a mail server; raises when it was not accepted."""

    async def send(self, message: EmailMessage) -> None: ...


class PermanentMailError(Exception):
    """The server refused this message for good (5xx on it): retrying cannot help."""


class SmtpMailer:
    """Sends over SMTP with aiosmtplib: STARTTLS and login as the settings say."""

    def __init__(self, settings: SmtpSettings, *, timeout_s: float = 30.0) -> None:
        if settings is None:
            raise ValueError("settings are required")
        self._settings = settings
        self._timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                message, hostname=s.host, port=s.port, start_tls=s.starttls,
                username=s.username, password=s.password.get_secret_value() if s.password else None,
                timeout=self._timeout_s,
            )  # fmt: skip
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):
                raise PermanentMailError(str(exc)) from exc
            raise
        except aiosmtplib.SMTPDataError as exc:
            # Content rejected for good; a 5xx on sender or login is our configuration and
            # is retried like an outage.
            if exc.code >= 500:
                raise PermanentMailError(str(exc)) from exc
            raise


class DeadLetter(BaseModel):
    """What lands on the dead-letter topic: why, where from, and the original bytes."""

    type: Literal["invoice.dead_letter"] = "invoice.dead_letter"
    reason: Literal["unreadable", "undeliverable"]
    error: str
    topic: str
    partition: int
    offset: int
    invoice_id: str | None = None
    invoice_version: int | None = None
    attempts: int = 0
    value_base64: str  # the record exactly as consumed: decode and re-publish to replay
    dead_lettered_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def original(self) -> bytes:
        return base64.b64decode(self.value_base64)


@dataclass
class NotifierCounters:
    sent: int = 0
    skipped_duplicate: int = 0
    smtp_errors: int = 0
    failed: int = 0
    dead_lettered: int = 0


class Notifier(RestartingLoop):
    """The ``faas.invoices`` consumer; ``run_forever`` survives Kafka outages."""

    name = "notifier"

    def __init__(
        self,
        kafka: KafkaSettings,
        smtp: SmtpSettings,
        ledger: MailLedger,
        mailer: Mailer,
        dead_letters: EventPublisher,
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        attempt_timeout_s: float = 60.0,
        batch_size: int = 5,
        group_id: str = GROUP,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if None in (kafka, smtp, ledger, mailer, dead_letters):
            raise ValueError("kafka, smtp, ledger, mailer and dead_letters are required")
        if max_attempts < 1 or batch_size < 1 or backoff_s < 0 or attempt_timeout_s <= 0:
            raise ValueError("max_attempts, batch_size ≥ 1; backoff_s ≥ 0; attempt_timeout_s > 0")
        self._kafka, self._sender, self._ledger = kafka, smtp.sender, ledger
        self._mailer, self._dead_letters = mailer, dead_letters
        self._max_attempts, self._attempt_timeout_s = max_attempts, attempt_timeout_s
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self._batch_size, self._group_id = batch_size, group_id
        self._consumer_options = dict(consumer_options or {})
        self.counters = NotifierCounters()

    @property
    def dead_letter_topic(self) -> str:
        return f"{self._kafka.invoices_topic}.dlq"

    def _backoff(self, attempt: int) -> float:
        delay = min(self._backoff_s * 2.0 ** (attempt - 1), self._max_backoff_s)
        # Jitter so replicas recovering from one relay outage do not retry in lockstep.
        return delay * random.uniform(0.75, 1.0)  # noqa: S311 - timing, not security

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless asked to stop first; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def deliver(self, event: InvoiceEvent, message: EmailMessage) -> tuple[Outcome, str]:
        """Send one invoice version unless the ledger says it went; (outcome, last error)."""
        key = event.invoice.invoice_id, event.invoice.version
        claimed = await asyncio.to_thread(self._ledger.claim, *key, str(message["Message-ID"]))
        if not claimed:
            self.counters.skipped_duplicate += 1
            return "duplicate", ""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(self._attempt_timeout_s):
                    await self._mailer.send(message)
            except Exception as exc:  # any mailer failure is retried or dead-lettered
                error = f"{type(exc).__name__}: {exc}"
                self.counters.smtp_errors += 1
                log.warning("invoice %s v%s, attempt %d: %s", *key, attempt, error)
                await asyncio.to_thread(self._ledger.record_error, *key, error)
                if isinstance(exc, PermanentMailError) or attempt == self._max_attempts:
                    await asyncio.to_thread(self._ledger.mark_failed, *key, error)
                    self.counters.failed += 1
                    return "failed", error
                if await self._pause(self._backoff(attempt)):
                    return "interrupted", error  # stays "sending": redelivery resumes it
                continue
            await self._record_sent(*key)
            self.counters.sent += 1
            log.info("emailed invoice %s v%s to %s", *key, event.invoice.tenant)
            return "sent", ""

    async def _record_sent(self, invoice_id: str, version: int) -> None:
        """Write ``sent`` before the offset commit: from then on a redelivery is skipped.
        The mail has left, and losing this write means a duplicate, so try more than once."""
        for attempt in range(1, 6):
            try:
                await asyncio.to_thread(self._ledger.mark_sent, invoice_id, version)
                return
            except SQLAlchemyError as exc:
                if attempt == 5:
                    raise
                log.warning("recording invoice %s v%s as sent: %s", invoice_id, version, exc)
                await asyncio.sleep(0.5 * 2.0**attempt)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Process one record; False when interrupted by ``stop`` (not to be committed)."""
        raw = record.value or b""
        try:
            event = InvoiceEvent.model_validate_json(raw)
            message = render_invoice_email(event, self._sender)
        except Exception as exc:  # cannot be emailed as it is: keep it, move on
            await self._dead_letter(record, "unreadable", f"{type(exc).__name__}: {exc}")
            return True
        outcome, error = await self.deliver(event, message)
        if outcome == "failed":
            attempts = await asyncio.to_thread(
                self._ledger.attempts, event.invoice.invoice_id, event.invoice.version
            )
            await self._dead_letter(
                record, "undeliverable", error, event.invoice.invoice_id,
                event.invoice.version, attempts,
            )  # fmt: skip
        return outcome != "interrupted"

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: Literal["unreadable", "undeliverable"],
        error: str,
        invoice_id: str | None = None,
        version: int | None = None,
        attempts: int = 0,
    ) -> None:
        letter = DeadLetter(
            reason=reason, error=error[:2000], topic=record.topic, partition=record.partition,
            offset=record.offset, invoice_id=invoice_id, invoice_version=version,
            attempts=attempts, value_base64=base64.b64encode(record.value or b"").decode(),
        )  # fmt: skip
        key = (record.key or b"").decode(errors="replace")
        log.warning(
            "dead-lettering %s@%s/%s: %s", record.topic, record.partition, record.offset, error
        )
        await self._dead_letters.publish(
            self.dead_letter_topic, [(key, letter.model_dump_json().encode())]
        )
        self.counters.dead_lettered += 1

    @property
    def max_poll_interval_ms(self) -> int:
        """Long enough for a whole batch of worst-case deliveries, so a slow relay does not
        get this consumer thrown out of the group mid-batch (and its work redone)."""
        backoffs = sum(self._backoff_s * 2.0**i for i in range(self._max_attempts - 1))
        per_record = (
            self._max_attempts * self._attempt_timeout_s
            + min(backoffs, self._max_attempts * self._max_backoff_s)
            + 20  # ledger writes (``_record_sent`` retries) and the dead-letter publish
        )
        return int((self._batch_size * per_record + 60) * 1000)

    def _consumer(self) -> AIOKafkaConsumer:
        options: dict[str, Any] = {
            "bootstrap_servers": self._kafka.bootstrap,
            "group_id": self._group_id,
            "client_id": f"{self._kafka.client_id}-notifier",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }
        return AIOKafkaConsumer(self._kafka.invoices_topic, **(options | self._consumer_options))

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            # A rebalance took the partition away: its new owner gets the records again and
            # the ledger turns them into skips.
            log.warning("offset commit lost to a rebalance: %s", exc)

    async def run(self) -> None:
        """One consumer session, until ``stop``; Kafka errors end it (``run_forever`` restarts)."""
        consumer = self._consumer()
        try:
            await consumer.start()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
                done: dict[TopicPartition, int] = {}
                for partition, records in batch.items():
                    for record in records:
                        if not await self.handle(record):
                            break
                        done[partition] = record.offset + 1
                    if self._stopping.is_set():
                        break
                if done:
                    await self._commit(consumer, done)
        finally:
            await consumer.stop()
