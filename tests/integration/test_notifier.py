"""The notifier against real Kafka, a real SMTP server (the sink) and SQL: every invoice
emailed once — through duplicates, restarts, an SMTP outage and poison records."""

from __future__ import annotations

import asyncio
import email
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.invoices import Invoice, InvoiceEvent, InvoiceLineView, MemoryPoint
from app.kafka import KafkaEventPublisher, ensure_topics
from app.mail.ledger import MailLedger
from app.mail.notifier import Notifier, SmtpMailer
from app.mail.sink import start_sink
from app.settings import KafkaSettings, SmtpSettings
from app.store.db import make_engine, migrate
from infra import devstack

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def invoice_event(run_id: str, total: str, tenant: str = "mail@example.com") -> InvoiceEvent:
    line = InvoiceLineView(
        kind="cpu", quantity=Decimal("2"), billable_quantity=Decimal("2"), unit="cpu_second",
        unit_price=Decimal("0.5"), amount=Decimal(total),
    )  # fmt: skip
    invoice = Invoice(
        invoice_id=run_id, run_id=run_id, tenant=tenant, image_name="localhost/faas-cpu",
        tariff="standard", tariff_id=1, version=1, started_at=NOW,
        finished_at=NOW + timedelta(seconds=4), currency="USD", total=Decimal(total), lines=[line],
        created_at=NOW, memory_series=[MemoryPoint(t_s=i, bytes=i << 20) for i in range(5)],
    )  # fmt: skip
    return InvoiceEvent(
        type="invoice.created", event_id=f"{run_id}:v1", event_time=NOW, run_id=run_id,
        tenant=tenant, invoice=invoice,
    )  # fmt: skip


async def publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"mail@example.com")
    finally:
        await producer.stop()


def mails(mail_dir: Path) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(mail_dir.glob("*.eml"))]


async def wait_for(predicate: object, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s * 10)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> MailLedger:
    url = (
        f"sqlite:///{tmp_path / 'faas.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = make_engine(str(url))
    migrate(engine)
    return MailLedger(engine)


class Harness:
    def __init__(self, kafka: KafkaSettings, smtp: SmtpSettings, ledger: MailLedger) -> None:
        self.kafka, self.smtp, self.ledger = kafka, smtp, ledger
        self.publisher = KafkaEventPublisher(kafka)

    def notifier(self, **options: float) -> Notifier:
        return Notifier(
            self.kafka, self.smtp, self.ledger, SmtpMailer(self.smtp), self.publisher, **options
        )  # type: ignore[arg-type]


@pytest.fixture
async def harness(kafka_bootstrap: str, ledger: MailLedger, tmp_path: Path) -> Harness:
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, invoices_topic=f"inv-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka, f"{kafka.invoices_topic}.dlq")
    smtp = SmtpSettings(port=devstack.free_port(), mail_dir=tmp_path / "mail")
    return Harness(kafka, smtp, ledger)


async def test_each_invoice_is_emailed_once_despite_duplicates_and_restarts(
    harness: Harness,
) -> None:
    assert harness.smtp.mail_dir is not None
    sink = start_sink("127.0.0.1", harness.smtp.port, harness.smtp.mail_dir)
    first, second = invoice_event("run-a", "1.00"), invoice_event("run-b", "2.50")
    values = [e.model_dump_json().encode() for e in (first, second)]
    await publish(harness.kafka.bootstrap, harness.kafka.invoices_topic, values + values)
    try:
        notifier = harness.notifier()
        task = asyncio.create_task(notifier.run())
        await wait_for(
            lambda: notifier.counters.sent == 2 and notifier.counters.skipped_duplicate == 2
        )
        notifier.stop()
        await task
        # Sent but not committed: a new consumer in another group sees everything again.
        again = Notifier(harness.kafka, harness.smtp, harness.ledger, SmtpMailer(harness.smtp),
                         harness.publisher, group_id="faas-notifier-replay")  # fmt: skip
        task = asyncio.create_task(again.run())
        await wait_for(lambda: again.counters.skipped_duplicate == 4)
        again.stop()
        await task
    finally:
        sink.stop()
        await harness.publisher.close()
    received = mails(harness.smtp.mail_dir)
    assert len(received) == 2
    subjects = sorted(str(m["Subject"]) for m in received)
    assert "1 USD" in subjects[0] and "2.5 USD" in subjects[1]
    body = received[0]
    html = next(p for p in body.walk() if p.get_content_type() == "text/html").get_payload(
        decode=True
    )
    text = next(p for p in body.walk() if p.get_content_type() == "text/plain").get_payload(
        decode=True
    )
    assert b"<svg" in html and b"Total:" in html
    assert b"2 CPU-s x 0.5" in text


async def test_smtp_outage_is_retried_and_poison_is_dead_lettered(harness: Harness) -> None:
    assert harness.smtp.mail_dir is not None
    poison = b"{not an invoice"
    await publish(harness.kafka.bootstrap, harness.kafka.invoices_topic,
                  [poison, invoice_event("run-late", "3.00").model_dump_json().encode()])  # fmt: skip
    notifier = harness.notifier(max_attempts=8, backoff_s=0.3)
    task = asyncio.create_task(notifier.run())
    sink = None
    try:
        await asyncio.sleep(1.5)  # SMTP is down: the notifier is retrying
        assert notifier.counters.sent == 0
        sink = start_sink("127.0.0.1", harness.smtp.port, harness.smtp.mail_dir)
        await wait_for(lambda: notifier.counters.sent == 1 and notifier.counters.dead_lettered == 1)
    finally:
        notifier.stop()
        await task
        if sink is not None:
            sink.stop()
    assert len(mails(harness.smtp.mail_dir)) == 1
    consumer = AIOKafkaConsumer(f"{harness.kafka.invoices_topic}.dlq", bootstrap_servers=harness.kafka.bootstrap,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    try:
        dead = [
            r.value
            for records in (await consumer.getmany(timeout_ms=3000)).values()
            for r in records
        ]
    finally:
        await consumer.stop()
        await harness.publisher.close()
    assert dead == [poison]


async def test_giving_up_does_not_block_the_partition(harness: Harness) -> None:
    assert harness.smtp.mail_dir is not None
    doomed, good = invoice_event("run-doomed", "4.00"), invoice_event("run-good", "5.00")
    await publish(
        harness.kafka.bootstrap, harness.kafka.invoices_topic, [doomed.model_dump_json().encode()]
    )
    notifier = harness.notifier(max_attempts=2, backoff_s=0.1)
    task = asyncio.create_task(notifier.run())
    try:
        await wait_for(lambda: notifier.counters.failed == 1)  # no SMTP server at all
        assert harness.ledger.status("run-doomed", 1) == "failed"
        sink = start_sink("127.0.0.1", harness.smtp.port, harness.smtp.mail_dir)
        await publish(
            harness.kafka.bootstrap, harness.kafka.invoices_topic, [good.model_dump_json().encode()]
        )
        await wait_for(lambda: notifier.counters.sent == 1)
        sink.stop()
    finally:
        notifier.stop()
        await task
        await harness.publisher.close()
    assert notifier.counters.dead_lettered == 1
    assert [str(m["X-Faas-Invoice"]) for m in mails(harness.smtp.mail_dir)] == ["run-good;v1"]
