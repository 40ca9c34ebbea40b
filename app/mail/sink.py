"""Local SMTP sink: accepts every message and stores it as an ``.eml`` file.

``make run`` starts it instead of a real relay, so billing mail can be read from disk.
Run it as ``faas-smtp-sink`` or ``python -m app.mail.sink``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["EmlDirectoryHandler", "main", "start_sink"]

# Named explicitly: under ``python -m`` __name__ would be "__main__".
log = logging.getLogger("app.mail.sink")

ACCEPTED = "250 Message accepted for delivery"
# 451 is a transient failure: a well-behaved client keeps the message and retries later.
TEMPORARY_FAILURE = "451 Requested action aborted: local error in processing"
ENVELOPE_FROM_HEADER = "X-Faas-Envelope-From"
ENVELOPE_TO_HEADER = "X-Faas-Envelope-To"
# A fixed banner name: the default (socket.getfqdn()) can stall on a slow resolver.
SERVER_HOSTNAME = "faas-smtp-sink"


def _header_value(value: str) -> str:
    """Strip CR/LF so an envelope address can never start a header of its own."""
    return value.replace("\r", "").replace("\n", "")


class EmlDirectoryHandler:
    """aiosmtpd handler that writes each received message to ``mail_dir`` as an ``.eml``."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._last_stamp = datetime.min.replace(tzinfo=UTC)

    def _next_stamp(self) -> datetime:
        """Return a UTC time strictly after the previous one.

        File names must sort in arrival order; the wall clock can repeat a microsecond
        or step backwards, so never hand out a stamp that is not later than the last.
        """
        now = datetime.now(UTC)
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return now

    def _file_name(self) -> str:
        stamp = self._next_stamp().strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{stamp}-{secrets.token_hex(4)}.eml"

    @staticmethod
    def _render(envelope: Envelope) -> bytes:
        """Prefix the message with envelope headers (one per recipient: Bcc shows up too)."""
        content = envelope.original_content or b""
        # Match the message's own line endings so the header block stays uniform.
        eol = b"\r\n" if b"\r\n" in content[:4096] or not content else b"\n"
        mail_from = _header_value(envelope.mail_from or "") or "<>"  # null reverse-path
        lines = [f"{ENVELOPE_FROM_HEADER}: {mail_from}"]
        lines += [f"{ENVELOPE_TO_HEADER}: {_header_value(rcpt)}" for rcpt in envelope.rcpt_tos]
        # SMTPUTF8 permits non-ASCII addresses; backslashreplace means encoding never fails.
        head = eol.join(line.encode("utf-8", "backslashreplace") for line in lines) + eol
        # Content normally ends with a line break (DATA ends in CRLF.CRLF); an empty or
        # sloppy message may not, and the file should still end with a complete line.
        tail = b"" if content.endswith((b"\n", b"\r")) else eol
        return head + content + tail

    def _write(self, name: str, data: bytes) -> Path:
        """Write ``data`` to ``mail_dir/name`` atomically; readers never see a partial file."""
        # Created per message, so a deleted or repaired directory needs no restart.
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        # Dot-prefixed .tmp name in the same directory: invisible to ``*.eml`` globs and
        # on the same filesystem, which os.replace needs to be an atomic rename.
        fd, tmp_name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.mail_dir)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            target = self.mail_dir / name
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message; answer 451 (retry later) if the directory is unusable."""
        # Name is chosen here, on the server's loop thread, so stamps follow arrival order.
        name = self._file_name()
        data = self._render(envelope)
        try:
            # Disk I/O (fsync especially) off the loop so other sessions keep flowing.
            path = await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            log.error("cannot store message in %s: %s", self.mail_dir, exc)
            return TEMPORARY_FAILURE
        log.info(
            "stored message from %s to %s as %s",
            envelope.mail_from or "<>",
            ", ".join(envelope.rcpt_tos),
            path,
        )
        return ACCEPTED


def start_sink(host: str, port: int, mail_dir: Path) -> Controller:
    """Start the sink on ``host:port`` in a background thread and return its controller.

    Call ``.stop()`` on the result to shut it down. ``port`` must be a real port:
    the controller connects to it to check the server is up, so 0 does not work.
    """
    controller = Controller(
        EmlDirectoryHandler(mail_dir),
        hostname=host,
        port=port,
        server_hostname=SERVER_HOSTNAME,
    )
    controller.start()
    return controller


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="faas-smtp-sink",
        description="Local SMTP sink: store every received message as an .eml file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=2525, help="port to listen on")
    parser.add_argument(
        "--mail-dir",
        type=Path,
        default=Path(".faas/mail"),
        help="directory the .eml files are written to (created if missing)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: run the sink until SIGTERM or SIGINT, then stop cleanly."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every SMTP command line at INFO; keep the console to our own lines.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    stop = threading.Event()

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    # Handlers go in before the server starts so an early signal is not lost.
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            controller = start_sink(args.host, args.port, args.mail_dir)
        except OSError as exc:  # e.g. address already in use
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
            raise SystemExit(1) from exc
        log.info("smtp sink listening on %s:%d, writing to %s", args.host, args.port, args.mail_dir)
        try:
            # A plain wait() is interrupted by signals on POSIX, so the handler runs promptly.
            stop.wait()
        finally:
            controller.stop()
        log.info("smtp sink stopped")
    finally:
        # Restore so calling main() in-process (tests) leaves signal handling as it was.
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
