"""Notifier: ``faas.invoices`` → one email per invoice version, the aiokafka way.

Consumer group ``faas-notifier``, no auto-commit. For each event: claim it in the
ledger (already sent → skip), render, send with retries and exponential backoff, mark it
sent; after ``max_attempts`` failures mark it failed and put it on ``faas.invoices.dlq``
so the partition moves on. Offsets are committed after the batch's effects are durable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from app.events import EventPublisher
from app.invoices import InvoiceEvent
from app.loops import RestartingLoop
from app.mail.ledger import MailLedger
from app.mail.render import render_invoice_email
from app.settings import KafkaSettings, SmtpSettings

log = logging.getLogger(__name__)
GROUP = "faas-notifier"


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        if settings is None:
            raise ValueError("settings are required")
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        await aiosmtplib.send(
            message, hostname=s.host, port=s.port, start_tls=s.starttls, username=s.username,
            password=s.password.get_secret_value() if s.password else None, timeout=15,
        )  # fmt: skip


@dataclass
class NotifierCounters:
    sent: int = 0
    skipped_duplicate: int = 0
    failed: int = 0
    dead_lettered: int = 0


class Notifier(RestartingLoop):
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
        group_id: str = GROUP,
    ) -> None:
        super().__init__()
        if None in (kafka, smtp, ledger, mailer, dead_letters):
            raise ValueError("kafka, smtp, ledger, mailer and dead_letters are required")
        self._kafka = kafka
        self._sender = smtp.sender
        self._ledger = ledger
        self._mailer = mailer
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._group_id = group_id
        self.counters = NotifierCounters()

    @property
    def dead_letter_topic(self) -> str:
        return f"{self._kafka.invoices_topic}.dlq"

    async def deliver(self, event: InvoiceEvent) -> bool:
        """Email one invoice version at most once; False when it was dead-lettered."""
        invoice = event.invoice
        message = render_invoice_email(event, self._sender)
        claimed = await asyncio.to_thread(
            self._ledger.claim, invoice.invoice_id, invoice.version, str(message["Message-ID"])
        )
        if not claimed:
            self.counters.skipped_duplicate += 1
            return True
        delay = self._backoff_s
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._mailer.send(message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                log.warning(
                    "mail for %s v%s, attempt %d: %s",
                    invoice.invoice_id,
                    invoice.version,
                    attempt,
                    exc,
                )
                if attempt == self._max_attempts:
                    await asyncio.to_thread(
                        self._ledger.mark_failed,
                        invoice.invoice_id,
                        invoice.version,
                        attempt,
                        str(exc),
                    )
                    self.counters.failed += 1
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            await asyncio.to_thread(
                self._ledger.mark_sent, invoice.invoice_id, invoice.version, attempt
            )
            self.counters.sent += 1
            return True
        return False

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self._kafka.invoices_topic,
            bootstrap_servers=self._kafka.bootstrap,
            group_id=self._group_id,
            client_id=f"{self._kafka.client_id}-notifier",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=600_000,  # SMTP retries may take minutes
        )
        await consumer.start()
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(timeout_ms=500, max_records=100)
                if not fetched:
                    continue
                dead: list[tuple[str, bytes]] = []
                for records in fetched.values():
                    for record in records:
                        try:
                            event = InvoiceEvent.model_validate_json(record.value or b"")
                        except ValidationError:
                            dead.append(
                                ((record.key or b"").decode(errors="replace"), record.value or b"")
                            )
                            continue
                        if not await self.deliver(event):
                            dead.append((event.tenant, record.value or b""))
                if dead:
                    await self._dead_letters.publish(self.dead_letter_topic, dead)
                    self.counters.dead_lettered += len(dead)
                await consumer.commit()
        finally:
            await consumer.stop()
