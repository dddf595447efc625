"""The demo mail system: an SMTP outbox (aiosmtpd) that keeps what it receives instead of
delivering it. Like a well-behaved business system it honours idempotency: a message whose
Message-ID it has already accepted is acknowledged again and stored once.

`python -m shared.embedded.demo_smtp --port 8025` runs it alone; the demo API starts one in its
process when given `--smtp-port` (and lists the messages at GET /outbox/messages). With a folder
(`--dir`), each accepted message is also written there as `<n>-<message id>.eml`, exactly as
received, for people and tests to open.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
import threading
import time
from datetime import datetime, timezone
from email import message_from_bytes
from pathlib import Path
from email.policy import default as default_policy
from typing import Any

from pydantic import BaseModel


class Attachment(BaseModel):
    filename: str
    content_type: str
    bytes: int
    sha256: str


class OutboxMessage(BaseModel):
    message_id: str
    sender: str
    recipients: list[str]
    subject: str
    body: str
    received_at: datetime
    attachments: list[Attachment] = []
    path: str | None = None  # the .eml file, when the outbox has a folder


class Outbox:
    """aiosmtpd handler: one stored message per Message-ID (and one .eml file, given a folder)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.messages: list[OutboxMessage] = []
        self.deliveries = 0  # DATA commands received, repeats included
        self.folder = folder
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content, policy=default_policy)
        message_id = str(message.get("Message-ID", "")).strip()
        if not message_id:
            return "550 5.6.0 a Message-ID is required (it makes retries safe)"
        with self._lock:
            self.deliveries += 1
            if any(m.message_id == message_id for m in self.messages):
                return "250 2.0.0 already accepted (duplicate Message-ID)"
            body = message.get_body(preferencelist=("plain",))
            attachments = [
                Attachment(filename=part.get_filename() or "", content_type=part.get_content_type(),
                           bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
                for part in message.iter_attachments()
                for data in [part.get_payload(decode=True) or b""]
            ]
            self.messages.append(OutboxMessage(
                message_id=message_id, sender=envelope.mail_from, recipients=list(envelope.rcpt_tos),
                subject=str(message.get("Subject", "")), body=body.get_content().rstrip("\r\n") if body else "",
                received_at=datetime.now(timezone.utc), attachments=attachments,
                path=self._write(len(self.messages) + 1, message_id, envelope.content),
            ))
        return "250 2.0.0 queued in the outbox"

    def _write(self, number: int, message_id: str, content: bytes) -> str | None:
        if self.folder is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9@._-]+", "", message_id)[:80] or "message"
        path = self.folder / f"{number:04d}-{name}.eml"
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        partial.replace(path)  # a reader never sees half a message
        return str(path)


class SMTPOutboxServer:
    """An Outbox served by aiosmtpd on host:port (port 0 = a free one) in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, folder: Path | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.outbox = Outbox(folder)
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.controller = Controller(self.outbox, hostname=host, port=port)

    @property
    def url(self) -> str:
        return f"smtp://{self.controller.hostname}:{self.controller.port}"

    def __enter__(self) -> "SMTPOutboxServer":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Goalrail demo SMTP outbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", type=Path, default=None, help="Also write each message there as an .eml file.")
    args = parser.parse_args(argv)
    with SMTPOutboxServer(args.host, args.port, args.dir) as server:
        print(f"SMTP outbox on {server.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
