"""The notifier against real Kafka, a real SMTP server (the sink) and SQL (SQLite and
PostgreSQL): every invoice emailed once — through duplicates, offset resets, a kill
between sending and committing, an SMTP outage, a dead relay and poison records."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from app.invoices import Invoice, InvoiceEvent, InvoiceLineView, MemoryPoint
from app.kafka import KafkaEventPublisher, ensure_topics
from app.mail.ledger import MailLedger
from app.mail.notifier import DeadLetter, Notifier, SmtpMailer
from app.mail.render import message_id
from app.mail.sink import EmlDirectoryHandler, start_sink
from app.settings import KafkaSettings, SmtpSettings
from app.store.db import make_engine, migrate
from infra import devstack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TENANT = "mail@example.com"


def invoice_event(run_id: str, total: str, tenant: str = TENANT) -> InvoiceEvent:
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


def raw(event: InvoiceEvent) -> bytes:
    return event.model_dump_json().encode()


def run_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@dataclass
class Env:
    kafka: KafkaSettings
    smtp: SmtpSettings
    database_url: str
    ledger: MailLedger
    group: str
    publisher: KafkaEventPublisher

    @property
    def mail_dir(self) -> Path:
        assert self.smtp.mail_dir is not None
        return self.smtp.mail_dir

    def notifier(self, **options: Any) -> Notifier:
        return Notifier(
            self.kafka, self.smtp, self.ledger, SmtpMailer(self.smtp, timeout_s=5),
            self.publisher, group_id=self.group, **options,
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def running(self, notifier: Notifier) -> AsyncIterator[Notifier]:
        task = asyncio.create_task(notifier.run())
        try:
            yield notifier
        finally:
            notifier.stop()
            await asyncio.wait_for(task, 30)

    @contextlib.contextmanager
    def sink(self) -> Iterator[Controller]:
        controller = start_sink("127.0.0.1", self.smtp.port, self.mail_dir)
        try:
            yield controller
        finally:
            controller.stop()

    async def publish(self, *values: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka.bootstrap)
        await producer.start()
        try:
            for value in values:  # one key: one partition, so the order is kept
                await producer.send_and_wait(self.kafka.invoices_topic, value, key=TENANT.encode())
        finally:
            await producer.stop()

    def mails(self) -> list[EmailMessage]:
        found = []
        for path in sorted(self.mail_dir.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found

    async def dead_letters(self, expected: int) -> list[DeadLetter]:
        consumer = AIOKafkaConsumer(
            f"{self.kafka.invoices_topic}.dlq", bootstrap_servers=self.kafka.bootstrap,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        letters: list[DeadLetter] = []
        try:
            async with asyncio.timeout(20):
                while len(letters) < expected:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        letters += [DeadLetter.model_validate_json(r.value) for r in records]
        finally:
            await consumer.stop()
        return sorted(letters, key=lambda letter: letter.offset)

    async def reset_offsets(self) -> None:
        """Rewind the notifier group to the start of the topic (it has no members now)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(self.kafka.invoices_topic, p) for p in range(self.kafka.partitions)
            ]
            consumer.assign(partitions)
            await consumer.commit(dict.fromkeys(partitions, 0))
        finally:
            await consumer.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faas.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def env(kafka_bootstrap: str, database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, invoices_topic=f"inv-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka, f"{kafka.invoices_topic}.dlq")
    engine = make_engine(database_url)
    migrate(engine)
    smtp = SmtpSettings(port=devstack.free_port(), mail_dir=tmp_path / "mail")
    publisher = KafkaEventPublisher(kafka)
    # A group per test: a killed member of one test must not stall the next one's join.
    group = f"faas-notifier-{uuid.uuid4().hex[:8]}"
    try:
        yield Env(kafka, smtp, database_url, MailLedger(engine), group, publisher)
    finally:
        await publisher.close()
        engine.dispose()


async def test_each_invoice_becomes_one_email_with_totals_lines_and_chart(env: Env) -> None:
    first, second = invoice_event(run_id("ra"), "1.00"), invoice_event(run_id("rb"), "2.5")
    await env.publish(raw(first), raw(second))
    with env.sink():
        async with env.running(env.notifier()) as notifier:
            await wait_for(lambda: notifier.counters.sent == 2)
    received = {str(m["X-Faas-Invoice"]).split(";")[0]: m for m in env.mails()}
    assert len(env.mails()) == 2 and set(received) == {first.run_id, second.run_id}
    for event, total in ((first, "1.00"), (second, "2.50")):
        message = received[event.run_id]
        assert message["To"] == TENANT and message["From"] == env.smtp.sender
        assert message["Subject"] == f"Invoice for run {event.run_id[:8]} — {total} USD"
        assert message["Message-ID"] == message_id(event.run_id, 1, "faas.local")
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        assert f"2 cpu_second \N{MULTIPLICATION SIGN} 0.5 USD = {total} USD" in text.get_content()
        assert f"Total: {total} USD" in text.get_content()
        assert "<td>cpu</td><td>2</td><td>2</td><td>cpu_second</td>" in html.get_content()
        chart = next(p for p in message.walk() if p.get_content_type() == "image/png")
        assert f'src="cid:{str(chart["Content-ID"])[1:-1]}"' in html.get_content()
        assert chart.get_content().startswith(b"\x89PNG")
        entry = env.ledger.get(event.run_id, 1)
        assert entry is not None and entry.status == "sent" and entry.attempts == 1


async def test_redelivered_and_replayed_events_are_not_emailed_again(env: Env) -> None:
    first, second = invoice_event(run_id("ra"), "1.00"), invoice_event(run_id("rb"), "2.50")
    await env.publish(raw(first), raw(second), raw(first), raw(second))  # duplicates on the topic
    with env.sink():
        async with env.running(env.notifier()) as notifier:
            await wait_for(lambda: notifier.counters.skipped_duplicate == 2)
            assert notifier.counters.sent == 2
        # The same group from offset 0 again: a consumer that lost its commits.
        await env.reset_offsets()
        async with env.running(env.notifier()) as again:
            await wait_for(lambda: again.counters.skipped_duplicate == 4)
            assert again.counters.sent == 0
    assert len(env.mails()) == 2


CHILD = """
import asyncio, os, signal, sys
from app.kafka import KafkaEventPublisher
from app.mail.ledger import MailLedger
from app.mail.notifier import Notifier, SmtpMailer
from app.settings import KafkaSettings, SmtpSettings
from app.store.db import make_engine

bootstrap, topic, group, port, url, kill_at = sys.argv[1:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, like a crash

class Ledger(MailLedger):
    def mark_sent(self, *args):
        super().mark_sent(*args)
        if kill_at == "after-ledger":
            die()

class Mailer(SmtpMailer):
    async def send(self, message):
        await super().send(message)
        if kill_at == "after-smtp":
            die()

kafka = KafkaSettings(bootstrap=bootstrap, invoices_topic=topic)
smtp = SmtpSettings(port=int(port))
notifier = Notifier(
    kafka, smtp, Ledger(make_engine(url)), Mailer(smtp), KafkaEventPublisher(kafka),
    group_id=group, consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
)
asyncio.run(notifier.run())
"""


async def run_killed_notifier(env: Env, kill_at: str) -> None:
    """A notifier in another process, SIGKILLed at ``kill_at`` while emailing the first event."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, env.kafka.bootstrap, env.kafka.invoices_topic, env.group,
        str(env.smtp.port), env.database_url, kill_at,
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()


async def test_killed_after_sending_before_committing_sends_nothing_twice(env: Env) -> None:
    first, second = invoice_event(run_id("ra"), "1.00"), invoice_event(run_id("rb"), "2.50")
    await env.publish(raw(first), raw(second))
    with env.sink():
        await run_killed_notifier(env, "after-ledger")
        assert len(env.mails()) == 1 and env.ledger.status(first.run_id, 1) == "sent"
        # Same group: the uncommitted first event comes back and is skipped.
        async with env.running(env.notifier()) as notifier:
            await wait_for(lambda: notifier.counters.sent == 1, timeout_s=60)
            assert notifier.counters.skipped_duplicate == 1
    ids = sorted(str(m["Message-ID"]) for m in env.mails())
    assert ids == sorted(message_id(e.run_id, 1) for e in (first, second))


async def test_the_remaining_window_resends_with_the_same_message_id(env: Env) -> None:
    """Killed after the server accepted the mail and before the ledger heard of it: the
    mail is sent again (at-least-once, never lost), recognisably the same message."""
    first, second = invoice_event(run_id("ra"), "1.00"), invoice_event(run_id("rb"), "2.50")
    await env.publish(raw(first), raw(second))
    with env.sink():
        await run_killed_notifier(env, "after-smtp")
        assert len(env.mails()) == 1 and env.ledger.status(first.run_id, 1) == "sending"
        async with env.running(env.notifier()) as notifier:
            await wait_for(lambda: notifier.counters.sent == 2, timeout_s=60)
    ids = [str(m["Message-ID"]) for m in env.mails()]
    assert sorted(ids) == sorted([message_id(first.run_id, 1)] * 2 + [message_id(second.run_id, 1)])
    assert env.ledger.status(first.run_id, 1) == "sent"


async def test_an_smtp_outage_within_the_backoff_window_delays_the_mail_once(env: Env) -> None:
    event = invoice_event(run_id("late"), "3.00")
    await env.publish(raw(event))
    async with env.running(env.notifier(max_attempts=8, backoff_s=0.2)) as notifier:
        await wait_for(lambda: notifier.counters.smtp_errors >= 2)  # nothing listens yet
        assert env.mails() == [] and env.ledger.status(event.run_id, 1) == "sending"
        with env.sink():
            await wait_for(lambda: notifier.counters.sent == 1)
    assert len(env.mails()) == 1 and notifier.counters.dead_lettered == 0
    entry = env.ledger.get(event.run_id, 1)
    assert entry is not None and entry.status == "sent" and entry.attempts >= 3
    assert entry.last_error is not None  # the outage stays visible


async def test_giving_up_dead_letters_the_invoice_and_the_partition_moves_on(env: Env) -> None:
    doomed, good = invoice_event(run_id("doomed"), "4.00"), invoice_event(run_id("good"), "5.00")
    await env.publish(raw(doomed))
    async with env.running(env.notifier(max_attempts=3, backoff_s=0.05)) as notifier:
        await wait_for(lambda: notifier.counters.dead_lettered == 1)  # no SMTP server at all
        entry = env.ledger.get(doomed.run_id, 1)
        assert entry is not None and entry.status == "failed" and entry.attempts == 3
        assert entry.last_error is not None and "connect" in entry.last_error.lower()
        with env.sink():
            await env.publish(raw(good))
            await wait_for(lambda: notifier.counters.sent == 1)
    assert [str(m["Message-ID"]) for m in env.mails()] == [message_id(good.run_id, 1)]
    [letter] = await env.dead_letters(1)
    assert letter.reason == "undeliverable" and letter.invoice_id == doomed.run_id
    assert letter.attempts == 3 and letter.original() == raw(doomed)
    assert letter.topic == env.kafka.invoices_topic


async def test_poison_records_are_dead_lettered_and_the_next_one_delivered(env: Env) -> None:
    good = invoice_event(run_id("good"), "6.00")
    injected = invoice_event(run_id("inject"), "1.00", tenant="a@example.com\r\nBcc: x@example.com")
    poison = [b"{not an invoice", b'{"type": "invoice.created"}', raw(injected)]
    await env.publish(*poison, raw(good))
    with env.sink():
        async with env.running(env.notifier()) as notifier:
            await wait_for(lambda: notifier.counters.sent == 1)
            assert notifier.counters.dead_lettered == 3
    assert [str(m["Message-ID"]) for m in env.mails()] == [message_id(good.run_id, 1)]
    letters = await env.dead_letters(3)
    assert [letter.original() for letter in letters] == poison
    assert {letter.reason for letter in letters} == {"unreadable"}
    assert "ValidationError" in letters[0].error and "linefeed" in letters[2].error


class RefusingHandler(EmlDirectoryHandler):
    """The sink, except that it refuses ``refused@…`` for good (550), like a real relay."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("refused@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_a_permanent_refusal_is_dead_lettered_without_retrying(env: Env) -> None:
    refused = invoice_event(run_id("refused"), "1.00", tenant="refused@example.com")
    good = invoice_event(run_id("good"), "2.00")
    await env.publish(raw(refused), raw(good))
    relay = Controller(RefusingHandler(env.mail_dir), hostname="127.0.0.1", port=env.smtp.port)
    relay.start()
    try:
        # A 30 s backoff: a retry of the refusal would make the good mail miss the deadline.
        async with env.running(env.notifier(backoff_s=30)) as notifier:
            await wait_for(lambda: notifier.counters.sent == 1, timeout_s=20)
    finally:
        relay.stop()
    entry = env.ledger.get(refused.run_id, 1)
    assert entry is not None and entry.status == "failed" and entry.attempts == 1
    [letter] = await env.dead_letters(1)
    assert letter.invoice_id == refused.run_id and "550" in letter.error
    assert [str(m["Message-ID"]) for m in env.mails()] == [message_id(good.run_id, 1)]


async def test_stop_during_backoff_is_prompt_and_the_invoice_is_sent_later(env: Env) -> None:
    event = invoice_event(run_id("stopped"), "7.00")
    await env.publish(raw(event))
    notifier = env.notifier(backoff_s=60)
    async with env.running(notifier):
        await wait_for(lambda: notifier.counters.smtp_errors == 1)
        started = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - started < 5  # did not sit out the backoff
    assert env.ledger.status(event.run_id, 1) == "sending"  # not given up, not committed
    with env.sink():
        async with env.running(env.notifier()) as again:
            await wait_for(lambda: again.counters.sent == 1)
    assert len(env.mails()) == 1


def test_constructors_reject_missing_dependencies(tmp_path: Path) -> None:
    kafka, smtp = KafkaSettings(), SmtpSettings()
    ledger = MailLedger(make_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    mailer, publisher = SmtpMailer(smtp), KafkaEventPublisher(kafka)
    for args in [
        (None, smtp, ledger, mailer, publisher),
        (kafka, smtp, None, mailer, publisher),
        (kafka, smtp, ledger, None, publisher),
        (kafka, smtp, ledger, mailer, None),
    ]:
        with pytest.raises(ValueError):
            Notifier(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Notifier(kafka, smtp, ledger, mailer, publisher, max_attempts=0)
    with pytest.raises(ValueError):
        MailLedger(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SmtpMailer(None)  # type: ignore[arg-type]
