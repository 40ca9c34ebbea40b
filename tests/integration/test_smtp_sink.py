"""The local SMTP sink against a real aiosmtplib client: files on disk, CLI, failure mode."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import signal
import socket
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from app.mail.sink import start_sink

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
EML_NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.eml$")
# Smallest valid PNG (1x1, transparent): enough to prove binary parts survive the trip.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def free_port() -> int:
    """A port that was free a moment ago (Controller cannot bind port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def read_eml(path: Path) -> EmailMessage:
    with path.open("rb") as fp:
        msg = email.message_from_binary_file(fp, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def plain_message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "billing@faas.local"
    msg["To"] = "alice@example.com"
    msg["Subject"] = "Your invoice"
    msg.set_content("Hello Alice,\n\nyou owe 0.42 EUR.\n")
    return msg


def rich_message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "billing@faas.local"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "Monthly usage report"
    msg.set_content("Plain text usage report.\n")
    msg.add_alternative(
        '<html><body><p>HTML usage report</p><img src="cid:chart@faas"></body></html>\n',
        subtype="html",
    )
    html_part = msg.get_body(preferencelist=("html",))
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(
        PNG_1X1, maintype="image", subtype="png", cid="<chart@faas>", disposition="inline"
    )
    return msg


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    mail_dir = tmp_path / "mail"
    controller = start_sink(HOST, free_port(), mail_dir)
    try:
        yield controller, mail_dir
    finally:
        controller.stop()


async def test_messages_are_stored_as_eml_files(sink: tuple[Controller, Path]) -> None:
    controller, mail_dir = sink

    await aiosmtplib.send(plain_message(), hostname=HOST, port=controller.port)
    # Envelope recipients differ from the To header (a Bcc): the sink must record both.
    await aiosmtplib.send(
        rich_message(),
        hostname=HOST,
        port=controller.port,
        sender="bounces@faas.local",
        recipients=["bob@example.com", "audit@example.com"],
    )

    # Nothing but the two finished files: no temp files are left behind.
    entries = sorted(p.name for p in mail_dir.iterdir())
    assert len(entries) == 2
    assert all(EML_NAME.match(name) for name in entries), entries
    first, second = (read_eml(mail_dir / name) for name in entries)  # name order == arrival

    assert first["Subject"] == "Your invoice"
    assert first["To"] == "alice@example.com"
    assert first["X-Faas-Envelope-From"] == "billing@faas.local"
    assert first.get_all("X-Faas-Envelope-To") == ["alice@example.com"]
    assert list(first.keys())[:2] == ["X-Faas-Envelope-From", "X-Faas-Envelope-To"]
    assert not first.is_multipart()
    assert first.get_content() == "Hello Alice,\n\nyou owe 0.42 EUR.\n"

    assert second["Subject"] == "Monthly usage report"
    assert second["To"] == "bob@example.com"
    assert second["X-Faas-Envelope-From"] == "bounces@faas.local"
    assert second.get_all("X-Faas-Envelope-To") == ["bob@example.com", "audit@example.com"]
    assert list(second.keys())[:3] == [
        "X-Faas-Envelope-From",
        "X-Faas-Envelope-To",
        "X-Faas-Envelope-To",
    ]
    assert second.get_content_type() == "multipart/alternative"
    plain = second.get_body(preferencelist=("plain",))
    html = second.get_body(preferencelist=("html",))
    assert plain is not None and plain.get_content() == "Plain text usage report.\n"
    assert html is not None and "HTML usage report" in html.get_content()
    images = [part for part in second.walk() if part.get_content_type() == "image/png"]
    assert len(images) == 1
    assert images[0]["Content-ID"] == "<chart@faas>"
    assert images[0].get_content_disposition() == "inline"
    assert images[0].get_content() == PNG_1X1


async def test_unwritable_mail_dir_is_a_temporary_failure(tmp_path: Path) -> None:
    mail_dir = tmp_path / "mail"
    mail_dir.write_text("a regular file where the directory should be\n")
    controller = start_sink(HOST, free_port(), mail_dir)
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as excinfo:
            await aiosmtplib.send(plain_message(), hostname=HOST, port=controller.port)
        assert 400 <= excinfo.value.code < 500

        # Repair the directory: the same running server now accepts mail again.
        mail_dir.unlink()
        _, reply = await aiosmtplib.send(plain_message(), hostname=HOST, port=controller.port)
        assert reply.startswith("Message accepted")
    finally:
        controller.stop()
    files = list(mail_dir.iterdir())
    assert len(files) == 1
    assert read_eml(files[0])["Subject"] == "Your invoice"


async def wait_for_port(port: int, proc: asyncio.subprocess.Process) -> None:
    """Poll until ``port`` accepts connections; fail fast if the process dies first."""
    async with asyncio.timeout(20):
        while True:
            assert proc.returncode is None, "sink exited before it started listening"
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                writer.close()
                await writer.wait_closed()
                return


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_cli_runs_until_signalled(tmp_path: Path, stop_signal: signal.Signals) -> None:
    port = free_port()
    mail_dir = tmp_path / "cli-mail"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.mail.sink",
        "--port",
        str(port),
        "--mail-dir",
        str(mail_dir),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_port(port, proc)
        await aiosmtplib.send(plain_message(), hostname=HOST, port=port)
        proc.send_signal(stop_signal)
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    log = stderr.decode()
    assert proc.returncode == 0, log
    assert f"smtp sink listening on {HOST}:{port}, writing to {mail_dir}" in log
    files = list(mail_dir.glob("*.eml"))
    assert len(files) == 1
    assert read_eml(files[0])["Subject"] == "Your invoice"
